"""Shard-building throughput: samples/s and tokens/s per worker on a codes-only corpus; one JSON line.

    python bench/shards.py --lines 4000 --workers 2

The corpus gives media as inline codes, so this measures the builder itself (JSON parsing, text
tokenization, document encoding, tar writing) and not a media tokenizer (see bench/tokenizers.py).
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import numpy as np

from omniseq.data.corpus import CorpusConfig
from omniseq.data.shards import ShardConfig, build_shards
from omniseq.tokenizers.text import TextTokenizer, TextTrainConfig
from omniseq.vocab import CodebookSpec, VocabLayout

WORDS = "the a small large red green blue cat dog bird sat ran flew on under over the mat tree house".split()


def write_corpus(d: Path, lines: int, seed: int) -> list[CorpusConfig]:
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    sentence = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
    pairs = [
        {"image_codes": nrng.integers(0, 1024, (16, 16)).tolist(), "text": sentence(rng.randint(4, 20))}
        for _ in range(lines // 2)
    ]
    speech = [
        {
            "segments": [
                {"text": sentence(5)},
                {"audio_codes": nrng.integers(0, 1024, (4, rng.randint(25, 150))).tolist()},
            ]
        }
        for _ in range(lines // 4)
    ]
    text = [{"text": sentence(rng.randint(20, 300))} for _ in range(lines - len(pairs) - len(speech))]
    out = []
    for name, rows, fmt in (
        ("pairs", pairs, "pair"),
        ("speech", speech, "interleaved"),
        ("text", text, "text"),
    ):
        (d / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        out.append(CorpusConfig(str(d / f"{name}.jsonl"), fmt))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=4000, help="corpus lines in total")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--samples-per-shard", type=int, default=250)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "words.txt").write_text("\n".join(" ".join(random.Random(i).choices(WORDS, k=12)) for i in range(2000)))
        tok, _ = TextTokenizer.train([d / "words.txt"], d / "text", TextTrainConfig(vocab_size=300))
        layout = VocabLayout.build(
            tok.spec(),
            [
                CodebookSpec("image", "bench", 1024, grid=(16, 16), row_end=True),
                CodebookSpec("audio", "bench", 1024, num_layers=4, flatten="layer"),
            ],
        )
        layout.save(d / "vocab")
        cfg = ShardConfig(
            corpora=write_corpus(d, args.lines, 0),
            vocab=str(d / "vocab"),
            text_tokenizer=str(d / "text"),
            out=str(d / "shards"),
            samples_per_shard=args.samples_per_shard,
            workers=args.workers,
        )
        t0 = time.perf_counter()
        m = build_shards(cfg, progress=False)
        dt = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "bench": "shards",
                "workers": args.workers,
                "samples": m["samples"],
                "tokens": m["tokens"]["total"],
                "samples_per_s_per_worker": round(m["samples"] / dt / args.workers, 1),
                "tokens_per_s_per_worker": round(m["tokens"]["total"] / dt / args.workers),
                "samples_per_s": round(m["samples"] / dt, 1),
                "seconds": round(dt, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
