"""Independent scorers for generated real media: small classifiers trained on the real sets (issue 10).

The model's text->image, text->speech and text->sound outputs are scored by asking a classifier what it
sees or hears and comparing with the prompt. Each classifier trains on the TRAIN split of
omniseq.data.real_sets only, so it never saw the eval items the model is prompted with, and it is scored
on the eval split exactly as generated media are: raw media in, label out (`predict`).

    digit_image   MNIST. Any uint8 image [H, W] or [H, W, 3] -> grey -> 28x28 -> CNN. Trained with small
                  affine jitter, Gaussian blur, contrast and noise so that the blur of a VQ reconstruction
                  (a 32x32 decode resized back) reads like a real digit.
    spoken_digit  FSDD (8 kHz, resampled to 16 kHz on load: the codec decodes at 16 kHz). Log-mel up to
                  3.8 kHz (an FSDD recording is empty above 4 kHz, and a codec's faint noise there must not
                  move the classifier), trimmed to the voiced span and stretched to a fixed number of
                  frames (speaking rate drops out), standardised (gain drops out) -> CNN.
    sound         ESC-10, fold 4 eval, every other fold train (real_sets.esc10: folds 1-3 with the stored
                  esc10_16k, which holds folds 1-4; fold 5 too where a copy has it). Log-mel windows of
                  ~2 s, the length of a generated sound: random active crops in training; at prediction the
                  mean class probability over the active windows (those within `active_db` of the loudest),
                  so a 2 s clip is one window.

One small CNN for all (conv-BN-ReLU-maxpool blocks, global average pool, linear), AdamW with a one-cycle
schedule, deterministic by seed. `load_or_train` caches a trained scorer under cache_dir/<name>, keyed by
a fingerprint of the data files' bytes, the config and the seed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from omniseq.config import load_config
from omniseq.data import real_sets
from omniseq.eval.analysers import mel_filterbank
from omniseq.tokenizers.audio_io import load_audio

SAMPLE_RATE = 16000  # every waveform given to a scorer is at this rate (real.py resamples a codec's decode to it)
FRAME, HOP, NFFT = 400, 160, 1024  # 25 ms frames every 10 ms; zero-padded FFT so 64 low mel bands are not empty
PREDICT_BATCH = 256  # windows per forward pass when predicting
FORMAT = 1  # bump when features or the network change: cached scorers of another format are retrained
ESC10_CLASSES = ("baby cry", "chainsaw", "clock tick", "dog bark", "fire crackling", "helicopter",
                 "person sneeze", "rain", "rooster", "sea waves")  # fmt: skip


@dataclass
class ScorerConfig:
    epochs: int = 8  # passes over the train split
    batch_size: int = 64  # items per optimiser step
    lr: float = 3e-3  # AdamW peak learning rate of the one-cycle schedule
    weight_decay: float = 1e-3  # AdamW decoupled weight decay
    label_smoothing: float = (
        0.1  # cross-entropy smoothing against over-confidence (Szegedy et al. 2016, arXiv:1512.00567)
    )
    width: int = 32  # channels of the first conv block, doubled per block
    blocks: int = 3  # conv-BN-ReLU-maxpool blocks
    dropout: float = 0.2  # before the linear head
    n_mels: int = 40  # (audio) mel bands
    fmax: float = 3800.0  # (audio) top of the mel filterbank in Hz
    frames: int = 32  # (audio) frames a spoken digit is stretched to / frames of a sound window (10 ms each)
    active_db: float = 10.0  # (sound) windows within this many dB of the loudest one are scored / cropped
    limit: int = 0  # use the first `limit` items of each split (0 = all): for fast tests, never for scores


DEFAULTS = {  # measured on the real sets: bench/real_scorers.py
    "digit_image": ScorerConfig(epochs=4, width=16),
    "spoken_digit": ScorerConfig(epochs=15, width=16),
    # 196 frames = 1.97 s: a generated 2 s clip is exactly one window
    "sound": ScorerConfig(
        epochs=25, batch_size=32, width=16, blocks=4, dropout=0.3, n_mels=48, fmax=7600.0, frames=196
    ),  # fmt: skip
}


def conv_net(classes: int, cfg: ScorerConfig) -> nn.Sequential:
    """[B, 1, H, W] -> logits [B, classes]; global pooling makes it indifferent to the input's size."""
    layers: list[nn.Module] = []
    c_in = 1
    for i in range(cfg.blocks):
        c = cfg.width * 2**i
        layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2)]
        c_in = c
    head = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(cfg.dropout), nn.Linear(c_in, classes)]
    return nn.Sequential(*layers, *head)


