"""Packer: the batch contract, whole documents, and never a split media span (property test)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from omniseq.data.mixer import TokenMixer
from omniseq.data.packer import IGNORE, Packer, assemble, fit_document
from omniseq.data.shardset import Doc

PAD = 999


@st.composite
def documents(draw):
    """A document of text runs and media spans (modality 1-3); a span is marked by its id range."""
    ids, mods, spans, n = [], [], [], 0
    for _ in range(draw(st.integers(1, 6))):
        mod = draw(st.integers(0, 3))
        length = draw(st.integers(1, 40))
        if mod:
            spans.append((n, n + length))
        ids += list(range(n, n + length))
        mods += [mod] * length
        n += length
    loss = draw(st.one_of(st.none(), st.lists(st.integers(0, 1), min_size=n, max_size=n)))
    return Doc(
        np.asarray(ids, np.int32),
        np.asarray(mods, np.int8),
        None if loss is None else np.asarray(loss, np.uint8),
        np.asarray(spans, np.int32).reshape(-1, 2),
    )


@settings(max_examples=60, deadline=None)
@given(
    docs=st.lists(documents(), min_size=1, max_size=12),
    seq_len=st.integers(8, 64),
    pool=st.integers(1, 8),
    policy=st.sampled_from(["cut", "drop"]),
)
def test_packing_never_splits_a_span_and_keeps_every_token(docs, seq_len, pool, policy):
    chunks, kept_docs = [], []
    for k, doc in enumerate(docs):
        parts, what = fit_document(doc, seq_len, policy)
        if what != "dropped":
            kept_docs.append(doc)
        chunks += [(c, (k, i)) for i, c in enumerate(parts)]
        if len(doc) <= seq_len:  # a fitting document comes back whole and unchanged, whatever the policy
            assert what == "" and len(parts) == 1 and _same_doc(parts[0], doc)
        if what == "cut":
            assert np.array_equal(np.concatenate([c.ids for c in parts]), doc.ids)  # cut, nothing lost
        if what == "dropped":
            assert parts == [] and len(doc) > seq_len  # only a document longer than a row is ever dropped
            long_span = len(doc.media_spans) and (doc.media_spans[:, 1] - doc.media_spans[:, 0] > seq_len).any()
            assert policy == "drop" or long_span
    feed = iter(chunks)
    filler = Doc(np.zeros(seq_len + 1, np.int32), np.zeros(seq_len + 1, np.int8), None, np.zeros((0, 2), np.int32))
    draw = lambda: [next(feed, (filler, ()))]  # noqa: E731  (fillers never fit: the feed has ended)
    packer = Packer(seq_len, pool)
    rows = []
    while row := packer.next_row(draw):
        rows.append(row)
    batch = assemble(rows, seq_len, PAD)
    got = []
    for r, row in enumerate(rows):
        ids, lab, pos, did, lm = (
            batch[k][r].numpy() for k in ("input_ids", "labels", "position_ids", "document_ids", "label_modality")
        )
        o = 0
        for j, doc in enumerate(row):
            n = len(doc)
            assert n <= seq_len and (did[o : o + n] == j).all() and (pos[o : o + n] == np.arange(n)).all()
            assert (ids[o : o + n] == doc.ids).all()
            want = doc.ids[1:].astype(np.int64)
            if doc.loss is not None:
                want = np.where(doc.loss[1:] == 0, IGNORE, want)
            assert (lab[o : o + n - 1] == want).all() and lab[o + n - 1] == IGNORE
            assert ((lm[o : o + n] == -1) == (lab[o : o + n] == IGNORE)).all()
            keep = lab[o : o + n - 1] != IGNORE
            assert (lm[o : o + n - 1][keep] == doc.modality[1:][keep]).all()
            got.append(doc.ids.tolist())
            o += n
        assert (ids[o:] == PAD).all() and (lab[o:] == IGNORE).all() and (did[o:] == len(row)).all()
    # every media span of every original document sits whole inside one packed document
    packed = [tuple(g) for g in got]
    for doc in kept_docs:
        for s, e in doc.media_spans:
            assert any(_contains(p, tuple(doc.ids[s:e].tolist())) for p in packed)
    assert sorted(packed) == sorted(tuple(c.ids.tolist()) for c, _ in chunks)


def _same_doc(a: Doc, b: Doc) -> bool:
    return (
        np.array_equal(a.ids, b.ids)
        and np.array_equal(a.modality, b.modality)
        and (a.loss is None) == (b.loss is None)
        and (a.loss is None or np.array_equal(a.loss, b.loss))
        and np.array_equal(a.media_spans.reshape(-1, 2), b.media_spans.reshape(-1, 2))
    )


def _contains(seq: tuple, sub: tuple) -> bool:
    return any(seq[i : i + len(sub)] == sub for i in range(len(seq) - len(sub) + 1))


def test_cut_happens_at_span_boundaries():
    ids = np.arange(30, dtype=np.int32)
    mod = np.zeros(30, np.int8)
    mod[4:14] = 1
    doc = Doc(ids, mod, None, np.array([[4, 14]], np.int32))
    parts, what = fit_document(doc, 12, "cut")
    assert what == "cut" and [len(p) for p in parts] == [4, 12, 12, 2]  # [0,4) text, then the span whole
    assert parts[1].media_spans.tolist() == [[0, 10]]
    assert fit_document(doc, 9, "cut") == ([], "dropped")  # the span alone is longer than a row
    assert fit_document(doc, 12, "drop") == ([], "dropped")


def test_best_fit_fills_rows():
    rng = np.random.default_rng(0)
    lengths = rng.integers(20, 400, size=2000)
    docs = iter(
        [(Doc(np.zeros(n, np.int32), np.zeros(n, np.int8), None, np.zeros((0, 2), np.int32)), ()) for n in lengths]
    )
    packer = Packer(1024, 64)
    rows = [packer.next_row(lambda: [next(docs)]) for _ in range(300)]
    assert sum(len(d) for r in rows for d in r) / (300 * 1024) > 0.97


def test_mixer_follows_token_shares():
    mixer = TokenMixer([1, 3], ["a", "b"])
    for _ in range(2000):
        s = mixer.choose()
        mixer.add(s, 7 if s == 0 else 131)
    assert abs(mixer.shares()["a"] - 0.25) < 0.01
