"""How long a recipe's tokenizers step trains: steps/s of its image VQ and audio codec, on each device. ONE JSON line.

    python bench/tokenizer_training.py [--recipe configs/recipes/real_small.yaml] [--steps 200]

Trains the recipe's image and audio tokenizer configs, with the recipe's own overrides (`image_overrides`,
`audio_overrides`), on generated data (32x32 images, 1 s tone clips: speed does not depend on content) on the
CPU with one thread (as the recipe runs them) and, where torch sees one, on CUDA, for --steps and for twice as
many; reports the steady steps/s of each training loop (the extra steps over the extra seconds: the costs paid
once cancel), the first run's plain rate beside it, and the minutes the recipe's planned steps would take at the
steady rate (the recipe caps them with `max_minutes`). The 30-minute H200 goal counts this step in its total.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from omniseq.config import load_config
from omniseq.recipe import RecipeConfig
from omniseq.tokenizers import audio_train, image_train

REPO = Path(__file__).resolve().parents[1]


def train_seconds(kind: str, recipe: RecipeConfig, device: str, steps: int, data: Path, out: Path) -> float:
    """Seconds the training loop of `steps` steps took (the checkpoint's count: no loading, no final metrics)."""
    common = [f"steps={steps}", "max_minutes=0", f"device={device}", "threads=1", "resume=false", f"out={out}"]
    if kind == "image":
        cfg = load_config(image_train.ImageTrainConfig, REPO / recipe.image_tokenizer,
                          [*recipe.image_overrides, *common, f"sources=[{data / 'images.npz'}]", "holdout=16",
                           f"ckpt_every={10**9}"])  # fmt: skip
        image_train.train(cfg)
        ckpt = out / "ckpt.pt"
    else:
        cfg = load_config(audio_train.AudioTrainConfig, REPO / recipe.audio_tokenizer,
                          [*recipe.audio_overrides, *common, f"sources=[{data / 'wavs'}]", "source_weights=[]",
                           "holdout_column=", "valid_fraction=0.2", "max_valid_clips=2", "eval_every=0",
                           f"checkpoint_every={10**9}"])  # fmt: skip
        audio_train.train(cfg)
        ckpt = out / "checkpoint.pt"
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert state["step"] == steps, f"{kind} on {device}: trained {state['step']} steps, asked for {steps}"
    return state["train_seconds"]


def steps_per_second(kind: str, recipe: RecipeConfig, device: str, steps: int, data: Path, out: Path) -> dict:
    """The rate of steady training: runs of `steps` and of 2 x `steps` steps from scratch, and the second's extra
    steps over its extra seconds, so that what both runs spend once (the quantizers' k-means init on the first
    batch, CUDA's first kernels, the end-of-run checkpoint) cancels out."""
    short = train_seconds(kind, recipe, device, steps, data, out / "short")
    long = train_seconds(kind, recipe, device, 2 * steps, data, out / "long")
    rate = steps / (long - short)
    if kind == "image":
        planned = load_config(image_train.ImageTrainConfig, REPO / recipe.image_tokenizer, recipe.image_overrides)
    else:
        planned = load_config(audio_train.AudioTrainConfig, REPO / recipe.audio_tokenizer, recipe.audio_overrides)
    return {"steps_per_s": round(rate, 2), "first_run_steps_per_s": round(steps / short, 2),
            "planned_steps": planned.steps, "max_minutes": planned.max_minutes,
            "planned_minutes_at_this_rate": round(planned.steps / rate / 60, 2)}  # fmt: skip


def make_data(folder: Path) -> None:
    rng = np.random.default_rng(0)
    np.savez(folder / "images.npz", images=rng.integers(0, 255, (400, 32, 32, 3), dtype=np.uint8))
    (folder / "wavs").mkdir()
    t = np.arange(16000) / 16000
    for i in range(20):
        tone = 0.3 * np.sin(2 * np.pi * (150 + 40 * i) * t) + 0.02 * rng.standard_normal(len(t))
        sf.write(folder / "wavs" / f"tone{i:02d}.wav", tone.astype(np.float32), 16000)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="configs/recipes/real_small.yaml", help="a recipe YAML (its tokenizer keys)")
    ap.add_argument("--steps", type=int, default=200, help="steps of the shorter timed run (the other: twice)")
    args = ap.parse_args()
    recipe = load_config(RecipeConfig, REPO / args.recipe)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    result = {"bench": "tokenizer_training", "recipe": args.recipe, "steps": args.steps}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_data(tmp)
        for kind in ("image", "audio"):
            for device in devices:
                with contextlib.redirect_stdout(sys.stderr):  # the trainers' own lines: stdout keeps the one JSON line
                    rate = steps_per_second(kind, recipe, device, args.steps, tmp, tmp / f"{kind}_{device}")
                result[f"{kind}_{device}"] = rate
    if "cuda" in devices:
        result["gpu"] = torch.cuda.get_device_name()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
