"""The training stream: shard sets -> token-share mixer -> packer -> batches; resumable exactly.

The trainer's entry point is `build_train_stream` (or `stream_from_config` with a `DataConfig`).

Design (docs/data.md, "Resume"): each (rank, worker) pair runs its own `PackedStream`, a pure
function of (seed, rank, world size, worker id) and its state. The state is small and explicit:
the next stream position of every source, the mixer's token counts, the identities (source,
position, chunk) of the documents waiting in the packer's pool, and counters. Because a source can
fetch the document at any position directly (source.py), resume = put the positions back and
re-fetch the pooled documents.

DataLoader workers each hold their own stream, and their state lives in another process. So every
batch travels with its worker's state *after* that batch; the main process keeps the state of the
last batch it handed out from each worker, which is exactly what has been consumed (prefetched
batches are not counted). torch delivers batches from workers in round-robin order; a resumed
loader rotates worker ids so that its worker 0 plays the logical worker that was next in line.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from omniseq.data.cond_dropout import CondDropout
from omniseq.data.mixer import TokenMixer
from omniseq.data.packer import LONG_DOCS, Packer, Pending, assemble, fit_document
from omniseq.data.shardset import DataError, manifest_fingerprint, read_manifest
from omniseq.data.source import SourceStream
from omniseq.vocab import VocabLayout

STATE_FORMAT = "omniseq-stream/2"  # /2: streams split by sample ranges, and the state names its settings
MAX_EXAMPLES = 5
# Draws of one source in a row that may yield no document (all dropped or bad) before the stream gives up:
# the mixer keeps choosing a source whose token share lags, so a source that can yield nothing would hang
# the stream. Two epochs of a source in a row hold one whole epoch, so by then none of its documents can
# be used; 1000 bounds the wait on a large source (a source that yields one draw in a thousand is broken).
MAX_EMPTY_DRAWS = 1000


@dataclass
class SourceConfig:
    path: str = ""  # shard-set folder (holds manifest.json and the tars)
    share: float = 1.0  # target share of this stage's tokens (normalised over the sources)
    name: str = ""  # name in logs and stats; default: the folder name


@dataclass
class LoaderOptions:
    num_workers: int = 0  # DataLoader worker processes per rank; 0 = one stream in the training process
    shuffle_shards: int = 2  # shards read and permuted together (the shuffle buffer, in shards)
    pool_size: int = 64  # documents the best-fit packer chooses from
    long_docs: str = "cut"  # cut | drop: documents longer than seq_len (media spans are never split)
    on_error: str = "raise"  # raise | skip: corrupt members, truncated tars, ids out of range
    max_bad_samples: int = 100  # with on_error=skip, more bad samples than this per stream is an error
    prefetch: int = 4  # batches each DataLoader worker prepares ahead
    cond_dropout: float = 0.0  # P(a document's condition becomes <|uncond|>): trains for guidance (Emu3: 0.05)


@dataclass
class DataConfig:
    """The data part of a stage config."""

    sources: list[SourceConfig] = field(default_factory=list)  # shard sets and their token shares
    seq_len: int = 1024  # tokens per packed row
    batch_size: int = 8  # rows per micro-batch
    seed: int = 0  # shuffling; the stream is deterministic given seed, rank, world size and worker
    options: LoaderOptions = field(default_factory=LoaderOptions)  # streaming and packing knobs


class PackedStream:
    """One (rank, worker)'s stream of packed batches."""

    def __init__(
        self,
        sources: list[SourceConfig],
        manifests: list[dict],
        layout: VocabLayout,
        seq_len: int,
        batch_size: int,
        stream: int,
        n_streams: int,
        seed: int,
        options: LoaderOptions,
    ):
        self.seq_len, self.batch_size, self.opt = seq_len, batch_size, options
        self.pad_id = layout.id("<pad>")
        if not 0 <= options.cond_dropout < 1:
            raise DataError(f"cond_dropout must be a probability in [0, 1), got {options.cond_dropout}")
        self.dropout = CondDropout.from_layout(layout, options.cond_dropout, seed * 1_000_003 + stream)
        self.sources = [
            SourceStream(s.path, m, i, stream, n_streams, seed, options.shuffle_shards, layout.size, options.on_error)
            for i, (s, m) in enumerate(zip(sources, manifests))
        ]
        self.names = [s.name for s in sources]
        self.mixer = TokenMixer([s.share for s in sources], self.names)
        self.packer = Packer(seq_len, options.pool_size)
        self.positions = [0] * len(sources)
        self.counters = {"rows": 0, "documents": 0, "real_tokens": 0, "cut": 0, "dropped": 0, "bad": 0}
        self.bad_examples: list[str] = []
        self.bad_samples: set[tuple[int, int]] = set()  # (source, sample number): each bad sample counts once
        self.empty_runs = [[0, 0] for _ in sources]  # per source: [dropped, bad] of its current run of empty draws
        self.empty_limit = [min(MAX_EMPTY_DRAWS, 2 * src.epoch_len) for src in self.sources]

    def _fetch(self, s: int, pos: int) -> tuple[list[Pending], str]:
        """The chunks of the document at `pos` of source `s`, and what happened: "", "cut", "dropped" or "bad"."""
        doc, why, sample = self.sources[s].fetch(pos)
        if doc is None:
            self._count_bad(s, sample, why)
            return [], "bad"
        chunks, what = fit_document(self.dropout.apply(doc, s, pos), self.seq_len, self.opt.long_docs)
        if what:
            self.counters[what] += 1
        return [(c, (s, pos, i)) for i, c in enumerate(chunks)], what

    def _count_bad(self, s: int, sample: int, why: str) -> None:
        if (s, sample) in self.bad_samples:
            return  # the same bad sample, met again in a later epoch
        self.bad_samples.add((s, sample))
        self.counters["bad"] += 1
        if len(self.bad_examples) < MAX_EXAMPLES:
            self.bad_examples.append(why)
        if self.counters["bad"] > self.opt.max_bad_samples:
            raise DataError(
                f"more than max_bad_samples={self.opt.max_bad_samples} bad samples; first: {self.bad_examples}"
            )

    def _draw(self) -> list[Pending]:
        s = self.mixer.choose()
        pos = self.positions[s]
        self.positions[s] += 1
        out, what = self._fetch(s, pos)
        self.mixer.add(s, sum(len(c) for c, _ in out))
        run = self.empty_runs[s]
        if out:
            run[:] = [0, 0]
        else:
            run[1 if what == "bad" else 0] += 1
            if sum(run) >= self.empty_limit[s]:
                raise self._starved(s)
        return out

    def _starved(self, s: int) -> DataError:
        dropped, bad = self.empty_runs[s]
        causes = []
        if dropped and self.opt.long_docs == "drop":
            causes.append(
                f"{dropped} dropped as longer than seq_len={self.seq_len}: raise seq_len or use long_docs: cut"
            )
        elif dropped:
            causes.append(
                f"{dropped} dropped as holding a media span longer than seq_len={self.seq_len}, which is never cut: "
                "raise seq_len above the source's longest media span"
            )
        if bad:
            causes.append(f"{bad} bad samples (on_error='skip'; the first ones: {self.bad_examples})")
        return DataError(
            f"source {self.names[s]!r} ({self.sources[s].dir}) yielded no document in {sum(self.empty_runs[s])} "
            f"draws in a row ({self.sources[s].epoch_len} samples an epoch in this stream): " + "; ".join(causes)
        )

    def next_batch(self) -> dict[str, torch.Tensor]:
        rows = [self.packer.next_row(self._draw) for _ in range(self.batch_size)]
        self.counters["rows"] += len(rows)
        self.counters["documents"] += sum(len(r) for r in rows)
        self.counters["real_tokens"] += sum(len(d) for r in rows for d in r)
        return assemble(rows, self.seq_len, self.pad_id)

    def state_dict(self) -> dict:
        return {
            "positions": list(self.positions),
            "mixer": self.mixer.state_dict(),
            "pool": [list(p) for p in self.packer.pending()],
            "counters": dict(self.counters),
            "bad_examples": list(self.bad_examples),
            "bad_samples": sorted([s, n] for s, n in self.bad_samples),
            "empty_runs": [list(r) for r in self.empty_runs],
        }

    def load_state_dict(self, state: dict) -> None:
        if len(state["positions"]) != len(self.sources):
            raise DataError(f"stream state has {len(state['positions'])} sources, the config has {len(self.sources)}")
        self.positions = [int(p) for p in state["positions"]]
        self.mixer.load_state_dict(state["mixer"])
        pool = []
        for s, pos, i in state["pool"]:
            chunks, _ = self._fetch(int(s), int(pos))
            if int(i) >= len(chunks):
                raise DataError(
                    f"stream state's pool names chunk {i} of position {pos} of source {self.names[int(s)]!r}, which "
                    f"has {len(chunks)}: the shard set or the packing settings changed since the state was saved"
                )
            pool.append((chunks[int(i)][0], (int(s), int(pos), int(i))))
        self.packer.pool = pool
        # after the re-fetch, which would count its cuts a second time
        self.counters, self.bad_examples = dict(state["counters"]), list(state["bad_examples"])
        self.bad_samples = {(int(s), int(n)) for s, n in state["bad_samples"]}
        self.empty_runs = [[int(d), int(b)] for d, b in state["empty_runs"]]

    def stats(self) -> dict:
        c = self.counters
        return {
            **c,
            "shares": self.mixer.shares(),
            "packing_efficiency": c["real_tokens"] / max(c["rows"] * self.seq_len, 1),
        }


