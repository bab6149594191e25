"""`make demo`: the main job on built-in demo data, step by step, with the time of each step.

python -m omniseq.demo --out runs/demo
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import numpy as np

from omniseq.document import DocumentCodec, Segment
from omniseq.tokenizers.text import TextTokenizer, TextTrainConfig
from omniseq.vocab import CodebookSpec, VocabLayout

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
SHAPES = ["circle", "square", "triangle", "star"]
PLACES = ["top left", "top right", "bottom left", "bottom right", "centre"]


def demo_sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [
        f"a {rng.choice(['small', 'large'])} {rng.choice(COLOURS)} {rng.choice(SHAPES)} in the {rng.choice(PLACES)}"
        for _ in range(n)
    ]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/demo"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    timings = {}

    t0 = time.perf_counter()
    corpus = args.out / "corpus" / "text.txt"
    corpus.parent.mkdir(parents=True, exist_ok=True)
    corpus.write_text("\n".join(demo_sentences(5000, args.seed)) + "\n")
    timings["generate corpus"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    tok, report = TextTokenizer.train([corpus], args.out / "tokenizers" / "text", TextTrainConfig(vocab_size=512))
    timings["train text tokenizer"] = time.perf_counter() - t0
    print(f"text tokenizer: {tok.vocab_size} pieces from {report.lines} lines -> {args.out / 'tokenizers/text'}")

    # Until the media tokenizers exist the demo layout reserves their ranges from declared sizes.
    layout = VocabLayout.build(
        tok.spec(),
        [CodebookSpec("image", "demo", 256, grid=(4, 4), row_end=True),
         CodebookSpec("audio", "demo", 256, num_layers=2, flatten="layer")],
    )  # fmt: skip
    layout.save(args.out / "vocab")
    print(f"vocabulary: {layout.size} ids, hash {layout.hash[:16]}… -> {args.out / 'vocab/manifest.json'}")

    rng = np.random.default_rng(args.seed)
    doc = [
        Segment("text", text="draw " + demo_sentences(1, args.seed + 1)[0], role="user"),
        Segment("image", codes=rng.integers(0, 256, (4, 4)), role="assistant"),
        Segment("text", text=" and say it: ", role="assistant"),
        Segment("audio", codes=rng.integers(0, 256, (2, 6)), role="assistant"),
    ]
    codec = DocumentCodec(layout, tok)
    seq = codec.encode(doc)
    back = codec.decode(seq.ids)
    print(
        f"document of {len(doc)} segments -> {len(seq)} ids; "
        f"loss on {int(seq.loss_mask.sum())} (the assistant's turn only)"
    )
    print(f"round trip exact: {back == doc}")
    for name, secs in timings.items():
        print(f"  {name:<24} {secs:6.2f} s")


if __name__ == "__main__":
    main()
