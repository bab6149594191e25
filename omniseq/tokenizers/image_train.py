"""Train the VQ image tokenizer.

    python -m omniseq.tokenizers.train image --config configs/tokenizers/image.yaml [key=value ...]


Reads image folders and npz arrays into memory (the datasets here are small; 10k 64px images are
120 MB), holds out `holdout` images of the first source, and trains with reconstruction (MSE + L1)
plus the quantizer's commitment / entropy losses. No perceptual or adversarial terms: their
pretrained weights cannot be downloaded here (issue 3). Resumes from `<out>/ckpt.pt`; at the end
writes `<out>/tokenizer/` (MediaTokenizer.save), `<out>/metrics.json` and `<out>/recon.png`.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from omniseq.config import load_config, save_config, to_dict
from omniseq.model.precision import pick_device, set_torch_rng_state, torch_rng_state
from omniseq.tokenizers.base import MediaError
from omniseq.tokenizers.image import VQAutoencoder, VQImageConfig, VQImageTokenizer, to_pixels
from omniseq.tokenizers.image_io import array_to_rgb, fit, image_files, load_image


@dataclass
class ImageTrainConfig:
    tokenizer: VQImageConfig = field(default_factory=VQImageConfig)  # the model being trained
    sources: list[str] = field(default_factory=list)  # image folders or `file.npz[:key]` (key default images)
    max_per_source: int = 0  # keep at most this many images of each source (0 = all)
    holdout: int = 128  # images of the first source held out for evaluation (>= 1: metrics.json needs them)
    on_bad_image: str = "skip"  # skip | raise: unreadable files in image folders
    out: str = "runs/tokenizers/image"  # checkpoint, tokenizer, metrics and the reconstruction grid
    steps: int = 2000  # optimizer steps (training also stops after max_minutes)
    max_minutes: float = 0.0  # wall-clock budget for the training loop (0 = no limit)
    batch_size: int = 32
    lr: float = 2e-3  # AdamW peak learning rate
    warmup: int = 50  # linear warmup steps, then cosine decay to lr/10
    weight_decay: float = 0.0
    l1_weight: float = 0.5  # L1 next to MSE keeps flat regions crisp
    grad_clip: float = 1.0
    ckpt_every: int = 200  # steps between checkpoints
    resume: bool = True  # continue from <out>/ckpt.pt when it exists
    seed: int = 0
    threads: int = 0  # torch CPU threads (0 = torch's default)
    device: str = "auto"  # auto (CUDA when there is one) | cpu | cuda: where the training loop runs
    grid_images: int = 16  # originals/reconstructions in recon.png

    def __post_init__(self):
        # checked before any training: with nothing held out the run would train, then fail to evaluate and
        # lose everything it learnt before saving the tokenizer
        if self.holdout < 1:
            raise ValueError(f"holdout must be >= 1 (images held out for psnr_db and usage), got {self.holdout}")


def read_source(spec: str, cfg: ImageTrainConfig, skipped: list[str]) -> np.ndarray:
    """`folder` or `file.npz[:key]` -> uint8 (N, S, S, 3) at the tokenizer's image size."""
    io_cfg = cfg.tokenizer.image
    # the last colon: a folder name may hold one (`runs/a:b/x.npz:images`), an array key does not
    path, _, key = spec.rpartition(":") if ".npz:" in spec else (spec, "", "")
    p = Path(path)
    if p.suffix == ".npz":
        if not p.is_file():
            raise FileNotFoundError(f"training source not found: {p}")
        with np.load(p) as z:
            key = key or "images"
            if key not in z:
                raise MediaError(p, f"no array {key!r} (has {sorted(z.files)}); name it as {p}:<key>")
            arr = z[key]
        if cfg.max_per_source:
            arr = arr[: cfg.max_per_source]
        rgb = (array_to_rgb(a, f"{p}[{i}]", io_cfg.background) for i, a in enumerate(arr))
        return np.stack([fit(x, io_cfg.size, io_cfg.resize) for x in rgb])
    if not p.is_dir():
        raise FileNotFoundError(f"training source not found (expected a folder or an .npz): {p}")
    out = []
    for f in image_files(p)[: cfg.max_per_source or None]:
        try:
            out.append(load_image(f, io_cfg))
        except MediaError as e:
            if cfg.on_bad_image == "raise":
                raise
            skipped.append(str(e))
    if not out:
        raise MediaError(p, "no readable images in this folder")
    return np.stack(out)


