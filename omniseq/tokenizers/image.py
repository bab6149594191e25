"""Image tokenizer: a convolutional VQ autoencoder (VQGAN-style) with a vector-quantize-pytorch quantizer.

Architecture (Esser et al. 2021, "Taming Transformers", without attention, perceptual or adversarial
losses: no pretrained LPIPS/discriminator weights are available offline, and at 64 px plain
reconstruction losses already reach the PSNR goal of issue 3):
  encoder  conv 3->C0, then per level: residual blocks + stride-2 conv; mid residual blocks;
           GroupNorm + SiLU + 1x1 conv -> embed_dim
  quantize one of (chosen by `quantizer`)
           vq   VectorQuantize: EMA codebook (van den Oord 2017), optional cosine codebook
                (Yu et al. 2022, ViT-VQGAN), k-means init, dead-code replacement
           fsq  FSQ (Mentzer et al. 2023): no codebook to collapse, size = prod(fsq_levels)
           lfq  LFQ (Yu et al. 2023, MAGVIT-v2): sign bits, size = 2^bits
  decoder  mirror image with nearest-neighbour upsampling; tanh-free, output clamped at decode.
An H x W image becomes an (H / downsample) x (W / downsample) grid of int64 codes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange
from omegaconf import OmegaConf
from torch import nn
from vector_quantize_pytorch import FSQ, LFQ, VectorQuantize

from omniseq.tokenizers.base import (
    MediaError,
    MediaTokenizer,
    freeze_untrained_codebooks,
    load_weights,
    register_tokenizer,
)
from omniseq.tokenizers.image_io import ImageIOConfig, load_image
from omniseq.vocab import CodebookSpec

QUANTIZERS = ("vq", "fsq", "lfq")


@dataclass
class VQImageConfig:
    image: ImageIOConfig = field(default_factory=ImageIOConfig)  # how inputs are loaded and resized
    downsample: int = 8  # pixels per code along each side: 4, 8 or 16 (a power of two)
    stem_patch: int = 1  # space-to-depth factor before the first conv (counts toward downsample): cheap on CPU
    base_channels: int = 64  # channels of the first conv level
    refine_channels: int = 0  # >0: a residual 3x3 conv pair at full resolution after the stem's pixel shuffle
    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 2, 4])  # per level; the last repeats
    num_res_blocks: int = 1  # residual blocks per level (and in the middle)
    embed_dim: int = 64  # channels of the latent the quantizer sees
    quantizer: str = "vq"  # vq | fsq | lfq
    codebook_size: int = 1024  # vq and lfq (power of two for lfq); fsq uses prod(fsq_levels)
    codebook_dim: int = 16  # vq: low-dim lookup space (ViT-VQGAN factorised codes raise usage); 0 = embed_dim
    vq_decay: float = 0.9  # vq: EMA decay of the codebook
    vq_cosine: bool = True  # vq: l2-normalised codes and latents (cosine similarity lookup)
    vq_kmeans_init: bool = True  # vq: initialise the codebook by k-means on the first batch
    # vq: passed as threshold_ema_dead_code, which vector-quantize-pytorch 1.34 turns into a ratio (this /
    # codebook_size when >= 1, else as is; 0 = off): a code whose EMA count falls below ratio x the codebook's
    # mean EMA count is re-seeded from the batch. Not an absolute count: docs/tokenizers_image.md
    vq_dead_code_threshold: float = 1.0
    fsq_levels: list[int] = field(default_factory=lambda: [4, 4, 4, 4, 4])  # fsq: levels per channel
    lfq_entropy_weight: float = 0.1  # lfq: entropy auxiliary loss weight
    commitment_weight: float = 0.25  # vq/lfq: commitment loss weight
    row_end: bool = True  # the vocabulary puts <|row_end|> after every row of codes
    # True: each code sees only its own downsample x downsample patch (a per-patch MLP, no normalisation
    # across the image), so an empty patch always gets the same code and an object's codes do not depend
    # on the rest of the image; the decoder keeps its context. The demo's scenes use it (docs).
    local_encoder: bool = False

    def __post_init__(self):
        if self.downsample < 1 or self.downsample & (self.downsample - 1):
            raise ValueError(f"downsample must be a power of two, got {self.downsample}")
        if self.quantizer not in QUANTIZERS:
            raise ValueError(f"quantizer must be one of {QUANTIZERS}, got {self.quantizer!r}")
        if self.quantizer == "fsq" and min(self.fsq_levels, default=0) < 3:
            raise ValueError(f"fsq_levels must be non-empty with every level >= 3, got {self.fsq_levels}")
        if self.quantizer == "lfq" and self.codebook_size & (self.codebook_size - 1):
            raise ValueError(f"lfq needs a power-of-two codebook_size, got {self.codebook_size}")
        if self.stem_patch < 1 or self.downsample % self.stem_patch:
            raise ValueError(f"stem_patch {self.stem_patch} must divide downsample {self.downsample}")
        if self.image.size and self.image.size % self.downsample:
            raise ValueError(f"image.size {self.image.size} must be a multiple of downsample {self.downsample}")

    @property
    def num_codes(self) -> int:
        return math.prod(self.fsq_levels) if self.quantizer == "fsq" else self.codebook_size

    @classmethod
    def from_dict(cls, d: dict) -> VQImageConfig:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), d))


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.GroupNorm(min(32, c_in // 4 or 1), c_in),
            nn.SiLU(),
            nn.Conv2d(c_in, c_out, 3, padding=1),
            nn.GroupNorm(min(32, c_out // 4 or 1), c_out),
            nn.SiLU(),
            nn.Conv2d(c_out, c_out, 3, padding=1),
        )
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.block(x)


def _level_channels(cfg: VQImageConfig) -> list[int]:
    levels = int(math.log2(cfg.downsample // cfg.stem_patch))
    return [cfg.base_channels * cfg.channel_mult[min(i, len(cfg.channel_mult) - 1)] for i in range(levels + 1)]


class Encoder(nn.Module):
    def __init__(self, cfg: VQImageConfig):
        super().__init__()
        ch = _level_channels(cfg)
        if cfg.local_encoder:  # 1x1 convs over space-to-depth patches: a patch's code is its pixels alone
            f, c = cfg.downsample, ch[-1]
            self.net = nn.Sequential(nn.PixelUnshuffle(f), nn.Conv2d(3 * f * f, c, 1), nn.SiLU(),
                                     nn.Conv2d(c, c, 1), nn.SiLU(), nn.Conv2d(c, cfg.embed_dim, 1))  # fmt: skip
            return
        p = cfg.stem_patch
        layers: list[nn.Module] = [nn.PixelUnshuffle(p), nn.Conv2d(3 * p * p, ch[0], 3, padding=1)]
        for i in range(len(ch) - 1):
            layers += [ResBlock(ch[i], ch[i]) for _ in range(cfg.num_res_blocks)]
            layers.append(nn.Conv2d(ch[i], ch[i + 1], 4, stride=2, padding=1))
        layers += [ResBlock(ch[-1], ch[-1]) for _ in range(cfg.num_res_blocks)]
        layers += [nn.GroupNorm(min(32, ch[-1] // 4), ch[-1]), nn.SiLU(), nn.Conv2d(ch[-1], cfg.embed_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, D, H/f, W/f)
        return self.net(x)


class Decoder(nn.Module):
    def __init__(self, cfg: VQImageConfig):
        super().__init__()
        ch = _level_channels(cfg)[::-1]
        layers: list[nn.Module] = [nn.Conv2d(cfg.embed_dim, ch[0], 3, padding=1)]
        layers += [ResBlock(ch[0], ch[0]) for _ in range(cfg.num_res_blocks)]
        for i in range(len(ch) - 1):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch[i], ch[i + 1], 3, padding=1)]
            layers += [ResBlock(ch[i + 1], ch[i + 1]) for _ in range(cfg.num_res_blocks)]
        p = cfg.stem_patch
        layers += [
            nn.GroupNorm(min(32, ch[-1] // 4), ch[-1]),
            nn.SiLU(),
            nn.Conv2d(ch[-1], 3 * p * p, 3, padding=1),
        ]
        layers.append(nn.PixelShuffle(p))
        self.net = nn.Sequential(*layers)
        # PixelShuffle maps each code to a patch on its own, which leaves a faint per-patch texture
        # in flat regions; one cheap full-resolution residual pass smooths across patch borders.
        r = cfg.refine_channels
        self.refine = (
            nn.Sequential(nn.Conv2d(3, r, 3, padding=1), nn.SiLU(), nn.Conv2d(r, 3, 3, padding=1)) if r else None
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # (B, D, h, w) -> (B, 3, h*f, w*f)
        x = self.net(z)
        return x + self.refine(x) if self.refine is not None else x


class VQAutoencoder(nn.Module):
    """Pixels in [-1, 1] -> codes -> pixels. forward returns (reconstruction, codes, aux loss)."""

    def __init__(self, cfg: VQImageConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder, self.decoder = Encoder(cfg), Decoder(cfg)
        if cfg.quantizer == "vq":
            self.quantizer = VectorQuantize(
                dim=cfg.embed_dim,
                codebook_size=cfg.codebook_size,
                codebook_dim=cfg.codebook_dim or None,
                decay=cfg.vq_decay,
                commitment_weight=cfg.commitment_weight,
                use_cosine_sim=cfg.vq_cosine,
                kmeans_init=cfg.vq_kmeans_init,
                threshold_ema_dead_code=cfg.vq_dead_code_threshold,
                accept_image_fmap=True,
            )
        elif cfg.quantizer == "fsq":
            self.quantizer = FSQ(levels=list(cfg.fsq_levels), dim=cfg.embed_dim)
        else:
            self.quantizer = LFQ(
                dim=cfg.embed_dim,
                codebook_size=cfg.codebook_size,
                entropy_loss_weight=cfg.lfq_entropy_weight,
                commitment_loss_weight=cfg.commitment_weight,
            )

    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, D, h, w) -> quantized (B, D, h, w), codes (B, h, w), aux loss (scalar)."""
        if self.cfg.quantizer == "fsq":
            zq, codes = self.quantizer(z)
            return zq, codes, z.new_zeros(())
        zq, codes, loss = self.quantizer(z)
        return zq, codes, loss.sum()

    def encode(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, h, w) int64
        return self.quantize(self.encoder(x))[1].long()

    def codes_to_latent(self, codes: torch.Tensor) -> torch.Tensor:  # (B, h, w) -> (B, D, h, w)
        if self.cfg.quantizer == "vq":
            # Not get_output_from_indices: with accept_image_fmap it moves channels first *before*
            # project_out, which then mixes spatial positions when codebook_dim != embed_dim.
            out = self.quantizer.project_out(self.quantizer.codebook[codes])  # (B, h, w, D)
            return rearrange(out, "b h w d -> b d h w")
        return self.quantizer.indices_to_codes(codes)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:  # (B, h, w) -> (B, 3, H, W)
        return self.decoder(self.codes_to_latent(codes))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        zq, codes, aux = self.quantize(self.encoder(x))
        return self.decoder(zq), codes, aux


