"""The merged vocabulary: one integer id space shared by every modality.

Layout (docs/token_layout.md has the picture):

    [0, T)            text ids of the sentencepiece model
    [T, T+S)          special tokens, in the order of SPECIAL_TOKENS
    then one range per media codebook, in the order image, audio, video; an RVQ codebook of L layers
    of K codes takes L*K ids with layer l at offset l*K; a modality may reuse another's range
    (video frames through the image tokenizer).

Integer offsets, never string tokens: AnyGPT's `<👀123>` strings tie the data to a text tokenizer.
The layout is written as `manifest.json`; the sha256 of its canonical JSON is the *vocab hash* that
every shard set and checkpoint records, so that a mismatching pair fails loudly (see `check_hash`).

Media spans are self-describing (Emu3 and Lumina-mGPT use structure tokens the same way):
    image  <|image|> row_1 [<|row_end|>] ... row_h [<|row_end|>] <|/image|>
    audio  <|audio|> codes in the configured RVQ flattening <|/audio|>
    video  <|video|> frame_1 <|frame|> frame_2 ... frame_t <|/video|>   (each frame laid out as an image)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

MANIFEST_FORMAT = "omniseq-vocab/1"
MEDIA = ("image", "audio", "video")
MODALITIES = ("text", *MEDIA)
MODALITY_ID = {m: i for i, m in enumerate(MODALITIES)}
SPECIAL_MODALITY = -1  # value of `modality_table()` for special tokens
FLATTENINGS = ("frame", "layer", "first")
ROLES = ("system", "user", "assistant")
INT32_MAX = 2**31 - 1

SPECIAL_TOKENS = (
    "<pad>", "<bos>", "<eos>",
    "<|image|>", "<|/image|>", "<|audio|>", "<|/audio|>", "<|video|>", "<|/video|>",
    "<|row_end|>",  # end of an image row: makes the grid self-describing
    "<|frame|>",  # separates video frames
    "<|rvq_sep|>",  # separates RVQ layers in the `layer` flattening
    "<|system|>", "<|user|>", "<|assistant|>", "<|end|>",  # chat template (SFT)
    "<|uncond|>",  # replaces a dropped condition: classifier-free guidance
)  # fmt: skip
OPEN = {m: f"<|{m}|>" for m in MEDIA}
CLOSE = {m: f"<|/{m}|>" for m in MEDIA}


class VocabError(ValueError):
    """A layout that cannot be built, or a manifest that cannot be read."""


class VocabMismatchError(VocabError):
    """Two parts of a run (shards, checkpoint, tokenizers) were built for different vocabularies."""


class DecodeError(ValueError):
    """An id sequence that is not well formed; names the position and the id."""

    def __init__(self, position: int, token_id: int, message: str):
        super().__init__(f"position {position} (id {token_id}): {message}")
        self.position, self.token_id = position, token_id


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class TextSpec:
    kind: str  # "sentencepiece"
    size: int  # T: the text ids are [0, T)
    fingerprint: str = ""


@dataclass(frozen=True)
class CodebookSpec:
    """What the vocabulary needs to know about one media tokenizer."""

    modality: str  # image | audio | video
    kind: str  # registry name of the tokenizer
    codebook_size: int  # K
    num_layers: int = 1  # L: RVQ layers in use (may be fewer than the codec has)
    flatten: str = "frame"  # audio: frame | layer | first (see flatten_codes)
    grid: tuple[int, int] | None = None  # image/video: (rows, cols) of codes when fixed
    row_end: bool = False  # image/video: a <|row_end|> after every row
    rate: float = 0.0  # audio: frames per second; video: frames per second sampled
    shares: str | None = None  # reuse the id range of this modality (video -> "image")
    shares_fingerprint: str = ""  # with `shares`: the tokenizer whose codes fill that range (checked, not saved)
    fingerprint: str = ""  # sha256 of the tokenizer's config and weights
    config: dict = field(default_factory=dict)  # the tokenizer's own config, for the record
    offset: int = -1  # first id of the range; assigned by VocabLayout.build

    @property
    def layers_in_ids(self) -> int:
        """Layers that occupy ids: `first` keeps only the semantic layer (AnyGPT speech)."""
        return 1 if self.flatten == "first" else self.num_layers

    @property
    def range_size(self) -> int:
        return 0 if self.shares else self.codebook_size * self.layers_in_ids

    def tokens_per_frame(self) -> int:
        """Ids one image / video frame / audio frame occupies inside its span (no sentinels)."""
        if self.modality == "audio":
            return self.layers_in_ids
        if self.grid is None:
            raise VocabError(f"{self.modality}: tokens per frame needs a fixed grid")
        rows, cols = self.grid
        return rows * (cols + int(self.row_end))


@dataclass(frozen=True)
class Piece:
    """One parsed segment of an id sequence: text ids or a media code array, and where it was."""

    modality: str
    payload: np.ndarray  # text: ids [n]; image: [h, w]; audio: [L, F]; video: [T, h, w]
    start: int
    end: int  # exclusive; media pieces include their sentinels


class VocabLayout:
    """The immutable id layout. Build with `VocabLayout.build`, persist with `save`/`load`."""

    def __init__(self, text: TextSpec, specials: tuple[str, ...], codebooks: dict[str, CodebookSpec]):
        self.text = text
        self.specials = tuple(specials)
        self.codebooks = dict(codebooks)
        self._validate()
        self.special_ids = {name: text.size + i for i, name in enumerate(self.specials)}
        self.size = max([text.size + len(self.specials)] + [c.offset + c.range_size for c in self._owners()])
        if self.size > INT32_MAX:
            raise VocabError(f"layout needs {self.size} ids, more than int32 holds ({INT32_MAX})")
        self.hash = sha256_text(canonical_json(self.manifest()))

    # -- construction -------------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        text: TextSpec,
        codebooks: list[CodebookSpec] | tuple = (),
        specials: tuple[str, ...] = SPECIAL_TOKENS,
    ) -> VocabLayout:
        """Assign offsets: text, then specials, then each owned codebook range in MEDIA order."""
        by_mod = {}
        for cb in codebooks:
            if cb.modality in by_mod:
                raise VocabError(f"two codebooks declared for modality {cb.modality!r}")
            by_mod[cb.modality] = cb
        next_id = text.size + len(specials)
        placed = {}
        for mod in sorted(by_mod, key=lambda m: MEDIA.index(m) if m in MEDIA else len(MEDIA)):
            cb = by_mod[mod]
            if cb.shares is None:
                placed[mod] = replace(cb, offset=next_id)
                next_id += cb.range_size
        for mod, cb in by_mod.items():
            if cb.shares is not None:
                if cb.shares not in placed:
                    raise VocabError(f"{mod} shares the range of {cb.shares!r}, which has no codebook")
                placed[mod] = replace(cb, offset=placed[cb.shares].offset)
        return cls(text, specials, placed)

    def _owners(self) -> list[CodebookSpec]:
        return [c for c in self.codebooks.values() if c.shares is None]

    def _validate(self) -> None:
        if self.text.size <= 0:
            raise VocabError(f"text size must be positive, got {self.text.size}")
        unknown = [s for s in self.specials if s not in SPECIAL_TOKENS]
        if unknown:
            raise VocabError(f"unknown special token(s) {unknown}; known: {list(SPECIAL_TOKENS)}")
        if len(set(self.specials)) != len(self.specials):
            raise VocabError("special tokens repeated")
        for name in ("<pad>", "<bos>", "<eos>"):
            if name not in self.specials:
                raise VocabError(f"special token {name} is required")
        for mod, cb in self.codebooks.items():
            where = f"codebook {mod!r}"
            if mod not in MEDIA or cb.modality != mod:
                raise VocabError(f"{where}: modality must be one of {MEDIA} and match its key")
            if cb.codebook_size <= 0 or cb.num_layers <= 0:
                raise VocabError(f"{where}: codebook_size and num_layers must be positive")
            if cb.flatten not in FLATTENINGS:
                raise VocabError(f"{where}: flatten must be one of {FLATTENINGS}, got {cb.flatten!r}")
            if cb.shares is not None:
                other = self.codebooks.get(cb.shares)
                if other is None or other.shares is not None:
                    raise VocabError(f"{where}: shares {cb.shares!r}, which owns no range")
                if (cb.offset, cb.codebook_size) != (other.offset, other.codebook_size):
                    raise VocabError(f"{where}: shared range must equal {cb.shares!r}'s")
                if cb.codebook_size * cb.layers_in_ids > other.range_size:
                    # layer l sits at offset + l*K: a layer past the owner's would land in the next range
                    raise VocabError(
                        f"{where}: {cb.layers_in_ids} layer(s) of {cb.codebook_size} codes need "
                        f"{cb.codebook_size * cb.layers_in_ids} ids, but the range of {cb.shares!r} it shares holds "
                        f"{other.range_size} ({other.layers_in_ids} layer(s))"
                    )
                if cb.shares_fingerprint and other.fingerprint and cb.shares_fingerprint != other.fingerprint:
                    # the same ids would mean other codes in each modality (a retrained image tokenizer)
                    raise VocabError(
                        f"{where}: shares {cb.shares!r}'s ids but codes with another {cb.shares} tokenizer "
                        f"(fingerprint {cb.shares_fingerprint[:12]}, the layout's {other.fingerprint[:12]}): "
                        f"remake the {mod} tokenizer from the {cb.shares} tokenizer in use"
                    )
            if cb.grid is not None and not (
                isinstance(cb.grid, (tuple, list))
                and len(cb.grid) == 2
                and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in cb.grid)
            ):
                raise VocabError(f"{where}: grid must be two positive integers (rows, cols), got {cb.grid!r}")
            if cb.modality in ("image", "video") and cb.grid is None and not cb.row_end:
                # a span's codes could be written but never read back into rows
                raise VocabError(f"{where}: needs a fixed grid (a fixed image size) or row_end=true to be parsed")
            for tok in self._structure_tokens(cb):
                if tok not in self.specials:
                    raise VocabError(f"{where} needs special token {tok}, absent from the layout")
        ranges = [("text+specials", 0, self.text.size + len(self.specials))]
        ranges += [(m, c.offset, c.offset + c.range_size) for m, c in self.codebooks.items() if c.shares is None]
        ranges.sort(key=lambda r: r[1])
        for (n1, lo1, hi1), (n2, lo2, hi2) in zip(ranges, ranges[1:]):
            if lo1 < 0 or lo2 < hi1:
                raise VocabError(f"id ranges overlap: {n1} [{lo1}, {hi1}) and {n2} [{lo2}, {hi2})")

    @staticmethod
    def _structure_tokens(cb: CodebookSpec) -> list[str]:
        toks = [OPEN[cb.modality], CLOSE[cb.modality]]
        if cb.modality in ("image", "video") and cb.row_end:
            toks.append("<|row_end|>")
        if cb.modality == "video":
            toks.append("<|frame|>")
        if cb.modality == "audio" and cb.flatten == "layer":
            toks.append("<|rvq_sep|>")
        return toks

    # -- manifest -----------------------------------------------------------------------------------
    def manifest(self) -> dict:
        return {
            "format": MANIFEST_FORMAT,
            "size": self.text.size + len(self.specials) + sum(c.range_size for c in self._owners()),
            "text": asdict(self.text),
            "specials": {name: self.text.size + i for i, name in enumerate(self.specials)},
            "codebooks": {m: self._codebook_record(c) for m, c in self.codebooks.items()},
        }

    @staticmethod
    def _codebook_record(c: CodebookSpec) -> dict:
        record = {**asdict(c), "grid": list(c.grid) if c.grid else None}
        # checked when a layout is built from the tokenizers, not recorded: the video's own fingerprint
        # already covers the image weights it embeds, and layouts written before the check keep their hash
        del record["shares_fingerprint"]
        return record

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        if path.is_dir() or path.suffix != ".json":
            path = path / "manifest.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**self.manifest(), "vocab_hash": self.hash}, indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def from_manifest(cls, m: dict, where: str = "manifest") -> VocabLayout:
        if not isinstance(m, dict):
            raise VocabError(f"{where}: expected a JSON object at the top level, got {type(m).__name__}")
        if m.get("format") != MANIFEST_FORMAT:
            raise VocabError(f"{where}: format {m.get('format')!r}, expected {MANIFEST_FORMAT!r}")
        try:
            text = TextSpec(**m["text"])
            specials = sorted(m["specials"].items(), key=lambda kv: kv[1])
            if [i for _, i in specials] != list(range(text.size, text.size + len(specials))):
                raise VocabError(f"{where}: special ids must be contiguous from {text.size}")
            cbs = {}
            for mod, c in m["codebooks"].items():
                c = dict(c)
                # a list, or null for none; anything else is kept as written for _validate to name
                c["grid"] = tuple(c["grid"]) if isinstance(c.get("grid"), list) else c.get("grid")
                cbs[mod] = CodebookSpec(**c)
        except (KeyError, TypeError, AttributeError) as e:
            raise VocabError(f"{where}: missing or unexpected field: {e}") from e
        try:
            layout = cls(text, tuple(n for n, _ in specials), cbs)
        except VocabError as e:
            raise VocabError(f"{where}: {e}") from None
        recorded = m.get("vocab_hash")
        if recorded is not None and recorded != layout.hash:
            raise VocabMismatchError(f"{where}: recorded vocab_hash {recorded} does not match content {layout.hash}")
        return layout

    @classmethod
    def load(cls, path: str | Path) -> VocabLayout:
        path = Path(path)
        if path.is_dir():
            path = path / "manifest.json"
        if not path.exists():
            raise FileNotFoundError(f"vocabulary manifest not found: {path}")
        try:
            m = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise VocabError(f"{path}: not valid JSON ({e})") from e
        return cls.from_manifest(m, where=str(path))

    def check_hash(self, other: str, what: str) -> None:
        """Fail, naming both hashes, when `what` (a shard set, a checkpoint) was built for another layout."""
        if other != self.hash:
            raise VocabMismatchError(
                f"vocab hash mismatch: {what} was built for vocab {other}, but the tokenizers' layout is "
                f"{self.hash}; rebuild it with this vocabulary or point at the matching manifest.json"
            )

    # -- lookups ------------------------------------------------------------------------------------
    def id(self, name: str) -> int:
        try:
            return self.special_ids[name]
        except KeyError:
            raise KeyError(f"special token {name!r} is not in this layout") from None

    def code_range(self, modality: str) -> tuple[int, int]:
        cb = self.codebook(modality)
        owner = self.codebooks[cb.shares] if cb.shares else cb
        return owner.offset, owner.offset + owner.range_size

    def codebook(self, modality: str) -> CodebookSpec:
        if modality not in self.codebooks:
            raise KeyError(f"modality {modality!r} has no codebook in this layout (has {sorted(self.codebooks)})")
        return self.codebooks[modality]

    def modality_table(self) -> np.ndarray:
        """id -> MODALITY_ID of the range it lies in; SPECIAL_MODALITY for specials. Shared ranges
        map to their owner (video frames through the image codebook read as image: use spans to tell)."""
        table = np.full(self.size, SPECIAL_MODALITY, dtype=np.int8)
        table[: self.text.size] = MODALITY_ID["text"]
        for mod, cb in self.codebooks.items():
            if cb.shares is None:
                table[cb.offset : cb.offset + cb.range_size] = MODALITY_ID[mod]
        return table

    # -- media spans ----------------------------------------------------------------------------------
    def media_ids(self, modality: str, codes: np.ndarray) -> np.ndarray:
        """Codes of one media item -> the ids of its whole span, sentinels included."""
        cb = self.codebook(modality)
        codes = np.asarray(codes)
        if not np.issubdtype(codes.dtype, np.integer):
            raise ValueError(f"{modality} codes must be integers, got dtype {codes.dtype}")
        if codes.size and (codes.min() < 0 or codes.max() >= cb.codebook_size):
            raise ValueError(
                f"{modality} codes must lie in [0, {cb.codebook_size}), got [{codes.min()}, {codes.max()}]"
            )
        base = self.code_range(modality)[0]
        if modality == "image":
            body = self._grid_ids(cb, codes, base, "image codes")
        elif modality == "video":
            if codes.ndim != 3 or codes.shape[0] == 0:
                raise ValueError(f"video codes must be [frames, rows, cols] with frames >= 1, got {codes.shape}")
            sep = [self.id("<|frame|>")]
            parts = []
            for t, frame in enumerate(codes):
                parts += ([sep] if t else []) + [self._grid_ids(cb, frame, base, f"video frame {t}")]
            body = np.concatenate(parts)
        else:
            sep = self.special_ids.get("<|rvq_sep|>", -1)
            body = flatten_codes(codes, cb.flatten, cb.codebook_size, base, sep, cb.num_layers)
        return np.concatenate([[self.id(OPEN[modality])], body, [self.id(CLOSE[modality])]]).astype(np.int64)

    def _grid_ids(self, cb: CodebookSpec, grid: np.ndarray, base: int, what: str) -> np.ndarray:
        if grid.ndim != 2 or grid.shape[0] == 0 or grid.shape[1] == 0:
            raise ValueError(f"{what} must be a non-empty [rows, cols] grid, got shape {grid.shape}")
        if cb.grid is not None and tuple(grid.shape) != tuple(cb.grid):
            raise ValueError(f"{what} have grid {tuple(grid.shape)}, the layout fixes {tuple(cb.grid)}")
        ids = grid.astype(np.int64) + base
        if cb.row_end:
            ids = np.concatenate([ids, np.full((ids.shape[0], 1), self.id("<|row_end|>"))], axis=1)
        return ids.reshape(-1)

    def parse(self, ids: np.ndarray | list[int]) -> list[Piece]:
        """Split ids into text runs, media spans and lone specials (modality "special", payload [id]).

        The exact inverse of `media_ids` on well-formed input; raises DecodeError naming the position
        and the id for an unclosed span, a code outside its span, a broken structure or an id out of range.
        """
        ids = np.asarray(ids, dtype=np.int64)
        bad = np.flatnonzero((ids < 0) | (ids >= self.size))
        if bad.size:
            raise DecodeError(int(bad[0]), int(ids[bad[0]]), f"out of the vocabulary [0, {self.size})")
        opens = {self.special_ids[OPEN[m]]: m for m in self.codebooks}
        closes = {self.special_ids[CLOSE[m]]: m for m in self.codebooks}
        pieces, i, n, T = [], 0, len(ids), self.text.size
        while i < n:
            tok = int(ids[i])
            if tok < T:
                j = i
                while j < n and ids[j] < T:
                    j += 1
                pieces.append(Piece("text", ids[i:j], i, j))
                i = j
            elif tok in opens:
                mod = opens[tok]
                close = self.id(CLOSE[mod])
                hits = np.flatnonzero(ids[i + 1 :] == close)
                if not hits.size:
                    raise DecodeError(i, tok, f"{OPEN[mod]} span is never closed")
                j = i + 1 + int(hits[0])
                pieces.append(Piece(mod, self._parse_body(mod, ids[i + 1 : j], i + 1), i, j + 1))
                i = j + 1
            elif tok in closes:
                raise DecodeError(i, tok, f"{CLOSE[closes[tok]]} without an open span")
            elif tok < T + len(self.specials):
                pieces.append(Piece("special", ids[i : i + 1], i, i + 1))
                i += 1
            else:
                raise DecodeError(i, tok, "a media code outside any media span")
        return pieces

    def _parse_body(self, modality: str, body: np.ndarray, at: int) -> np.ndarray:
        cb = self.codebooks[modality]
        lo, _ = self.code_range(modality)
        if modality == "image":
            return self._parse_grid(cb, body, at, lo)
        if modality == "video":
            sep = self.id("<|frame|>")
            cuts = np.flatnonzero(body == sep)
            frames, start = [], 0
            for c in [*cuts.tolist(), len(body)]:
                frames.append(self._parse_grid(cb, body[start:c], at + start, lo))
                start = c + 1
            shapes = {f.shape for f in frames}
            if len(shapes) != 1:
                raise DecodeError(at, int(body[0]), f"video frames differ in grid shape: {sorted(shapes)}")
            return np.stack(frames)
        sep = self.special_ids.get("<|rvq_sep|>", -1)
        return unflatten_ids(body, cb.flatten, cb.codebook_size, lo, sep, cb.num_layers, at)

    def _parse_grid(self, cb: CodebookSpec, body: np.ndarray, at: int, lo: int) -> np.ndarray:
        hi = lo + cb.codebook_size
        if not len(body):
            raise DecodeError(at, -1, f"empty {cb.modality} grid")
        row_end = self.id("<|row_end|>") if cb.row_end else None
        stray = np.flatnonzero(((body < lo) | (body >= hi)) & (body != row_end))
        if stray.size:
            k = int(stray[0])
            raise DecodeError(at + k, int(body[k]), f"not a {cb.modality} code [{lo}, {hi})")
        if cb.row_end:
            if body[-1] != row_end:
                raise DecodeError(at + len(body) - 1, int(body[-1]), "grid does not end with <|row_end|>")
            cuts = np.flatnonzero(body == row_end)
            widths = np.diff(np.concatenate([[-1], cuts])) - 1
            uneven = np.flatnonzero((widths != widths[0]) | (widths == 0))
            if uneven.size:
                k = int(uneven[0])
                raise DecodeError(at + int(cuts[k]), row_end, f"row {k} has {widths[k]} codes, row 0 has {widths[0]}")
            grid = np.delete(body, cuts).reshape(len(cuts), int(widths[0]))
        elif cb.grid is None:
            raise DecodeError(at, int(body[0]), "the layout has neither row ends nor a fixed grid")
        elif len(body) != cb.grid[0] * cb.grid[1]:
            raise DecodeError(at, int(body[0]), f"{len(body)} codes, expected {cb.grid[0]}x{cb.grid[1]}")
        else:
            grid = body.reshape(cb.grid)
        if cb.grid is not None and tuple(grid.shape) != tuple(cb.grid):
            raise DecodeError(at, int(body[0]), f"grid {tuple(grid.shape)} differs from the layout's {tuple(cb.grid)}")
        return grid - lo


# -- RVQ flattening ---------------------------------------------------------------------------------
def flatten_codes(codes: np.ndarray, pattern: str, K: int, offset: int, sep_id: int, num_layers: int) -> np.ndarray:
    """Codes [L, F] -> flat ids, layer l's codes at offset + l*K.

    frame  f1l1 f1l2 .. f1lL f2l1 ..   (AnyGPT music: frame-major)
    layer  l1f1 .. l1fF <|rvq_sep|> l2f1 ..   (MIO speech: layer-major; MIO found frame-major
           interleaving kept its TTS from converging)
    first  l1f1 .. l1fF   (semantic layer only, AnyGPT speech)
    """
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[1] == 0:
        raise ValueError(f"audio codes must be [layers, frames] with frames >= 1, got shape {codes.shape}")
    if pattern == "first":
        return codes[0].astype(np.int64) + offset
    if codes.shape[0] != num_layers:
        raise ValueError(f"audio codes have {codes.shape[0]} layers, the layout uses {num_layers}")
    ids = codes.astype(np.int64) + offset + K * np.arange(num_layers)[:, None]  # [L, F]
    if pattern == "frame":
        return ids.T.reshape(-1)
    if pattern == "layer":
        sep = np.full((num_layers, 1), sep_id, dtype=np.int64)
        return np.concatenate([ids, sep], axis=1).reshape(-1)[:-1]
    raise ValueError(f"unknown flattening {pattern!r}; expected one of {FLATTENINGS}")


def unflatten_ids(
    ids: np.ndarray, pattern: str, K: int, offset: int, sep_id: int, num_layers: int, at: int = 0
) -> np.ndarray:
    """Flat ids -> codes [L, F]; the inverse of flatten_codes. `at` is the position of ids[0] for errors."""
    ids = np.asarray(ids, dtype=np.int64)
    if not len(ids):
        raise DecodeError(at, -1, "empty audio span")
    L = 1 if pattern == "first" else num_layers
    if pattern == "layer":
        cuts = np.flatnonzero(ids == sep_id)
        if len(cuts) != L - 1:
            raise DecodeError(at, int(ids[0]), f"layer-major span has {len(cuts) + 1} layers, expected {L}")
        layers = np.split(ids, cuts)
        layers = [layers[0]] + [x[1:] for x in layers[1:]]
        lens = [len(x) for x in layers]
        if min(lens) == 0 or len(set(lens)) != 1:
            raise DecodeError(at, int(ids[0]), f"RVQ layers differ in length: {lens}")
        grid = np.stack(layers)
    else:
        if len(ids) % L:
            raise DecodeError(
                at + len(ids) - 1, int(ids[-1]), f"{len(ids)} codes is not a whole number of {L}-layer frames"
            )
        grid = ids.reshape(-1, L).T
    expect_lo = offset + K * np.arange(L)[:, None]
    rel = grid - expect_lo
    bad = np.argwhere((rel < 0) | (rel >= K))
    if len(bad):
        layer, frame = (int(x) for x in bad[0])
        pos = at + (layer * (grid.shape[1] + 1) + frame if pattern == "layer" else frame * L + layer)
        raise DecodeError(
            pos,
            int(grid[layer, frame]),
            f"not a layer-{layer} audio code [{expect_lo[layer, 0]}, {expect_lo[layer, 0] + K})",
        )
    return rel
