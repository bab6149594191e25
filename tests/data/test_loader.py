"""Loader: shards -> batches gives back the documents exactly, hits token shares, resumes exactly."""

from __future__ import annotations

import io
import itertools
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from omniseq.data.loader import LoaderOptions, SourceConfig, build_train_stream
from omniseq.data.shards import build_shards
from omniseq.data.shardset import DataError, ShardError, decode_sample, iter_shard, read_manifest
from omniseq.vocab import CodebookSpec, VocabLayout, VocabMismatchError


def build(cfg, name: str, corpora: slice) -> str:
    out = str(Path(cfg.out).parent / name)
    build_shards(replace(cfg, corpora=cfg.corpora[corpora], out=out, samples_per_shard=7), progress=False)
    return out


def stored_docs(out: str, layout) -> list[tuple]:
    m = read_manifest(out, layout)
    files = [str(Path(out) / s["file"]) for s in m["shards"]]
    return [tuple(decode_sample(r, f, layout.size).ids.tolist()) for f in files for r in iter_shard(f)]


def docs_of(batch: dict, pad: int) -> list[tuple]:
    out = []
    for ids, did in zip(batch["input_ids"], batch["document_ids"]):
        for j in torch.unique(did):
            seg = ids[did == j]
            if seg[0] != pad:
                out.append(tuple(seg.tolist()))
    return out


def test_corpus_to_shards_to_loader_gives_back_every_document(shard_env):
    cfg, layout = shard_env
    out = build(cfg, "all", slice(None))
    want = stored_docs(out, layout)
    stream = build_train_stream(
        [SourceConfig(out)], 256, 4, 0, 1, seed=1, layout=layout, options=LoaderOptions(pool_size=1)
    )
    got = []
    for batch in stream:
        assert batch["input_ids"].dtype == torch.int64 and batch["document_ids"].dtype == torch.int32
        got += docs_of(batch, layout.id("<pad>"))
        if len(got) >= len(want):
            break
    assert sorted(got[: len(want)]) == sorted(want) and got[: len(want)] != want  # all of them, shuffled
    assert stream.stats()["cut"] == 0


def test_realised_token_shares_hit_the_targets(shard_env):
    cfg, layout = shard_env
    text, media = build(cfg, "text", slice(3, 4)), build(cfg, "media", slice(1, 2))
    sources = [SourceConfig(text, 0.7), SourceConfig(media, 0.3)]
    stream = build_train_stream(sources, 128, 8, 0, 1, seed=0, layout=layout)
    counts = np.zeros(2)
    for batch in itertools.islice(stream, 40):
        for doc in docs_of(batch, layout.id("<pad>")):
            counts[int(max(doc) >= layout.text.size + len(layout.specials))] += len(doc)
    assert counts.sum() > 35_000
    assert abs(counts[0] / counts.sum() - 0.7) < 0.02
    assert abs(stream.stats()["shares"]["text"] - 0.7) < 0.02


def take(stream, n: int) -> list[dict]:
    it = iter(stream)
    out = [next(it) for _ in range(n)]
    it.close()  # shuts the DataLoader workers down
    return out


def test_resumed_stream_equals_the_uninterrupted_one_2_ranks_x_2_workers(shard_env):
    cfg, layout = shard_env
    a, b = build(cfg, "a", slice(0, 2)), build(cfg, "b", slice(2, 4))
    sources = [SourceConfig(a, 0.4), SourceConfig(b, 0.6)]
    opts = LoaderOptions(num_workers=2, pool_size=8, prefetch=2)
    make = lambda rank: build_train_stream(sources, 64, 2, rank, 2, seed=5, layout=layout, options=opts)  # noqa: E731
    firsts = []
    for rank in (0, 1):
        full = take(make(rank), 7)
        first = make(rank)
        head = take(first, 3)
        state = first.state_dict()
        resumed = make(rank)
        resumed.load_state_dict(state)
        tail = take(resumed, 4)
        for x, y in zip(full, head + tail):
            assert all(torch.equal(x[k], y[k]) for k in x)
        firsts.append(full[0]["input_ids"])
    assert not torch.equal(firsts[0], firsts[1])  # ranks read different data
    with pytest.raises(DataError, match="world_size"):
        build_train_stream(sources, 64, 2, 0, 4, seed=5, layout=layout, options=opts).load_state_dict(state)