def _identity(x):
    return x


class _WorkerDataset(IterableDataset):
    """Runs inside a DataLoader worker: yields (batch, logical worker id, its state after the batch)."""

    def __init__(self, owner: TrainStream):
        self.owner, self.offset, self.states = owner, owner.next_worker, dict(owner.worker_states)

    def __iter__(self) -> Iterator:
        info = get_worker_info()
        logical = (info.id + self.offset) % self.owner.num_workers
        stream = self.owner.worker_stream(logical, self.states.get(logical))
        while True:
            batch = stream.next_batch()
            yield batch, logical, stream.state_dict()


class TrainStream:
    """An endless iterable of packed batches for one rank, with `state_dict` / `load_state_dict`."""

    def __init__(
        self,
        sources: list[SourceConfig],
        seq_len: int,
        batch_size: int,
        rank: int,
        world_size: int,
        seed: int,
        layout: VocabLayout,
        options: LoaderOptions | None = None,
    ):
        self.opt = options or LoaderOptions()
        if not sources:
            raise DataError("the stream needs at least one source")
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is not in [0, world_size={world_size})")
        if seq_len < 2 or batch_size < 1:
            raise DataError(f"seq_len must be >= 2 and batch_size >= 1, got {seq_len} and {batch_size}")
        if self.opt.long_docs not in LONG_DOCS or self.opt.on_error not in ("raise", "skip"):
            raise DataError(
                f"options.long_docs must be one of {LONG_DOCS} and on_error raise|skip, "
                f"got {self.opt.long_docs!r} and {self.opt.on_error!r}"
            )
        if not isinstance(seed, int) or seed < 0:  # numpy's generators refuse negative seeds, deep in a worker
            raise DataError(f"seed: {seed!r}, expected an integer >= 0")
        if not isinstance(self.opt.shuffle_shards, int) or self.opt.shuffle_shards < 1:
            raise DataError(
                f"options.shuffle_shards: {self.opt.shuffle_shards!r}, expected an integer >= 1 (shards read and "
                "permuted together)"
            )
        self.sources = [SourceConfig(s.path, s.share, s.name or s.path.rstrip("/").rsplit("/", 1)[-1]) for s in sources]
        first: dict[str, int] = {}  # name -> index of the first source with it
        for j, s in enumerate(self.sources):
            if (i := first.setdefault(s.name, j)) != j:  # the stats' shares are keyed by name: one would hide the other
                raise DataError(
                    f"sources[{i}] ({self.sources[i].path}) and sources[{j}] ({s.path}) are both named {s.name!r} "
                    "(a source's default name is its folder's): give each a distinct `name:`"
                )
        self.manifests = [read_manifest(s.path, layout) for s in self.sources]  # vocab hash checked here
        self.layout, self.seq_len, self.batch_size = layout, seq_len, batch_size
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.num_workers = max(1, self.opt.num_workers)
        self.worker_states: dict[int, dict] = {}
        self.next_worker = 0

    def worker_stream(self, logical: int, state: dict | None = None) -> PackedStream:
        stream = PackedStream(
            self.sources,
            self.manifests,
            self.layout,
            self.seq_len,
            self.batch_size,
            self.rank * self.num_workers + logical,
            self.world_size * self.num_workers,
            self.seed,
            self.opt,
        )
        if state is not None:
            stream.load_state_dict(state)
        return stream

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if self.opt.num_workers == 0:
            stream = self.worker_stream(0, self.worker_states.get(0))
            while True:
                batch = stream.next_batch()
                self.worker_states[0] = stream.state_dict()
                yield batch
        loader = DataLoader(
            _WorkerDataset(self),
            batch_size=None,
            num_workers=self.num_workers,
            collate_fn=_identity,
            prefetch_factor=self.opt.prefetch,
            multiprocessing_context="fork",
            # The workers' base seed from a generator of its own: drawn from torch's global one, it shifted
            # every later CPU dropout mask of a resumed run (a resume draws it again after restoring the RNG).
            # The streams draw from their own seeded generators, not from these worker seeds.
            generator=torch.Generator().manual_seed(0),
        )
        for batch, logical, state in loader:
            self.worker_states[logical] = state
            self.next_worker = (logical + 1) % self.num_workers
            yield batch

    def settings(self) -> dict:
        """What a state's positions and pool mean: which document sits at each position, and how it is cut."""
        return {
            "rank": self.rank,
            "world_size": self.world_size,
            "seed": self.seed,
            "num_workers": self.num_workers,
            "sources": [s.path for s in self.sources],
            "shuffle_shards": self.opt.shuffle_shards,
            "seq_len": self.seq_len,
            "long_docs": self.opt.long_docs,
            "cond_dropout": self.opt.cond_dropout,
        }

    def fingerprints(self) -> list[str]:
        """Each source's build: a shard set rebuilt at the same path (another seed, samples_per_shard, corpus)
        holds other documents at the same positions."""
        return [manifest_fingerprint(m) for m in self.manifests]

    def state_dict(self) -> dict:
        return {
            "format": STATE_FORMAT,
            **self.settings(),
            "fingerprints": self.fingerprints(),
            "next_worker": self.next_worker,
            "workers": {str(k): v for k, v in self.worker_states.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("format") != STATE_FORMAT:
            raise DataError(
                f"data stream state has format {state.get('format')!r}, expected {STATE_FORMAT!r}: it was saved by "
                "another version of the loader, whose positions mean other documents; start the data stream afresh"
            )
        diff = [f"{k}: saved {state.get(k)!r}, now {v!r}" for k, v in self.settings().items() if state.get(k) != v]
        if diff:
            raise DataError(
                f"data stream state was saved with other settings ({'; '.join(diff)}); resuming needs the same "
                f"{', '.join(self.settings())}: change them only when starting the data stream afresh"
            )
        # a state saved before fingerprints were recorded has none: it loads, unchecked, as it did then
        for s, saved, now in zip(self.sources, state.get("fingerprints") or [], self.fingerprints()):
            if saved != now:
                raise DataError(
                    f"data stream state was saved over another build of source {s.name!r} ({s.path}): its "
                    f"manifest.json changed since (fingerprint saved {saved}, now {now}; rebuilt with another seed, "
                    "samples_per_shard, corpus or vocabulary?), so the saved positions mean other documents; resume "
                    "over the shard set the state was saved with, or start the data stream afresh"
                )
        self.worker_states = {int(k): v for k, v in state["workers"].items()}
        self.next_worker = int(state["next_worker"])

    def stats(self) -> dict:
        """Counters summed over this rank's workers (as of the last batch handed out)."""
        total: dict = {}
        tokens = [0] * len(self.sources)
        for st in self.worker_states.values():
            for k, v in st["counters"].items():
                total[k] = total.get(k, 0) + v
            tokens = [a + b for a, b in zip(tokens, st["mixer"]["tokens"])]
        rows = total.get("rows", 0)
        total["packing_efficiency"] = total.get("real_tokens", 0) / max(rows * self.seq_len, 1)
        total["shares"] = {s.name: t / max(sum(tokens), 1) for s, t in zip(self.sources, tokens)}
        return total


def build_train_stream(
    sources: list[SourceConfig],
    seq_len: int,
    batch_size: int,
    rank: int,
    world_size: int,
    seed: int,
    layout: VocabLayout,
    options: LoaderOptions | None = None,
) -> TrainStream:
    """The trainer's constructor: one rank's endless stream of packed batches (docs/data.md)."""
    return TrainStream(sources, seq_len, batch_size, rank, world_size, seed, layout, options)


def stream_from_config(cfg: DataConfig, rank: int, world_size: int, layout: VocabLayout) -> TrainStream:
    return TrainStream(cfg.sources, cfg.seq_len, cfg.batch_size, rank, world_size, cfg.seed, layout, cfg.options)
