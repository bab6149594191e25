"""The built-in demo corpus: a small world of scenes, melodies, sounds, speech and videos (issue 9).

    python -m omniseq.data.demo_corpus --out runs/demo/corpus --seed 0 --scale small [key=value ...]

No downloaded data: every item is rendered here (omniseq.data.demo_media) and carries machine-readable
ground truth, so the evaluation harness can read attributes back from generated media and score them
(omniseq.eval). The same seed and config give byte-identical files. Written under `--out`:

    media/{image,melody,sound,speech,video}/{train,eval}/<id>.{png,wav,npz|mp4}
    {image,melody,sound,speech,video}.{train,eval}.jsonl  pairs  {"image": path, "text": ..., "meta": {...}}
    interleaved.{train,eval}.jsonl                        {"segments": [...], "meta": {"items": [...]}}
    sft.{train,eval}.jsonl                                {"messages": [... with "role"], "meta": {...}}
    text.train.jsonl, text.txt                            every caption and prompt (text tokenizer training)
    index.json                                            config, counts, corpora with their formats, world

The line formats are those of omniseq.data.corpus (pair / interleaved / conversation / text); the extra
"meta" key holds the ground truth and is ignored by the readers. docs/demo_world.md lists every field.
Speech needs espeak-ng; without it the speech corpus and speech conversations are left out (and said so).
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from omniseq.cli import run
from omniseq.config import ConfigError, load_config
from omniseq.data import demo_media as dm
from omniseq.data.corpus import clear_corpus_outputs, write_corpus_file

KINDS = ("image", "melody", "sound", "speech", "video")
MODALITY = {"image": "image", "melody": "audio", "sound": "audio", "speech": "audio", "video": "video"}
# Kinds held out by caption: their captions are compositions (attributes, note sequences), so a held-out item
# must be a composition the model never trained on. Sounds and speech name a class or one of 40 utterances:
# they are held out by recording (other parameters, other voices), since a class never heard cannot be named.
SPLIT_BY_CAPTION = ("image", "melody", "video")
MIN_SIZE = 24  # pixels: the smallest scene or frame where every shape at both sizes has its own mask
SCALES = {  # items per kind; interleaved documents are drawn from these items
    "tiny": dict(image=24, melody=12, sound=14, speech=10, video=8, interleaved=8),
    "small": dict(image=2000, melody=2000, sound=500, speech=300, video=300, interleaved=300),
    "medium": dict(image=20000, melody=10000, sound=5000, speech=3000, video=3000, interleaved=3000),
}
PROMPTS = {  # direction -> user wordings; "{text}" is the item's text (AnyGPT varies its instructions)
    "image2text": ("what is in this picture?", "describe the image."),
    "text2image": ("draw {text}.", "show me {text}."),
    "melody2text": ("what melody is this?", "which notes are played?"),
    "text2melody": ("hum {text}.", "play the notes {text}."),
    "sound2text": ("describe this sound.", "what sound is this?"),
    "text2sound": ("make the sound of {text}.", "play {text}."),
    "speech2text": ("what is said here?", "transcribe this."),
    "text2speech": ("say {text}.", "speak the words: {text}."),
    "video2text": ("what is moving?", "describe the video."),
    "text2video": ("show {text}.", "make a video of {text}."),
}
LEAD_INS = {  # interleaved documents: how the text around each media item reads
    "image": "Here is {text}: ",
    "melody": "The notes {text} sound like this: ",
    "sound": "This is {text}: ",
    "speech": 'Someone says "{text}": ',
    "video": "A clip of {text}: ",
}


@dataclass
class DemoConfig:
    scale: str = "tiny"  # item counts preset: tiny (CI smoke test, seconds) | small (CPU demo) | medium
    seed: int = 0  # fixes every byte of the corpus and the train/eval split
    counts: dict[str, int] = field(default_factory=dict)  # per-kind overrides of the preset, e.g. counts.image=50
    eval_fraction: float = 0.1  # share of each kind held out for evaluation; scenes, melodies, videos by caption
    image_size: int = 32  # square scenes; configs/tokenizers/image_tiny.yaml works at 32
    max_objects: int = 1  # scenes hold 1..max_objects shapes of distinct colours in distinct cells
    note_seconds: float = 0.25  # length of one melody note
    min_notes: int = 3  # notes per melody, inclusive range
    max_notes: int = 5
    video_frames: int = 4  # frames per clip: 2 up to what keeps the moving shape in the frame (6 at size 32)
    video_size: int = 32  # square frames
    video_format: str = "npz"  # npz: exact uint8 [T, H, W, 3] under key "frames" | mp4: H.264 via PyAV
    speech: str = "auto"  # auto: when espeak-ng is installed | always: fail without it | never


@dataclass
class Item:
    kind: str
    id: str
    path: str  # media path relative to the output folder
    text: str  # caption, note names, description, transcript
    meta: dict  # ground truth (also holds id, kind and split)


def item_counts(cfg: DemoConfig) -> dict[str, int]:
    if cfg.scale not in SCALES:
        raise ConfigError(f"scale: expected one of {list(SCALES)}, got {cfg.scale!r}")
    counts = dict(SCALES[cfg.scale])
    unknown = set(cfg.counts) - set(counts)
    if unknown:
        raise ConfigError(f"counts: unknown kinds {sorted(unknown)}; expected some of {list(counts)}")
    counts.update(cfg.counts)
    return counts


def speech_enabled(cfg: DemoConfig) -> bool:
    if cfg.speech not in ("auto", "always", "never"):
        raise ConfigError(f"speech: expected auto, always or never, got {cfg.speech!r}")
    found = dm.espeak_binary() is not None
    if cfg.speech == "always" and not found:
        raise ConfigError("speech=always but espeak-ng is not installed (apt-get install espeak-ng)")
    return cfg.speech != "never" and found


def held_out(keys: list[str], fraction: float, rng: np.random.Generator) -> set[int]:
    """Indices held out: whole groups of equal keys, in a seeded order, until ceil(n * fraction) items.

    Scenes, melodies and videos are drawn from small combinatorial worlds (432 scenes of one object), so an
    item-level split held out many captions the model had trained on (105 of 200 eval scenes, 94 of 200
    melodies in the small demo). Grouping by caption makes every held-out caption one the model never saw.
    At least one group is held out and at least one kept when there are two or more groups; none otherwise.
    """
    groups: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    if len(groups) < 2:
        return set()
    order = list(groups)
    target = math.ceil(len(keys) * fraction)
    held: set[int] = set()
    for j in rng.permutation(len(order))[: len(order) - 1]:  # never every group: training keeps one
        if held and len(held) >= target:
            break
        held.update(groups[order[int(j)]])
    return held


def make_item(kind: str, i: int, rng: np.random.Generator, cfg: DemoConfig, out: Path) -> Item:
    """Render item i of `kind` into out/media/<kind>/ (moved into its split's folder once the split is known)."""
    ident = f"{kind}-{i:06d}"
    ext = {"image": "png", "video": cfg.video_format}.get(kind, "wav")
    rel = f"media/{kind}/{ident}.{ext}"
    path = out / rel
    if kind == "image":
        image, objects = dm.render_scene(rng, cfg.image_size, int(rng.integers(1, cfg.max_objects + 1)))
        dm.save_png(image, path)
        text, meta = dm.describe_objects(objects), {"objects": objects}
    elif kind == "melody":
        notes = dm.draw_melody(rng, cfg.min_notes, cfg.max_notes)
        dm.save_wav(dm.render_melody(notes, cfg.note_seconds), path)
        text, meta = " ".join(notes), {"notes": notes, "note_seconds": cfg.note_seconds}
    elif kind == "sound":
        sound = str(rng.choice(list(dm.SOUNDS)))
        wave, params = dm.render_sound(rng, sound)
        dm.save_wav(wave, path)
        text, meta = str(rng.choice(dm.SOUNDS[sound])), {"sound": sound, **params}
    elif kind == "speech":
        text = str(rng.choice(dm.speech_texts()))
        voice = dm.draw_voice(rng)
        dm.save_wav(dm.speak(text, **voice), path)
        meta = {"transcript": text, **voice}
    else:
        clip, meta = dm.render_video(rng, cfg.video_frames, cfg.video_size)
        (dm.save_npz if cfg.video_format == "npz" else dm.save_mp4)(clip, path)
        text = dm.caption_video(meta)
    return Item(kind, ident, rel, text, {"id": ident, "kind": kind, **meta})


def conversations(item: Item, rng: np.random.Generator) -> list[dict]:
    """Both directions of one item as SFT conversations: x -> text and text -> x."""
    media = {MODALITY[item.kind]: item.path}
    out = []
    for direction in (f"{item.kind}2text", f"text2{item.kind}"):
        prompt = str(rng.choice(PROMPTS[direction])).format(text=item.text)
        if direction.endswith("2text"):
            messages = [{"role": "user", "text": prompt + " "}, {"role": "user", **media},
                        {"role": "assistant", "text": item.text}]  # fmt: skip
        else:
            messages = [{"role": "user", "text": prompt}, {"role": "assistant", **media}]
        out.append({"messages": messages, "meta": {"task": direction, "prompt": prompt, **item.meta}})
    return out


def interleaved(items: list[Item], rng: np.random.Generator) -> dict:
    """One document mixing 2-4 items: lead-in text, media, lead-in text, media, ..."""
    chosen = [items[int(i)] for i in rng.choice(len(items), min(len(items), int(rng.integers(2, 5))), replace=False)]
    segments = []
    for it in chosen:
        segments += [{"text": LEAD_INS[it.kind].format(text=it.text)}, {MODALITY[it.kind]: it.path}]
    return {"segments": segments, "meta": {"items": [it.meta for it in chosen]}}


def document_of(line: dict) -> list[dict]:
    """The segment objects (omniseq.document.segment_from_json form) of any corpus line written here."""
    if "segments" in line:
        return line["segments"]
    if "messages" in line:
        return line["messages"]
    media = [{k: line[k]} for k in ("image", "audio", "video") if k in line]
    return [*media, {"text": line["text"]}]


def generate(cfg: DemoConfig, out: str | Path) -> dict:
    """Write the demo corpus under `out`; returns the index (also written as out/index.json)."""
    out = Path(out)
    counts = item_counts(cfg)
    if cfg.video_format not in ("npz", "mp4"):
        raise ConfigError(f"video_format: expected npz or mp4, got {cfg.video_format!r}")
    if not 1 <= cfg.max_objects <= min(len(dm.COLOURS), len(dm.POSITIONS)):
        raise ConfigError(f"max_objects: expected 1..{len(dm.COLOURS)}, got {cfg.max_objects}")
    if not 1 <= cfg.min_notes <= cfg.max_notes:
        raise ConfigError(f"min_notes/max_notes: expected 1 <= min <= max, got {cfg.min_notes}, {cfg.max_notes}")
    if not 0 < cfg.eval_fraction < 1:
        raise ConfigError(f"eval_fraction: expected a share between 0 and 1, got {cfg.eval_fraction}")
    for key in ("image_size", "video_size"):  # below 24 pixels two of the 8 shape-and-size masks coincide
        if getattr(cfg, key) < MIN_SIZE:
            raise ConfigError(f"{key}: expected at least {MIN_SIZE} pixels, got {getattr(cfg, key)}")
    most = 1 + (cfg.video_size - dm.shape_sides(cfg.video_size)["large"]) // dm.VIDEO_STEP
    if not 2 <= cfg.video_frames <= most:  # a direction needs two frames; the shape must stay inside the frame
        raise ConfigError(f"video_frames: expected 2..{most} at video_size {cfg.video_size}, got {cfg.video_frames}")
    clear_corpus_outputs(out, KINDS)
    kinds = [k for k in KINDS if k != "speech" or speech_enabled(cfg)]
    notes = [] if "speech" in kinds else ["speech: left out (espeak-ng not installed or speech=never)"]
    splits: dict[str, dict[str, list[Item]]] = {s: {k: [] for k in kinds} for s in ("train", "eval")}
    bar = tqdm(total=sum(counts[k] for k in kinds), desc="demo corpus", unit="item")
    for kind in kinds:
        for split in ("train", "eval"):
            (out / "media" / kind / split).mkdir(parents=True, exist_ok=True)
        # One stream per kind: changing one kind's count leaves the other kinds' bytes alone.
        rng = np.random.default_rng([cfg.seed, KINDS.index(kind)])
        items = []
        for i in range(counts[kind]):
            items.append(make_item(kind, i, rng, cfg, out))
            bar.update()
        keys = [it.text if kind in SPLIT_BY_CAPTION else it.id for it in items]
        # by the kind's place in KINDS, not in `kinds`: the split must not depend on whether speech is made
        held = held_out(keys, cfg.eval_fraction, np.random.default_rng([cfg.seed, 100 + KINDS.index(kind)]))
        for i, item in enumerate(items):
            split = "eval" if i in held else "train"
            # media/<kind>/<split>/: the tokenizers train on the train folder and never see a held-out item
            moved = f"media/{kind}/{split}/{Path(item.path).name}"
            (out / item.path).rename(out / moved)
            item.path = moved
            item.meta["split"] = split
            splits[split][kind].append(item)
    bar.close()

    corpora = []
    texts: list[str] = []
    for split, by_kind in splits.items():
        rng = np.random.default_rng([cfg.seed, 200 + (split == "eval")])
        sft: list[dict] = []
        for kind, items in by_kind.items():
            rows = [{MODALITY[kind]: it.path, "text": it.text, "meta": it.meta} for it in items]
            corpora.append(write_corpus_file(out, kind, split, "pair", rows))
            for it in items:
                sft += conversations(it, rng)
        everything = [it for items in by_kind.values() for it in items]
        n_docs = (
            counts["interleaved"] if split == "train" else max(1, math.ceil(counts["interleaved"] * cfg.eval_fraction))
        )
        docs = [interleaved(everything, rng) for _ in range(n_docs)] if len(everything) >= 2 else []
        corpora.append(write_corpus_file(out, "interleaved", split, "interleaved", docs))
        corpora.append(write_corpus_file(out, "sft", split, "conversation", sft))
        if split == "train":
            texts = [it.text for it in everything] + [c["meta"]["prompt"] for c in sft]
            texts += [s["text"] for d in docs for s in d["segments"] if "text" in s]
            corpora.append(write_corpus_file(out, "text", split, "text", [{"text": t} for t in texts]))
    (out / "text.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    index = {
        "config": asdict(cfg),
        "counts": {k: {s: len(splits[s][k]) for s in splits} for k in kinds},
        "corpora": corpora,
        "notes": notes,
        "world": {
            "colours": dm.COLOURS, "shapes": dm.SHAPES, "sizes": dm.SIZES, "positions": dm.POSITIONS,
            "notes": list(dm.NOTES), "sounds": list(dm.SOUNDS), "directions": dm.DIRECTIONS,
            "speech_texts": dm.speech_texts() if "speech" in kinds else [], "sample_rate": dm.SAMPLE_RATE,
        },
    }  # fmt: skip
    (out / "index.json").write_text(json.dumps(index, indent=1) + "\n", encoding="utf-8")
    return index


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="output folder")
    ap.add_argument("--seed", type=int, default=None, help="overrides seed=")
    ap.add_argument("--scale", default=None, help=f"one of {list(SCALES)} (overrides scale=)")
    ap.add_argument("--config", default=None, help="YAML with DemoConfig keys")
    ap.add_argument("overrides", nargs="*", help="key=value, e.g. image_size=64 counts.image=100")
    args = ap.parse_args(argv)
    extra = [f"seed={args.seed}"] * (args.seed is not None) + [f"scale={args.scale}"] * (args.scale is not None)
    cfg = load_config(DemoConfig, args.config, [*args.overrides, *extra])
    index = generate(cfg, args.out)
    for c in index["corpora"]:
        print(f"  {c['path']:<26} {c['format']:<13} {c['lines']:6d} lines")
    for note in index["notes"]:
        print(note)
    print(f"demo corpus ({cfg.scale}, seed {cfg.seed}) -> {args.out}")


if __name__ == "__main__":
    run(main)
