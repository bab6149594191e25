"""Safe image loading shared by the image/video tokenizers and the data pipeline.

Every image, whatever its file format or mode, comes out as RGB uint8 [H, W, 3], resized and
center-cropped to the configured square (the VQGAN / Chameleon preprocessing), or raises
`MediaError` naming the file. Nothing bad reaches torch: corrupt or truncated files, zero-size
images and decompression bombs (an 8 KB PNG can declare 10^10 pixels) are caught here.

Modes: palette and grayscale (+alpha) are expanded; alpha is composited on `background` (emoji and
clipart have transparent backgrounds; composing keeps edges instead of the arbitrary RGB that
transparent pixels hold); CMYK JPEGs go through Pillow's conversion; 16-bit and 32-bit images
("I;16", "I") are scaled to 8 bits by their full range. Float images ("F") hold [0, 1] or [0, 255] by
convention: one whose maximum is <= 1 is scaled by 255 (else it would come out black), others are taken
as 0-255 like "I" (a 0-255 image darker than 1/255 everywhere would be brightened: there is no telling).
Arrays [H, W, 4] are RGBA and composited on `background` as files are, so a picture gives the same pixels
whichever way it comes.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from omniseq.tokenizers.base import MediaError

RESIZE_MODES = ("crop", "stretch", "none")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff")


@dataclass
class ImageIOConfig:
    size: int = 64  # side of the square images are brought to; 0 keeps each image's own size
    resize: str = "crop"  # crop: shorter side -> size, then center crop | stretch: to size x size | none
    max_pixels: int = 50_000_000  # larger images are rejected before decoding (decompression-bomb guard)
    background: list[int] = field(default_factory=lambda: [255, 255, 255])  # RGB that alpha is composited on

    def __post_init__(self):
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"image.resize must be one of {RESIZE_MODES}, got {self.resize!r}")
        if self.size < 0 or self.max_pixels <= 0:
            raise ValueError(f"image.size must be >= 0 and image.max_pixels > 0, got {self.size}, {self.max_pixels}")
        if len(self.background) != 3 or not all(0 <= int(c) <= 255 for c in self.background):
            raise ValueError(f"image.background must be three values in [0, 255], got {self.background}")


def _name(source: Any) -> str:
    if isinstance(source, (str, Path)):
        return str(source)
    return getattr(source, "filename", "") or f"<{type(source).__name__}>"


def open_image(path: str | Path | bytes, max_pixels: int) -> Image.Image:
    """Open and fully decode an image file (or its bytes), checking its size before decoding."""
    name = "<bytes>" if isinstance(path, bytes) else str(path)
    if not isinstance(path, bytes) and not Path(path).is_file():
        raise MediaError(name, "image file not found")
    try:
        with warnings.catch_warnings():
            # We apply our own limit; Pillow's global one would only warn below 2x its own default.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(path) if isinstance(path, bytes) else path)
            w, h = img.size
            if w * h > max_pixels:
                raise MediaError(name, f"{w}x{h} pixels exceeds max_pixels={max_pixels} (decompression-bomb guard)")
            img.load()
            # phone photos store their rotation as an EXIF tag: without it they would be coded sideways
            img = ImageOps.exif_transpose(img)
    except MediaError:
        raise
    except Image.DecompressionBombError as e:
        raise MediaError(name, f"decompression bomb: {e}") from None
    except UnidentifiedImageError:
        raise MediaError(name, "not a readable image (empty, corrupt or unknown format)") from None
    except (OSError, SyntaxError, ValueError) as e:  # truncated data, broken chunks
        raise MediaError(name, f"corrupt or truncated image: {e}") from None
    return img


def to_rgb(img: Image.Image, background: tuple[int, ...] | list[int] = (255, 255, 255), name: str = "") -> np.ndarray:
    """Any Pillow mode -> RGB uint8 [H, W, 3]."""
    name = name or _name(img)
    if img.width == 0 or img.height == 0:
        raise MediaError(name, f"zero-size image ({img.width}x{img.height})")
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        if not np.isfinite(a).all():
            raise MediaError(name, f"mode {img.mode} image with NaN or infinite pixels")
        if img.mode == "F" and a.max() <= 1.0:
            hi = 1.0  # a float image in [0, 1] (TIFFs from scientific and ML tools)
        else:
            hi = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        a = np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        img = Image.fromarray(a, mode="L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("LA", "La", "PA", "RGBa"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        bg = Image.new("RGBA", img.size, (*(int(c) for c in background), 255))
        img = Image.alpha_composite(bg, img)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def array_to_rgb(
    a: np.ndarray, name: str = "<array>", background: tuple[int, ...] | list[int] = (255, 255, 255)
) -> np.ndarray:
    """uint8/uint16/bool arrays [H, W], [H, W, 1|3|4] -> RGB uint8 [H, W, 3]; alpha is composited on
    `background` exactly as for an RGBA file (through the same Pillow call), so both give the same pixels."""
    a = np.asarray(a)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
        raise MediaError(name, f"expected an image array [H, W] or [H, W, 1|3|4], got shape {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise MediaError(name, f"zero-size image array, shape {a.shape}")
    if a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif a.dtype == np.uint16:
        a = (a.astype(np.uint32) * 255 // 65535).astype(np.uint8)
    elif a.dtype != np.uint8:
        raise MediaError(name, f"expected a uint8, uint16 or bool image array, got dtype {a.dtype}")
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    if a.shape[-1] == 4:
        return to_rgb(Image.fromarray(np.ascontiguousarray(a)), background, name)  # [H, W, 4] uint8: RGBA
    return np.ascontiguousarray(a)


def fit(rgb: np.ndarray, size: int, resize: str = "crop") -> np.ndarray:
    """Resize RGB uint8 [H, W, 3] to size x size: `crop` keeps the aspect ratio (center crop)."""
    if size == 0 or resize == "none" or rgb.shape[:2] == (size, size):
        return rgb
    img = Image.fromarray(rgb)
    if resize == "stretch":
        img = img.resize((size, size), Image.Resampling.BICUBIC)
    else:
        img = ImageOps.fit(img, (size, size), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


def load_image(source: Any, cfg: ImageIOConfig | None = None) -> np.ndarray:
    """A path, bytes, PIL image or array -> RGB uint8 [size, size, 3] (or its own size when size=0)."""
    cfg = cfg or ImageIOConfig()
    if isinstance(source, (str, Path, bytes)):
        name = "<bytes>" if isinstance(source, bytes) else str(source)
        rgb = to_rgb(open_image(source, cfg.max_pixels), cfg.background, name)
    elif isinstance(source, Image.Image):
        if source.width * source.height > cfg.max_pixels:
            raise MediaError(
                _name(source), f"{source.width}x{source.height} pixels exceeds max_pixels={cfg.max_pixels}"
            )
        try:
            source.load()  # an Image.open()ed file is lazy: decode errors surface here, not in torch
        except (OSError, SyntaxError, ValueError) as e:
            raise MediaError(_name(source), f"corrupt or truncated image: {e}") from None
        rgb = to_rgb(source, cfg.background)
    elif isinstance(source, np.ndarray):
        rgb = array_to_rgb(source, background=cfg.background)
        if rgb.shape[0] * rgb.shape[1] > cfg.max_pixels:
            raise MediaError("<array>", f"{rgb.shape[1]}x{rgb.shape[0]} pixels exceeds max_pixels={cfg.max_pixels}")
    else:
        raise MediaError(_name(source), "expected an image path, bytes, PIL image or uint8 array")
    return fit(rgb, cfg.size, cfg.resize)


def image_files(folder: str | Path) -> list[Path]:
    """Image files under `folder` (recursive), sorted so that every run sees the same order."""
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
