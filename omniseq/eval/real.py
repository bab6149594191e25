"""The evaluation table on real media (issue 10): `make eval-real CKPT=...` or

    python -m omniseq.eval.real [--config F] [key=value ...]

Items are the held-out conversations of a real corpus (omniseq.data.real_corpus: sft.eval.jsonl). Tasks are
named `{src}2{dst}`; how each is scored:

    *2text with a label     generated text, normalised, equals the label (digit word, sound class)
    speech2text (LJ)        1 - word error rate of the generated transcript (floored at 0)
    emoji2text, emoji_video2text
                            the candidate name the model gives the highest likelihood is the true one (top-1
                            among the item's candidates: open-ended names of 1,700 emoji are beyond a small model)
    text2digit_image, digit_speech2digit_image, text2digit_speech, text2sound
                            the generated image or clip, classified by an independent scorer trained on the
                            real train split (omniseq.eval.real_scorers), equals the asked label

Rows: `trained` (the checkpoint), `specialist` (the scorer itself on the real held-out media: for *2text
that is a recogniser trained on the same data; for generation, what a perfect generator would score),
`tokenizer` (the scorer on the real media after the tokenizer's round trip: the ceiling generation through
these codes can reach), `random` (random weights), and `chance` (what guessing scores: for a labelled task the
best constant guess, the share of its most common label among the items scored; 1 / candidates for the named
emoji; for LJ, a training sentence picked without listening). The last column is the binomial tail
P(hits >= the trained row's | chance). results.json keeps every item's answer (`answers`). `tasks=[...]` scores
only those tasks. Generated and round-tripped audio is resampled from its codec's rate to the scorers' 16 kHz.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy.stats import binom

from omniseq.atomic import write_text_atomic
from omniseq.config import ConfigError, load_config
from omniseq.data.real_sets import DEFAULT_DATA
from omniseq.document import Segment
from omniseq.eval.gallery import write_gallery
from omniseq.eval.harness import (
    Item,
    answer_seconds,
    as_heard,
    check_rows,
    distinct_line,
    distinct_media,
    load_items,
)
from omniseq.eval.metrics import edit_distance
from omniseq.eval.real_scorers import SAMPLE_RATE, load_or_train
from omniseq.model.transformer import Transformer
from omniseq.sample.generate import prompt_ids
from omniseq.sample.guidance import uncond_prompt
from omniseq.sample.render import media_rate
from omniseq.sample.run import Prompt, SampleConfig, SamplingSession
from omniseq.sample.sampling import GuidanceConfig
from omniseq.tokenizers.audio_io import load_audio
from omniseq.tokenizers.image_io import load_image

KIND_MODALITY = {
    "digit_image": "image",
    "emoji": "image",
    "digit_speech": "audio",
    "speech": "audio",
    "sound": "audio",
    "emoji_video": "video",
}
SCORER_OF = {"digit_image": "digit_image", "digit_speech": "spoken_digit", "sound": "sound"}  # kind -> scorer
CANDIDATE_TASKS = ("emoji2text", "emoji_video2text")
AUDIO_SECONDS = {"digit_speech": 1.5, "sound": 2.2, "speech": 10.0}  # generation budget per target kind
AUDIO_RATE = SAMPLE_RATE  # the scorers' input rate; decoded audio is resampled to it from its codec's (as_heard)
ROWS = ("trained", "specialist", "tokenizer", "random", "chance")
REFERENCES = ("random",)  # the model rows `references` may add


def real_sample_config(run: str) -> SampleConfig:
    """Sampling from a recipe's run folder: its SFT export and its tokenizers."""
    return SampleConfig(
        checkpoint=f"{run}/sft/export",
        text_tokenizer=f"{run}/tokenizers/text",
        media_tokenizers={m: f"{run}/tokenizers/{m}" for m in ("image", "audio", "video")},
        out=f"{run}/samples",
    )