def to_pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [-1, 1]."""
    return rearrange(
        torch.from_numpy(np.require(images, requirements=["C", "W"])).float() / 127.5 - 1.0,
        "b h w c -> b c h w",
    )


def from_pixels(x: torch.Tensor) -> np.ndarray:
    """float (B, 3, H, W) in [-1, 1] -> uint8 (B, H, W, 3)."""
    x = ((x.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return rearrange(x, "b c h w -> b h w c").cpu().numpy()


@register_tokenizer
class VQImageTokenizer(MediaTokenizer):
    """encode(image) -> int64 codes [h, w]; decode(codes) -> uint8 image [H, W, 3]."""

    kind = "vq_image"
    modality = "image"

    def __init__(self, cfg: VQImageConfig, model: VQAutoencoder | None = None):
        self.cfg = cfg
        self.model = (model or VQAutoencoder(cfg)).eval()
        freeze_untrained_codebooks(self.model, cosine=self.cfg.vq_cosine)

    @property
    def codebook_size(self) -> int:
        return self.cfg.num_codes

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def grid_for(self, height: int, width: int) -> tuple[int, int]:
        return height // self.cfg.downsample, width // self.cfg.downsample

    def prepare(self, media: Any) -> np.ndarray:
        """Any supported image input -> RGB uint8 [H, W, 3] with sides cropped to multiples of downsample."""
        rgb = load_image(media, self.cfg.image)
        h, w = self.grid_for(*rgb.shape[:2])
        if h == 0 or w == 0:
            name = str(media) if isinstance(media, (str, Path)) else f"<{type(media).__name__}>"
            raise MediaError(name, f"image {rgb.shape[:2]} is smaller than one {self.cfg.downsample}px code")
        return rgb[: h * self.cfg.downsample, : w * self.cfg.downsample]

    @torch.inference_mode()
    def encode_batch(self, images: np.ndarray, dtype: torch.dtype = torch.float32) -> np.ndarray:
        """uint8 (B, H, W, 3), already loaded -> int64 codes (B, h, w): the throughput path."""
        x = to_pixels(images).to(self.device)
        with torch.autocast(self.device.type, dtype=dtype, enabled=dtype != torch.float32):
            return self.model.encode(x).cpu().numpy().astype(np.int64)

    def encode_many(self, media: list[Any], batch_size: int = 64) -> list[np.ndarray]:
        """Encode a list of images of any sizes, batching images that share a size."""
        loaded = [self.prepare(m) for m in media]
        out: list[np.ndarray | None] = [None] * len(loaded)
        by_shape: dict[tuple, list[int]] = {}
        for i, rgb in enumerate(loaded):
            by_shape.setdefault(rgb.shape, []).append(i)
        for idx in by_shape.values():
            for s in range(0, len(idx), batch_size):
                chunk = idx[s : s + batch_size]
                for i, codes in zip(chunk, self.encode_batch(np.stack([loaded[i] for i in chunk]))):
                    out[i] = codes
        return out  # type: ignore[return-value]

    def encode(self, media: Any) -> np.ndarray:
        return self.encode_batch(self.prepare(media)[None])[0]

    def check_codes(self, codes: np.ndarray, ndim: int = 2) -> np.ndarray:
        codes = np.asarray(codes)
        if codes.ndim != ndim or 0 in codes.shape or not np.issubdtype(codes.dtype, np.integer):
            raise ValueError(f"expected non-empty integer codes with {ndim} dims, got {codes.dtype} {codes.shape}")
        if codes.min() < 0 or codes.max() >= self.codebook_size:
            raise ValueError(f"codes must lie in [0, {self.codebook_size}), got range [{codes.min()}, {codes.max()}]")
        return codes.astype(np.int64)

    @torch.inference_mode()
    def decode_batch(self, codes: np.ndarray, dtype: torch.dtype = torch.float32) -> np.ndarray:
        """int codes (B, h, w) -> uint8 (B, H, W, 3)."""
        c = torch.from_numpy(self.check_codes(codes, ndim=3)).to(self.device)
        with torch.autocast(self.device.type, dtype=dtype, enabled=dtype != torch.float32):
            return from_pixels(self.model.decode(c))

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return self.decode_batch(self.check_codes(codes)[None])[0]

    def tokens_for(self, media: Any) -> int:
        h, w = self.prepare(media).shape[:2]
        return (h // self.cfg.downsample) * (w // self.cfg.downsample)

    def config_dict(self) -> dict:
        return asdict(self.cfg)

    def codebook_spec(self) -> CodebookSpec:
        size = self.cfg.image.size
        grid = self.grid_for(size, size) if size and self.cfg.image.resize != "none" else None
        return CodebookSpec(
            "image",
            self.kind,
            self.codebook_size,
            grid=grid,
            row_end=self.cfg.row_end,
            fingerprint=self.fingerprint(),
            config=self.config_dict(),
        )

    def weights(self) -> dict[str, torch.Tensor]:
        return dict(self.model.state_dict())

    @classmethod
    def from_config(cls, config: dict, weights: dict[str, torch.Tensor] | None = None) -> VQImageTokenizer:
        cfg = VQImageConfig.from_dict(config)
        model = VQAutoencoder(cfg)
        if weights is not None:
            load_weights(model, weights)
        return cls(cfg, model)
