"""Documents: lists of text and media segments <-> token ids of the merged vocabulary.

A document is a list of `Segment`s. Plain documents (pretraining) become

    <bos> seg_1 seg_2 ... <eos>                      loss on every token after <bos> (AnyGPT)

and documents whose segments carry roles (SFT conversations) follow the chat template

    <bos> <|user|> segs <|end|> <|assistant|> segs <|end|> ... <eos>
                                 ^^^^^^^^^^^^^^^^^^^ loss only here: the assistant's content and its
                                                     <|end|>, so the model learns to stop (MIO's SFT)

A segment's `loss` (true/false) overrides that default for its tokens, and a turn's <|end|> takes the loss
of the turn's last segment: an earlier answer masked with `loss: false` does not train its <|end|> either.

`DocumentCodec.decode` inverts `DocumentCodec.encode` up to `loss`, which the ids do not carry:
decode(encode(doc)) == normalize(doc with every `loss` set to None) (`normalize`: no empty text, adjacent
text of one role and loss merged), and so == normalize(doc) for documents that set no `loss`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from omniseq.vocab import MEDIA, MODALITIES, MODALITY_ID, ROLES, DecodeError, VocabLayout, VocabMismatchError


@dataclass
class Segment:
    """One piece of a document. Media is given as `codes` (already tokenized) or `media` (a path
    or an array the modality's tokenizer encodes). `loss=None` takes the template's default."""

    modality: str
    text: str | None = None
    codes: np.ndarray | None = None
    media: Any = None
    role: str | None = None
    loss: bool | None = None

    def __post_init__(self):
        if self.modality not in MODALITIES:
            raise ValueError(f"unknown modality {self.modality!r}; expected one of {MODALITIES}")
        if self.role is not None and self.role not in ROLES:
            raise ValueError(f"unknown role {self.role!r}; expected one of {ROLES}")
        if self.modality == "text" and not isinstance(self.text, str):
            raise ValueError("a text segment needs `text` (a str)")
        if self.modality != "text" and self.codes is None and self.media is None:
            raise ValueError(f"an {self.modality} segment needs `codes` or `media`")

    def __eq__(self, other):  # numpy codes make the generated __eq__ ambiguous
        if not isinstance(other, Segment):
            return NotImplemented
        same_codes = (self.codes is None) == (other.codes is None) and (
            self.codes is None or np.array_equal(self.codes, other.codes)
        )
        return (self.modality, self.text, self.role, self.loss) == (
            other.modality, other.text, other.role, other.loss
        ) and same_codes  # fmt: skip


@dataclass
class TokenSequence:
    ids: np.ndarray  # int32 [n]
    spans: np.ndarray  # int32 [segments, 3]: start, end (exclusive), MODALITY_ID
    loss_mask: np.ndarray  # uint8 [n]: 1 where ids[i] is a training target

    def __len__(self) -> int:
        return len(self.ids)

    def token_modalities(self) -> np.ndarray:
        """Per-token MODALITY_ID from the spans; structure tokens outside segments count as text."""
        out = np.zeros(len(self.ids), dtype=np.int8)
        for start, end, mod in self.spans:
            out[start:end] = mod
        return out


def segment_from_json(obj: Any, base_dir: str | Path | None = None, where: str = "segment") -> Segment:
    """{"text": str} | {"image"|"audio"|"video": path}, with optional "role" and "loss"."""
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected an object, got {type(obj).__name__}")
    kinds = [k for k in MODALITIES if k in obj]
    extra = set(obj) - set(MODALITIES) - {"role", "loss"}
    if len(kinds) != 1 or extra:
        raise ValueError(
            f"{where}: expected exactly one of {list(MODALITIES)} plus optional 'role'/'loss', got keys {sorted(obj)}"
        )
    mod = kinds[0]
    value = obj[mod]
    if mod == "text":
        if not isinstance(value, str):
            raise ValueError(f"{where}.text: expected a string, got {type(value).__name__}")
        seg = dict(text=value)
    else:
        if not isinstance(value, str) or not value:
            raise ValueError(f"{where}.{mod}: expected a file path, got {value!r}")
        path = Path(value)
        seg = dict(media=path if path.is_absolute() or base_dir is None else Path(base_dir) / path)
    if "loss" in obj and not isinstance(obj["loss"], bool):
        raise ValueError(f"{where}.loss: expected true or false, got {obj['loss']!r}")
    try:
        return Segment(mod, role=obj.get("role"), loss=obj.get("loss"), **seg)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def normalize(segments: list[Segment]) -> list[Segment]:
    """Drop empty text and merge adjacent text segments of the same role and loss."""
    out: list[Segment] = []
    for seg in segments:
        if seg.modality == "text" and not seg.text:
            continue
        prev = out[-1] if out else None
        if (
            prev is not None
            and seg.modality == prev.modality == "text"
            and (seg.role, seg.loss) == (prev.role, prev.loss)
        ):
            out[-1] = replace(prev, text=prev.text + seg.text)
        else:
            out.append(seg)
    return out


@dataclass
class DocumentCodec:
    """Encodes documents with one text tokenizer and the media tokenizers of a layout."""

    layout: VocabLayout
    text: Any  # TextTokenizer (or anything with encode/decode/fingerprint)
    media: dict = field(default_factory=dict)  # modality -> MediaTokenizer

    def __post_init__(self):
        fp = self.layout.text.fingerprint
        if fp and self.text.fingerprint() != fp:
            raise VocabMismatchError(
                f"text tokenizer fingerprint {self.text.fingerprint()} differs from the layout's {fp}"
            )
        for mod, tok in self.media.items():
            want = self.layout.codebook(mod).fingerprint
            if want and tok.fingerprint() != want:
                raise VocabMismatchError(
                    f"{mod} tokenizer fingerprint {tok.fingerprint()} differs from the layout's {want}"
                )
        L = self.layout
        self._bos, self._eos, self._end = L.id("<bos>"), L.id("<eos>"), L.id("<|end|>")
        self._role_ids = {r: L.id(f"<|{r}|>") for r in ROLES if f"<|{r}|>" in L.special_ids}
        self._roles_by_id = {v: k for k, v in self._role_ids.items()}

    def media_codes(self, seg: Segment) -> np.ndarray:
        if seg.codes is not None:
            return np.asarray(seg.codes)
        tok = self.media.get(seg.modality)
        if tok is None:
            raise ValueError(f"no {seg.modality} tokenizer loaded to encode {seg.media!r}")
        return tok.encode(seg.media)

    def encode(self, segments: list[Segment]) -> TokenSequence:
        segments = normalize(segments)
        chat = any(s.role is not None for s in segments)
        if chat:
            missing = [i for i, s in enumerate(segments) if s.role is None]
            if missing:
                raise ValueError(f"segment {missing[0]}: a conversation needs a role on every segment")
        ids: list[np.ndarray] = [np.array([self._bos])]
        loss: list[np.ndarray] = [np.zeros(1, np.uint8)]
        spans, n, role, turn_loss = [], 1, None, False

        def put(chunk, on: bool):
            nonlocal n
            ids.append(np.asarray(chunk, dtype=np.int64))
            loss.append(np.full(len(chunk), int(on), np.uint8))
            n += len(chunk)

        for seg in segments:
            if chat and seg.role != role:
                if role is not None:
                    put([self._end], turn_loss)
                put([self._role_ids[seg.role]], False)
                role = seg.role
            if seg.modality == "text":
                chunk = self.text.encode(seg.text)
            else:
                chunk = self.layout.media_ids(seg.modality, self.media_codes(seg))
            default = seg.role == "assistant" if chat else True
            turn_loss = default if seg.loss is None else seg.loss  # also the loss of the turn's <|end|>
            spans.append((n, n + len(chunk), MODALITY_ID[seg.modality]))
            put(chunk, turn_loss)
        if chat and role is not None:
            put([self._end], turn_loss)
        put([self._eos], not chat)
        return TokenSequence(
            ids=np.concatenate(ids).astype(np.int32),
            spans=np.asarray(spans, dtype=np.int32).reshape(-1, 3),
            loss_mask=np.concatenate(loss),
        )

    def decode(self, ids) -> list[Segment]:
        """Ids -> segments (media as codes, text as str). <bos>/<eos>/<pad> at the edges are optional. Every
        segment's `loss` is None: the ids do not say which tokens were trained."""
        ids = np.asarray(ids, dtype=np.int64)
        pad = self.layout.id("<pad>")
        out: list[Segment] = []
        role = None
        pieces = self.layout.parse(ids)
        is_special = lambda p, toks: p.modality == "special" and int(p.payload[0]) in toks  # noqa: E731
        if pieces and is_special(pieces[0], (self._bos,)):
            pieces = pieces[1:]
        while pieces and is_special(pieces[-1], (self._eos, pad)):
            pieces.pop()
        for p in pieces:
            if p.modality == "text":
                out.append(Segment("text", text=self.text.decode(p.payload), role=role))
            elif p.modality in MEDIA:
                out.append(Segment(p.modality, codes=p.payload, role=role))
            else:
                tok = int(p.payload[0])
                if tok in self._roles_by_id and role is None:
                    role = self._roles_by_id[tok]
                elif tok == self._end and role is not None:
                    role = None
                else:
                    name = next(n for n, i in self.layout.special_ids.items() if i == tok)
                    raise DecodeError(p.start, tok, f"unexpected {name} in a document")
        return normalize(out)

    def render(self, seg: Segment) -> Any:
        """A media segment's codes -> media, through its tokenizer's decoder."""
        tok = self.media.get(seg.modality)
        if tok is None:
            raise ValueError(f"no {seg.modality} tokenizer loaded to decode {seg.modality} codes")
        return tok.decode(seg.codes)