def load_data(cfg: ImageTrainConfig) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """All sources -> (train, held-out) uint8 arrays; the held-out part comes from the first source."""
    if not cfg.sources:
        raise ValueError("sources is empty: give image folders or npz files (sources=[a.npz,b/])")
    if not cfg.tokenizer.image.size:
        raise ValueError("training needs a fixed tokenizer.image.size (batches share one shape)")
    skipped: list[str] = []
    rng = np.random.default_rng(cfg.seed)
    parts = [read_source(s, cfg, skipped) for s in cfg.sources]
    first = parts[0][rng.permutation(len(parts[0]))]
    if cfg.holdout >= len(first):
        raise ValueError(f"holdout={cfg.holdout} leaves no training images in {cfg.sources[0]} ({len(first)})")
    held, parts[0] = first[: cfg.holdout], first[cfg.holdout :]
    return np.concatenate(parts), held, skipped


def lr_at(step: int, cfg: ImageTrainConfig, elapsed: float = 0.0) -> float:
    """Linear warmup, then cosine to lr/10 over whichever budget (steps or max_minutes) runs out first:
    a time-limited run on a busy CPU still ends at a low learning rate."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    if cfg.max_minutes:
        t = max(t, elapsed / (60 * cfg.max_minutes))
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Mean per-image PSNR in dB of two uint8 arrays (B, H, W, 3)."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(1)
    return float(np.mean(10 * np.log10(255.0**2 / np.maximum(mse, 1e-10))))


def evaluate(tok: VQImageTokenizer, images: np.ndarray, batch: int = 64) -> tuple[dict, np.ndarray]:
    """Held-out PSNR and codebook usage (perplexity, fraction of codes used); returns reconstructions."""
    codes = np.concatenate([tok.encode_batch(images[i : i + batch]) for i in range(0, len(images), batch)])
    recon = np.concatenate([tok.decode_batch(codes[i : i + batch]) for i in range(0, len(codes), batch)])
    counts = np.bincount(codes.reshape(-1), minlength=tok.codebook_size)
    p = counts[counts > 0] / counts.sum()
    return {
        "psnr_db": round(psnr(images, recon), 3),
        "perplexity": round(float(np.exp(-(p * np.log(p)).sum())), 1),
        "codes_used": int((counts > 0).sum()),
        "usage": round(float((counts > 0).mean()), 4),
        "tokens_per_image": int(codes[0].size),
        "codebook_size": tok.codebook_size,
        "images": len(images),
    }, recon


def save_grid(originals: np.ndarray, recon: np.ndarray, path: Path) -> None:
    """Row pairs: originals above their reconstructions."""
    n = len(originals)
    cols = min(8, n)
    rows = -(-n // cols)
    h, w = originals.shape[1:3]
    canvas = np.full((rows * 2 * h, cols * w, 3), 255, np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        canvas[2 * r * h : (2 * r + 1) * h, c * w : (c + 1) * w] = originals[i]
        canvas[(2 * r + 1) * h : (2 * r + 2) * h, c * w : (c + 1) * w] = recon[i]
    Image.fromarray(canvas).save(path)


def train(cfg: ImageTrainConfig) -> dict:
    device = pick_device(cfg.device)  # before anything is written: a machine without the device fails at once
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    train_x, held, skipped = load_data(cfg)
    # not a tokenizer yet: k-means init needs real batches
    model = VQAutoencoder(cfg.tokenizer).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    # seconds_before / cpu_before: training time of earlier runs (from the checkpoint), so that a resumed run
    # keeps to max_minutes and its learning-rate schedule where they were, as the audio trainer does; the
    # first loss and the loss EMA carry on too, so metrics.json describes the whole run, not its last part
    step, rng, seconds_before, cpu_before = 0, np.random.default_rng(cfg.seed), 0.0, 0.0
    first_loss: float | None = None
    loss_ema: float | None = None
    ckpt = out / "ckpt.pt"
    if cfg.resume and ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, rng.bit_generator.state = state["step"], state["rng"]
        seconds_before = state.get("train_seconds", 0.0)
        # absent from checkpoints written before they were kept: such a run restarts them, as it used to
        cpu_before = state.get("train_cpu_seconds", 0.0)
        first_loss, loss_ema = state.get("first_rec_loss"), state.get("rec_loss_ema")
        set_torch_rng_state(state, device)

    def save_ckpt():
        state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step}
        state["train_seconds"] = seconds_before + time.time() - start
        state["train_cpu_seconds"] = cpu_before + time.process_time() - cpu_start
        state |= {"first_rec_loss": first_loss, "rec_loss_ema": loss_ema}
        state |= {"rng": rng.bit_generator.state, "config": to_dict(cfg)} | torch_rng_state(device)
        torch.save(state, ckpt.with_suffix(".tmp"))
        ckpt.with_suffix(".tmp").replace(ckpt)  # atomic: a kill mid-write keeps the previous checkpoint

    start, cpu_start = time.time(), time.process_time()
    bar = tqdm(total=cfg.steps, initial=step, desc=f"image tokenizer ({device.type})", unit="step")
    while step < cfg.steps and not (cfg.max_minutes and seconds_before + time.time() - start > 60 * cfg.max_minutes):
        x = to_pixels(train_x[rng.integers(0, len(train_x), cfg.batch_size)]).to(device, non_blocking=True)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg, seconds_before + time.time() - start)
        recon, _, aux = model(x)
        rec = (recon - x).pow(2).mean() + cfg.l1_weight * (recon - x).abs().mean()
        loss = rec + aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        step += 1
        first_loss = rec.item() if first_loss is None else first_loss
        loss_ema = rec.item() if loss_ema is None else 0.95 * loss_ema + 0.05 * rec.item()
        bar.update(1)
        bar.set_postfix(rec=f"{loss_ema:.4f}", aux=f"{aux.item():.3f}")
        if step % cfg.ckpt_every == 0:
            save_ckpt()
    bar.close()
    train_seconds, cpu_seconds = seconds_before + time.time() - start, cpu_before + time.process_time() - cpu_start
    save_ckpt()
    tok = VQImageTokenizer(cfg.tokenizer, model.cpu())  # the held-out metrics and the saved weights: on the CPU
    metrics, recon = evaluate(tok, held)
    metrics |= {
        "steps": step,
        "device": device.type,
        "train_seconds": round(train_seconds, 1),
        "train_cpu_seconds": round(cpu_seconds, 1),  # on a shared machine, what the run really got
        "first_rec_loss": first_loss,
        "final_rec_loss_ema": loss_ema,
        "train_images": len(train_x),
        "skipped_images": len(skipped),
        "first_skipped": skipped[:5],
        "fingerprint": tok.fingerprint(),
    }
    k = min(cfg.grid_images, len(held))
    save_grid(held[:k], recon[:k], out / "recon.png")
    tok.save(out / "tokenizer")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m omniseq.tokenizers.train image", description=__doc__)
    ap.add_argument("--config", help="YAML config (configs/tokenizers/image.yaml)")
    ap.add_argument("overrides", nargs="*", help="key=value overrides, e.g. steps=100 tokenizer.downsample=8")
    args = ap.parse_args(argv)
    cfg = load_config(ImageTrainConfig, args.config, args.overrides)
    metrics = train(cfg)
    print(json.dumps(metrics))
    return metrics
