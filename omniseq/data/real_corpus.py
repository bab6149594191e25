"""The real-media corpus: the small public sets of ../shared/data in the demo corpus' file format (issue 10).

    python -m omniseq.data.real_corpus [--data ../shared/data] [--out runs/real/corpus] [key=value ...]

Sets are read and split by omniseq.data.real_sets (the scorers of omniseq.eval.real use the same splits, so
nothing evaluated is trained on). Layout under `--out`, as omniseq.data.demo_corpus writes it:

    media/{digit_image,emoji,emoji_video,sound}/{train,eval}/<id>.{png,npz,wav}   derived files only
    {kind}.{train,eval}.jsonl      pairs {"image"|"audio"|"video": path, "text": label, "meta": {...}}
    interleaved.{train,eval}.jsonl documents linking modalities (a digit written and spoken, an emoji and its clip)
    sft.{train,eval}.jsonl         conversations, tasks `{src}2{dst}` (PROMPTS)
    text.train.jsonl, text.txt     every train caption, prompt and sentence, plus some plain English
    index.json                     data folder, config, counts, corpora, skipped items with reasons

FSDD and LJ Speech clips are referenced by absolute path, never copied. Each set's items come in a seeded
random order, so a prefix of any file (the harness reads the first items of each task) covers every class.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from einops import repeat
from PIL import Image
from tqdm import tqdm

from omniseq.cli import run
from omniseq.config import ConfigError, load_config
from omniseq.data import real_sets as rs
from omniseq.data.corpus import clear_corpus_outputs, write_corpus_file
from omniseq.data.demo_media import SAMPLE_RATE, save_npz, save_png, save_wav

SETS = {  # real_sets reader -> corpus kind
    "mnist": "digit_image",
    "fsdd": "digit_speech",
    "ljspeech": "speech",
    "esc10": "sound",
    "emoji": "emoji",
    "animated_emoji": "emoji_video",
}
MODALITY = {"digit_image": "image", "digit_speech": "audio", "speech": "audio", "sound": "audio",
            "emoji": "image", "emoji_video": "video"}  # fmt: skip
SPLITS = ("train", "eval")
PROMPTS = {  # task -> user wordings; "{text}" is the item's label (AnyGPT varies its instructions)
    "digit_image2text": ("what digit is this?", "which number is written here?"),
    "text2digit_image": ("draw the digit {text}.", "write the number {text}."),
    "digit_speech2text": ("what number is said?", "which digit do you hear?"),
    "text2digit_speech": ("say {text}.", "speak the number {text}."),
    "digit_speech2digit_image": ("draw the digit you hear.", "write down the number that is said."),
    "speech2text": ("transcribe this.", "what is said here?"),
    "sound2text": ("what is this sound?", "describe this sound."),
    "text2sound": ("make the sound of {text}.", "play the sound: {text}."),
    "emoji2text": ("what emoji is this?", "name this emoji."),
    "emoji_video2text": ("what animated emoji is this?", "name this animated emoji."),
}
TASKS = {kind: [t for t in PROMPTS if t.startswith(f"{kind}2") or t == f"text2{kind}"] for kind in MODALITY}
CANDIDATE_TASKS = ("emoji2text", "emoji_video2text")  # scored by ranking names (omniseq.eval.real)
DOCS = {  # interleaved wordings: text, media, text, media, text (empty texts are left out)
    "digit": (("The digit {text} looks like this: ", " and sounds like this: ", "."),
              ("Here is {text} written down: ", " and spoken aloud: ", ".")),
    "emoji": (("The {text} emoji: ", " animated: ", ""), ("This is the {text} emoji: ", " and here it moves: ", ".")),
}  # fmt: skip


@dataclass
class Caps:
    """Most items per set and split (0 = all); a capped set keeps a seeded random subset."""

    mnist_train: int = 3000  # of 8000: keeps the CPU recipe small
    mnist_eval: int = 0  # of 1000
    fsdd_train: int = 0  # of 2400 clips (6 speakers x 10 digits x 40 takes)
    fsdd_eval: int = 0  # of 300 (the official test takes 0-4)
    ljspeech_train: int = 0  # of 20 sentences
    ljspeech_eval: int = 0  # of 4
    esc10_train: int = 0  # of 238 clips (folds 1-3)
    esc10_eval: int = 0  # of 80 (fold 4)
    emoji_train: int = 0  # of 1704 (google style)
    emoji_eval: int = 0  # of 171 (twitter style of every 10th emoji)
    animated_emoji_train: int = 0  # of 318 clips
    animated_emoji_eval: int = 0  # of 80


@dataclass
class RealCorpusConfig:
    data: str = str(rs.DEFAULT_DATA)  # the real sets (../shared/data beside the checkout)
    out: str = "runs/real/corpus"  # output folder
    seed: int = 0  # fixes capped subsets, item order, prompts, candidates and pairings: same seed, same bytes
    sets: list[str] = field(default_factory=lambda: list(SETS))  # which of SETS to include
    caps: Caps = field(default_factory=Caps)  # items per set and split
    image_size: int = 32  # MNIST (padded 28->32 first) and static emoji (64, area resize) are written this size
    video_frames: int = 4  # frames kept of the 16 of an animated emoji, evenly spaced
    video_size: int = 32  # square frames of the animated emoji (area resize from 64)
    max_speech_seconds: float = 10.0  # longer LJ Speech clips are skipped (and listed in index.json)
    sound_seconds: float = 2.0  # ESC-10 clips (5 s) keep their loudest window of this length: a few hundred tokens
    emoji_candidates: int = 10  # names offered per emoji eval item: the true one and this many minus one others
    text_chars: int = 200_000  # characters of text/tinyshakespeare/input.txt added to the text corpus (if present)
    # media -> media tasks whose answer first names the label in text, then gives the media: SpeechGPT's
    # chain-of-modality (Zhang et al. 2023), so the model reuses its speech -> text and text -> image skills.
    # Direct answers scored 5-22% on spoken digit -> image across three CPU runs (docs/benchmarks.md). [] = direct
    chain: list[str] = field(default_factory=lambda: ["digit_speech2digit_image"])
    # train conversations per item for these tasks (default 1), each with its own prompt draw: upsamples the
    # small sets in the SFT mixture (ESC-10 has 238 clips beside 3,000 digits); the eval split is never repeated
    repeats: dict[str, int] = field(default_factory=dict)


@dataclass
class Item:
    kind: str
    id: str
    path: str  # media path, relative to the output folder or absolute (FSDD, LJ Speech)
    text: str  # the label: digit word, sound class, sentence, emoji name
    meta: dict  # id, kind, split, label and set fields (digit, speaker, fold, codepoints, ...)


def check(cfg: RealCorpusConfig) -> None:
    unknown = set(cfg.sets) - set(SETS)
    if unknown:
        raise ConfigError(f"sets: unknown {sorted(unknown)}; expected some of {list(SETS)}")
    if not 1 <= cfg.video_frames <= 16:
        raise ConfigError(f"video_frames: expected 1..16 (the clips have 16 frames), got {cfg.video_frames}")
    if min(cfg.image_size, cfg.video_size) < 1:
        raise ConfigError(f"image_size/video_size: expected >= 1, got {cfg.image_size}/{cfg.video_size}")
    if not 0 < cfg.sound_seconds <= 5:
        raise ConfigError(f"sound_seconds: expected in (0, 5] (ESC-10 clips are 5 s), got {cfg.sound_seconds}")
    if cfg.emoji_candidates < 2:
        raise ConfigError(f"emoji_candidates: expected >= 2, got {cfg.emoji_candidates}")
    media_tasks = [t for t in PROMPTS if "text" not in t.split("2")]
    wrong = [t for t in cfg.chain if t not in media_tasks]
    if wrong:
        raise ConfigError(f"chain: {wrong[0]!r} is not a media -> media task; expected some of {media_tasks}")
    negative = [k for k, v in asdict(cfg.caps).items() if v < 0]
    if negative:
        raise ConfigError(f"caps.{negative[0]}: expected >= 0 (0 = all)")
    bad = {t: n for t, n in cfg.repeats.items() if t not in PROMPTS or not isinstance(n, int) or n < 1}
    if bad:
        raise ConfigError(f"repeats: {bad} - expected task -> integer >= 1, tasks among {list(PROMPTS)}")


def pick(candidates, cap: int, rng: np.random.Generator) -> list:
    """A seeded random order of `candidates`, cut to `cap` (0 = all)."""
    order = [candidates[int(i)] for i in rng.permutation(len(candidates))]
    return order[:cap] if cap else order


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, 3] -> [size, size, 3]; Pillow's BOX filter is an area average when shrinking."""
    if image.shape[0] == image.shape[1] == size:
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BOX))