def standardise(x: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance over each item's last two dims: a louder take is the same word."""
    mean, std = x.mean(dim=(-2, -1), keepdim=True), x.std(dim=(-2, -1), keepdim=True)
    return (x - mean) / (std + 1e-5)


def log_mel(wave: np.ndarray, n_mels: int, fmax: float) -> torch.Tensor:
    """Natural-log mel power [n_mels, frames] of a 16 kHz waveform (Hann frames of 25 ms every 10 ms)."""
    x = torch.from_numpy(np.pad(wave, (0, max(0, FRAME - len(wave)))))
    frames = x.unfold(0, FRAME, HOP) * torch.hann_window(FRAME, periodic=False)  # [F, FRAME]
    power = torch.fft.rfft(frames, NFFT).abs() ** 2  # [F, NFFT/2+1]
    fb = torch.from_numpy(mel_filterbank(SAMPLE_RATE, NFFT, n_mels, 60.0, fmax).astype(np.float32))
    return torch.log(power @ fb.T + 1e-8).T.contiguous()  # [n_mels, F]


def check_wave(item, index: int) -> np.ndarray:
    x = np.asarray(item)
    if x.ndim != 1 or x.size == 0 or not np.issubdtype(x.dtype, np.floating):
        raise ValueError(
            f"item {index}: expected a mono float waveform [samples] at {SAMPLE_RATE} Hz, "
            f"got shape {x.shape} dtype {x.dtype}"
        )
    if not np.isfinite(x).all():
        raise ValueError(f"item {index}: waveform has NaN or inf samples")
    return x.astype(np.float32)


def loudest_window(wave: np.ndarray, seconds: float = 2.0) -> np.ndarray:
    """The `seconds`-long stretch of a 16 kHz waveform with the most energy: a real clip cut to the length
    of a generated one, to check that such a clip is scored like the whole."""
    n = int(seconds * SAMPLE_RATE)
    if len(wave) <= n:
        return wave
    energy = np.concatenate([[0.0], np.cumsum(np.asarray(wave, np.float64) ** 2)])
    start = int(np.argmax(energy[n:] - energy[:-n]))
    return wave[start : start + n]


def file_digest(paths: Sequence[Path]) -> str:
    """sha256 over the files' names and bytes: a scorer is retrained when its data changes."""
    h = hashlib.sha256()
    for p in sorted(Path(p) for p in paths):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


class Scorer:
    """A classifier from raw media to a label. Subclasses define the representation of one item
    (`represent`), the training batch (`batch`, with augmentation) and the windows it is scored on."""

    name = ""
    labels: tuple[str, ...] = ()

    def __init__(self, cfg: ScorerConfig, seed: int = 0):
        self.cfg = cfg
        torch.manual_seed(seed)
        self.net = conv_net(len(self.labels), cfg)
        self.net.eval()

    # -- per scorer
    @staticmethod
    def read(data: Path) -> tuple[list, list[int], list, list[int], list[Path]]:
        """(train media, train label ids, eval media, eval label ids, the files they came from)."""
        raise NotImplementedError

    def represent(self, item, index: int) -> torch.Tensor:
        """One raw item -> its tensor [1, H, W] (checked: a wrong shape is a ValueError naming `index`)."""
        raise NotImplementedError

    def windows(self, rep: torch.Tensor) -> torch.Tensor:
        """[1, H, W] -> the network inputs [n, 1, H, W] whose mean probability is the item's score."""
        return rep[None]

    def batch(self, reps: list[torch.Tensor], g: torch.Generator) -> torch.Tensor:
        """A training batch [B, 1, H, W] from the items' representations, augmented."""
        return torch.stack(reps)

    # -- shared
    @torch.no_grad()
    def probabilities(self, media: list) -> torch.Tensor:
        """[N, classes]: the mean over each item's windows."""
        if isinstance(media, (np.ndarray, torch.Tensor)) or not hasattr(media, "__len__"):
            raise ValueError(f"{self.name}: predict takes a list of items, got {type(media).__name__}")
        self.net.eval()
        if not len(media):
            return torch.zeros(0, len(self.labels))
        windows = [self.windows(self.represent(item, i)) for i, item in enumerate(media)]  # each [n_i, 1, H, W]
        counts = torch.tensor([len(w) for w in windows])
        probs = torch.cat([self.net(chunk).softmax(-1) for chunk in torch.cat(windows).split(PREDICT_BATCH)])
        owner = torch.repeat_interleave(torch.arange(len(media)), counts)  # item of each window
        return torch.zeros(len(media), len(self.labels)).index_add_(0, owner, probs) / counts[:, None]

    def predict(self, media: list) -> list[str]:
        return [self.labels[k] for k in self.probabilities(media).argmax(-1).tolist()]

    def accuracy(self, media: list, targets: list[int]) -> float:
        return sum(p == self.labels[t] for p, t in zip(self.predict(media), targets)) / max(1, len(targets))

    def fit(self, media: list, targets: list[int], seed: int = 0) -> None:
        cfg = self.cfg
        reps = [self.represent(m, i) for i, m in enumerate(tqdm(media, desc=f"{self.name} features", leave=False))]
        y = torch.tensor(targets)
        g = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)  # dropout
        steps = cfg.epochs * math.ceil(len(reps) / cfg.batch_size)
        opt = torch.optim.AdamW(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps)
        self.net.train()
        with tqdm(total=steps, desc=f"train {self.name}") as bar:
            for _ in range(cfg.epochs):
                for idx in torch.randperm(len(reps), generator=g).split(cfg.batch_size):
                    logits = self.net(self.batch([reps[i] for i in idx.tolist()], g))
                    loss = F.cross_entropy(logits, y[idx], label_smoothing=cfg.label_smoothing)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    sched.step()
                    bar.update()
                    bar.set_postfix(loss=f"{loss.item():.3f}")
        self.net.eval()

    def save(self, directory: str | Path, extra: dict | None = None) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "scorer.json").unlink(missing_ok=True)  # written last: never old metadata beside new weights
        save_file(self.net.state_dict(), str(directory / "model.safetensors"))
        config = dataclasses.asdict(self.cfg)
        meta = {"name": self.name, "format": FORMAT, "labels": list(self.labels), "config": config}
        (directory / "scorer.json").write_text(json.dumps({**meta, **(extra or {})}, indent=1))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> Scorer:
        directory = Path(directory)
        meta_path = directory / "scorer.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path} not found: not a saved scorer directory")
        meta = json.loads(meta_path.read_text())
        kind = SCORERS.get(meta.get("name"))
        if kind is None or (cls is not Scorer and kind is not cls):
            raise ValueError(f"{meta_path}: field 'name' is {meta.get('name')!r}, expected one of {list(SCORERS)}")
        if meta.get("labels") != list(kind.labels):
            raise ValueError(f"{meta_path}: field 'labels' does not match {kind.__name__}.labels")
        scorer = kind(ScorerConfig(**meta["config"]))
        scorer.net.load_state_dict(load_file(str(directory / "model.safetensors")))
        scorer.net.eval()
        return scorer


