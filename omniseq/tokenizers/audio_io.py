"""Audio input for the tokenizers and the data pipeline: read, mix down, check, resample, limit length.

Reading goes through soundfile (libsndfile: WAV incl. 8/16/24/32-bit PCM and float, FLAC, OGG/Vorbis,
MP3), resampling through soxr (the SoX resampler, band-limited "HQ"), never hand-written: a naive
resampler aliases, and aliasing is exactly what a codec then learns to reproduce.

Every failure is a MediaError naming the file: unreadable or empty files, NaN/inf samples, a clip over
the length limit (unless `on_too_long="trim"`), or silence when `min_rms` is set. Clipped input
(|x| > 1, e.g. float WAVs) is clamped to [-1, 1], since a codec trained on [-1, 1] cannot represent it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr

from omniseq.tokenizers.base import MediaError

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")


@dataclass
class AudioIOConfig:
    max_seconds: float = 30.0  # longest clip accepted; 0 = no limit
    on_too_long: str = "error"  # error | trim: what to do with a clip longer than max_seconds
    min_rms: float = 0.0  # clips quieter than this RMS are a MediaError (0 = accept silence)


@dataclass
class AudioClip:
    """Mono float32 samples at `sample_rate`, and where they came from (for error messages)."""

    samples: np.ndarray  # [T] float32 in [-1, 1]
    sample_rate: int
    source: str

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.sample_rate


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Samples [T, C] float32 and the file's rate; a MediaError naming `path` when it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise MediaError(path, "audio file not found")
    if path.stat().st_size == 0:
        raise MediaError(path, "empty file (0 bytes)")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise MediaError(path, f"unreadable audio ({e}); expected WAV, FLAC, OGG or MP3") from None
    return data, int(sr)


def to_float(samples: np.ndarray, source: object) -> np.ndarray:
    """Float samples in [-1, 1]: integer PCM (int16 from scipy.io.wavfile, int32, uint8 with its 128
    offset) is scaled by its full range; a cast alone would clip nearly every sample to +-1.

    64-bit integers are refused: no PCM format stores them, and they are what numpy makes of a Python list
    of ints or an int16 array widened by arithmetic, whose int16-range samples would be divided by 2^63 into
    silence. The caller knows the real sample format; we cannot guess it."""
    x = np.asarray(samples)
    if x.dtype.kind == "f":
        return x.astype(np.float32, copy=False)
    if x.dtype.kind in "iu" and x.dtype.itemsize > 4:
        raise MediaError(
            source,
            f"{x.dtype} samples: pass int16 or int32 PCM (e.g. array.astype(np.int16)) or float samples in [-1, 1]",
        )
    if x.dtype.kind == "u":
        info = np.iinfo(x.dtype)
        return ((x.astype(np.float64) - (info.max + 1) / 2) / ((info.max + 1) / 2)).astype(np.float32)
    if x.dtype.kind == "i":
        return (x.astype(np.float64) / (np.iinfo(x.dtype).max + 1)).astype(np.float32)
    raise MediaError(source, f"expected float or integer PCM samples, got dtype {x.dtype}")


def to_mono(samples: np.ndarray, source: object) -> np.ndarray:
    """[T] or [T, C] -> [T] by averaging channels (stereo and multichannel alike)."""
    x = to_float(samples, source)
    if x.ndim == 2:
        x = x.mean(axis=1)
    elif x.ndim != 1:
        raise MediaError(source, f"expected audio of shape [samples] or [samples, channels], got {x.shape}")
    return x


def resample(samples: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Band-limited resampling with soxr (float32 in, float32 out)."""
    if sr_in == sr_out:
        return np.asarray(samples, dtype=np.float32)
    return soxr.resample(np.asarray(samples, dtype=np.float32), sr_in, sr_out, quality="HQ").astype(np.float32)


def load_audio(
    media: Any, target_rate: int, cfg: AudioIOConfig | None = None, sample_rate: int | None = None
) -> AudioClip:
    """A path, an array with `sample_rate`, or an (array, rate) pair -> a checked mono clip at target_rate."""
    cfg = cfg or AudioIOConfig()
    if cfg.on_too_long not in ("error", "trim"):
        raise ValueError(f"AudioIOConfig.on_too_long must be 'error' or 'trim', got {cfg.on_too_long!r}")
    if isinstance(media, tuple) and len(media) == 2:
        media, sample_rate = media
    if isinstance(media, (str, Path)):
        source = str(media)
        data, sr = read_audio(media)
    else:
        source = f"<array {getattr(media, 'shape', '?')}>"
        if sample_rate is None:
            raise MediaError(source, "an audio array needs its sample rate: pass (array, rate) or sample_rate=")
        data, sr = np.asarray(media), int(sample_rate)
        if sr <= 0:
            raise MediaError(source, f"sample rate must be > 0 Hz, got {sample_rate}")
        if data.ndim == 2 and data.shape[0] < data.shape[1] and data.shape[0] <= 8:
            data = data.T  # [C, T] (torch convention) -> [T, C]
    x = to_mono(data, source)
    if x.size == 0:
        raise MediaError(source, "no audio samples")
    if not np.isfinite(x).all():
        bad = int(np.flatnonzero(~np.isfinite(x))[0])
        raise MediaError(source, f"non-finite sample (NaN or inf) at sample {bad}")
    limit = int(cfg.max_seconds * sr) if cfg.max_seconds > 0 else 0
    if limit and len(x) > limit:
        if cfg.on_too_long == "error":
            raise MediaError(source, f"{len(x) / sr:.2f} s is over the limit of {cfg.max_seconds} s (max_seconds)")
        x = x[:limit]
    n = len(x)
    x = np.clip(resample(x, sr, target_rate), -1.0, 1.0)
    if x.size == 0:  # one sample at 44.1 / 48 kHz leaves none at 16 kHz, and a codec's convs would then fail
        raise MediaError(source, f"{n} sample(s) at {sr} Hz is too short: none is left at {target_rate} Hz")
    if cfg.min_rms > 0 and float(np.sqrt(np.mean(x**2))) < cfg.min_rms:
        raise MediaError(source, f"silent clip (RMS below min_rms={cfg.min_rms})")
    return AudioClip(x, target_rate, source)


def find_audio_files(folder: str | Path) -> list[Path]:
    """Every audio file under `folder`, sorted, by extension (AUDIO_EXTENSIONS)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"audio folder not found: {folder}")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())


def write_audio(path: str | Path, samples: np.ndarray, sample_rate: int) -> Path:
    """16-bit PCM WAV (or the format the suffix names) of mono float samples."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(np.asarray(samples, dtype=np.float32), -1, 1), sample_rate)
    return path
