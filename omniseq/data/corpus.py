"""Corpus readers: JSONL documents that point at media files -> lists of `Segment`s (and the one writer the
corpus builders, omniseq.data.demo_corpus and omniseq.data.real_corpus, share).

One JSON object per line; media paths are relative to the JSONL file's folder (docs/data.md has
examples of every format):

    pair          {"image": "cat.png", "text": "a cat"}          (or "audio" / "video"; or "image_codes")
    interleaved   {"segments": [{"text": "..."}, {"image": "a.png"}, ...]}
    conversation  {"messages": [{"role": "user", "text": "..."}, {"role": "assistant", "image": "x.png"}]}
    text          {"text": "..."}

Any media segment may give its codes inline as `{"<modality>_codes": [[...]]}` instead of a path: a
codes-only corpus needs no media tokenizer (tests, benchmarks, pre-tokenised data).

Pairs become one direction each, x->text or text->x, chosen with `PairConfig.p_x_to_text` (AnyGPT
draws 0.5) from a generator seeded by (seed, corpus name, line): the choice is made when shards are
built, not when they are read, because the loader only sees token ids and has no text tokenizer to
render a template with; a rebuilt shard set with another seed gives the other directions. `both=true`
writes both directions of every pair instead.
"""

from __future__ import annotations

import itertools
import json
import random
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from omniseq.data.shardset import DataError
from omniseq.document import Segment, segment_from_json
from omniseq.vocab import MEDIA

FORMATS = ("pair", "interleaved", "conversation", "text")


class CorpusError(DataError):
    """A corpus line that cannot be used; the message names file:line and the field."""


@dataclass
class PairConfig:
    p_x_to_text: float = 0.5  # probability that a pair becomes x->text (captioning, ASR) rather than text->x
    both: bool = False  # write both directions of every pair (ignores p_x_to_text)
    # Templates: `{media}` marks where the media span goes, `{text}` the pair's text, `{modality}` the
    # media's name. Each document picks one wording uniformly (AnyGPT varies its instruction wordings).
    x_to_text: list[str] = field(
        default_factory=lambda: ["{media}\n{text}", "Describe the {modality}: {media}\n{text}"]
    )
    text_to_x: list[str] = field(
        default_factory=lambda: ["{text}\n{media}", "Generate the {modality} for: {text}\n{media}"]
    )


@dataclass
class CorpusConfig:
    path: str = ""  # the JSONL file
    format: str = "pair"  # pair | interleaved | conversation | text
    name: str = ""  # short name used in sample keys and reports; default: the file's stem
    # copies of every line in the shard set (>= 1): upsamples a small corpus in a mixture, e.g. ESC-10's 238
    # clips beside 3,000 MNIST digits; each copy of a pair draws its own direction
    repeat: int = 1


@dataclass
class Record:
    """One usable document of a corpus."""

    segments: list[Segment]
    where: str  # "file:line", for error messages and the sample's metadata
    direction: str = ""  # pairs: "x2t" or "t2x"


def corpus_name(cfg: CorpusConfig) -> str:
    return cfg.name or Path(cfg.path).stem