@dataclass
class RealEvalConfig:
    corpus: str = "runs/real/corpus"  # a real corpus folder (its sft.eval.jsonl holds the prompts)
    data: str = str(DEFAULT_DATA)  # the real sets, for training the scorers (their train split only)
    scorers: str = "runs/real/scorers"  # the scorers' cache: trained once, reused while the data is unchanged
    per_direction: int = 50  # held-out items per task
    # held-out items per candidate-ranked task (emoji naming); 0 = every one. Ranking costs one forward pass per
    # item, and 40 items cannot tell a 20% hit rate from the 10% chance clearly (9 of 40: p 0.016)
    ranked_per_direction: int = 0
    tasks: list[str] = field(default_factory=list)  # only these tasks (names as in sft.eval.jsonl); [] = all
    text_tokens: int = 32  # answer budget of the *2text tasks (labels are a few words; LJ sentences more)
    # A chained answer's media (spoken digit -> "seven. " + drawing) is drawn after the words seeing only them,
    # the user's turn shown as its <|uncond|> twin (`words`), or the whole turn (`turn`; SamplingSession.
    # media_after_words). Spoken digit -> image, 100 items: 63% -> 86% on the H200 checkpoint, 68% -> 74% on
    # g1-cpu (docs/benchmarks.md)
    chain_draw_from: str = "words"
    references: list[str] = field(default_factory=lambda: ["random"])  # extra model rows (REFERENCES): random
    out: str = "runs/real/eval"  # results.json and the table (results.md)
    seed: int = 0  # scorers and random weights
    scorer_overrides: list[str] = field(default_factory=list)  # key=value for every scorer (tests: epochs=1)
    sample: SampleConfig = field(default_factory=lambda: real_sample_config("runs/real"))  # checkpoint, tokenizers


def split_task(task: str) -> tuple[str, str]:
    src, _, dst = task.partition("2")
    return src, dst


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split())


def word_accuracy(said: str, meant: str) -> float:
    """1 - word error rate, floored at 0."""
    ref = normalise(meant).split()
    return max(0.0, 1 - edit_distance(normalise(said).split(), ref) / max(1, len(ref)))


def chained(item: Item) -> bool:
    """Whether the item's reference answer names the label in text before its media (the corpus' `chain`)."""
    return split_task(item.task)[1] != "text" and bool(item.answer) and item.answer[0].modality == "text"


def forced(item: Item) -> str | None:
    """The media span generation opens at once: the target's, unless the answer is chained (text first)."""
    dst = split_task(item.task)[1]
    return None if dst == "text" or chained(item) else KIND_MODALITY[dst]


def budget(item: Item, layout, text_tokens: int) -> int:
    _, dst = split_task(item.task)
    if dst == "text":
        return text_tokens * (4 if item.task == "speech2text" else 1)
    cb = layout.codebook(KIND_MODALITY[dst])
    words = text_tokens if chained(item) else 0  # the label said before the media
    if KIND_MODALITY[dst] == "image":
        return words + cb.tokens_per_frame() + 4
    # at least the kind's budget, and a tenth over the reference answer where it is longer: a corpus with
    # sound_seconds=4 had its sounds cut at 2.2 s, and the scorer heard half of each
    seconds = max(AUDIO_SECONDS[dst], 1.1 * answer_seconds(item))
    return words + int(seconds * cb.rate * cb.layers_in_ids) + cb.layers_in_ids + 4


@torch.no_grad()
def rank_candidates(session: SamplingSession, item: Item) -> int:
    """Index of the candidate answer the prompt's media makes most likely (`candidate_scores`)."""
    return int(np.argmax(candidate_scores(session, item)))


