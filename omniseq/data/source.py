"""One shard set as an endless, shuffled, random-access stream for one (rank, worker).

Splitting: stream `i` of `n` (i = rank * num_workers + worker, n = world_size * num_workers) takes
the samples [i*N/n, (i+1)*N/n) of the set's global order (N samples, shard by shard as manifest.json
lists them): every stream gets N/n samples, give or take one, whatever the shard sizes, and reads only
the shards its range touches, decoding only its own samples of them. Splitting by whole shards
(WebDataset's split_by_node + split_by_worker) would give a stream only what its shards hold: shards
[10, 10, 10, 10, 1] over 5 ranks would train rank 4 on one document over and over. The builder
shuffles lines across corpora (`shuffle`, the default), so a contiguous range is a random subset.

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

# the document (or None and why it was skipped) and its sample number in the set (shard start + index):
# a bad sample comes round once per epoch, and the loader counts it once
Fetched = tuple[Doc | None, str, int]


def split(counts: list[int], stream: int, n_streams: int) -> dict[int, range]:
    """Stream `stream`'s samples of each shard it touches: its contiguous 1/n of the global order."""
    total = sum(counts)
    lo, hi = total * stream // n_streams, total * (stream + 1) // n_streams
    out, start = {}, 0
    for k, n in enumerate(counts):
        a, b = max(lo, start), min(hi, start + n)
        if a < b:
            out[k] = range(a - start, b - start)
        start += n
    return out


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
        # shuffle_shards >= 1 and the seed >= 0 are checked where the config is read (TrainStream)
        self.shuffle_shards, self.vocab_size, self.on_error = shuffle_shards, vocab_size, on_error
        shards = manifest["shards"]
        self.files = [str(self.dir / s["file"]) for s in shards]
        self.counts = [int(s["samples"]) for s in shards]
        self.starts = np.cumsum([0, *self.counts[:-1]]).tolist()
        self.keep = split(self.counts, stream, n_streams)
        self.mine = list(self.keep)
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

    def _decode(self, raw: dict, url: str) -> tuple[Doc | None, str]:
        try:
            return decode_sample(raw, url, self.vocab_size), ""
        except ShardError as e:
            if self.on_error == "raise":
                raise
            return None, str(e)

    def _read_shard(self, k: int) -> list[Fetched]:
        """This stream's samples of shard k, in shard order; the shard's other samples are not decoded."""
        url, want, mine = self.files[k], self.counts[k], self.keep[k]
        out: list[tuple[Doc | None, str]] = []
        n, broken = 0, ""
        try:
            for i, raw in enumerate(iter_shard(url)):
                n = i + 1
                if i in mine:
                    out.append(self._decode(raw, url))
        except ShardError as e:
            if self.on_error == "raise":
                raise
            broken = str(e)  # the tar breaks here: the samples read before it are still good
        if n < want:
            err = broken or f"{url}: {n} samples, manifest.json says {want} (truncated?)"
            if self.on_error == "raise":
                raise ShardError(err)
            out += [(None, err)] * (len(mine) - len(out))
        elif n > want:
            raise ShardError(f"{url}: more samples ({n}) than manifest.json says ({want}): stale manifest?")
        return [(doc, why, self.starts[k] + i) for (doc, why), i in zip(out, mine)]

    def _load(self, block: list[int], epoch: int, b: int) -> list[Fetched]:
        samples: list[Fetched] = []
        for k in block:
            samples += self._read_shard(k)
        return [samples[i] for i in self._rng(epoch, b).permutation(len(samples))]
