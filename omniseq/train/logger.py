"""Training logs on rank 0: a progress bar, metrics.jsonl, TensorBoard scalars and a loss-curve PNG.

Per-modality losses are first-class (ANCHORS lesson 4: the per-modality curves are what show one
modality starving the others when the token shares are off).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from tqdm import tqdm

# Dense bf16 peak of the devices MFU is reported against, in TFLOP/s (bench/train_step.py uses this too,
# so the trainer's MFU and the benchmark's compare on the same terms).
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def device_peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


class RunLogger:
    def __init__(self, out_dir: Path, total_steps: int, start_step: int, enabled: bool, tensorboard: bool):
        self.enabled, self.out_dir = enabled, out_dir
        self.bar = tqdm(total=total_steps, initial=start_step, desc="train", disable=not enabled, dynamic_ncols=True)
        self.metrics = (out_dir / "metrics.jsonl").open("a") if enabled else None
        self.tb = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out_dir / "tb"))

    def step(self, n: int = 1) -> None:
        self.bar.update(n)

    def log(self, step: int, scalars: dict, show: str | None = None) -> None:
        if not self.enabled:
            return
        self.metrics.write(json.dumps({"step": step, **scalars}, sort_keys=True) + "\n")
        self.metrics.flush()
        if self.tb is not None:
            for k, v in scalars.items():
                if isinstance(v, int | float) and math.isfinite(v):
                    self.tb.add_scalar(k, v, step)
        if show:
            self.bar.set_postfix_str(show)

    def write(self, line: str) -> None:
        if self.enabled:
            self.bar.write(line)

    def close(self) -> None:
        if not self.enabled:
            return
        self.bar.close()
        self.metrics.close()
        if self.tb is not None:
            self.tb.close()


def plot_loss_curves(metrics_path: Path, out_png: Path, title: str) -> Path | None:
    """train/loss_<modality> and eval/loss_<modality> against step, one line per modality."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    keys = sorted({k for r in rows for k in r if k.startswith(("train/loss_", "eval/loss_"))})
    if not keys:
        return None
    by_step = {}  # a resumed run appends: the last value logged for a step wins
    for r in rows:
        by_step.setdefault(r["step"], {}).update(r)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    colours = {m: f"C{i}" for i, m in enumerate(sorted({k.split("loss_")[1] for k in keys}))}
    for k in keys:
        pts = sorted((s, r[k]) for s, r in by_step.items() if k in r and math.isfinite(r[k]))
        if pts:
            xs, ys = zip(*pts)
            style = "--" if k.startswith("eval") else "-"
            ax.plot(
                xs,
                ys,
                style,
                color=colours[k.split("loss_")[1]],
                marker="." if len(xs) < 30 else None,
                label=k,
            )
    ax.set(xlabel="step", ylabel="cross entropy (nats/token)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return out_png
