"""Where does a spectral audio codec lose spoken digits? ONE JSON line of the spoken-digit scorer's accuracy.

    python bench/real_codec.py --tokenizer runs/real/tokenizers/audio --scorers runs/real/scorers [--n 300]

On FSDD's held-out digits (official test split, the first --n), the scorer of omniseq.eval.real_scorers
(loaded from its cache, trained on the train split) classifies the same clips after each stage of an
rvq_spec_audio codec, so a low round trip is traced to its cause:

    original      the real clips
    vocoder       Griffin-Lim of the codec's own features of the clip (no network): what the vocoder and,
                  in the mel domain, the filterbank's pseudo-inverse keep
    autoencoder   the encoder's latent decoded unquantised: what the networks keep
    codes_L       the round trip through the first L RVQ layers (what the model's tokens can carry)
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from omniseq.data import real_sets
from omniseq.eval.real_scorers import load_or_train
from omniseq.tokenizers.audio_io import load_audio
from omniseq.tokenizers.audio_spec import griffin_lim
from omniseq.tokenizers.base import load_tokenizer

RATE = 16000


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", required=True, help="a saved rvq_spec_audio tokenizer folder")
    ap.add_argument("--scorers", default="runs/real/scorers", help="the scorers' cache (trained if absent)")
    ap.add_argument("--data", default=str(real_sets.DEFAULT_DATA))
    ap.add_argument("--n", type=int, default=300, help="held-out clips (FSDD's test split has 300)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    scorer, _ = load_or_train("spoken_digit", args.data, args.scorers)
    rows = [r for r in real_sets.fsdd(args.data) if r.split == "eval"][: args.n]
    labels = [r.meta["digit"] for r in rows]
    tok = load_tokenizer(args.tokenizer)
    codec = tok.model.eval()
    cfg = codec.cfg
    waves = {"original": [], "vocoder": [], "autoencoder": []}
    for r in rows:
        x = load_audio(r.path, RATE).samples
        waves["original"].append(x)
        wav = torch.from_numpy(np.pad(x, (0, -len(x) % cfg.hop))).float()[None, None]
        feats = codec.features(wav)
        waves["vocoder"].append(griffin_lim(codec.to_log_magnitude(feats), cfg)[0].numpy())
        latent = codec._encode_latent(feats)
        waves["autoencoder"].append(griffin_lim(codec.to_log_magnitude(codec._decode_latent(latent)), cfg)[0].numpy())
        codes = codec.encode(wav)
        for n in range(1, cfg.num_quantizers + 1):
            waves.setdefault(f"codes_{n}", []).append(codec.decode(codes[..., :n])[0, 0].numpy())
    accuracy = {k: round(scorer.accuracy(v, labels), 4) for k, v in waves.items()}
    print(json.dumps({"tokenizer": args.tokenizer, "domain": cfg.domain, "clips": len(rows), **accuracy,
                      "seconds": round(time.perf_counter() - t0, 1)}))  # fmt: skip


if __name__ == "__main__":
    main()