def candidate_scores(session: SamplingSession, item: Item) -> np.ndarray:
    """Per candidate answer, how much the prompt's media raises it: its log-likelihood after the prompt
    (summed over its tokens and the turn's closing <|end|>) minus its log-likelihood after the prompt's
    unconditional twin (`uncond_prompt`: the user's turn as one <|uncond|>, as training's condition dropout
    shows it). The difference is the pointwise mutual information of the answer and the prompt (domain-
    conditional PMI, Holtzman et al. 2021): the plain likelihood favours names that are likely anyway (short,
    common words) whatever the picture. Measured on the f1-cpu checkpoint: animated emoji 7.5% by likelihood,
    22.5% so; static emoji 14% either way (chance 10%; docs/benchmarks.md)."""
    prompt = prompt_ids(session.codec, item.prompt)
    twin = uncond_prompt(session.layout, prompt)
    # <bos> <|assistant|> name <|end|> <eos> -> name <|end|>: both prompts end with <|assistant|>
    names = item.meta["candidates"]
    answers = [session.codec.encode([Segment("text", text=c, role="assistant")]).ids[2:-1] for c in names]
    rows = [np.concatenate([p, a]).astype(np.int64) for p in (prompt, twin) for a in answers]
    ids = torch.zeros(len(rows), max(len(r) for r in rows), dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, : len(r)] = torch.from_numpy(r)
    logp = torch.log_softmax(session.model(ids.to(session.device)).float(), -1).cpu()  # [2K, T, V]
    scores = []
    for b, (p, a) in enumerate((p, a) for p in (prompt, twin) for a in answers):
        pos = torch.arange(len(p) - 1, len(p) + len(a) - 1)
        scores.append(float(logp[b, pos, torch.from_numpy(a.astype(np.int64))].sum()))
    K = len(answers)
    return np.subtract(scores[:K], scores[K:])


def generated_answers(
    session: SamplingSession, items: list[Item], text_tokens: int, words_only: bool = False
) -> list[tuple[str, object]]:
    """(the assistant's text, its first media of the task's target modality decoded, or None) per item: a
    transcript or label, a drawing, or a chained answer's label and drawing."""
    prompts = [Prompt(it.prompt, forced(it)) for it in items]
    budgets = [budget(it, session.layout, text_tokens) for it in items]
    guidance = session.cfg.generate.sampling.guidance
    chain = [i for i, it in enumerate(items) if chained(it)]
    # A chained answer is said unguided first (its words are text: guidance never touches them), then its
    # media is drawn after those words (by default with the user's turn shown as its twin: chain_draw_from),
    # guided against the turn's twin without them (SamplingSession.media_after_words). Measured on the f1-cpu
    # checkpoint, spoken digit -> image: 12% in one unguided pass, 45% so (docs/benchmarks.md).
    session.cfg.generate.sampling.guidance = GuidanceConfig(1.0, 1.0, 1.0)
    try:
        first = session.generate([prompts[i] for i in chain], [budgets[i] for i in chain])
    finally:
        session.cfg.generate.sampling.guidance = guidance
    rest = [i for i in range(len(items)) if i not in set(chain)]
    ids, out = [None] * len(items), [None] * len(items)
    for i, p, o in zip(rest, *session.generate([prompts[i] for i in rest], [budgets[i] for i in rest])):
        ids[i], out[i] = p, o
    if chain:
        dst = [KIND_MODALITY[split_task(items[i].task)[1]] for i in chain]
        for m in sorted(set(dst)):
            rows = [k for k, d in enumerate(dst) if d == m]
            drawn = session.media_after_words([first[0][k] for k in rows], [first[1][k] for k in rows], m,
                                              [budget(items[chain[k]], session.layout, 0) for k in rows],
                                              words_only)  # fmt: skip
            for k, o in zip(rows, drawn):
                ids[chain[k]], out[chain[k]] = first[0][k], o
    answers = []
    for item, p, o in zip(items, ids, out):
        answer = [s for s in session.codec.decode(np.concatenate([p, o])) if s.role == "assistant"]
        _, dst = split_task(item.task)
        media = None if dst == "text" else next((s for s in answer if s.modality == KIND_MODALITY[dst]), None)
        text = "".join(s.text for s in answer if s.modality == "text")
        answers.append((text, None if media is None else session.codec.render(media)))
    return answers


