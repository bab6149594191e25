"""Loader: shards -> batches gives back the documents exactly, hits token shares, resumes exactly."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import re
import shutil
import signal
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from omniseq.data.corpus import CorpusConfig
from omniseq.data.loader import LoaderOptions, SourceConfig, build_train_stream
from omniseq.data.mixer import TokenMixer
from omniseq.data.shards import build_shards
from omniseq.data.shardset import DataError, ShardError, decode_sample, iter_shard, read_manifest
from omniseq.data.source import split
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
    return [worker._fetch(0, p)[0] for p in range(n)], worker


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


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_a_shard_with_more_samples_than_its_manifest_says_raises_even_with_skip(shard_env, on_error):
    """A stale manifest (docs/data.md): the positions it gives would mean other documents, so no skipping."""
    cfg, layout = shard_env
    out = build(cfg, "text", slice(3, 4))
    path = Path(out) / "manifest.json"
    m = json.loads(path.read_text())
    held = sum(1 for _ in iter_shard(str(Path(out) / m["shards"][1]["file"])))
    assert m["shards"][1]["samples"] == held > 1
    m["shards"][1]["samples"] = held - 1  # the tar holds one sample more than the manifest says
    path.write_text(json.dumps(m))
    with pytest.raises(ShardError, match=rf"shard-000001.tar: more samples \({held}\) than manifest.json says"):
        first_epoch(out, layout, on_error)


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


@contextlib.contextmanager
def within(seconds: int):
    """Fail instead of hanging: a stream that never yields would block the test run forever."""

    def fail(*_):
        raise TimeoutError(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize(
    "policy, cause",
    [
        ("cut", "48 dropped as holding a media span longer than seq_len=8"),
        ("drop", "48 dropped as longer than seq_len=8"),
    ],
)
def test_a_source_whose_documents_are_all_dropped_raises_naming_it_instead_of_hanging(shard_env, policy, cause):
    cfg, layout = shard_env
    text, media = build(cfg, "text", slice(3, 4)), build(cfg, "media", slice(0, 1))  # image spans: 10 tokens
    sources = [SourceConfig(text, 0.9), SourceConfig(media, 0.1)]
    stream = build_train_stream(sources, 8, 1, 0, 1, seed=0, layout=layout, options=LoaderOptions(long_docs=policy))
    with within(20), pytest.raises(DataError, match=rf"source 'media' .* 48 draws in a row .*: {cause}"):
        next(iter(stream))  # 24 pairs, none fits: two epochs of them in a row


def sample_ranges(counts: list[int], n: int) -> list[list[int]]:
    starts = np.cumsum([0, *counts[:-1]])
    return [[int(starts[k]) + i for k, r in split(counts, i, n).items() for i in r] for i in range(n)]


@pytest.mark.parametrize("counts, n", [([10, 10, 10, 10, 1], 5), ([5, 5, 5, 5, 4], 4), ([7], 3), ([3, 9, 1, 6], 2)])
def test_every_stream_gets_an_equal_share_of_the_samples_whatever_the_shard_sizes(counts, n):
    streams = sample_ranges(counts, n)
    assert max(map(len, streams)) - min(map(len, streams)) <= 1
    assert sorted(sum(streams, [])) == list(range(sum(counts)))  # each sample in exactly one stream


def test_ranks_over_unequal_shards_each_train_on_their_own_fifth(shard_env, tmp_path):
    cfg, layout = shard_env
    corpus = tmp_path / "t.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"the cat {i} sat"}) + "\n" for i in range(41)))
    out = str(tmp_path / "s")
    m = build_shards(replace(cfg, corpora=[CorpusConfig(str(corpus), "text")], out=out), progress=False)
    assert [s["samples"] for s in m["shards"]] == [10, 10, 10, 10, 1]
    seen = []
    for rank in range(5):
        worker = build_train_stream([SourceConfig(out)], 64, 4, rank, 5, seed=0, layout=layout).worker_stream(0)
        src = worker.sources[0]
        docs = [tuple(src.fetch(p)[0].ids.tolist()) for p in range(src.epoch_len)]
        assert src.epoch_len in (8, 9) and len(set(docs)) == src.epoch_len
        seen += docs
    assert sorted(seen) == sorted(stored_docs(out, layout))  # the ranks share the set exactly


def test_a_bad_sample_counts_once_however_many_epochs_come_round(shard_env):
    cfg, layout = shard_env
    out = build(cfg, "text", slice(3, 4))
    shard = Path(out) / "shard-000000.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 10240 - 1024])  # the last sample is cut off
    stream = build_train_stream(
        [SourceConfig(out)], 256, 1, 0, 1, seed=0, layout=layout,
        options=LoaderOptions(pool_size=1, on_error="skip", max_bad_samples=1),
    )  # fmt: skip
    worker = stream.worker_stream(0)
    n = worker.sources[0].epoch_len
    for p in range(2 * n):
        worker._fetch(0, p)
    resumed = stream.worker_stream(0, json.loads(json.dumps(worker.state_dict())))
    for p in range(2 * n, 4 * n):  # two more epochs, after a resume
        resumed._fetch(0, p)
    assert resumed.counters["bad"] == 1 and len(resumed.bad_examples) == 1


@pytest.mark.parametrize(
    "change, field",
    [
        (dict(seq_len=64), "seq_len: saved 32, now 64"),
        (dict(seq_len=24), "seq_len: saved 32, now 24"),
        (dict(long_docs="drop"), "long_docs: saved 'cut', now 'drop'"),
        (dict(cond_dropout=0.1), "cond_dropout: saved 0.0, now 0.1"),
        (dict(shuffle_shards=1), "shuffle_shards: saved 2, now 1"),
        (dict(sources="b"), "sources: saved"),
    ],
)
def test_resume_with_other_stream_settings_is_refused_naming_the_field(shard_env, change, field):
    cfg, layout = shard_env
    paths = {"a": build(cfg, "a", slice(3, 4)), "b": build(cfg, "b", slice(1, 2))}

    def make(seq_len=32, sources="a", **opts):
        options = LoaderOptions(pool_size=8, **opts)
        return build_train_stream(
            [SourceConfig(paths[sources])], seq_len, 2, 0, 1, seed=0, layout=layout, options=options
        )

    first = make()
    take(first, 3)
    state = json.loads(json.dumps(first.state_dict()))
    make().load_state_dict(state)  # the same settings resume
    with pytest.raises(DataError, match=re.escape(field)):
        make(**change).load_state_dict(state)


@pytest.mark.parametrize(
    "rebuild",
    [dict(seed=99), dict(samples_per_shard=5)],  # another seed keeps every shard's size: only the documents move
)
def test_resume_over_a_rebuilt_shard_set_is_refused_naming_the_source(shard_env, rebuild):
    cfg, layout = shard_env
    text = replace(cfg, corpora=cfg.corpora[3:4], out=str(Path(cfg.out).parent / "text"))
    build_shards(text, progress=False)
    make = lambda: build_train_stream([SourceConfig(text.out, name="txt")], 32, 2, 0, 1, seed=0, layout=layout)  # noqa: E731
    first = make()
    take(first, 3)
    state = json.loads(json.dumps(first.state_dict()))
    shutil.rmtree(text.out)
    build_shards(text, progress=False)
    make().load_state_dict(state)  # the same build again: the same documents at the same positions
    shutil.rmtree(text.out)
    build_shards(replace(text, **rebuild), progress=False)
    with pytest.raises(DataError, match=r"saved over another build of source 'txt' \(.*/text\): its manifest.json"):
        make().load_state_dict(state)
    del state["fingerprints"]  # a state saved before fingerprints were recorded still loads
    make().load_state_dict(state)


@pytest.mark.parametrize(
    "seed, options, match",
    [
        (-1, {}, "seed: -1, expected an integer >= 0"),
        (0, dict(shuffle_shards=0), "options.shuffle_shards: 0, expected an integer >= 1"),
        (0, dict(shuffle_shards=-2), "options.shuffle_shards: -2, expected an integer >= 1"),
    ],
)
def test_bad_stream_settings_are_refused_naming_the_key_and_the_value(shard_env, seed, options, match):
    cfg, layout = shard_env
    out = build(cfg, "text", slice(3, 4))
    with pytest.raises(DataError, match=re.escape(match)):
        build_train_stream([SourceConfig(out)], 32, 2, 0, 1, seed=seed, layout=layout, options=LoaderOptions(**options))


def test_two_sources_with_the_same_folder_name_are_refused_until_named(shard_env, tmp_path):
    cfg, layout = shard_env
    a, b = str(tmp_path / "A" / "shards"), str(tmp_path / "B" / "shards")
    build_shards(replace(cfg, corpora=cfg.corpora[3:4], out=a), progress=False)
    build_shards(replace(cfg, corpora=cfg.corpora[1:2], out=b), progress=False)
    with pytest.raises(DataError, match=r"sources\[0\] \(.*A/shards\) and sources\[1\] \(.*B/shards\) are both named"):
        build_train_stream([SourceConfig(a, 0.7), SourceConfig(b, 0.3)], 64, 4, 0, 1, seed=0, layout=layout)
    named = [SourceConfig(a, 0.7, "text"), SourceConfig(b, 0.3, "media")]
    stream = build_train_stream(named, 64, 4, 0, 1, seed=0, layout=layout)
    take(stream, 3)
    assert set(stream.stats()["shares"]) == {"text", "media"}
    with pytest.raises(ValueError, match="source names must be distinct"):
        TokenMixer([1, 1], ["shards", "shards"])


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda s: s[0].pop("file"), r"shards\[0\].file is missing"),
        (lambda s: s[1].pop("samples"), r"shards\[1\].samples is missing"),
        (lambda s: s[1].update(samples=-1), r"shards\[1\].samples: expected an integer >= 0, got -1"),
        (lambda s: s[0].update(samples="7"), r"shards\[0\].samples: expected an integer >= 0, got '7'"),
        (lambda s: s[0].update(file=3), r"shards\[0\].file: expected a tar file name, got 3"),
        (lambda s: s.__setitem__(1, "shard-000001.tar"), r"shards\[1\]: expected an object with 'file' and 'samples'"),
    ],
)
def test_a_malformed_shard_entry_in_the_manifest_names_its_index_and_field(shard_env, edit, match):
    cfg, layout = shard_env
    out = build(cfg, "text", slice(3, 4))
    path = Path(out) / "manifest.json"
    m = json.loads(path.read_text())
    edit(m["shards"])
    path.write_text(json.dumps(m))
    with pytest.raises(DataError, match=r"manifest.json: " + match):
        build_train_stream([SourceConfig(out)], 32, 2, 0, 1, seed=0, layout=layout)
