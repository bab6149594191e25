"""Audio tokenizer speed: encode and decode real-time factor on CPU (and GPU when present), one JSON line.

python bench/tokenizers.py audio [--tokenizer DIR] [--seconds 10] [--repeats 3]

Without --tokenizer it builds the codec of configs/tokenizers/audio.yaml with random weights (speed
does not depend on the weights). RTF = processing seconds / audio seconds (below 1 = faster than real time).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from omniseq.config import load_config
from omniseq.tokenizers.audio import RVQAudioTokenizer, RVQCodec
from omniseq.tokenizers.audio_train import AudioTrainConfig
from omniseq.tokenizers.base import load_tokenizer

REPO = Path(__file__).resolve().parents[1]


def build(args) -> RVQAudioTokenizer:
    if args.tokenizer:
        return load_tokenizer(args.tokenizer)
    cfg = load_config(AudioTrainConfig, REPO / "configs" / "tokenizers" / "audio.yaml").codec
    torch.manual_seed(0)
    model = RVQCodec(cfg).train()
    model(torch.randn(2, 1, cfg.hop * 64) * 0.1)  # k-means init of the codebooks, as after training
    return RVQAudioTokenizer(cfg, model)


def measure(tok, x: np.ndarray, sr: int, repeats: int, device: str) -> dict:
    model = getattr(tok, "model", None)
    if model is not None:
        model.to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    codes = tok.encode(x, sample_rate=sr)  # warm-up
    tok.decode(codes)
    enc, dec = [], []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        codes = tok.encode(x, sample_rate=sr)
        sync()
        enc.append(time.perf_counter() - t)
        t = time.perf_counter()
        tok.decode(codes)
        sync()
        dec.append(time.perf_counter() - t)
    seconds = len(x) / sr
    return {"encode_rtf": round(min(enc) / seconds, 5), "decode_rtf": round(min(dec) / seconds, 5),
            "frames": int(codes.shape[1]), "layers": int(codes.shape[0])}  # fmt: skip


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="bench/tokenizers.py audio", description=__doc__)
    ap.add_argument("--tokenizer", type=Path, help="a saved audio tokenizer (default: the real config, random weights)")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of the test signal")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats; the fastest counts")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    args = ap.parse_args(argv[1:])
    torch.set_num_threads(args.threads)
    tok = build(args)
    sr = tok.sample_rate
    rng = np.random.default_rng(0)
    t = np.arange(int(args.seconds * sr)) / sr
    x = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(len(t))).astype(np.float32)
    result = {"bench": "tokenizers_audio", "kind": tok.kind, "sample_rate": sr, "audio_seconds": args.seconds,
              "threads": args.threads, "cpu": measure(tok, x, sr, args.repeats, "cpu")}  # fmt: skip
    if torch.cuda.is_available():
        result["cuda"] = measure(tok, x, sr, args.repeats, "cuda")
        result["gpu"] = torch.cuda.get_device_name()
    print(json.dumps(result))


if __name__ == "__main__":
    import sys

    main(["audio", *sys.argv[1:]])  # as bench/tokenizers.py calls it: the mode first