def score_model(
    session: SamplingSession, items: list[Item], scorers: dict, text_tokens: int, words_only: bool = False
) -> tuple[list[float], list[dict], list]:
    """One score in [0, 1] per item for the session's model, what it answered (its text, the picked candidate
    for ranked names, and for generated media the label the scorer gave it) and the media it generated (None
    for a text answer or a missing span)."""
    open_items = [it for it in items if it.task not in CANDIDATE_TASKS]
    answers = {}
    if open_items:
        answers = dict(zip(map(id, open_items), generated_answers(session, open_items, text_tokens, words_only)))
    scores, said, made = [], [], []
    for item in items:
        heard, media = None, None
        if item.task in CANDIDATE_TASKS:
            text = item.meta["candidates"][rank_candidates(session, item)]
            score = float(text == item.meta["label"])
        else:
            src, dst = split_task(item.task)
            text, media = answers[id(item)]
            if dst == "text":
                score = (word_accuracy(text, item.meta["label"]) if src == "speech"
                         else float(normalise(text) == normalise(item.meta["label"])))  # fmt: skip
            else:
                heard = None
                if media is not None:
                    clip = as_heard(session.codec, media, KIND_MODALITY[dst], AUDIO_RATE)
                    heard = str(scorers[dst].predict([clip])[0])
                score = float(heard == item.meta["label"])
        scores.append(score)
        made.append(media)
        said.append({"task": item.task, "id": item.meta.get("id"), "label": item.meta["label"], "text": text,
                     "scored_as": heard, "score": score})  # fmt: skip
    return scores, said, made


def media_of(item: Item, kind: str):
    """The real media of `kind` in an item's prompt or (for generation) its reference answer."""
    for seg in [*item.prompt, *item.answer]:
        if seg.media is not None and KIND_MODALITY.get(kind) == seg.modality:
            return seg.media
    return None


def reference_scores(session: SamplingSession, items: list[Item], scorers: dict) -> dict[str, list]:
    """The specialist (scorer on the real media) and tokenizer (scorer after the round trip) rows; None
    where a task has no scorer."""
    rows: dict[str, list] = {"specialist": [], "tokenizer": []}
    for item in items:
        src, dst = split_task(item.task)
        kind = dst if dst in scorers else src if (src in scorers and dst == "text") else None
        media = media_of(item, kind) if kind else None
        if media is None:
            rows["specialist"].append(None)
            rows["tokenizer"].append(None)
            continue
        tok = session.codec.media[KIND_MODALITY[kind]]
        real = load_image(media) if KIND_MODALITY[kind] == "image" else load_audio(media, AUDIO_RATE).samples
        rows["specialist"].append(float(scorers[kind].predict([real])[0] == item.meta["label"]))
        trip = as_heard(session.codec, tok.decode(tok.encode(media)), KIND_MODALITY[kind], AUDIO_RATE)
        rows["tokenizer"].append(float(scorers[kind].predict([trip])[0] == item.meta["label"]))
    return rows


def chance(items: list[Item], train_transcripts: list[str]) -> list[float]:
    """What guessing scores on each of the items scored (a task's mean is its chance row): one of the item's
    candidates; for LJ, a training sentence drawn at random without listening (the held-out sentences share
    words with the training ones: LJ001-0021 begins as LJ001-0007 does), its expected word accuracy; for a
    labelled task (digits, sound classes), the best constant guess: the share of the task's most common label
    among `items`. Not 1 / 10: the first per_direction items of a seeded shuffle are not balanced (14 of
    runs/d1-cpu's first 60 text -> digit image items are zeros), and a model that always draws a zero scored
    23% there, p 0.002 against 10%."""
    labels = defaultdict(list)
    for it in items:
        labels[it.task].append(it.meta["label"])
    majority = {task: max(Counter(ls).values()) / len(ls) for task, ls in labels.items()}
    rates = []
    for it in items:
        if it.task in CANDIDATE_TASKS:
            rates.append(1 / len(it.meta["candidates"]))
        elif it.task == "speech2text":
            rates.append(float(np.mean([word_accuracy(t, it.meta["label"]) for t in train_transcripts] or [0.0])))
        else:
            rates.append(majority[it.task])
    return rates


def train_transcripts(corpus: str | Path) -> list[str]:
    """The LJ Speech sentences of the corpus' train split (empty when it has none)."""
    path = Path(corpus) / "speech.train.jsonl"
    return [json.loads(ln)["text"] for ln in path.read_text().splitlines() if ln.strip()] if path.is_file() else []