def loudest(wave: np.ndarray, n: int, hop: int = SAMPLE_RATE // 10) -> np.ndarray:
    """The window of n samples with the most energy (starts on a 0.1 s grid): the event, not the silence."""
    if len(wave) <= n:
        return wave
    cum = np.concatenate([[0.0], np.cumsum(wave.astype(np.float64) ** 2)])
    starts = np.arange(0, len(wave) - n + 1, hop)
    best = int(starts[np.argmax(cum[starts + n] - cum[starts])])
    return wave[best : best + n]


def build_set(name: str, cfg: RealCorpusConfig, out: Path, rng: np.random.Generator, skipped: list) -> list[Item]:
    """Read set `name`, write its derived media and describe every kept item of both splits."""
    kind, data = SETS[name], Path(cfg.data)
    items: list[Item] = []

    def add(split: str, ident: str, path: str, text: str, **meta) -> None:
        items.append(Item(kind, ident, path, text, {"id": ident, "kind": kind, "split": split, "label": text, **meta}))

    def media(split: str, ident: str, ext: str) -> tuple[Path, str]:
        rel = f"media/{kind}/{split}/{ident}.{ext}"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        return out / rel, rel

    cap = lambda split: getattr(cfg.caps, f"{name}_{split}")  # noqa: E731
    if name == "mnist":
        images, labels, splits = rs.mnist(data)
        for s in SPLITS:
            for i in pick(list(np.flatnonzero(splits == s)), cap(s), rng):
                path, rel = media(s, f"mnist-{i:05d}", "png")
                digit = np.pad(images[i], 2)  # 28 -> 32, black border: white digit on black
                save_png(resize(repeat(digit, "h w -> h w c", c=3), cfg.image_size), path)
                add(s, f"mnist-{i:05d}", rel, rs.DIGIT_WORDS[labels[i]], digit=int(labels[i]))
    elif name in ("fsdd", "ljspeech", "esc10"):
        rows = {"fsdd": rs.fsdd, "ljspeech": rs.ljspeech, "esc10": rs.esc10}[name](data)
        for s in SPLITS:
            kept = []
            for r in (r for r in rows if r.split == s):
                seconds = sf.info(r.path).duration if name == "ljspeech" else 0.0
                if seconds > cfg.max_speech_seconds:
                    skipped.append({"set": name, "id": r.meta["id"], "reason": f"{seconds:.2f} s > max_speech_seconds"})
                else:
                    kept.append(r)
            for r in pick(kept, cap(s), rng):
                ident = f"{name}-{Path(r.path).stem}"
                if name != "esc10":
                    add(s, ident, r.path, r.label, **{k: v for k, v in r.meta.items() if k != "id"})
                    continue
                wave, sr = sf.read(r.path, dtype="float32", always_2d=True)
                wave = soxr.resample(wave.mean(axis=1), sr, SAMPLE_RATE) if sr != SAMPLE_RATE else wave.mean(axis=1)
                path, rel = media(s, ident, "wav")
                save_wav(loudest(wave, int(cfg.sound_seconds * SAMPLE_RATE)), path)
                add(s, ident, rel, r.label, **r.meta, source=r.path)
    elif name == "emoji":
        google, caps = rs.emoji(data, "google")
        twitter = rs.emoji(data, "twitter")[0]
        chosen = {"train": list(range(len(caps))), "eval": [i for i in range(len(caps)) if rs.emoji_eval(i)]}
        for s, style, images in (("train", "google", google), ("eval", "twitter", twitter)):
            for i in pick(chosen[s], cap(s), rng):
                path, rel = media(s, f"emoji-{style}-{i:04d}", "png")
                save_png(resize(images[i], cfg.image_size), path)
                c = caps[i]
                add(s, f"emoji-{style}-{i:04d}", rel, c["name"], style=style, index=i, codepoints=c["codepoints"],
                    category=c["category"])  # fmt: skip
    else:
        clips, caps, splits = rs.animated_emoji(data)
        frames = np.linspace(0, clips.shape[1] - 1, cfg.video_frames).round().astype(int)
        for s in SPLITS:
            for i in pick(list(np.flatnonzero(splits == s)), cap(s), rng):
                path, rel = media(s, f"animated-{i:04d}", "npz")
                save_npz(np.stack([resize(f, cfg.video_size) for f in clips[i][frames]]), path)  # [T, H, W, 3]
                c = caps[i]
                add(s, f"animated-{i:04d}", rel, c["name"], index=int(i), codepoints=c["codepoints"],
                    category=c["category"], frames=frames.tolist())  # fmt: skip
    return items


def conversation(
    task: str, item: Item, rng: np.random.Generator, target: Item | None = None, chain: bool = False
) -> dict:
    """One SFT conversation: x -> text, text -> x, or (with a target) x -> y of the same label; `chain`:
    the x -> y answer is "label. " then y."""
    src, _, dst = task.partition("2")
    prompt = str(rng.choice(PROMPTS[task])).format(text=item.text)
    if src == "text":
        messages = [{"role": "user", "text": prompt}, {"role": "assistant", MODALITY[dst]: item.path}]
    else:
        answer = [{"text": item.text}] if dst == "text" else [{MODALITY[dst]: target.path}]
        answer = [{"text": f"{item.text}. "}, *answer] if chain else answer
        messages = [{"role": "user", "text": prompt + " "}, {"role": "user", MODALITY[src]: item.path},
                    *({"role": "assistant", **a} for a in answer)]  # fmt: skip
    meta = {"task": task, "prompt": prompt, **item.meta}
    if target is not None:
        meta["target_id"] = target.id
    return {"messages": messages, "meta": meta}


def document(family: str, a: Item, b: Item, rng: np.random.Generator) -> dict:
    """An interleaved document: wording, a's media, wording, b's media, wording."""
    texts = DOCS[family][int(rng.integers(len(DOCS[family])))]
    segments = []
    for text, it in zip(texts, (a, b, None), strict=True):
        segments += [{"text": text.format(text=a.text)}] if text else []
        segments += [{MODALITY[it.kind]: it.path}] if it else []
    return {"segments": segments, "meta": {"items": [a.meta, b.meta]}}


def split_corpora(by_kind: dict[str, list[Item]], split: str, names: dict, cfg: RealCorpusConfig, skipped: list):
    """The conversations and interleaved documents of one split; `names` holds each emoji kind's name pool."""
    rng = np.random.default_rng([cfg.seed, 200 + SPLITS.index(split)])
    digits: dict[int, list[Item]] = {}
    for it in by_kind.get("digit_image", []):
        digits.setdefault(it.meta["digit"], []).append(it)
    statics = {it.meta["codepoints"]: it for it in by_kind.get("emoji", [])}
    sft, docs = [], []
    for kind, items in by_kind.items():
        for it in items:
            same = digits.get(it.meta.get("digit"), []) if kind == "digit_speech" else []
            for task in TASKS[kind]:
                if task == "digit_speech2digit_image" and not same:
                    skipped.append(
                        {"set": "fsdd", "id": it.id, "reason": f"{task}: no {split} MNIST image of that digit"}
                    )
                    continue
                for _ in range(cfg.repeats.get(task, 1) if split == "train" else 1):
                    target = same[int(rng.integers(len(same)))] if task == "digit_speech2digit_image" else None
                    sft.append(conversation(task, it, rng, target, chain=task in cfg.chain))
                if split == "eval" and task in CANDIDATE_TASKS:  # the true name among seeded others, shuffled
                    # distractors must be names the task's answers never taught: every static name is a
                    # train answer (google style), but an animated clip's name is a train answer only for
                    # train clips, so a held-out clip's distractors are other held-out clips' names (a pool
                    # of train-clip names was picked over the truth: 0% against 10% chance)
                    pool = names[kind] if kind == "emoji" else sorted({i.text for i in items})
                    others = [n for n in pool if n != it.text]
                    picked = rng.choice(others, min(len(others), cfg.emoji_candidates - 1), replace=False).tolist()
                    sft[-1]["meta"]["candidates"] = [str(n) for n in rng.permutation([it.text, *picked])]
            if same:
                docs.append(document("digit", same[int(rng.integers(len(same)))], it, rng))
            if kind == "emoji_video" and it.meta["codepoints"] in statics:
                docs.append(document("emoji", statics[it.meta["codepoints"]], it, rng))
    return [sft[int(i)] for i in rng.permutation(len(sft))], [docs[int(i)] for i in rng.permutation(len(docs))]


def shakespeare(cfg: RealCorpusConfig) -> list[str]:
    """Paragraphs of the first `text_chars` characters of tinyshakespeare: plain English beside the labels."""
    path = Path(cfg.data) / "text" / "tinyshakespeare" / "input.txt"
    if not cfg.text_chars or not path.is_file():
        return []
    return [p for p in path.read_text(encoding="utf-8")[: cfg.text_chars].split("\n\n") if p.strip()]


def generate(cfg: RealCorpusConfig) -> dict:
    """Write the real corpus under cfg.out; returns the index (also written as out/index.json)."""
    check(cfg)
    rs.require(Path(cfg.data))
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    clear_corpus_outputs(out, list(MODALITY))
    skipped: list[dict] = []
    items: dict[str, list[Item]] = {}
    for name in tqdm([n for n in SETS if n in cfg.sets], desc="real corpus", unit="set"):
        # One stream per set: capping or leaving out one set leaves the other sets' bytes alone.
        items[SETS[name]] = build_set(
            name, cfg, out, np.random.default_rng([cfg.seed, list(SETS).index(name)]), skipped
        )
    names = {k: sorted({it.text for it in its}) for k, its in items.items()}
    corpora, texts = [], []
    for split in SPLITS:
        by_kind = {k: [it for it in its if it.meta["split"] == split] for k, its in items.items()}
        for kind, its in by_kind.items():
            rows = [{MODALITY[kind]: it.path, "text": it.text, "meta": it.meta} for it in its]
            corpora.append(write_corpus_file(out, kind, split, "pair", rows))
        sft, docs = split_corpora(by_kind, split, names, cfg, skipped)
        corpora.append(write_corpus_file(out, "interleaved", split, "interleaved", docs))
        corpora.append(write_corpus_file(out, "sft", split, "conversation", sft))
        if split == "train":
            texts = [it.text for its in by_kind.values() for it in its] + [c["meta"]["prompt"] for c in sft]
            texts += [s["text"] for d in docs for s in d["segments"] if "text" in s] + shakespeare(cfg)
            corpora.append(write_corpus_file(out, "text", split, "text", [{"text": t} for t in texts]))
    (out / "text.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    index = {
        "data": str(Path(cfg.data).resolve()),
        "seed": cfg.seed,
        "config": asdict(cfg),
        "counts": {k: {s: sum(it.meta["split"] == s for it in its) for s in SPLITS} for k, its in items.items()},
        "corpora": corpora,
        "skipped": skipped,
        "skipped_counts": {s: sum(x["set"] == s for x in skipped) for s in sorted({x["set"] for x in skipped})},
    }
    (out / "index.json").write_text(json.dumps(index, indent=1) + "\n", encoding="utf-8")
    return index


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="the real sets folder (overrides data=)")
    ap.add_argument("--out", default=None, help="output folder (overrides out=)")
    ap.add_argument("--seed", type=int, default=None, help="overrides seed=")
    ap.add_argument("--config", default=None, help="YAML with RealCorpusConfig keys")
    ap.add_argument("overrides", nargs="*", help="key=value, e.g. caps.mnist_train=500 sets=[mnist,fsdd]")
    args = ap.parse_args(argv)
    extra = [f"{k}={v}" for k, v in (("data", args.data), ("out", args.out), ("seed", args.seed)) if v is not None]
    cfg = load_config(RealCorpusConfig, args.config, [*args.overrides, *extra])
    index = generate(cfg)
    for c in index["corpora"]:
        print(f"  {c['path']:<30} {c['format']:<13} {c['lines']:6d} lines")
    for s, n in index["skipped_counts"].items():
        print(f"  skipped {n} items of {s} (reasons in index.json)")
    print(f"real corpus (seed {cfg.seed}) from {index['data']} -> {cfg.out}")


if __name__ == "__main__":
    run(main)
