"""Packing whole documents into fixed-length rows (the batch contract of docs/data.md).

Rows hold whole documents, each with positions restarting at 0 and its own document id, so that
attention can be document-causal (MIO and LWM pack with a block-diagonal mask): no token sees
another document, and no compute is spent on padding beyond the row's tail.

Filling is best-fit over a small pool of pending documents: a row takes the longest pending
document that still fits, until none does. With a pool of 32-64 documents this fills rows to
~99% where greedy first-fit leaves ~10% padding at sequence length 1024 (bench/loader.py).

A document longer than a row is `cut` into chunks at boundaries outside media spans (text may be
cut anywhere; an image, audio or video span is never split, because half an image is not a
learnable target), each chunk packed as a document of its own; or `drop`ped. A document holding a
media span longer than the row is always dropped. Both are counted.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from omniseq.data.shardset import Doc

IGNORE = -100  # labels that carry no loss (torch's cross_entropy ignore_index)
LONG_DOCS = ("cut", "drop")


def slice_doc(doc: Doc, start: int, end: int) -> Doc:
    spans = doc.media_spans
    inside = spans[(spans[:, 0] >= start) & (spans[:, 1] <= end)] - start
    loss = None if doc.loss is None else doc.loss[start:end]
    return Doc(doc.ids[start:end], doc.modality[start:end], loss, inside)


def cut_points(doc: Doc, seq_len: int) -> list[int] | None:
    """Chunk ends (exclusive) so that every chunk fits `seq_len` and no media span is split;
    None when a media span alone is longer than a row."""
    n = len(doc)
    spans = doc.media_spans
    if len(spans) and (spans[:, 1] - spans[:, 0] > seq_len).any():
        return None
    forbidden = np.zeros(n + 1, dtype=bool)  # forbidden[c]: a cut before token c would split a span
    for s, e in spans:
        forbidden[s + 1 : e] = True
    ends, a = [], 0
    while n - a > seq_len:
        ok = np.flatnonzero(~forbidden[a + 1 : a + seq_len + 1])  # a media span <= seq_len: never empty
        a += 1 + int(ok[-1])
        ends.append(a)
    return ends + [n]


def fit_document(doc: Doc, seq_len: int, policy: str) -> tuple[list[Doc], str]:
    """(chunks, what happened): "" when it fits, "cut" or "dropped" otherwise."""
    if len(doc) <= seq_len:
        return [doc], ""
    ends = None if policy == "drop" else cut_points(doc, seq_len)
    if ends is None:
        return [], "dropped"
    starts = [0, *ends[:-1]]
    return [slice_doc(doc, a, b) for a, b in zip(starts, ends)], "cut"


Pending = tuple[Doc, tuple]  # a document chunk and its identity (source, position, chunk) for resume


class Packer:
    """Best-fit packing of documents from `draw()` into rows of `seq_len` tokens."""

    def __init__(self, seq_len: int, pool_size: int):
        if pool_size < 1:
            raise ValueError(f"pool_size must be >= 1, got {pool_size}")
        self.seq_len, self.pool_size = seq_len, pool_size
        self.pool = []

    def next_row(self, draw: Callable[[], list[Pending]]) -> list[Doc]:
        row, room, lens = [], self.seq_len, self._lens
        while True:
            while len(self.pool) < self.pool_size:
                new = draw()
                self._pool += new
                lens += [len(d) for d, _ in new]
            best, best_len = -1, 0
            for i, n in enumerate(lens):  # the hot loop: plain ints, no Doc.__len__ calls
                if best_len < n <= room:
                    best, best_len = i, n
            if best < 0:
                return row
            row.append(self._pool.pop(best)[0])
            del lens[best]
            room -= best_len

    @property
    def pool(self) -> list[Pending]:
        return self._pool

    @pool.setter
    def pool(self, pending: list[Pending]) -> None:
        self._pool, self._lens = list(pending), [len(d) for d, _ in pending]

    def pending(self) -> list[tuple]:
        return [ident for _, ident in self.pool]


def assemble(rows: list[list[Doc]], seq_len: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Rows of documents -> the batch dict (int64 [B, T] tensors; document_ids int32)."""
    B, T = len(rows), seq_len
    input_ids = np.full((B, T), pad_id, dtype=np.int64)
    labels = np.full((B, T), IGNORE, dtype=np.int64)
    label_mod = np.full((B, T), -1, dtype=np.int64)
    positions = np.empty((B, T), dtype=np.int64)
    doc_ids = np.empty((B, T), dtype=np.int32)
    ar = np.arange(T, dtype=np.int64)
    for r, row in enumerate(rows):
        o = 0
        for j, doc in enumerate(row):
            n = len(doc)
            input_ids[r, o : o + n] = doc.ids
            lab, mod = labels[r, o : o + n - 1], label_mod[r, o : o + n - 1]  # views: target of t is t+1
            lab[:] = doc.ids[1:]
            mod[:] = doc.modality[1:]
            if doc.loss is not None:
                off = doc.loss[1:] == 0
                lab[off], mod[off] = IGNORE, -1
            positions[r, o : o + n] = ar[:n]
            doc_ids[r, o : o + n] = j
            o += n
        positions[r, o:] = ar[: T - o]
        doc_ids[r, o:] = len(row)  # the padding tail is a document of its own
    return {
        "input_ids": torch.from_numpy(input_ids),
        "labels": torch.from_numpy(labels),
        "position_ids": torch.from_numpy(positions),
        "document_ids": torch.from_numpy(doc_ids),
        "label_modality": torch.from_numpy(label_mod),
    }
