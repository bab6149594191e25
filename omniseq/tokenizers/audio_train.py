"""Train an RVQ audio codec on audio folders and CSV / JSONL manifests.

python -m omniseq.tokenizers.train audio --config configs/tokenizers/audio.yaml [key=value ...]
e.g. `steps=200 out=runs/audio_small codec.layers_used=2`. Keys are the fields of AudioTrainConfig:
`kind` picks the codec, `rvq_audio` (waveform, `codec.*` = RVQCodecConfig) or `rvq_spec_audio`
(spectrogram + Griffin-Lim, `spec_codec.*` = SpecCodecConfig); docs/tokenizers_audio.md lists them all.

Writes to `out`: checkpoint.pt (model, optimizer, step, RNG: a killed run resumes where it was),
config.yaml, metrics.json (held-out SI-SNR, mel and log-spectral distance, codebook usage per layer), spectrograms.png
(original above reconstruction) and tokenizer/ (MediaTokenizer.save, loadable with load_tokenizer).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from omniseq.config import ConfigError, load_config, save_config
from omniseq.model.precision import pick_device, set_torch_rng_state, torch_rng_state
from omniseq.tokenizers.audio import (
    RVQAudioTokenizer,
    RVQCodec,
    RVQCodecConfig,
    codec_losses,
    log_mel,
    mel_distance,
    si_snr,
)
from omniseq.tokenizers.audio_io import find_audio_files, load_audio
from omniseq.tokenizers.audio_spec import SpecAudioTokenizer, SpecCodec, SpecCodecConfig
from omniseq.tokenizers.base import MediaError

KINDS = ("rvq_audio", "rvq_spec_audio")


@dataclass
class AudioTrainConfig:
    kind: str = "rvq_audio"  # rvq_audio (waveform codec, `codec`) | rvq_spec_audio (spectrogram, `spec_codec`)
    codec: RVQCodecConfig = field(default_factory=RVQCodecConfig)  # the waveform codec (kind rvq_audio)
    spec_codec: SpecCodecConfig = field(default_factory=SpecCodecConfig)  # the spectral codec (rvq_spec_audio)
    sources: list[str] = field(default_factory=list)  # audio folders, CSV (`path` column) or JSONL (`audio`) files
    # how often a batch's crop comes from each source, relative ([] = every source alike); one per source
    source_weights: list[float] = field(default_factory=list)
    out: str = "runs/audio_tokenizer"  # output directory (checkpoint, metrics, PNG, tokenizer/)
    holdout_column: str = "official_split"  # CSV column whose value `holdout_value` marks held-out rows
    holdout_value: str = "test"  # those rows are never trained on (FSDD's official test split)
    valid_fraction: float = 0.05  # other files go to the held-out set by a hash of their path
    max_files_per_source: int = 0  # 0 = every file; else the first N (sorted) of each source
    max_valid_clips: int = 48  # held-out clips evaluated
    skip_bad: bool = True  # skip (and count) unreadable files instead of stopping
    segment_seconds: float = 1.0  # random crop length of each training example
    batch_size: int = 8  # crops per step
    steps: int = 1000  # optimizer steps in total (resumed runs continue towards it)
    max_minutes: float = 0.0  # stop training after this wall time (0 = no limit); still evaluates and saves
    lr: float = 1e-3  # AdamW learning rate (cosine decay to 10% over steps or max_minutes, whichever ends first)
    weight_decay: float = 0.0  # AdamW weight decay
    l1_weight: float = 1.0  # waveform L1 (rvq_audio only)
    stft_weight: float = 1.0  # multi-resolution STFT loss (rvq_spec_audio: L1 of the log-magnitude)
    mel_weight: float = 1.0  # log-mel L1
    convergence_weight: float = 1.0  # spectral convergence of the predicted magnitude (rvq_spec_audio only)
    eval_every: int = 250  # steps between held-out evaluations (0 = only at the end)
    checkpoint_every: int = 100  # steps between checkpoints
    resume: bool = True  # continue from out/checkpoint.pt when it exists
    threads: int = 1  # torch CPU threads (more than the free cores slows a shared machine down badly)
    device: str = "auto"  # auto (CUDA when there is one) | cpu | cuda: where the training loop runs
    seed: int = 0

    @property
    def active(self) -> RVQCodecConfig | SpecCodecConfig:
        """The config of the codec `kind` trains (both have sample_rate, hop, io, layers_used, codebook_size)."""
        if self.kind not in KINDS:
            raise ConfigError(f"audio training config: kind must be one of {KINDS}, got {self.kind!r}")
        return self.codec if self.kind == "rvq_audio" else self.spec_codec


@dataclass
class AudioSet:
    train: list[list[np.ndarray]]  # per source, clips at the codec's rate
    valid: list[np.ndarray]
    skipped: list[str]  # "file: reason" of the skipped files


def _source_files(src: str, cfg: AudioTrainConfig) -> list[tuple[Path, bool]]:
    """(file, held_out) pairs of one source."""
    p = Path(src)
    if p.suffix.lower() == ".csv":
        if not p.is_file():
            raise FileNotFoundError(f"audio manifest not found: {p}")
        with p.open(newline="") as f:
            rows = list(csv.DictReader(f))
        if rows and "path" not in rows[0]:
            raise ValueError(f"{p}: expected a `path` column, got {list(rows[0])}")
        files = [(r["path"], r.get(cfg.holdout_column) == cfg.holdout_value) for r in rows]
    elif p.suffix.lower() == ".jsonl":  # pair-format lines (omniseq.data.corpus): {"audio": path, ...}
        if not p.is_file():
            raise FileNotFoundError(f"audio manifest not found: {p}")
        lines = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
        files = [(d["audio"], False) for d in lines if "audio" in d]
    else:
        files = [(f.relative_to(p).as_posix(), False) for f in find_audio_files(p)]
    if cfg.max_files_per_source:
        files = files[: cfg.max_files_per_source]
    # the hash is of the path as the source names it (relative to its manifest or folder), not of where the
    # source lies: two runs in different folders hold out the same clips (a run-folder hash split them apart)
    bucket = lambda name: zlib.crc32(str(name).encode()) % 10000 < cfg.valid_fraction * 10000
    root = p.parent if p.suffix.lower() in (".csv", ".jsonl") else p
    return [(root / name, held or bucket(name)) for name, held in files]


def load_sets(cfg: AudioTrainConfig) -> AudioSet:
    if not cfg.sources:
        raise ValueError("AudioTrainConfig.sources is empty: give audio folders or CSV manifests")
    if cfg.source_weights and (len(cfg.source_weights) != len(cfg.sources) or min(cfg.source_weights) < 0
                               or sum(cfg.source_weights) <= 0):  # fmt: skip
        raise ConfigError(f"source_weights: expected one weight >= 0 per source ({len(cfg.sources)}), "
                          f"not all 0; got {cfg.source_weights}")  # fmt: skip
    train, valid, skipped = [], [], []
    for src in cfg.sources:
        clips = []
        for f, held in tqdm(_source_files(src, cfg), desc=f"reading {Path(src).name}", leave=False):
            try:
                x = load_audio(f, cfg.active.sample_rate, cfg.active.io).samples
            except MediaError as e:
                if not cfg.skip_bad:
                    raise
                skipped.append(str(e))
                continue
            (valid if held else clips).append(x)
        if not clips:
            raise ValueError(f"source {src}: no training clips (all held out, skipped or none found)")
        train.append(clips)
    largest = max(train, key=len)
    if not valid and cfg.valid_fraction > 0 and len(largest) > 1:
        # The path hash held nothing out (small folders): hold out one clip, so metrics always exist.
        valid.append(largest.pop())
    rng = random.Random(cfg.seed)
    rng.shuffle(valid)  # a mix of sources in the evaluated prefix
    return AudioSet(train, valid[: cfg.max_valid_clips], skipped)


def sample_batch(data: AudioSet, cfg: AudioTrainConfig, rng: np.random.Generator) -> torch.Tensor:
    """[B, 1, T] random crops; the source is drawn first (alike, or by `source_weights`), so a source of few
    long clips is seen as often as one of many short ones."""
    hop = cfg.active.hop
    n = max(hop, int(cfg.segment_seconds * cfg.active.sample_rate) // hop * hop)
    out = np.zeros((cfg.batch_size, 1, n), dtype=np.float32)
    p = np.asarray(cfg.source_weights, dtype=np.float64) / sum(cfg.source_weights) if cfg.source_weights else None
    for b in range(cfg.batch_size):
        # without weights, the draw the codecs measured before source_weights existed (same crops by seed)
        clips = data.train[rng.integers(len(data.train)) if p is None else rng.choice(len(data.train), p=p)]
        x = clips[rng.integers(len(clips))]
        start = rng.integers(max(1, len(x) - n + 1))
        seg = x[start : start + n]
        out[b, 0, : len(seg)] = seg
    return torch.from_numpy(out)


def log_spectral_distance(x: torch.Tensor, y: torch.Tensor, n_fft: int = 512, hop: int = 128) -> torch.Tensor:
    """Log-spectral distance in dB per item [B]: RMS over frequency of the dB difference of power spectra,
    averaged over frames (Gray & Markel 1976); blind to phase, unlike SI-SNR."""
    win = torch.hann_window(n_fft, device=x.device)
    db = lambda s: 10 * torch.stft(s, n_fft, hop, window=win, return_complex=True).abs().pow(2).clamp_min(1e-8).log10()
    return (db(x) - db(y)).pow(2).mean(dim=1).sqrt().mean(dim=1)


@torch.no_grad()
def evaluate(model: RVQCodec | SpecCodec, clips: list[np.ndarray], cfg: RVQCodecConfig | SpecCodecConfig) -> dict:
    """Held-out SI-SNR (dB), log-mel and log-spectral distance and codebook usage of each used layer.
    SI-SNR is meaningless for rvq_spec_audio (Griffin-Lim phase); it is reported, not optimised."""
    model.eval()
    device = next(model.parameters()).device
    snr, mel, lsd, codes_seen = [], [], [], [[] for _ in range(cfg.layers_used)]
    for x in clips:
        wav = torch.from_numpy(np.pad(x, (0, -len(x) % cfg.hop)))[None, None].to(device)
        codes = model.encode(wav)[..., : cfg.layers_used]  # [1, F, L]
        y = model.decode(codes)[:, 0]
        snr.append(float(si_snr(wav[:, 0], y)[0]))
        mel.append(float(mel_distance(wav[:, 0], y, cfg.sample_rate)[0]))
        lsd.append(float(log_spectral_distance(wav[:, 0], y)[0]))
        for layer in range(cfg.layers_used):
            codes_seen[layer].append(codes[0, :, layer])
    usage, perplexity = [], []
    for seen in codes_seen:
        counts = torch.bincount(torch.cat(seen), minlength=cfg.codebook_size).float()
        p = counts / counts.sum()
        usage.append(round(float((counts > 0).float().mean()), 4))
        perplexity.append(round(float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum())), 1))
    model.train()
    return {
        "si_snr_db": round(float(np.mean(snr)), 3),
        "mel_distance": round(float(np.mean(mel)), 4),
        "log_spectral_distance_db": round(float(np.mean(lsd)), 3),
        "codebook_usage": usage,
        "codebook_perplexity": perplexity,
        "clips": len(clips),
    }


def plot_spectrograms(model: RVQCodec | SpecCodec, clips: list[np.ndarray], cfg: Any, path: Path) -> Path:
    """Log-mel of up to 4 held-out clips (top) and their reconstructions (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clips = clips[:4]
    fig, axes = plt.subplots(2, len(clips), figsize=(3.2 * len(clips), 5), squeeze=False)
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad():
        for i, x in enumerate(clips):
            wav = torch.from_numpy(np.pad(x, (0, -len(x) % cfg.hop)))[None, None].to(device)
            y = model.decode(model.encode(wav)[..., : cfg.layers_used])[:, 0]
            for row, sig, title in ((0, wav[:, 0], "original"), (1, y, f"{cfg.layers_used}-layer RVQ")):
                axes[row][i].imshow(log_mel(sig, cfg.sample_rate)[0].cpu().numpy(), origin="lower", aspect="auto")
                axes[row][i].set_title(f"clip {i}: {title}", fontsize=9)
    model.train()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def step_loss(model: RVQCodec | SpecCodec, x: torch.Tensor, cfg: AudioTrainConfig) -> tuple[torch.Tensor, dict]:
    """The weighted training loss of one batch [B, 1, T] and its parts (floats) for the progress bar."""
    if isinstance(model, SpecCodec):
        parts, _ = model.losses(x)
        loss = (cfg.stft_weight * parts["log_mag"] + cfg.convergence_weight * parts["convergence"]
                + cfg.mel_weight * parts["mel"] + parts["commit"])  # fmt: skip
    else:
        y, _, commit = model(x)
        parts = codec_losses(x[:, 0], y[:, 0], cfg.codec.sample_rate)
        loss = cfg.l1_weight * parts["l1"] + cfg.stft_weight * parts["stft"] + cfg.mel_weight * parts["mel"] + commit
    return loss, {k: v.item() for k, v in parts.items()}


def lr_at(step: int, elapsed: float, cfg: AudioTrainConfig) -> float:
    """Cosine from lr to lr/10 over whichever budget ends first, `steps` or `max_minutes` (`elapsed` seconds of
    training; it adds up over resumes, from the checkpoint's `train_seconds`): a run stopped by its time cap
    still ends annealed. Over steps alone, the H200 recipe's codec trained 14 CPU minutes was stopped at 1,993
    of 8,000 steps with its learning rate still at 87% of the peak."""
    t = step / cfg.steps
    if cfg.max_minutes:
        t = max(t, elapsed / (60 * cfg.max_minutes))
    return cfg.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, t))))