def line_index(path: str | Path) -> list[tuple[int, int]]:
    """(1-based line number, byte offset) of every non-empty line: workers seek to their slice."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"corpus file not found: {path}")
    out, pos = [], 0
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            if raw.strip():
                out.append((lineno, pos))
            pos += len(raw)
    return out


def read_line(f, offset: int, where: str) -> str:
    """The line at `offset` of the open binary file `f`."""
    f.seek(offset)
    raw = f.readline()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorpusError(f"{where}: invalid UTF-8 at byte {e.start + 1}") from None


def int_codes(value, where: str) -> np.ndarray:
    """Inline codes as int64: a rectangular nested list of JSON integers. numpy alone would truncate 3.7
    to 3 and read true or "5" as codes, hiding a corrupt line in the shards."""
    try:
        codes = np.asarray(value)
    except ValueError as e:  # ragged
        raise CorpusError(f"{where}: expected a rectangular nested list of integers ({e})") from None
    if codes.ndim == 0:
        raise CorpusError(f"{where}: expected a nested list of integers, got {value!r}")
    if codes.size == 0:
        return codes.astype(np.int64)  # an empty grid: the codec names the shape it expects
    leaves = value  # rectangular: every leaf sits `ndim` lists deep
    for _ in range(codes.ndim - 1):
        leaves = itertools.chain.from_iterable(leaves)
    bad = [x for x in leaves if type(x) is not int]  # not isinstance: true and false are ints too
    if bad:
        raise CorpusError(f"{where}: expected a nested list of integers, got {bad[0]!r}")
    if codes.dtype.kind not in "iu":
        raise CorpusError(f"{where}: codes must fit int64, got values numpy reads as {codes.dtype}")
    return codes.astype(np.int64)


def _segment(obj, base: Path, where: str) -> Segment:
    if isinstance(obj, dict):
        coded = [m for m in MEDIA if f"{m}_codes" in obj]
        if coded:
            mod = coded[0]
            extra = set(obj) - {f"{mod}_codes", "role", "loss"}
            if extra:
                raise CorpusError(f"{where}: unexpected keys {sorted(extra)} beside {mod}_codes")
            codes = int_codes(obj[f"{mod}_codes"], f"{where}.{mod}_codes")
            try:
                return Segment(mod, codes=codes, role=obj.get("role"), loss=obj.get("loss"))
            except ValueError as e:
                raise CorpusError(f"{where}: {e}") from None
    try:
        return segment_from_json(obj, base, where)
    except ValueError as e:
        raise CorpusError(str(e)) from None


def _render(template: str, media: Segment, text: str, where: str) -> list[Segment]:
    if template.count("{media}") != 1 or template.count("{text}") != 1:
        raise CorpusError(f"pair template {template!r} must hold exactly one {{media}} and one {{text}}")
    before, after = template.replace("{modality}", media.modality).split("{media}")
    parts: list[Segment] = []
    for chunk, seg in ((before, media), (after, None)):
        if chunk:
            parts.append(Segment("text", text=chunk.replace("{text}", text)))
        if seg is not None:
            parts.append(seg)
    return parts


def pair_records(obj: dict, base: Path, where: str, cfg: PairConfig, rng: random.Random) -> list[Record]:
    media_keys = [k for k in obj if k in MEDIA or k in {f"{m}_codes" for m in MEDIA}]
    if len(media_keys) != 1 or "text" not in obj:
        raise CorpusError(f"{where}: a pair needs one media field (image/audio/video or *_codes) and 'text'")
    if not isinstance(obj["text"], str) or not obj["text"]:
        raise CorpusError(f"{where}.text: expected a non-empty string")
    media = _segment({media_keys[0]: obj[media_keys[0]]}, base, where)  # its errors name the field
    directions = ["x2t", "t2x"] if cfg.both else ["x2t" if rng.random() < cfg.p_x_to_text else "t2x"]
    out = []
    for d in directions:
        wordings = cfg.x_to_text if d == "x2t" else cfg.text_to_x
        if not wordings:
            raise CorpusError(f"pair templates for direction {d} are empty")
        out.append(Record(_render(rng.choice(wordings), media, obj["text"], where), where, d))
    return out


def parse_record(line: str, cfg: CorpusConfig, pair: PairConfig, lineno: int, seed: int, copy: int = 0) -> list[Record]:
    """One JSONL line -> its documents (two for a pair with both=true); `copy` numbers the copies of a
    repeated corpus (CorpusConfig.repeat), each a pair direction of its own. Raises CorpusError."""
    where = f"{cfg.path}:{lineno}"
    base = Path(cfg.path).parent
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise CorpusError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise CorpusError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if cfg.format == "pair":
        copy_tag = f":{copy}" if copy else ""  # copy 0 keeps the seed of an unrepeated corpus
        rng = random.Random(f"{seed}:{corpus_name(cfg)}:{lineno}{copy_tag}")  # str seeds are stable across runs
        return pair_records(obj, base, where, pair, rng)
    if cfg.format == "text":
        if not isinstance(obj.get("text"), str) or not obj["text"]:
            raise CorpusError(f"{where}.text: expected a non-empty string")
        return [Record([Segment("text", text=obj["text"])], where)]
    key = "segments" if cfg.format == "interleaved" else "messages"
    items = obj.get(key)
    if not isinstance(items, list) or not items:
        raise CorpusError(f"{where}.{key}: expected a non-empty list")
    segs = [_segment(s, base, f"{where}.{key}[{i}]") for i, s in enumerate(items)]
    if cfg.format == "conversation":
        missing = [i for i, s in enumerate(segs) if s.role is None]
        if missing:
            raise CorpusError(f"{where}.messages[{missing[0]}].role: every message needs a role")
    return [Record(segs, where)]


def read_corpus(cfg: CorpusConfig, pair: PairConfig | None = None, seed: int = 0) -> Iterator[Record]:
    """Every record of a corpus, in file order (errors raise: the shard builder counts them instead)."""
    if cfg.format not in FORMATS:
        raise CorpusError(f"{cfg.path}: format {cfg.format!r}, expected one of {FORMATS}")
    with Path(cfg.path).open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                yield from parse_record(line, cfg, pair or PairConfig(), lineno, seed)


def write_corpus_file(out: Path, name: str, split: str, fmt: str, rows: list[dict]) -> dict:
    """Writes `rows` as out/<name>.<split>.jsonl, one sorted-key JSON object a line; returns its entry of the
    builder's index.json."""
    path = out / f"{name}.{split}.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
    return {"name": f"{name}.{split}", "path": path.name, "format": fmt, "split": split, "lines": len(rows)}


def clear_corpus_outputs(out: Path, kinds: list[str] | tuple[str, ...]) -> None:
    """Remove what a corpus builder writes into `out` (its JSONL files, text.txt, index.json, media/<kind>/), so
    a rebuild with fewer kinds or items leaves nothing stale that the later steps read (the image tokenizer
    trains on all of media/<kind>/train; a shard set is built wherever its JSONL exists). Other files are kept."""
    for name in (*kinds, "interleaved", "sft", "text"):
        for split in ("train", "eval"):
            (out / f"{name}.{split}.jsonl").unlink(missing_ok=True)
    for name in ("text.txt", "index.json"):
        (out / name).unlink(missing_ok=True)
    for kind in kinds:
        shutil.rmtree(out / "media" / kind, ignore_errors=True)