class DigitImageScorer(Scorer):
    name = "digit_image"
    labels = real_sets.DIGIT_WORDS

    @staticmethod
    def read(data: Path):
        images, labels, split = real_sets.mnist(data)
        train, test = split == "train", split == "eval"
        return (
            list(images[train]),
            labels[train].tolist(),
            list(images[test]),
            labels[test].tolist(),
            [Path(data) / "mnist" / "mnist_9000.npz"],
        )

    def represent(self, item, index: int) -> torch.Tensor:
        x = np.asarray(item)
        if x.dtype != np.uint8 or not (x.ndim == 2 or (x.ndim == 3 and x.shape[2] in (1, 3, 4))) or 0 in x.shape:
            raise ValueError(
                f"item {index}: expected a uint8 image [H, W] or [H, W, 3], got shape {x.shape} dtype {x.dtype}"
            )
        grey = x if x.ndim == 2 else x[..., 0] if x.shape[2] == 1 else x[..., :3].mean(axis=2).astype(np.uint8)
        small = np.asarray(Image.fromarray(grey).resize((28, 28), Image.Resampling.BILINEAR), np.float32)
        return torch.from_numpy(small / 255.0)[None]  # [1, 28, 28]

    def batch(self, reps, g):
        """Affine jitter (rotation +-10 deg, scale 0.9-1.1, shift +-2 px), per-item Gaussian blur (sigma
        0-1.2 px), contrast 0.6-1.1 and noise: what a VQ decode does to a digit."""
        x = torch.stack(reps)  # [B, 1, 28, 28]
        B = len(x)
        u = lambda lo, hi, *shape: lo + (hi - lo) * torch.rand(B, *shape, generator=g)
        angle, scale, shift = u(-0.17, 0.17), u(0.9, 1.1), u(-2 / 14, 2 / 14, 2)
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
        x = F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False), align_corners=False)
        sigma = u(0.01, 1.2, 1)  # [B, 1]
        taps = torch.arange(-3, 4, dtype=torch.float32)
        kernel = torch.exp(-(taps**2) / (2 * sigma**2))
        kernel = kernel / kernel.sum(1, keepdim=True)  # [B, 7]
        x = rearrange(x, "b 1 h w -> 1 b h w")
        x = F.conv2d(x, rearrange(kernel, "b k -> b 1 k 1"), padding=(3, 0), groups=B)
        x = F.conv2d(x, rearrange(kernel, "b k -> b 1 1 k"), padding=(0, 3), groups=B)
        x = rearrange(x, "1 b h w -> b 1 h w") * u(0.6, 1.1, 1, 1, 1)
        return (x + u(0, 0.08, 1, 1, 1) * torch.randn(x.shape, generator=g)).clamp(0, 1)