def chance_tail(scores: list[float], rate: float) -> float | None:
    """P(at least this many hits | chance alone): the one-sided binomial tail of the hits in `scores` at the
    chance `rate`, so "clearly above chance" is a number (docs/benchmarks.md reads p < 0.01). None for graded
    scores (LJ's word accuracy) and for a chance of 0 or 1."""
    if not 0 < rate < 1 or any(s not in (0.0, 1.0) for s in scores):
        return None
    n, k = len(scores), int(sum(scores))
    # P(X >= k) = P(X > k - 1), by scipy: a sum of math.comb(n, i) * rate**i overflows a float past ~1,030 items
    return float(binom.sf(k - 1, n, rate))


def fitting_items(session: SamplingSession, items: list[Item], text_tokens: int) -> tuple[list[Item], dict]:
    """The items whose prompt and answer budget fit the model's context, and per task how many did not
    (long LJ Speech clips on a 512-token CPU model): skipped, counted and reported, never truncated."""
    keep, skipped = [], defaultdict(int)
    for it in items:
        need = len(session.ids_of(Prompt(it.prompt))) + budget(it, session.layout, text_tokens)
        if need <= session.model.cfg.max_seq_len:
            keep.append(it)
        else:
            skipped[it.task] += 1
    return keep, dict(skipped)


def held_out_items(cfg: RealEvalConfig) -> list[Item]:
    """The first per_direction held-out items of each task (ranked_per_direction for the ranked tasks)."""
    ranked = cfg.ranked_per_direction or 1 << 30
    items, taken = [], defaultdict(int)
    for it in load_items(cfg.corpus, max(cfg.per_direction, ranked)):
        taken[it.task] += 1
        if taken[it.task] <= (ranked if it.task in CANDIDATE_TASKS else cfg.per_direction):
            items.append(it)
    return items


def check_config(cfg: RealEvalConfig) -> None:
    """ConfigError naming the key, before anything loads: per_direction 0 took no item of any task but the
    ranked ones (and a `tasks` list then failed as if the corpus lacked them), and a misspelt reference row
    was left out without a word."""
    if cfg.chain_draw_from not in ("turn", "words"):
        raise ConfigError(f"chain_draw_from: expected turn or words, got {cfg.chain_draw_from!r}")
    check_rows(cfg.per_direction, cfg.references, REFERENCES)
    if cfg.ranked_per_direction < 0:
        raise ConfigError(f"ranked_per_direction: expected 0 (every item) or more, got {cfg.ranked_per_direction}")