def test_wrong_vocab_hash_is_refused(shard_env, text_tokenizer):
    cfg, layout = shard_env
    out = build(cfg, "text", slice(3, 4))
    other = VocabLayout.build(text_tokenizer.spec(), [CodebookSpec("image", "test", 32, grid=(2, 3), row_end=True)])
    with pytest.raises(VocabMismatchError, match="shard set"):
        build_train_stream([SourceConfig(out)], 64, 2, 0, 1, seed=0, layout=other)


def rewrite(tar: Path, edit) -> None:
    """Rewrite a shard with `edit(name, data) -> data` applied to every member."""
    with tarfile.open(tar) as t:
        members = [(m, t.extractfile(m).read()) for m in t.getmembers()]
    with tarfile.open(tar, "w") as t:
        for m, data in members:
            data = edit(m.name, data)
            m.size = len(data)
            t.addfile(m, io.BytesIO(data))


def npy(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def first_epoch(out: str, layout, on_error: str, max_bad: int = 100):
    stream = build_train_stream(
        [SourceConfig(out)],
        256,
        1,
        0,
        1,
        seed=0,
        layout=layout,
        options=LoaderOptions(pool_size=1, on_error=on_error, max_bad_samples=max_bad),
    )
    worker = stream.worker_stream(0)
    n = worker.sources[0].epoch_len
    return [worker._fetch(0, p) for p in range(n)], worker


@pytest.mark.parametrize(
    "edit, match",
    [
        (
            lambda name, d: b"garbage" if name.endswith("0_0.tokens.npy") else d,
            "tokens.npy: not a readable .npy",
        ),
        (
            lambda name, d: npy(np.array([1, 10**6], np.int32)) if name.endswith("0_0.tokens.npy") else d,
            "outside the vocabulary",
        ),
        (
            lambda name, d: npy(np.array([[0, 99, 1]], np.int32)) if name.endswith("0_0.spans.npy") else d,
            "spans",
        ),
    ],
)
def test_corrupt_members_raise_naming_the_shard_or_are_counted(shard_env, edit, match):
    cfg, layout = shard_env
    out = build(cfg, "text", slice(3, 4))
    shard = Path(out) / "shard-000000.tar"
    rewrite(shard, edit)
    with pytest.raises(ShardError, match=rf"shard-000000.tar:\S+ {match}|shard-000000.tar.*{match}"):
        first_epoch(out, layout, "raise")
    fetched, worker = first_epoch(out, layout, "skip")
    assert worker.counters["bad"] == 1 and sum(1 for f in fetched if f) == len(fetched) - 1
    assert match.split()[0] in worker.bad_examples[0]
    with pytest.raises(DataError, match="max_bad_samples=0"):
        first_epoch(out, layout, "skip", max_bad=0)


def test_truncated_tar_raises_or_keeps_the_good_samples_before_the_break(shard_env):
    cfg, layout = shard_env
    out = build(cfg, "text", slice(3, 4))
    shard = Path(out) / "shard-000001.tar"
    n_shard = read_manifest(out, layout)["shards"][1]["samples"]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2 + 100])
    with pytest.raises(ShardError, match="shard-000001.tar"):
        first_epoch(out, layout, "raise")
    fetched, worker = first_epoch(out, layout, "skip")
    good = sum(1 for f in fetched if f)
    assert 0 < worker.counters["bad"] < n_shard and good + worker.counters["bad"] == 24


def test_in_process_stream_resumes_exactly_and_round_trips_through_torch_save(shard_env, tmp_path):
    cfg, layout = shard_env
    a, b = build(cfg, "a", slice(0, 2)), build(cfg, "b", slice(2, 4))
    sources = [SourceConfig(a, 0.5), SourceConfig(b, 0.5)]
    make = lambda: build_train_stream(sources, 48, 3, 1, 3, seed=2, layout=layout)  # noqa: E731
    whole = make()
    full = take(whole, 9)
    first = make()
    take(first, 5)
    torch.save(first.state_dict(), tmp_path / "state.pt")
    resumed = make()
    resumed.load_state_dict(torch.load(tmp_path / "state.pt"))
    for x, y in zip(full[5:], take(resumed, 4)):
        assert all(torch.equal(x[k], y[k]) for k in x)
    assert resumed.stats() == whole.stats() and whole.stats()["rows"] == 27
