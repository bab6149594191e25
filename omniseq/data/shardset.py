"""The shard format shared by the builder (shards.py) and the loader (loader.py).

A shard set is a folder:

    manifest.json            format, vocab_hash, config_hash, per-shard and total counts, skips, the resolved config
    name-000000.tar          WebDataset tar: per document `<key>.tokens.npy` (int32 [n]),
    name-000000.stats.json   `<key>.spans.npy` (int32 [s, 3]: start, end, MODALITY_ID),
    ...                      optional `<key>.loss.npy` (uint8 [n]), `<key>.json` (where it came from)

`loss.npy` is written only when some target is masked: absent means every token after <bos> is a
target (plain pretraining documents), which keeps the common case one member smaller.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import webdataset as wds
from webdataset.tariterators import tar_file_iterator

from omniseq.document import TokenSequence
from omniseq.vocab import VocabLayout, canonical_json

SHARDSET_FORMAT = "omniseq-shards/1"
MANIFEST = "manifest.json"


class DataError(ValueError):
    """Data that cannot be used (corpus line, shard, manifest); the message names where."""


class ShardError(DataError):
    """A shard (or a member of one) that cannot be read; names the shard and the sample key."""


@dataclass
class Doc:
    """One document as the loader needs it."""

    ids: np.ndarray  # int32 [n]
    modality: np.ndarray  # int8 [n]: MODALITY_ID per token from the spans (structure tokens count as text)
    loss: np.ndarray | None  # uint8 [n], None = every target counts
    media_spans: np.ndarray  # int32 [m, 2]: start, end of media spans (never split by the packer)

    def __len__(self) -> int:
        return len(self.ids)


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def encode_sample(key: str, seq: TokenSequence, meta: dict) -> dict:
    sample = {
        "__key__": key,
        "tokens.npy": _npy(seq.ids.astype(np.int32)),
        "spans.npy": _npy(seq.spans.astype(np.int32).reshape(-1, 3)),
        "json": json.dumps(meta, sort_keys=True).encode(),
    }
    if not seq.loss_mask[1:].all():
        sample["loss.npy"] = _npy(seq.loss_mask.astype(np.uint8))
    return sample


# The header np.save writes for the arrays of this format; np.load parses every header with
# ast.literal_eval (~100 us, a third of the loader's time per document), this takes ~3 us.
_NPY_HEADER = re.compile(
    rb"\{'descr': '([<|][iu][1248])', 'fortran_order': False, 'shape': \((\d+),(?: (\d+))?\), \} *\n"
)


def _load_npy(data: bytes, what: str) -> np.ndarray:
    if data[:8] == b"\x93NUMPY\x01\x00":
        end = 10 + int.from_bytes(data[8:10], "little")
        m = _NPY_HEADER.fullmatch(data[10:end])
        if m:
            shape = tuple(int(x) for x in m.groups()[1:] if x is not None)
            dtype = np.dtype(m[1].decode())
            if len(data) - end != dtype.itemsize * int(np.prod(shape)):
                raise ShardError(f"{what}: {len(data) - end} data bytes do not hold {dtype} {shape}")
            return np.frombuffer(data, dtype, offset=end).reshape(shape)
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ShardError(f"{what}: not a readable .npy ({e})") from None


def decode_sample(sample: dict, where: str, vocab_size: int) -> Doc:
    """Members of one sample -> Doc, validating dtypes, shapes, spans and the id range."""
    key = f"{where}:{sample.get('__key__')}"
    for member in ("tokens.npy", "spans.npy"):
        if member not in sample:
            raise ShardError(f"{key}: member {member} is missing")
    ids = _load_npy(sample["tokens.npy"], f"{key}.tokens.npy")
    spans = _load_npy(sample["spans.npy"], f"{key}.spans.npy")
    if ids.dtype != np.int32 or ids.ndim != 1 or len(ids) < 2:
        raise ShardError(f"{key}.tokens.npy: expected int32 [n >= 2], got {ids.dtype} {ids.shape}")
    if spans.ndim != 2 or spans.shape[1] != 3 or not np.issubdtype(spans.dtype, np.integer):
        raise ShardError(f"{key}.spans.npy: expected int32 [s, 3], got {spans.dtype} {spans.shape}")
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= vocab_size:
        raise ShardError(f"{key}.tokens.npy: ids in [{lo}, {hi}] fall outside the vocabulary [0, {vocab_size})")
    n = len(ids)
    if len(spans) and (
        (spans[:, 0] < 0).any()
        or (spans[:, 1] > n).any()
        or (spans[:, 0] >= spans[:, 1]).any()
        or (spans[:, 2] < 0).any()
        or (spans[:, 2] > 3).any()
    ):
        raise ShardError(f"{key}.spans.npy: spans must satisfy 0 <= start < end <= {n} and modality in 0..3")
    loss = None
    if "loss.npy" in sample:
        loss = _load_npy(sample["loss.npy"], f"{key}.loss.npy")
        if loss.shape != ids.shape:
            raise ShardError(f"{key}.loss.npy: shape {loss.shape} differs from tokens {ids.shape}")
    modality = np.zeros(n, dtype=np.int8)
    for start, end, mod in spans:
        modality[start:end] = mod
    media = spans[spans[:, 2] > 0, :2].astype(np.int32)
    return Doc(ids, modality, loss, media)


class _NotPlainTar(Exception):
    """A member type the fast reader does not handle (pax, GNU long names): use tarfile instead."""


def _plain_members(data: bytes, url: str) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of a ustar archive of regular files, as the builder writes them.

    Python's tarfile spends ~80 us per member in generic header handling, which alone would cap the
    loader below its 1M tokens/s goal (three members per document); our own shards need only this
    much of the format. Headers are checksummed, so corruption is still caught; any other member
    type raises _NotPlainTar and the caller falls back to tarfile.
    """
    pos, n = 0, len(data)
    while pos + 512 <= n:
        header = data[pos : pos + 512]
        if header.count(0) == 512:
            return  # end-of-archive marker
        try:
            size, chksum = (
                int(header[124:136].strip(b"\0 ") or b"0", 8),
                int(header[148:156].strip(b"\0 "), 8),
            )
        except ValueError:
            raise ShardError(f"{url}: corrupt tar header at byte {pos}") from None
        if chksum != sum(header[:148]) + 256 + sum(header[156:]):
            raise ShardError(f"{url}: tar header checksum mismatch at byte {pos} (corrupt shard)")
        if header[156:157] not in (b"0", b"\0"):
            raise _NotPlainTar
        name = header[:100].rstrip(b"\0").decode()
        prefix = header[345:500].rstrip(b"\0").decode() if header[257:262] == b"ustar" else ""
        start = pos + 512
        if start + size > n:
            raise ShardError(f"{url}: truncated tar: member {name} needs {start + size - n} more bytes")
        yield (f"{prefix}/{name}" if prefix else name), data[start : start + size]
        pos = start + (size + 511) // 512 * 512
    if pos != n:
        raise ShardError(f"{url}: truncated tar: {n - pos} stray bytes at the end")


