"""The any-to-any evaluation harness: per direction, generate and read the answer back.

    python -m omniseq.eval --checkpoint runs/demo/sft/export [key=value ...]      (make eval CKPT=...)

For every direction of the demo world (text->image, image->text, text->melody, melody->text, text->sound,
sound->text, text->video, video->text, text->speech and speech->text where espeak-ng made speech), held-out
conversations (`sft.eval.jsonl`) are prompted without their answer. Generated media are decoded by the
tokenizers and read back by the analysers (omniseq.eval.analysers); generated text is parsed for the same
attributes (omniseq.eval.metrics). Scores are compared with the ground truth in each line's `meta`.

Honest reference rows use the same prompts: `random` (the same architecture with random weights) and
`blind` (the trained model with the condition removed: media questions without their media, media
requests with an empty request), which shows how much of a score the condition explains. The `tokenizer`
row generates nothing: each item's own media after its tokenizer's round trip, read back and scored as an
answer is. For text -> media it shows what the tokenizer carries of real items (a shape its decoder blurs
is hard to draw right), a reference, not a bound: a model may draw more typical media than a held-out item.
For media -> text, how much of the attributes the model's input still holds.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from omniseq.atomic import write_text_atomic
from omniseq.config import ConfigError
from omniseq.data.demo_corpus import document_of
from omniseq.data.loader import DataConfig, SourceConfig, stream_from_config
from omniseq.document import Segment, segment_from_json
from omniseq.eval.analysers import SAMPLE_RATE, SpeechRecogniser, analyse
from omniseq.eval.gallery import write_gallery
from omniseq.eval.metrics import compare, describe, mean_scores, parse_text
from omniseq.model.transformer import Transformer
from omniseq.sample.render import media_rate
from omniseq.sample.run import Prompt, SampleConfig, SamplingSession
from omniseq.tokenizers.audio_io import resample
from omniseq.vocab import MODALITIES

KIND_MODALITY = {"image": "image", "melody": "audio", "sound": "audio", "speech": "audio", "video": "video"}


def main_score(kind: str, scores: dict[str, float]) -> float:
    """The table's number: attribute accuracy for scenes and videos (mean over colour, shape, ...), note
    accuracy for melodies, word accuracy for speech, class accuracy for sounds."""
    if kind in ("image", "video"):
        attrs = [v for k, v in scores.items() if k not in ("exact", "count")]
        return float(np.mean(attrs)) if attrs else 0.0
    return scores["accuracy"] if kind in ("melody", "speech") else scores["exact"]


REFERENCES = ("random", "blind", "tokenizer")


@dataclass
class EvalConfig:
    corpus: str = "runs/demo/corpus"  # the demo corpus folder (its sft.eval.jsonl holds the prompts)
    per_direction: int = 40  # held-out items per direction (with 20, one item moved a direction by 5 points)
    text_tokens: int = 48  # answer budget of the *2text directions (the demo's answers are a few words)
    references: list[str] = field(default_factory=lambda: list(REFERENCES))  # extra rows: random|blind|tokenizer
    perplexity_sources: list[str] = field(default_factory=list)  # shard sets for held-out loss per modality
    perplexity_batches: int = 8  # micro-batches of those
    out: str = "runs/demo/eval"  # results.json and the table (results.md)
    sample: SampleConfig = field(default_factory=SampleConfig)  # checkpoint, tokenizers, sampling settings


@dataclass
class Item:
    task: str  # e.g. "text2image"
    kind: str  # image | melody | sound | speech | video
    prompt: list[Segment]  # the user's turn
    meta: dict  # ground truth
    answer: list[Segment] = field(default_factory=list)  # the corpus' reference answer (the assistant's turn)

    @property
    def to_text(self) -> bool:
        return self.task.endswith("2text")


def load_items(corpus: str | Path, per_direction: int) -> list[Item]:
    path = Path(corpus) / "sft.eval.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"held-out conversations not found: {path} (generate the demo corpus first)")
    by_task: dict[str, list[Item]] = defaultdict(list)
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        obj = json.loads(line)
        task = obj["meta"]["task"]
        if len(by_task[task]) >= per_direction:
            continue
        segs = [segment_from_json(s, path.parent, f"{path}:{lineno}") for s in document_of(obj)]
        user = [s for s in segs if s.role == "user"]
        answer = [s for s in segs if s.role == "assistant"]
        by_task[task].append(Item(task, obj["meta"]["kind"], user, obj["meta"], answer))
    return [it for task in sorted(by_task) for it in by_task[task]]


def blind(item: Item) -> list[Segment]:
    """The prompt without its condition: the media question without media, or an empty request."""
    if item.to_text:
        return [s for s in item.prompt if s.modality == "text"] or [Segment("text", text=" ", role="user")]
    return [Segment("text", text=" ", role="user")]


def budget(item: Item, layout, text_tokens: int) -> int:
    """Tokens an answer needs: a short text, or one media span of the kind's size (so that a model that
    never closes its answer, random weights above all, costs a bounded time). Audio gets the reference
    answer's length and a quarter more, plus half a second: a fixed 3 seconds cut the melodies of a world with
    more or longer notes short, and the analyser then heard fewer notes than were played."""
    if item.to_text:
        return text_tokens
    cb = layout.codebook(KIND_MODALITY[item.kind])
    if item.kind == "image":
        return cb.tokens_per_frame() + 4
    if item.kind == "video":
        return 8 * (cb.tokens_per_frame() + 1) + 4  # the demo's clips (<= 12 frames at 8 fps) tokenize to <= 6
    if not (reference := answer_seconds(item)):
        raise ValueError(f"{item.task} item {item.meta.get('id')}: no reference audio answer to size its budget by")
    seconds = 1.25 * reference + 0.5
    return int(seconds * cb.rate * cb.layers_in_ids) + cb.layers_in_ids + 4


def answer_seconds(item: Item) -> float:
    """Length of the item's reference audio answer in seconds; 0 when it has none (both harnesses' budgets)."""
    reference = next((s.media for s in item.answer if s.modality == "audio" and s.media is not None), None)
    return sf.info(str(reference)).duration if reference is not None else 0.0


def as_heard(codec, media, modality: str, target: int):
    """Decoded media as an analyser or scorer reads it: audio resampled from its codec's rate to `target` Hz
    (16 kHz), anything else as it is. An EnCodec decodes at 24 or 32 kHz, and the spoken-digit scorer read 35 of
    100 FSDD clips right fed them at 24 kHz as they were, against 98 at 16 kHz (each sound half as long again, a
    third lower). Band-limited through soxr as every audio input is (audio_io.resample); [C, N] per channel."""
    if modality != "audio":
        return media
    wave, rate = np.asarray(media, np.float32), media_rate(codec, "audio")
    if wave.ndim == 2:
        return np.stack([resample(channel, rate, target) for channel in wave])
    return resample(wave, rate, target)


def score_rows(session: SamplingSession, items: list[Item], prompts: list[Prompt], recogniser, text_tokens: int):
    """Generate for every prompt and score each answer against its item's ground truth. Returns the score rows,
    and for the gallery, per item, what was asked and made of the answer ({task, label, scored_as, score}) and
    the decoded media (None for a text answer or a missing span)."""
    ids, out = session.generate(prompts, [budget(it, session.layout, text_tokens) for it in items])
    rows, said, made = [], [], []
    for item, p, o in zip(items, ids, out):
        answer = [s for s in session.codec.decode(np.concatenate([p, o])) if s.role == "assistant"] or []
        decoded = None
        if item.to_text:
            text = "".join(s.text for s in answer if s.modality == "text")
            pred = parse_text(item.kind, text)
        else:
            media = next((s for s in answer if s.modality == KIND_MODALITY[item.kind]), None)
            if media is None:
                pred = {}
            else:
                decoded = session.codec.render(media)  # at the codec's rate: the gallery plays it so
                pred = read_back(session, item.kind, decoded, recogniser)
        rows.append(score_row(item, pred))
        asked = "".join(s.text for s in item.prompt if s.modality == "text").strip()
        said.append({"task": item.task, "label": asked, "scored_as": describe(pred), "score": rows[-1]["main"]})
        made.append(decoded)
    return rows, said, made


def tokenizer_rows(session: SamplingSession, items: list[Item], recogniser) -> list[dict]:
    """Each item's ground-truth media (the answer of text -> X, the question of X -> text) after its tokenizer's
    round trip, analysed and scored as `score_rows` scores a generated answer. Not a bound: a model can draw a
    more typical sound than a held-out recording's round trip. A file asked about in both directions (the demo
    corpus has each item in both) is read once."""
    rows, read = [], {}
    for item in items:
        modality = KIND_MODALITY[item.kind]
        media = next(s.media for s in (item.prompt if item.to_text else item.answer) if s.modality == modality)
        if media not in read:
            tok = session.codec.media[modality]
            read[media] = read_back(session, item.kind, tok.decode(tok.encode(media)), recogniser)
        rows.append(score_row(item, read[media]))
    return rows


def read_back(session: SamplingSession, kind: str, decoded, recogniser) -> dict:
    """What the analysers read in decoded media of `kind` (at its codec's rate); nothing from speech without
    the recogniser."""
    heard = as_heard(session.codec, decoded, KIND_MODALITY[kind], SAMPLE_RATE)
    return analyse(kind, heard, recogniser) if kind != "speech" or recogniser else {}


def score_row(item: Item, pred: dict) -> dict:
    """One row of a table: the item's direction, its main score and every attribute's, for what was read."""
    scores = compare(item.kind, pred, item.meta)
    return {"task": item.task, "main": main_score(item.kind, scores), **scores}


@torch.no_grad()
def perplexity(model: Transformer, layout, sources: list[str], batches: int, device) -> dict[str, float]:
    data = DataConfig(sources=[SourceConfig(s) for s in sources], seq_len=min(model.cfg.max_seq_len, 512), batch_size=4)
    ce = torch.zeros(len(MODALITIES))
    n = torch.zeros(len(MODALITIES))
    for _, batch in zip(range(batches), stream_from_config(data, 0, 1, layout)):
        loss = model(**{k: v.to(device) for k, v in batch.items()})
        ce += loss.ce_sum.cpu()
        n += loss.count.cpu()
    return {m: math.exp(ce[i] / n[i]) for i, m in enumerate(MODALITIES) if n[i] > 0}


def distinct_media(tasks: list[str], made: list) -> dict[str, int]:
    """Per task that generated media, how many of its answers differ, by content. Greedy decoding draws one
    answer per request, so a direction's score may rest on a handful of drawings (the real recipe's 60 text ->
    digit image items were 19 images, docs/benchmarks.md); missing spans are not counted."""
    seen: dict[str, set] = defaultdict(set)
    for task, media in zip(tasks, made):
        if media is not None:
            a = np.ascontiguousarray(np.asarray(media))
            seen[task].add(hashlib.sha1(f"{a.shape}{a.dtype}".encode() + a.tobytes()).hexdigest())
    return {task: len(kinds) for task, kinds in seen.items()}


def distinct_line(table: dict) -> str:
    """The line under a table: distinct generated media of the trained row, of its items."""
    cells = [f"{t} {row['distinct']} of {row['n']}" for t, row in sorted(table.items()) if "distinct" in row]
    return f"\ndistinct generated media (trained): {', '.join(cells)}" if cells else ""


def task_means(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Per task, the mean of each score over its rows. Reads the rows without changing them: results.json
    keeps them, task labels included."""
    by_task = defaultdict(list)
    for r in rows:
        by_task[r["task"]].append({k: v for k, v in r.items() if k != "task"})
    return {t: mean_scores(rs) for t, rs in by_task.items()}


