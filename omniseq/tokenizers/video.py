"""Video tokenizer: sampled frames, each through an image tokenizer (the AnyGPT / MIO / Emu3 frame recipe).

encode(video) -> int64 codes [T, h, w]; the vocabulary inserts <|frame|> between frames
(`VocabLayout.media_ids("video", codes)`), so this module never sees separators. With
`share_image_range` the codebook spec says `shares="image"`: video frames reuse the image ids, which is
what lets a model trained on images draw video frames (the layout's image tokenizer must then be the
same one; the fingerprints make a mismatch fail loudly).

The image tokenizer is loaded from `image_tokenizer` (a directory) when the video tokenizer is made,
and saved *inside* the video tokenizer (its config and weights, prefixed `image.`), so a saved video
tokenizer is self-contained and its fingerprint does not depend on where the image tokenizer lived.

Inputs: MP4/WebM/GIF/... files (PyAV), `.npz` clips (one array [T, H, W, 3], or [N, T, H, W, 3] with
`file.npz:key:index`), arrays [T, H, W, 3] and lists of images. Frames are sampled at `fps` (uniform
in time) or, with `sampling: difference`, the `max_frames` frames that change most (first frame kept).
"""

from __future__ import annotations

import zipfile
import zlib
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image

from omniseq.tokenizers.base import (
    MediaError,
    MediaTokenizer,
    fingerprint,
    load_tokenizer,
    register_tokenizer,
    tokenizer_class,
)
from omniseq.tokenizers.image_io import array_to_rgb, to_rgb
from omniseq.vocab import CodebookSpec

SAMPLINGS = ("uniform", "difference")


@dataclass
class FrameVideoConfig:
    image_tokenizer: str = ""  # directory of the image tokenizer frames go through (recorded, not hashed)
    fps: float = 4.0  # frames per second sampled (uniform sampling)
    max_frames: int = 16  # at most this many frames per video
    sampling: str = "uniform"  # uniform: every 1/fps seconds | difference: the frames that change most
    source_fps: float = 8.0  # frame rate assumed for arrays and npz clips (they carry no timestamps)
    share_image_range: bool = True  # video codes reuse the image id range (CodebookSpec.shares="image")
    max_decoded_frames: int = 10_000  # guard against endless streams: reading stops with an error beyond this

    def __post_init__(self):
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {self.sampling!r}")
        if self.fps <= 0 or self.source_fps <= 0 or self.max_frames < 1:
            raise ValueError("fps and source_fps must be > 0 and max_frames >= 1")


def _frame_to_rgb(frame: Any, name: str) -> np.ndarray:
    # PIL frames go through their mode's conversion (palette expanded, alpha composited on the image
    # readers' default white background), as images do; a bare array of palette indices would read as grey
    if isinstance(frame, Image.Image):
        return to_rgb(frame, name=name)
    return array_to_rgb(np.asarray(frame), name)


def read_video(source: Any, cfg: FrameVideoConfig) -> tuple[np.ndarray, np.ndarray]:
    """Any supported input -> (frames uint8 [N, H, W, 3], timestamps in seconds [N])."""
    if isinstance(source, np.ndarray) and (source.ndim != 4 or source.shape[-1] not in (1, 3, 4)):
        # a single image [H, W, 3] would otherwise be read as a video of H frames, each one row of pixels
        raise MediaError(
            "<array>",
            f"expected video frames [T, H, W, 1|3|4], got shape {source.shape} "
            "(a single image is a one-frame video: pass image[None] or [image])",
        )
    if isinstance(source, (list, tuple)) or isinstance(source, np.ndarray):
        frames = [_frame_to_rgb(f, f"<frame {i}>") for i, f in enumerate(source)]
        return _stack(frames, "<array>"), np.arange(len(frames)) / cfg.source_fps
    spec = str(source)
    path, _, rest = spec.partition(".npz:")
    if rest or spec.endswith(".npz"):
        return _read_npz(Path(path + ".npz" if rest else spec), rest, cfg)
    p = Path(spec)
    if not p.is_file():
        raise MediaError(p, "video file not found")
    import av  # here, not at the top: npz clips and images need no PyAV (docs/dependencies.md)

    frames, times = [], []
    try:
        with av.open(str(p)) as container:
            if not container.streams.video:
                raise MediaError(p, "no video stream")
            stream = container.streams.video[0]
            for frame in container.decode(stream):
                if len(frames) >= cfg.max_decoded_frames:
                    raise MediaError(p, f"more than max_decoded_frames={cfg.max_decoded_frames} frames")
                frames.append(frame.to_ndarray(format="rgb24"))
                times.append(float(frame.time) if frame.time is not None else len(times) / cfg.source_fps)
    except MediaError:
        raise
    except (av.FFmpegError, ValueError, OSError) as e:
        raise MediaError(p, f"cannot decode video: {e}") from None
    return _stack(frames, p), np.asarray(times)


