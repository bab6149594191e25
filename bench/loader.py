"""Loader throughput: packed tokens/s of one worker stream on a synthetic mixed shard set; one JSON line.

    python bench/loader.py --tokens 2000000 --seq-len 1024

Writes a codes-only shard set (text, image and audio documents of realistic lengths) to a temporary
folder, then runs one `PackedStream` (what each DataLoader worker runs) with three sources at MIO's
stage-2-like shares and reports tokens/s, packing efficiency and the realised shares.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import webdataset as wds

from omniseq.data.loader import LoaderOptions, SourceConfig, TrainStream
from omniseq.data.shardset import MANIFEST, SHARDSET_FORMAT, encode_sample
from omniseq.document import TokenSequence
from omniseq.vocab import MODALITIES, CodebookSpec, TextSpec, VocabLayout

LAYOUT = VocabLayout.build(
    TextSpec("sentencepiece", 32000),
    [
        CodebookSpec("image", "bench", 8192, grid=(16, 16), row_end=True),
        CodebookSpec("audio", "bench", 1024, num_layers=4, flatten="layer", rate=50.0),
    ],
)


def synthetic_doc(kind: str, rng: np.random.Generator) -> TokenSequence:
    """<bos> text [media] text <eos> with lengths drawn like captions, speech clips and web text."""
    bos, eos = LAYOUT.id("<bos>"), LAYOUT.id("<eos>")
    parts, spans, n = [np.array([bos])], [], 1

    def add(ids, mod):
        nonlocal n
        parts.append(np.asarray(ids))
        spans.append((n, n + len(ids), MODALITIES.index(mod)))
        n += len(ids)

    if kind == "text":
        add(rng.integers(0, 32000, int(np.clip(rng.lognormal(5.0, 0.9), 8, 3000))), "text")
    else:
        add(rng.integers(0, 32000, int(rng.integers(5, 40))), "text")
        codes = (
            rng.integers(0, 8192, (16, 16))
            if kind == "image"
            else rng.integers(0, 1024, (4, int(rng.integers(25, 150))))
        )
        add(LAYOUT.media_ids(kind, codes), kind)
    ids = np.concatenate([*parts, [eos]]).astype(np.int32)
    return TokenSequence(ids, np.asarray(spans, np.int32), np.ones(len(ids), np.uint8))


def write_set(out: Path, kind: str, docs: int, per_shard: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True)
    shards = []
    for k in range(0, docs, per_shard):
        name = f"{kind}-{k // per_shard:06d}.tar"
        tokens = 0
        with wds.TarWriter(str(out / name), encoder=False, mtime=0) as sink:
            for i in range(k, min(docs, k + per_shard)):
                seq = synthetic_doc(kind, rng)
                tokens += len(seq)
                sink.write(encode_sample(f"{kind}_{i:09d}", seq, {}))
        shards.append({"file": name, "samples": min(per_shard, docs - k), "tokens": {"total": tokens}})
    manifest = {"format": SHARDSET_FORMAT, "vocab_hash": LAYOUT.hash, "shards": shards}
    (out / MANIFEST).write_text(json.dumps(manifest))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=2_000_000, help="packed tokens to time")
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--pool-size", type=int, default=64)
    ap.add_argument("--docs", type=int, default=4000, help="documents per source")
    args = ap.parse_args()
    shares = {"text": 0.5, "image": 0.125, "audio": 0.375}
    with tempfile.TemporaryDirectory() as tmp:
        for i, kind in enumerate(shares):
            write_set(Path(tmp) / kind, kind, args.docs, 500, i)
        sources = [SourceConfig(str(Path(tmp) / k), s, k) for k, s in shares.items()]
        stream = TrainStream(
            sources, args.seq_len, args.batch_size, 0, 1, 0, LAYOUT, LoaderOptions(pool_size=args.pool_size)
        )
        worker = stream.worker_stream(0)
        worker.next_batch()  # warm-up: first blocks read
        start_rows, start_real = worker.counters["rows"], worker.counters["real_tokens"]
        t0 = time.perf_counter()
        while (worker.counters["rows"] - start_rows) * args.seq_len < args.tokens:
            worker.next_batch()
        dt = time.perf_counter() - t0
        stats = worker.stats()
    rows = stats["rows"] - start_rows
    print(
        json.dumps(
            {
                "bench": "loader",
                "seq_len": args.seq_len,
                "batch_size": args.batch_size,
                "pool_size": args.pool_size,
                "row_tokens_per_s_per_worker": round(rows * args.seq_len / dt),
                "real_tokens_per_s_per_worker": round((stats["real_tokens"] - start_real) / dt),
                "packing_efficiency": round(stats["packing_efficiency"], 4),
                "target_shares": shares,
                "realised_shares": {k: round(v, 4) for k, v in stats["shares"].items()},
                "max_share_error_pp": round(100 * max(abs(stats["shares"][k] - s) for k, s in shares.items()), 3),
                "tokens_total": stats["real_tokens"],
                "cut": stats["cut"],
                "dropped": stats["dropped"],
                "seconds": round(dt, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