class SpokenDigitScorer(Scorer):
    name = "spoken_digit"
    labels = real_sets.DIGIT_WORDS

    @staticmethod
    def read(data: Path):
        rows = real_sets.fsdd(data)
        waves = {r.path: load_audio(r.path, SAMPLE_RATE).samples for r in tqdm(rows, desc="fsdd", leave=False)}
        train = [r for r in rows if r.split == "train"]
        test = [r for r in rows if r.split == "eval"]
        files = [Path(r.path) for r in rows] + [Path(data) / "fsdd" / "metadata.csv"]
        return ([waves[r.path] for r in train], [r.meta["digit"] for r in train],
                [waves[r.path] for r in test], [r.meta["digit"] for r in test], files)  # fmt: skip

    def represent(self, item, index: int) -> torch.Tensor:
        """Log-mel over the voiced span (frames within 35 dB of the loudest), stretched to `frames`."""
        m = log_mel(check_wave(item, index), self.cfg.n_mels, self.cfg.fmax)  # [M, F]
        energy = m.max(dim=0).values
        voiced = torch.nonzero(energy > energy.max() - 8.0).flatten()  # 8 nats of power = 35 dB
        m = m[:, voiced[0] : voiced[-1] + 1]
        m = F.interpolate(m[None], size=self.cfg.frames, mode="linear", align_corners=True)  # [1, M, frames]
        return standardise(m)

    def batch(self, reps, g):
        """A frequency mask of up to 4 bands, a time mask of up to 3 frames (SpecAugment, Park et al. 2019,
        arXiv:1904.08779) and noise, standing in for a codec's smeared spectra."""
        x = torch.stack(reps)  # [B, 1, M, T]
        B, _, M, T = x.shape
        f0, fw = torch.randint(0, M, (B, 1), generator=g), torch.randint(0, 5, (B, 1), generator=g)
        t0, tw = torch.randint(0, T, (B, 1), generator=g), torch.randint(0, 4, (B, 1), generator=g)
        band, frame = torch.arange(M)[None], torch.arange(T)[None]  # [1, M], [1, T]
        keep_f = ~((band >= f0) & (band < f0 + fw))  # [B, M]
        keep_t = ~((frame >= t0) & (frame < t0 + tw))  # [B, T]
        x = x * rearrange(keep_f, "b m -> b 1 m 1") * rearrange(keep_t, "b t -> b 1 1 t")
        return x + 0.2 * torch.rand(B, 1, 1, 1, generator=g) * torch.randn(x.shape, generator=g)