def _tarfile_members(data: bytes, url: str) -> Iterator[tuple[str, bytes]]:
    for member in tar_file_iterator(io.BytesIO(data)):
        yield member["fname"], member["data"]


def iter_shard(url: str) -> Iterator[dict]:
    """Raw samples (dicts of member bytes) of one tar, in order. A truncated or corrupt tar raises
    ShardError naming it; `url` may be a local path or anything webdataset's gopen opens (pipe:...)."""
    try:
        with wds.gopen(url) as stream:
            data = stream.read()
    except OSError as e:
        raise ShardError(f"{url}: cannot read shard ({e})") from None
    members: list[tuple[str, bytes]] = []
    broken: ShardError | None = None
    try:
        for m in _plain_members(data, url):
            members.append(m)
    except _NotPlainTar:
        members = []
        try:
            for m in _tarfile_members(data, url):
                members.append(m)
        except (tarfile.TarError, EOFError, OSError) as e:
            broken = ShardError(f"{url}: unreadable tar, truncated or corrupt ({e})")
    except ShardError as e:
        broken = e
    samples = list(_group(members, url))
    if broken is not None:
        samples = samples[:-1]  # the sample at the break may lack members: never yield it
    yield from samples
    if broken is not None:
        raise broken


def _group(members: Iterator[tuple[str, bytes]], url: str) -> Iterator[dict]:
    current: dict | None = None
    for fname, data in members:
        key, _, ext = fname.partition(".")
        if current is not None and key != current["__key__"]:
            yield current
            current = None
        if current is None:
            current = {"__key__": key}
        if ext in current:
            raise ShardError(f"{url}: member {fname} appears twice")
        current[ext] = data
    if current is not None:
        yield current


def read_manifest(directory: str | Path, layout: VocabLayout | None = None) -> dict:
    """A shard set's manifest; with `layout`, fail unless the set was built for that vocabulary."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"shard set manifest not found: {path} (build the shards first)")
    try:
        m = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(m, dict) or m.get("format") != SHARDSET_FORMAT:
        raise DataError(
            f"{path}: format {m.get('format') if isinstance(m, dict) else m!r}, expected {SHARDSET_FORMAT!r}"
        )
    for field in ("vocab_hash", "shards"):
        if field not in m:
            raise DataError(f"{path}: field {field!r} is missing")
    _check_shard_entries(m["shards"], path)
    if layout is not None:
        layout.check_hash(m["vocab_hash"], f"shard set {directory}")
    return m


def _check_shard_entries(shards, path: Path) -> None:
    """The loader finds each shard's samples by these two fields: a bad entry would otherwise surface later as a
    bare KeyError or TypeError far from the manifest."""
    if not isinstance(shards, list):
        raise DataError(f"{path}: field 'shards': expected a list of {{file, samples}} objects, got {shards!r:.80}")
    for i, s in enumerate(shards):
        if not isinstance(s, dict):
            raise DataError(f"{path}: shards[{i}]: expected an object with 'file' and 'samples', got {s!r:.80}")
        missing = [f for f in ("file", "samples") if f not in s]
        if missing:
            raise DataError(f"{path}: shards[{i}].{missing[0]} is missing (each shard needs 'file' and 'samples')")
        file, samples = s["file"], s["samples"]
        if not isinstance(file, str) or not file:
            raise DataError(f"{path}: shards[{i}].file: expected a tar file name, got {file!r}")
        if type(samples) is not int or samples < 0:  # not isinstance: true is an int too
            raise DataError(f"{path}: shards[{i}].samples: expected an integer >= 0, got {samples!r}")


def manifest_fingerprint(m: dict) -> str:
    """What decides which document sits at each sample number of a shard set: its shards' files and sample counts,
    its vocabulary and its build (`config_hash`: config and corpus contents; a manifest written before the field
    existed has its resolved config instead). A stream state saved over one build means other documents in
    another."""
    unused = ("workers", "out", "max_skipped")  # as in the builder's config_hash
    build = m.get("config_hash") or {k: v for k, v in m.get("config", {}).items() if k not in unused}
    d = {"shards": [[s["file"], s["samples"]] for s in m["shards"]], "vocab_hash": m["vocab_hash"], "build": build}
    return hashlib.sha256(canonical_json(d).encode()).hexdigest()[:16]
