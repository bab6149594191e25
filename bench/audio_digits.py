"""Are resynthesised spoken digits still recognisable?  One JSON line.

python bench/audio_digits.py --tokenizer runs/audio_tokenizer/tokenizer [--data ../shared/data/fsdd]

A logistic-regression classifier on log-mel statistics (per-third means + overall std of 40 log-mel
bands at 8 kHz: a cheap stand-in for a speech recogniser) is trained on the original FSDD training clips, then
scored on the official test split (index 0-4) twice: on the originals and on the same clips passed
through the tokenizer (encode -> decode). The goal is resynthesised accuracy >= 80% of the original's.
Also reports SI-SNR and log-mel distance of the resynthesised test clips.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from omniseq.tokenizers.audio import log_mel, mel_distance, si_snr
from omniseq.tokenizers.audio_io import load_audio, resample
from omniseq.tokenizers.base import load_tokenizer

SR = 16000  # the rate clips are compared at (SI-SNR, mel distance)
CLASSIFIER_RATE = 8000  # FSDD's recording rate


def features(x: np.ndarray) -> np.ndarray:
    """Log-mel [40, frames] at FSDD's own 8 kHz -> means of each third of the clip and the overall std.

    At 8 kHz because that is the band the recordings have: above 4 kHz an original is empty (the log
    floor) and the codec's faint noise there would move a linear classifier more than the words do.
    """
    x = resample(x, SR, CLASSIFIER_RATE)
    m = log_mel(torch.from_numpy(x)[None], CLASSIFIER_RATE, n_fft=256, hop=64, n_mels=40)[0].numpy()
    m = m - m.mean()  # gain invariance: a louder or quieter take is the same word
    thirds = [part.mean(axis=1) for part in np.array_split(m, 3, axis=1)]
    return np.concatenate([*thirds, m.std(axis=1)]).astype(np.float32)


def fit_logreg(
    x: np.ndarray, y: np.ndarray, classes: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, torch.nn.Linear]:
    """Standardise, then multinomial logistic regression with L2 (full-batch LBFGS)."""
    mu, sd = x.mean(0), x.std(0) + 1e-6
    torch.manual_seed(seed)
    lin = torch.nn.Linear(x.shape[1], classes)
    xt, yt = torch.from_numpy((x - mu) / sd), torch.from_numpy(y)
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(xt), yt) + 1e-3 * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return mu, sd, lin


def accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    mu, sd, lin = model
    with torch.no_grad():
        return float((lin(torch.from_numpy((x - mu) / sd)).argmax(1).numpy() == y).mean())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", type=Path, required=True, help="a saved audio tokenizer directory")
    ap.add_argument("--data", type=Path, default=Path("../shared/data/fsdd"), help="FSDD folder with metadata.csv")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    meta = args.data / "metadata.csv"
    if not meta.is_file():
        raise FileNotFoundError(f"FSDD metadata not found: {meta}")
    rows = list(csv.DictReader(meta.open(newline="")))
    tok = load_tokenizer(args.tokenizer)
    t0 = time.perf_counter()
    train_x, train_y, test_x, test_y, resyn_x, snr, mel = [], [], [], [], [], [], []
    for r in tqdm(rows, desc="fsdd"):
        x = load_audio(args.data / r["path"], SR).samples
        if r["official_split"] != "test":
            train_x.append(features(x))
            train_y.append(int(r["digit"]))
            continue
        y = load_audio((tok.decode(tok.encode(x, sample_rate=SR)), tok.sample_rate), SR).samples[: len(x)]
        test_x.append(features(x))
        test_y.append(int(r["digit"]))
        resyn_x.append(features(y))
        ref, est = torch.from_numpy(x)[None], torch.from_numpy(y)[None]
        snr.append(float(si_snr(ref, est)[0]))
        mel.append(float(mel_distance(ref, est, SR)[0]))
    clf = fit_logreg(np.stack(train_x), np.array(train_y), 10)
    acc_orig = accuracy(clf, np.stack(test_x), np.array(test_y))
    acc_resyn = accuracy(clf, np.stack(resyn_x), np.array(test_y))
    print(json.dumps({
        "bench": "audio_digits", "tokenizer": str(args.tokenizer), "kind": tok.kind, "layers": tok.num_layers,
        "train_clips": len(train_y), "test_clips": len(test_y),
        "accuracy_original": round(acc_orig, 4), "accuracy_resynthesised": round(acc_resyn, 4),
        "ratio": round(acc_resyn / max(acc_orig, 1e-9), 4), "goal_ratio": 0.8,
        "test_si_snr_db": round(float(np.mean(snr)), 3), "test_mel_distance": round(float(np.mean(mel)), 4),
        "seconds": round(time.perf_counter() - t0, 1),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