def evaluate(cfg: RealEvalConfig) -> dict:
    t0 = time.perf_counter()
    check_config(cfg)
    items = held_out_items(cfg)
    known = sorted({it.task for it in items})
    if unknown := sorted(set(cfg.tasks) - set(known)):
        raise ConfigError(f"tasks: {unknown} not in {cfg.corpus}/sft.eval.jsonl; it has {known}")
    session = SamplingSession(cfg.sample)  # after the checks: loading the model takes a while
    chosen = [it for it in items if not cfg.tasks or it.task in cfg.tasks]
    items, too_long = fitting_items(session, chosen, cfg.text_tokens)
    needed = {split_task(it.task)[i] for it in items for i in (0, 1)} & set(SCORER_OF)
    scorers, reports = {}, {}
    for kind in sorted(needed):
        scorer = load_or_train(SCORER_OF[kind], cfg.data, cfg.scorers, cfg.seed, cfg.scorer_overrides)
        scorers[kind], reports[kind] = scorer
    words_only = cfg.chain_draw_from == "words"
    trained_scores, answers, generated = score_model(session, items, scorers, cfg.text_tokens, words_only)
    per_row = {"trained": trained_scores}
    per_row.update(reference_scores(session, items, scorers))
    if "random" in cfg.references:
        trained = session.model
        torch.manual_seed(cfg.seed)
        session.model = Transformer.build(trained.cfg, device=session.device).to(next(trained.parameters()).dtype)
        per_row["random"] = score_model(session, items, scorers, cfg.text_tokens, words_only)[0]
        session.model = trained
    transcripts = train_transcripts(cfg.corpus)
    per_row["chance"] = chance(items, transcripts)
    table: dict[str, dict] = defaultdict(dict)
    for name, scores in per_row.items():
        by_task = defaultdict(list)
        for item, s in zip(items, scores):
            if s is not None:
                by_task[item.task].append(s)
        for task, ss in by_task.items():
            table[name][task] = {"main": float(np.mean(ss)), "n": len(ss)}
    for task, n in distinct_media([it.task for it in items], generated).items():
        table["trained"][task]["distinct"] = n
    for task, row in table["trained"].items():
        scores = [s for it, s in zip(items, per_row["trained"]) if it.task == task]
        graded = task == "speech2text"  # LJ's word accuracy: no binomial tail
        row["p_chance"] = None if graded else chance_tail(scores, table["chance"][task]["main"])
    results = {"checkpoint": cfg.sample.checkpoint, "corpus": cfg.corpus, "chain_draw_from": cfg.chain_draw_from,
               "scorers": reports, "table": table,
               "skipped_too_long": too_long, "answers": answers,
               "seconds": time.perf_counter() - t0}  # fmt: skip
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(format_table(results) + "\n")
    write_text_atomic(out / "results.json", json.dumps(results, indent=2) + "\n")  # saved before the pictures
    modalities = [None if split_task(it.task)[1] == "text" else KIND_MODALITY[split_task(it.task)[1]] for it in items]
    results["gallery"] = write_gallery(out / "generated", answers, generated, modalities,
                                       {m: media_rate(session.codec, m) for m in session.codec.media})  # fmt: skip
    write_text_atomic(out / "results.json", json.dumps(results, indent=2) + "\n")
    return results


def format_table(results: dict) -> str:
    names = [r for r in ROWS if r in results["table"]]
    tasks = sorted({t for rows in results["table"].values() for t in rows})
    lines = [f"| task | n | {' | '.join(names)} | p (trained by chance) |", "|---|---|" + "---|" * (len(names) + 1)]
    for t in tasks:
        n = results["table"]["trained"].get(t, {}).get("n", 0)
        cells = [results["table"][r].get(t, {}).get("main") for r in names]
        p = results["table"]["trained"].get(t, {}).get("p_chance")
        p_cell = "-" if p is None else "< 0.001" if p < 1e-3 else f"{p:.3f}"
        lines.append(f"| {t} | {n} | " + " | ".join("-" if c is None else f"{100 * c:.0f}%" for c in cells)
                     + f" | {p_cell} |")  # fmt: skip
    if distinct := distinct_line(results["table"]["trained"]):
        lines.append(distinct)
    if results.get("skipped_too_long"):
        skipped = ", ".join(f"{t} {n}" for t, n in results["skipped_too_long"].items())
        lines.append(f"\nskipped (prompt + answer longer than the model's context): {skipped}")
    if any(math.isfinite(r.get("eval_accuracy", math.nan)) for r in results["scorers"].values()):
        acc = ", ".join(f"{k} {100 * r['eval_accuracy']:.1f}%" for k, r in results["scorers"].items())
        lines.append(f"\nscorers on the real held-out split: {acc}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="YAML of RealEvalConfig keys")
    ap.add_argument("overrides", nargs="*", help="key=value, e.g. sample.checkpoint=runs/real/sft/export")
    args = ap.parse_args(argv)
    cfg = load_config(RealEvalConfig, args.config, args.overrides)
    results = evaluate(cfg)
    print(format_table(results))
    gallery = results["gallery"]
    if gallery["sheets"]:
        print(f"generated media and a contact sheet per task: {Path(cfg.out) / 'generated'}")
    for error in gallery["errors"]:
        print(f"  not written: {error}")
    print(f"-> {Path(cfg.out) / 'results.json'} ({results['seconds']:.0f} s)")


if __name__ == "__main__":
    from omniseq.cli import run

    run(main)