def _read_npz(path: Path, rest: str, cfg: FrameVideoConfig) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise MediaError(path, "npz clip file not found")
    key, _, index = rest.partition(":")
    key, arr = _npz_array(path, key)
    if arr.ndim == 5:
        if not index:
            raise MediaError(path, f"array {key!r} holds {len(arr)} clips: name one as {path}:{key}:<index>")
        if not index.isdigit() or int(index) >= len(arr):
            raise MediaError(path, f"clip index {index!r} of array {key!r}: expected 0 to {len(arr) - 1}")
        arr = arr[int(index)]
    elif index:
        raise MediaError(path, f"clip index {index!r} given, but array {key!r} is one clip of shape {arr.shape}")
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3, 4):
        raise MediaError(path, f"expected clip frames [T, H, W, 1|3|4] in array {key!r}, got shape {arr.shape}")
    return read_video(arr, cfg)


def _npz_array(path: Path, key: str) -> tuple[str, np.ndarray]:
    """(key, array) of an npz file, `key` defaulting to its first array; a truncated or foreign file is a
    MediaError naming it, so that callers which skip bad media (the shard builder catches MediaError) skip it."""
    try:
        z = np.load(path)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise MediaError(path, "not an npz archive (a bare .npy array?); expected np.savez output")
        with z:
            if not z.files:
                raise MediaError(path, "npz holds no arrays; expected clip frames [T, H, W, 3]")
            key = key or z.files[0]
            if key not in z:
                raise MediaError(path, f"no array {key!r} (has {sorted(z.files)})")
            return key, z[key]
    except MediaError:
        raise
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError) as e:
        # ValueError: a pickle or object array (never loaded) or a member cut short
        raise MediaError(path, f"unreadable npz ({type(e).__name__}: {e}); expected np.savez output") from None


def _stack(frames: list[np.ndarray], name: Any) -> np.ndarray:
    if not frames:
        raise MediaError(name, "video has no frames")
    if len({f.shape for f in frames}) != 1:
        raise MediaError(name, "frames differ in size")
    return np.stack(frames)


def sample_frames(frames: np.ndarray, times: np.ndarray, cfg: FrameVideoConfig) -> np.ndarray:
    """Indices of the frames to keep, in time order."""
    n = len(frames)
    if cfg.sampling == "difference":
        # Mean absolute change from the previous frame: static stretches cost no tokens.
        diff = np.abs(np.diff(frames.astype(np.int16), axis=0)).mean(axis=(1, 2, 3))
        top = np.argsort(-diff, kind="stable")[: cfg.max_frames - 1] + 1
        return np.sort(np.concatenate([[0], top]))
    targets = times[0] + np.arange(0, times[-1] - times[0] + 1e-9, 1.0 / cfg.fps)
    idx = np.unique(np.clip(np.searchsorted(times, targets - 1e-6), 0, n - 1))
    if len(idx) > cfg.max_frames:
        idx = idx[np.linspace(0, len(idx) - 1, cfg.max_frames).round().astype(int)]
    return idx


