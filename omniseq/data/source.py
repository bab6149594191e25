"""One shard set as an endless, shuffled, random-access stream for one (rank, worker).

Splitting: stream `i` of `n` (i = rank * num_workers + worker, n = world_size * num_workers) reads
shards i, i+n, i+2n, ... (WebDataset's split_by_node + split_by_worker); when a set has fewer shards
than streams, every stream reads every shard and keeps the samples whose global index is i mod n.

Order: every epoch the stream's shards are permuted, and each block of `shuffle_shards` consecutive
shards is read whole and permuted (a shuffle buffer the size of the block). Both permutations come
from seeds (seed, source, stream, epoch[, block]) and the per-shard counts in manifest.json, so the
sample at any stream *position* is known without reading anything before it: resuming at position
p reads only p's block. This is the reason for a block shuffle instead of WebDataset's streaming
shuffle buffer, whose contents depend on everything read before.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from omniseq.data.shardset import DataError, Doc, ShardError, decode_sample, iter_shard

Fetched = tuple[Doc | None, str]  # the document, or None and why it was skipped


class SourceStream:
    def __init__(
        self,
        directory: str | Path,
        manifest: dict,
        index: int,
        stream: int,
        n_streams: int,
        seed: int,
        shuffle_shards: int,
        vocab_size: int,
        on_error: str = "raise",
    ):
        self.dir = Path(directory)
        self.index, self.stream, self.seed = index, stream, seed
        self.shuffle_shards, self.vocab_size, self.on_error = max(1, shuffle_shards), vocab_size, on_error
        shards = manifest["shards"]
        self.files = [str(self.dir / s["file"]) for s in shards]
        self.counts = [int(s["samples"]) for s in shards]
        if len(shards) >= n_streams:
            self.mine = list(range(stream, len(shards), n_streams))
            self.keep = {k: np.arange(self.counts[k]) for k in self.mine}
        else:
            starts = np.cumsum([0, *self.counts[:-1]])
            self.mine = list(range(len(shards)))
            self.keep = {
                k: np.flatnonzero((starts[k] + np.arange(self.counts[k])) % n_streams == stream) for k in self.mine
            }
        self.epoch_len = sum(len(v) for v in self.keep.values())
        if self.epoch_len == 0:
            raise DataError(
                f"shard set {self.dir} has no sample for stream {stream} of {n_streams} "
                f"({sum(self.counts)} samples): build more samples or use fewer ranks/workers"
            )
        self._cache: dict[tuple[int, int], list[Fetched]] = {}
        self._epoch_blocks: tuple = (-1, None)

    def _rng(self, *key: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.index, self.stream, *key])

    def _blocks(self, epoch: int) -> tuple[list[list[int]], np.ndarray]:
        if self._epoch_blocks[0] != epoch:
            self._epoch_blocks = (epoch, self._make_blocks(epoch))
        return self._epoch_blocks[1]

    def _make_blocks(self, epoch: int) -> tuple[list[list[int]], np.ndarray]:
        order = [self.mine[i] for i in self._rng(epoch).permutation(len(self.mine))]
        blocks = [order[i : i + self.shuffle_shards] for i in range(0, len(order), self.shuffle_shards)]
        ends = np.cumsum([sum(len(self.keep[k]) for k in b) for b in blocks])
        return blocks, ends

    def fetch(self, position: int) -> Fetched:
        """The document at `position` of this stream (positions run on across epochs)."""
        epoch, r = divmod(position, self.epoch_len)
        blocks, ends = self._blocks(epoch)
        b = int(np.searchsorted(ends, r, side="right"))
        if (epoch, b) not in self._cache:
            if len(self._cache) >= 2:  # the current block, and the previous one for a resumed pool
                self._cache.pop(next(iter(self._cache)))
            self._cache[(epoch, b)] = self._load(blocks[b], epoch, b)
        return self._cache[(epoch, b)][r - (int(ends[b - 1]) if b else 0)]

    def _read_shard(self, k: int) -> list[Fetched]:
        url, want = self.files[k], self.counts[k]
        out: list[Fetched] = []
        broken = ""
        try:
            for raw in iter_shard(url):
                try:
                    out.append((decode_sample(raw, url, self.vocab_size), ""))
                except ShardError as e:
                    if self.on_error == "raise":
                        raise
                    out.append((None, str(e)))
        except ShardError as e:
            if self.on_error == "raise":
                raise
            broken = str(e)  # the tar breaks here: the samples read before it are still good
        if len(out) < want:
            err = broken or f"{url}: {len(out)} samples, manifest.json says {want} (truncated?)"
            if self.on_error == "raise":
                raise ShardError(err)
            out += [(None, err)] * (want - len(out))
        elif len(out) > want:
            raise ShardError(f"{url}: more samples ({len(out)}) than manifest.json says ({want}): stale manifest?")
        return out

    def _load(self, block: list[int], epoch: int, b: int) -> list[Fetched]:
        samples: list[Fetched] = []
        for k in block:
            shard = self._read_shard(k)
            samples += [shard[i] for i in self.keep[k]]
        return [samples[i] for i in self._rng(epoch, b).permutation(len(samples))]