class SoundScorer(Scorer):
    name = "sound"
    labels = ESC10_CLASSES

    @staticmethod
    def read(data: Path):
        rows = real_sets.esc10(data)
        index = {c: i for i, c in enumerate(ESC10_CLASSES)}
        unknown = {r.label for r in rows} - set(index)
        if unknown:
            raise ValueError(f"{Path(data) / 'esc10_16k' / 'metadata.csv'}: unknown ESC-10 labels {sorted(unknown)}")
        waves = {r.path: load_audio(r.path, SAMPLE_RATE).samples for r in tqdm(rows, desc="esc10", leave=False)}
        train = [r for r in rows if r.split == "train"]
        test = [r for r in rows if r.split == "eval"]
        files = [Path(r.path) for r in rows] + [Path(data) / "esc10_16k" / "metadata.csv"]
        return ([waves[r.path] for r in train], [index[r.label] for r in train],
                [waves[r.path] for r in test], [index[r.label] for r in test], files)  # fmt: skip

    def represent(self, item, index: int) -> torch.Tensor:
        """The whole clip's log-mel [1, M, F], at least one window long (a short clip fades into its floor)."""
        m = log_mel(check_wave(item, index), self.cfg.n_mels, self.cfg.fmax)
        if m.shape[1] < self.cfg.frames:
            m = F.pad(m, (0, self.cfg.frames - m.shape[1]), value=m.min().item())
        return m[None]

    def active_starts(self, rep: torch.Tensor) -> torch.Tensor:
        """Start frames of the windows whose mean log-power is within `active_db` of the loudest window's:
        ESC clips are padded with digital silence to 5 s, and a silent crop says nothing of its class."""
        power = rep[0].exp().mean(0)  # [F] mean mel power per frame
        loudness = 10 * torch.log10(power.unfold(0, self.cfg.frames, 1).mean(1) + 1e-10)  # [starts]
        return torch.nonzero(loudness >= loudness.max() - self.cfg.active_db).flatten()

    def windows(self, rep):
        starts = self.active_starts(rep)
        starts = starts[:: max(1, self.cfg.frames // 8)]  # a window every 1/8 window among the active ones
        return standardise(torch.stack([rep[:, :, s : s + self.cfg.frames] for s in starts.tolist()]))

    def batch(self, reps, g):
        crops = []
        for rep in reps:
            starts = self.active_starts(rep)
            s = int(starts[torch.randint(0, len(starts), (1,), generator=g)])
            crops.append(rep[:, :, s : s + self.cfg.frames])
        x = standardise(torch.stack(crops))  # [B, 1, M, frames]
        return x + 0.1 * torch.randn(x.shape, generator=g)


SCORERS: dict[str, type[Scorer]] = {s.name: s for s in (DigitImageScorer, SpokenDigitScorer, SoundScorer)}


def load_or_train(
    name: str,
    data: str | Path = real_sets.DEFAULT_DATA,
    cache_dir: str | Path = "runs/scorers",
    seed: int = 0,
    overrides: Sequence[str] = (),
) -> tuple[Scorer, dict]:
    """The scorer `name` (digit_image | spoken_digit | sound) and its report {train, eval, eval_accuracy,
    seconds, cached}: loaded from cache_dir/<name> when its fingerprint (data bytes, config, seed, FORMAT)
    matches, else trained on the train split, scored on the eval split and saved there.

    Where the `data` folder is absent, a cached scorer of the same config, seed and FORMAT is used as it is (its data
    unchecked: the report says `data_checked: false`): scorers trained on the CPU machine score a run on a
    GPU machine that has no copy of the sets. Without such a cache, MissingDataError names the missing file.

    `overrides` are `key=value` changes to the name's DEFAULTS config (e.g. "epochs=1" in tests)."""
    if name not in SCORERS:
        raise ValueError(f"unknown scorer {name!r}; expected one of {list(SCORERS)}")
    kind = SCORERS[name]
    cfg = load_config(DEFAULTS[name], None, overrides)
    t0 = time.perf_counter()
    config = json.dumps(dataclasses.asdict(cfg), sort_keys=True)
    setting = hashlib.sha256(f"{name}|{FORMAT}|{seed}|{config}".encode()).hexdigest()  # all but the data
    directory = Path(cache_dir) / name
    meta_path = directory / "scorer.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if not Path(data).exists() and meta.get("setting") == setting:  # a data folder with a file missing still fails
        return kind.load(directory), {**meta["report"], "cached": True, "data_checked": False}
    train_x, train_y, eval_x, eval_y, files = kind.read(Path(data))  # MissingDataError when absent
    fingerprint = hashlib.sha256(f"{setting}|{file_digest(files)}".encode()).hexdigest()
    if meta.get("fingerprint") == fingerprint:
        return kind.load(directory), {**meta["report"], "cached": True}
    if cfg.limit:
        train_x, train_y, eval_x, eval_y = (v[: cfg.limit] for v in (train_x, train_y, eval_x, eval_y))
    scorer = kind(cfg, seed)
    scorer.fit(train_x, train_y, seed)
    report = {
        "train": len(train_y),
        "eval": len(eval_y),
        "eval_accuracy": round(scorer.accuracy(eval_x, eval_y), 4),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    scorer.save(directory, {"fingerprint": fingerprint, "setting": setting, "seed": seed, "report": report})
    return scorer, {**report, "cached": False}
