"""Image / video tokenizer throughput: `python bench/tokenizers.py {image,video} [options]`, one JSON line.

Encode and decode images/s at 64x64 and 256x256 on the CPU (float32) and, when torch.cuda is
available, on the GPU (bf16 autocast, batch 64). Speed does not depend on the weights, so without
--tokenizer the model of --config is built with random weights. `video` times whole clips
(frames sampled, each through the image tokenizer) and reports frames/s.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from omniseq.config import load_config
from omniseq.tokenizers.base import load_tokenizer
from omniseq.tokenizers.image import VQImageTokenizer
from omniseq.tokenizers.image_io import ImageIOConfig
from omniseq.tokenizers.image_train import ImageTrainConfig
from omniseq.tokenizers.video import FrameVideoConfig, FrameVideoTokenizer

ROOT = Path(__file__).resolve().parents[1]


def timed(fn, repeats: int) -> float:
    """Seconds per call, after one warm-up call."""
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def image_rates(tok: VQImageTokenizer, size: int, batch: int, repeats: int, dtype: torch.dtype) -> dict:
    images = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    codes = tok.encode_batch(images, dtype)
    enc = timed(lambda: tok.encode_batch(images, dtype), repeats)
    dec = timed(lambda: tok.decode_batch(codes, dtype), repeats)
    return {
        "encode_img_s": round(batch / enc, 1),
        "decode_img_s": round(batch / dec, 1),
        "tokens": int(codes[0].size),
    }


def build(args) -> VQImageTokenizer:
    if args.tokenizer:
        return load_tokenizer(args.tokenizer)
    torch.manual_seed(0)
    return VQImageTokenizer(load_config(ImageTrainConfig, args.config).tokenizer)


def main(argv: list[str]) -> dict:
    ap = argparse.ArgumentParser(prog="python bench/tokenizers.py {image,video}", description=__doc__)
    ap.add_argument("mode", choices=["image", "video"])
    ap.add_argument("--tokenizer", help="a saved image tokenizer directory (default: random weights)")
    ap.add_argument("--config", default=str(ROOT / "configs/tokenizers/image.yaml"))
    ap.add_argument("--sizes", default="64,256", help="image sides to time")
    ap.add_argument("--cpu-batch", type=int, default=16)
    ap.add_argument("--gpu-batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tok = build(args)
    result: dict = {"bench": f"tokenizers_{args.mode}", "kind": tok.kind, "codebook": tok.codebook_size}
    result["threads"] = torch.get_num_threads()
    devices = [("cpu", torch.float32, args.cpu_batch)]
    if torch.cuda.is_available():
        devices.append(("cuda", torch.bfloat16, args.gpu_batch))
    for device, dtype, batch in devices:
        tok.model.to(device)
        if args.mode == "image":
            for size in (int(s) for s in args.sizes.split(",")):
                tok.cfg.image = ImageIOConfig(size=size)
                result[f"{device}_{size}"] = image_rates(tok, size, batch, args.repeats, dtype)
        else:
            size = tok.cfg.image.size or 64
            clip = np.random.default_rng(0).integers(0, 256, (16, size, size, 3), dtype=np.uint8)
            video = FrameVideoTokenizer(FrameVideoConfig(fps=8, max_frames=16, source_fps=8), tok)
            codes = video.encode(clip)
            enc = timed(lambda: video.encode(clip), args.repeats)  # noqa: B023 (called before the loop moves on)
            dec = timed(lambda: video.decode(codes), args.repeats)  # noqa: B023
            result[f"{device}_{size}"] = {
                "encode_frames_s": round(16 / enc, 1),
                "decode_frames_s": round(16 / dec, 1),
            }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])  # python bench/tokenizers_image.py {image,video} [options], as bench/tokenizers.py