def train(cfg: AudioTrainConfig) -> tuple[RVQAudioTokenizer | SpecAudioTokenizer, dict]:
    """Train (or resume) the codec described by cfg; returns the saved tokenizer and final metrics."""
    codec_cfg = cfg.active
    codec_cfg.validate()
    device = pick_device(cfg.device)  # before reading any data: a machine without the device fails at once
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    t0 = time.perf_counter()
    data = load_sets(cfg)
    n_train = sum(len(c) for c in data.train)
    print(f"{n_train} training clips from {len(cfg.sources)} source(s), {len(data.valid)} held out, "
          f"{len(data.skipped)} skipped; loaded in {time.perf_counter() - t0:.0f} s")  # fmt: skip
    torch.manual_seed(cfg.seed)
    model = (RVQCodec(codec_cfg) if cfg.kind == "rvq_audio" else SpecCodec(codec_cfg)).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng, step, history, seconds_before = np.random.default_rng(cfg.seed), 0, [], 0.0
    ckpt = out / "checkpoint.pt"
    if cfg.resume and ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, history, seconds_before = state["step"], state["history"], state.get("train_seconds", 0.0)
        rng.bit_generator.state = state["numpy_rng"]
        set_torch_rng_state(state, device)
        print(f"resumed from {ckpt} at step {step}")

    def save_checkpoint() -> None:
        state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step, "history": history,
                 "train_seconds": seconds_before + time.perf_counter() - t_train,
                 "numpy_rng": rng.bit_generator.state, **torch_rng_state(device)}  # fmt: skip
        torch.save(state, ckpt.with_suffix(".tmp"))
        ckpt.with_suffix(".tmp").replace(ckpt)  # atomic: a kill mid-write keeps the previous checkpoint

    t_train = time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=step, desc=f"audio codec ({cfg.kind}, {device.type})")
    while step < cfg.steps:
        elapsed = seconds_before + time.perf_counter() - t_train
        if cfg.max_minutes and elapsed > 60 * cfg.max_minutes:
            print(f"stopping at step {step}: max_minutes={cfg.max_minutes} reached")
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(step, elapsed, cfg)
        loss, parts = step_loss(model, sample_batch(data, cfg, rng).to(device, non_blocking=True), cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", mel=f"{parts['mel']:.3f}")
        if cfg.eval_every and step % cfg.eval_every == 0 and data.valid:
            history.append({"step": step, **evaluate(model, data.valid, codec_cfg)})
            tqdm.write(json.dumps(history[-1]))
        if step % cfg.checkpoint_every == 0:
            save_checkpoint()
    bar.close()
    save_checkpoint()
    model.cpu()  # the held-out metrics, the picture and the saved tokenizer: on the CPU, as every later step uses it
    metrics = {"step": step, "device": device.type, "train_minutes": round((time.perf_counter() - t_train) / 60, 2)}
    if data.valid:
        metrics.update(evaluate(model, data.valid, codec_cfg))
        plot_spectrograms(model, data.valid, codec_cfg, out / "spectrograms.png")
    metrics.update(total_minutes=round((time.perf_counter() - t0) / 60, 2), skipped=data.skipped[:20], history=history)
    tok = RVQAudioTokenizer(codec_cfg, model) if cfg.kind == "rvq_audio" else SpecAudioTokenizer(codec_cfg, model)
    tok.save(out / "tokenizer")
    # after the save, as image_train: a metrics.json never sits beside a tokenizer that was not written
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return tok, metrics


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="omniseq.tokenizers.train audio", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--config", type=Path, help="YAML with AudioTrainConfig keys")
    ap.add_argument("overrides", nargs="*", help="key=value overrides (codec.layers_used=2, steps=100, ...)")
    args = ap.parse_args(argv)
    cfg = load_config(AudioTrainConfig, args.config, args.overrides)
    _, metrics = train(cfg)
    print(json.dumps({k: v for k, v in metrics.items() if k not in ("history", "skipped")}))
    print(f"wrote {Path(cfg.out) / 'tokenizer'}")


if __name__ == "__main__":
    from omniseq.cli import run

    run(main)