def check_rows(per_direction: int, references: list[str], known: tuple[str, ...]) -> None:
    """ConfigError naming the key, before the model loads (this table's and the real one's): per_direction 0
    scored nothing, and a misspelt reference row (`blnd`) was left out without a word."""
    if per_direction < 1:
        raise ConfigError(f"per_direction: expected at least 1 held-out item per task, got {per_direction}")
    if unknown := sorted(set(references) - set(known)):
        raise ConfigError(f"references: {unknown} unknown; expected a list of {list(known)}, or [] for none")


def check_config(cfg: EvalConfig) -> None:
    check_rows(cfg.per_direction, cfg.references, REFERENCES)


def evaluate(cfg: EvalConfig) -> dict:
    t0 = time.perf_counter()
    check_config(cfg)
    items = load_items(cfg.corpus, cfg.per_direction)
    session = SamplingSession(cfg.sample)
    speech = any(it.kind == "speech" for it in items)
    recogniser = SpeechRecogniser.from_espeak() if speech else None
    base = [Prompt(it.prompt, None if it.to_text else KIND_MODALITY[it.kind]) for it in items]
    results = {"checkpoint": cfg.sample.checkpoint, "rows": {}}
    results["rows"]["trained"], said, made = score_rows(session, items, base, recogniser, cfg.text_tokens)
    if "blind" in cfg.references:
        prompts = [Prompt(blind(it), p.force) for it, p in zip(items, base)]
        results["rows"]["blind"] = score_rows(session, items, prompts, recogniser, cfg.text_tokens)[0]
    if "random" in cfg.references:
        trained = session.model
        torch.manual_seed(0)
        session.model = Transformer.build(trained.cfg, device=session.device).to(next(trained.parameters()).dtype)
        results["rows"]["random"] = score_rows(session, items, base, recogniser, cfg.text_tokens)[0]
        session.model = trained
    if "tokenizer" in cfg.references:
        results["rows"]["tokenizer"] = tokenizer_rows(session, items, recogniser)
    results["table"] = {name: task_means(rows) for name, rows in results["rows"].items()}
    for task, n in distinct_media([it.task for it in items], made).items():
        results["table"]["trained"][task]["distinct"] = n
    if cfg.perplexity_sources:
        results["perplexity"] = perplexity(session.model, session.layout, cfg.perplexity_sources,
                                           cfg.perplexity_batches, session.device)  # fmt: skip
    results["seconds"] = time.perf_counter() - t0
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(format_table(results) + "\n")
    write_text_atomic(out / "results.json", json.dumps(results, indent=2) + "\n")  # saved before the pictures
    modalities = [None if it.to_text else KIND_MODALITY[it.kind] for it in items]
    results["gallery"] = write_gallery(out / "generated", said, made, modalities,
                                       {m: media_rate(session.codec, m) for m in session.codec.media})  # fmt: skip
    write_text_atomic(out / "results.json", json.dumps(results, indent=2) + "\n")
    return results


def format_table(results: dict) -> str:
    """Markdown: one row per direction, one column per model row (the direction's main score)."""
    names = list(results["table"])
    tasks = sorted({t for rows in results["table"].values() for t in rows})
    lines = [f"| direction | n | {' | '.join(names)} |", "|---|---|" + "---|" * len(names)]
    for t in tasks:
        cells = [results["table"][n].get(t, {}).get("main") for n in names]
        n = results["table"][names[0]].get(t, {}).get("n", 0)
        lines.append(f"| {t} | {n} | " + " | ".join("-" if c is None else f"{100 * c:.0f}%" for c in cells) + " |")
    if distinct := distinct_line(results["table"]["trained"]):
        lines.append(distinct)
    if "perplexity" in results:
        ppl = ", ".join(f"{m} {v:.2f}" for m, v in results["perplexity"].items())
        lines.append(f"\nheld-out perplexity per modality (trained): {ppl}")
    return "\n".join(lines)
