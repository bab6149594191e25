"""Pretrained image VQ-VAEs through transformers, loaded from a local directory (never downloaded).

Backends (transformers 5.x classes that both encode and decode):
  janus  JanusVQVAE (DeepSeek Janus; the LlamaGen VQ-16 design): a fixed num_patches x num_patches grid
  emu3   Emu3VQVAE (BAAI Emu3): spatial factor `vision_spatial_factor`, any size that divides it
Chameleon's VQ-VAE is not offered: transformers ships only its encoder, so codes could not become
images again.

`path` is a directory written by `<Class>.save_pretrained` (config.json + safetensors), or the
directory of a full Janus/Emu3 checkpoint whose VQ weights sit under `model.vqmodel.`: the VQ config
is then read from the full config's `vq_config`.
Pixels are scaled to [-1, 1], the preprocessing both models were trained with.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from omniseq.tokenizers.base import MediaTokenizer, fingerprint, register_tokenizer
from omniseq.tokenizers.image import from_pixels, to_pixels
from omniseq.tokenizers.image_io import ImageIOConfig, load_image
from omniseq.vocab import CodebookSpec

ARCHS = {  # model_type in config.json -> (backend, VQ class, VQ config class)
    "janus_vqgan": ("janus", "JanusVQVAE", "JanusVQVAEConfig"),
    "janus": ("janus", "JanusVQVAE", "JanusVQVAEConfig"),
    "emu3_vqgan": ("emu3", "Emu3VQVAE", "Emu3VQVAEConfig"),
    "emu3": ("emu3", "Emu3VQVAE", "Emu3VQVAEConfig"),
}
FULL_PREFIX = "model.vqmodel."  # where Janus and Emu3 keep the VQ-VAE inside a full checkpoint


@dataclass
class HFImageConfig:
    path: str = ""  # local directory of the pretrained VQ-VAE (recorded, not hashed: weights are)
    image: ImageIOConfig = field(default_factory=lambda: ImageIOConfig(size=0))  # 0: the model's own size
    row_end: bool = True  # the vocabulary puts <|row_end|> after every row of codes


def load_vq_model(path: str | Path) -> tuple[str, torch.nn.Module]:
    """(backend, model in eval mode) from a local directory; errors name the path and what is missing."""
    import transformers

    d = Path(path)
    cfg_file = d / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"no pretrained VQ-VAE at {d}: {cfg_file} is missing (weights are never downloaded)")
    raw = json.loads(cfg_file.read_text())
    model_type = raw.get("model_type", "")
    if model_type not in ARCHS:
        raise ValueError(f"{cfg_file}: model_type {model_type!r} is not a supported VQ-VAE; known: {sorted(ARCHS)}")
    backend, cls_name, cfg_name = ARCHS[model_type]
    cls, cfg_cls = getattr(transformers, cls_name), getattr(transformers, cfg_name)
    if "vq_config" not in raw:  # a standalone VQ-VAE saved with save_pretrained
        return backend, cls.from_pretrained(str(d)).eval()
    model = cls(cfg_cls(**raw["vq_config"]))
    state: dict[str, torch.Tensor] = {}
    for f in sorted(d.glob("*.safetensors")):
        state |= {k[len(FULL_PREFIX) :]: v for k, v in load_file(f).items() if k.startswith(FULL_PREFIX)}
    if not state:
        raise FileNotFoundError(f"{d}: no safetensors weights under {FULL_PREFIX!r}")
    model.load_state_dict(state, strict=True)
    return backend, model.eval()


@register_tokenizer
class HFImageTokenizer(MediaTokenizer):
    """A transformers VQ-VAE behind the MediaTokenizer interface: codes [h, w] <-> uint8 [H, W, 3]."""

    kind = "hf_vq_image"
    modality = "image"

    def __init__(self, cfg: HFImageConfig):
        self.cfg = cfg
        self.backend, self.model = load_vq_model(cfg.path)
        c = self.model.config
        if self.backend == "janus":
            self.factor = 2 ** (len(c.channel_multiplier) - 1)
            self.fixed_grid: tuple[int, int] | None = (c.num_patches, c.num_patches)
        else:
            self.factor, self.fixed_grid = self.model.vision_spatial_factor, None

    @property
    def codebook_size(self) -> int:
        c = self.model.config
        return c.num_embeddings if self.backend == "janus" else c.codebook_size

    @property
    def image_size(self) -> int:
        """The side inputs are brought to: the configured one, else the Janus model's native one."""
        if self.cfg.image.size:
            return self.cfg.image.size
        return self.fixed_grid[0] * self.factor if self.fixed_grid else 0

    def prepare(self, media: Any) -> np.ndarray:
        io_cfg = ImageIOConfig(**{**asdict(self.cfg.image), "size": self.image_size})
        rgb = load_image(media, io_cfg)
        h, w = rgb.shape[0] // self.factor, rgb.shape[1] // self.factor
        if self.fixed_grid and (h, w) != self.fixed_grid:
            raise ValueError(
                f"{self.backend} needs {self.fixed_grid[0] * self.factor}px square images, got {rgb.shape}"
            )
        if h == 0 or w == 0:
            raise ValueError(f"image {rgb.shape[:2]} is smaller than one {self.factor}px code")
        return rgb[: h * self.factor, : w * self.factor]

    @torch.inference_mode()
    def encode_batch(self, images: np.ndarray) -> np.ndarray:
        """uint8 (B, H, W, 3) -> int64 codes (B, h, w)."""
        x = to_pixels(images)
        b, h, w = len(images), images.shape[1] // self.factor, images.shape[2] // self.factor
        if self.backend == "janus":
            codes = self.model.encode(x).image_tokens.reshape(b, h, w)
        else:
            sizes = torch.tensor([list(images.shape[1:3])] * b)
            codes = torch.stack(self.model.encode(x, sizes).image_tokens)
        return codes.long().numpy()

    def encode(self, media: Any) -> np.ndarray:
        return self.encode_batch(self.prepare(media)[None])[0]

    @torch.inference_mode()
    def decode_batch(self, codes: np.ndarray) -> np.ndarray:
        """int codes (B, h, w) -> uint8 (B, H, W, 3); codes outside the codebook are an error."""
        codes = np.asarray(codes)
        if codes.ndim != 3 or 0 in codes.shape or not np.issubdtype(codes.dtype, np.integer):
            raise ValueError(f"expected non-empty integer codes [B, h, w], got {codes.dtype} {codes.shape}")
        if codes.min() < 0 or codes.max() >= self.codebook_size:
            raise ValueError(f"codes must lie in [0, {self.codebook_size}), got [{codes.min()}, {codes.max()}]")
        c = torch.from_numpy(codes.astype(np.int64))
        if self.backend == "janus":
            if tuple(codes.shape[1:]) != self.fixed_grid:
                raise ValueError(f"janus decodes a {self.fixed_grid} grid, got {tuple(codes.shape[1:])}")
            pixels = self.model.decode(c.reshape(len(c), -1))
        else:
            pixels = self.model.decode(c)
        return from_pixels(pixels)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return self.decode_batch(np.asarray(codes)[None])[0]

    def tokens_for(self, media: Any) -> int:
        h, w = self.prepare(media).shape[:2]
        return (h // self.factor) * (w // self.factor)

    def config_dict(self) -> dict:
        return asdict(self.cfg)

    def identity_config(self) -> dict:
        return {k: v for k, v in self.config_dict().items() if k != "path"}

    def fingerprint(self) -> str:
        # Hash the model's config and weights, not the directory they were read from.
        config = self.identity_config()
        volatile = ("transformers_version", "_name_or_path", "architectures", "dtype", "torch_dtype")
        model_cfg = {k: v for k, v in self.model.config.to_dict().items() if k not in volatile}
        weights = self.model.state_dict()
        return fingerprint({"kind": self.kind, **config, "model": model_cfg}, weights)

    def codebook_spec(self) -> CodebookSpec:
        size = self.image_size
        grid = self.fixed_grid or ((size // self.factor,) * 2 if size and self.cfg.image.resize != "none" else None)
        return CodebookSpec(
            "image",
            self.kind,
            self.codebook_size,
            grid=grid,
            row_end=self.cfg.row_end,
            fingerprint=self.fingerprint(),
            # where the weights sit is left out, as from the fingerprint: the same weights in another folder
            # give the same layout (vocab hash)
            config=self.identity_config(),
        )

    @classmethod
    def from_config(cls, config: dict, weights: dict[str, torch.Tensor] | None = None) -> HFImageTokenizer:
        # The weights stay in `path` (they can be gigabytes); save() writes only tokenizer.json.
        return cls(OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(HFImageConfig), config)))