def write_mp4(frames: np.ndarray, path: str | Path, fps: float = 4.0) -> Path:
    """uint8 [T, H, W, 3] -> H.264 MP4 (yuv420p needs even sides: odd ones are padded by one pixel)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    t, h, w, _ = frames.shape
    frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    import av

    with av.open(str(path), mode="w") as container:
        # an exact rational rate: rounded, 2.5 frames/s played at 2 (10 frames lasted 5 s instead of 4)
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        container.mux(stream.encode())
    return path


@register_tokenizer
class FrameVideoTokenizer(MediaTokenizer):
    """encode(video) -> int64 codes [T, h, w]; decode(codes) -> uint8 frames [T, H, W, 3]."""

    kind = "frame_video"
    modality = "video"

    def __init__(self, cfg: FrameVideoConfig, image: MediaTokenizer):
        if image.modality != "image":
            raise TypeError(f"frames need an image tokenizer, got a {image.modality} one ({image.kind})")
        self.cfg, self.image = cfg, image

    @classmethod
    def from_image_dir(cls, cfg: FrameVideoConfig) -> FrameVideoTokenizer:
        if not cfg.image_tokenizer:
            raise ValueError("video tokenizer config: image_tokenizer (a directory) is empty")
        return cls(cfg, load_tokenizer(cfg.image_tokenizer))

    @property
    def codebook_size(self) -> int:
        return self.image.codebook_size

    def frames(self, media: Any) -> np.ndarray:
        """The sampled frames of `media`, uint8 [T, H, W, 3]."""
        frames, times = read_video(media, self.cfg)
        return frames[sample_frames(frames, times, self.cfg)]

    def encode(self, media: Any) -> np.ndarray:
        frames = self.frames(media)
        many = getattr(self.image, "encode_many", None)
        codes = many(list(frames)) if many else [self.image.encode(f) for f in frames]
        return np.stack(codes).astype(np.int64)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        codes = np.asarray(codes)
        if codes.ndim != 3 or codes.shape[0] == 0:
            raise ValueError(f"video codes must be [frames, rows, cols] with frames >= 1, got shape {codes.shape}")
        batch = getattr(self.image, "decode_batch", None)
        return batch(codes) if batch else np.stack([self.image.decode(c) for c in codes])

    def decode_to_mp4(self, codes: np.ndarray, path: str | Path) -> Path:
        return write_mp4(self.decode(codes), path, self.cfg.fps)

    def tokens_for(self, media: Any) -> int:
        frames = self.frames(media)  # every frame is resized alike: one frame's count holds for all
        return len(frames) * self.image.tokens_for(frames[0])

    def config_dict(self) -> dict:
        return {**asdict(self.cfg), "image": {"kind": self.image.kind, "config": self.image.config_dict()}}

    def _identity(self) -> dict:
        # The image tokenizer's directory is where it came from, not what it is: left out of the fingerprint
        # and of the vocabulary's record (its hash), so two runs alike in different folders share a layout;
        # so is where the image tokenizer's own weights sit (a transformers model's `path`).
        own = {k: v for k, v in asdict(self.cfg).items() if k != "image_tokenizer"}
        return {**own, "image": {"kind": self.image.kind, "config": self.image.identity_config()}}

    def fingerprint(self) -> str:
        identity, weights = {"kind": self.kind, **self._identity()}, self.weights()
        if not weights:
            # The image tokenizer reads its weights from elsewhere (a transformers model's folder), so weights()
            # is empty: its own fingerprint hashes them. Only then: the embedded weights of a VQ image tokenizer
            # are hashed directly, and one more key would change every saved video tokenizer's fingerprint.
            identity["image_fingerprint"] = self.image.fingerprint()
        return fingerprint(identity, weights)

    @classmethod
    def saves_weights(cls, config: dict) -> bool:
        # a config naming only its image tokenizer's folder (no embedded `image`) reads the weights from there
        return "image" in config

    def codebook_spec(self) -> CodebookSpec:
        spec = self.image.codebook_spec()
        return CodebookSpec(
            "video",
            self.kind,
            self.codebook_size,
            grid=spec.grid,
            row_end=spec.row_end,
            rate=self.cfg.fps,
            shares="image" if self.cfg.share_image_range else None,
            shares_fingerprint=self.image.fingerprint() if self.cfg.share_image_range else "",
            fingerprint=self.fingerprint(),
            config=self._identity(),
        )

    def weights(self) -> dict[str, torch.Tensor]:
        return {f"image.{k}": v for k, v in self.image.weights().items()}

    @classmethod
    def from_config(cls, config: dict, weights: dict[str, torch.Tensor] | None = None) -> FrameVideoTokenizer:
        config = dict(config)
        image = config.pop("image", None)
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(FrameVideoConfig), config))
        if image is None:
            return cls.from_image_dir(cfg)
        image_cls = tokenizer_class(image.get("kind"), "video tokenizer config (its image tokenizer)")
        image_weights = {k[len("image.") :]: v for k, v in (weights or {}).items() if k.startswith("image.")}
        return cls(cfg, image_cls.from_config(image["config"], image_weights or None))
