"""Train the three real-media scorers from scratch and print ONE JSON line of their eval accuracy and seconds.

    nice python bench/real_scorers.py [--data ../shared/data] [--threads 1] [--seed 0]

Trains digit_image, spoken_digit and sound (omniseq.eval.real_scorers, default configs) into a temporary
cache, so nothing is reused. Besides each scorer's eval accuracy on the real eval split it reports the
accuracy on eval media degraded like generated media: MNIST eval digits squeezed through 12x12 and
decoded as 32x32 RGB (the blur of a VQ reconstruction), and ESC-10 eval clips cut to their loudest 2 s
(the length of a generated sound).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from omniseq.data import real_sets
from omniseq.eval.real_scorers import SoundScorer, load_or_train, loudest_window


def blurred_rgb(image: np.ndarray, via: int = 12, size: int = 32) -> np.ndarray:
    """uint8 [28, 28] -> uint8 [size, size, 3] through a `via`-pixel bottleneck (bilinear both ways)."""
    small = Image.fromarray(image).resize((via, via), Image.Resampling.BILINEAR)
    return np.asarray(small.resize((size, size), Image.Resampling.BILINEAR).convert("RGB"))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=real_sets.DEFAULT_DATA, help="the real sets (../shared/data)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = {"bench": "real_scorers", "threads": args.threads, "seed": args.seed}
    with tempfile.TemporaryDirectory() as cache:
        for name in ("digit_image", "spoken_digit", "sound"):
            scorer, report = load_or_train(name, args.data, cache, args.seed)
            out[name] = {k: report[k] for k in ("train", "eval", "eval_accuracy", "seconds")}
            if name == "digit_image":
                images, labels, split = real_sets.mnist(args.data)
                blurred = [blurred_rgb(x) for x in images[split == "eval"]]
                out[name]["eval_accuracy_blurred_32rgb"] = round(scorer.accuracy(blurred, labels[split == "eval"]), 4)
            if name == "sound":
                _, _, waves, targets, _ = SoundScorer.read(args.data)
                crops = [loudest_window(w) for w in waves]
                out[name]["eval_accuracy_loudest_2s"] = round(scorer.accuracy(crops, targets), 4)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
