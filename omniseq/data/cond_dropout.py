"""Condition dropout for classifier-free guidance: the condition of a document becomes `<|uncond|>`.

Guidance needs a model that also knows the unconditional distribution (Emu3 drops 5% of conditions,
Show-o 10%, Liquid uses an `<unconditional>` token). The condition is what comes before the target:

    conversation  <bos> [<|system|> ... <|end|>] ... <|user|> CONDITION <|end|> <|assistant|> target
                  -> the last user turn's content (the request the last answer answers; system turns and
                  earlier turns stay: in single-turn data, the only user turn)
    plain         <bos> CONDITION target <eos>  -> everything before the last segment, which is the target:
        text -> x   <bos> a red square\n [image] <eos>          -> <bos> <|uncond|> [image] <eos>
        x -> text   <bos> Describe the image: [image] \na cat <eos> -> <bos> <|uncond|> \na cat <eos>

and is replaced by a single `<|uncond|>`, which carries no loss. The sampler builds its unconditional
rows the same way (omniseq.sample.guidance.uncond_prompt: a conversation's last user turn, or a plain
prompt's whole content before what is generated, template words and media alike, becomes one
`<|uncond|>`), so training and guidance see the same context; a captioning template's words after the
media (`\n` above) stay, being part of the caption's text segment. The decision is a pure function of
(seed, source, position), so a resumed stream drops exactly the same documents.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from omniseq.data.shardset import Doc
from omniseq.vocab import MODALITY_ID, VocabLayout


@dataclass(frozen=True)
class CondDropout:
    p: float
    seed: int
    bos: int
    user: int
    end: int
    uncond: int

    @classmethod
    def from_layout(cls, layout: VocabLayout, p: float, seed: int) -> CondDropout:
        ids = layout.special_ids
        return cls(p, seed, ids["<bos>"], ids.get("<|user|>", -1), ids.get("<|end|>", -1), ids["<|uncond|>"])

    def chosen(self, source: int, position: int) -> bool:
        return self.p > 0 and np.random.default_rng((self.seed, 7919, source, position)).random() < self.p

    def apply(self, doc: Doc, source: int, position: int) -> Doc:
        if not self.chosen(source, position):
            return doc
        span = condition_span(doc, self)
        return doc if span is None else replace_span(doc, *span, self.uncond)


def condition_span(doc: Doc, ids: CondDropout) -> tuple[int, int] | None:
    """[start, end) of the condition, or None when the document has no separable condition."""
    toks = doc.ids
    if (toks == ids.end).any():  # a conversation (plain documents hold no <|end|>): the last user turn
        users = np.flatnonzero(toks == ids.user)
        if not users.size:
            return None
        u = int(users[-1]) + 1
        ends = np.flatnonzero(toks[u:] == ids.end)
        return (u, u + int(ends[0])) if ends.size and ends[0] > 0 else None
    start = 1 if len(toks) and toks[0] == ids.bos else 0
    spans = doc.media_spans
    if not len(spans):
        return None  # text only: no separable condition
    last_start, last_end = int(spans[-1, 0]), int(spans[-1, 1])
    # the target is the last segment: the last media span when only <eos> follows it (text -> x), else the
    # text after it (x -> text, whatever template words come before the media)
    end = last_start if last_end >= len(toks) - 1 else last_end
    return (start, end) if end > start else None


def replace_span(doc: Doc, start: int, end: int, token: int) -> Doc:
    """Replace doc[start:end] by one `token` that carries no loss; media spans after it shift."""
    shift = end - start - 1
    ids = np.concatenate([doc.ids[:start], [token], doc.ids[end:]]).astype(doc.ids.dtype)
    modality = np.concatenate([doc.modality[:start], [MODALITY_ID["text"]], doc.modality[end:]]).astype(
        doc.modality.dtype
    )
    loss = np.ones(len(doc.ids), np.uint8) if doc.loss is None else doc.loss
    loss = np.concatenate([loss[:start], [0], loss[end:]]).astype(np.uint8)
    spans = doc.media_spans
    keep = (spans[:, 0] >= end) | (spans[:, 1] <= start)
    spans = spans[keep].copy()
    spans[spans[:, 0] >= end] -= shift
    return Doc(ids=ids, modality=modality, loss=loss, media_spans=spans)
