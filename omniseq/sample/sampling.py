"""Per-modality sampling: temperature, top-k, top-p and repetition penalty, chosen per row by what the
row is generating (text, or the media span it is inside).

Defaults come from the peers (ANCHORS.md): Chameleon samples text and images at T 0.7, top-p 0.9 with
CFG 3.0 for images; MIO samples speech with top-p 0.7 and repetition penalty 1.15. Greedy image
decoding gave blank images with the demo's first, global VQ (most training patches are empty), so no image
default is greedy; the demo's per-patch image tokenizer decodes best greedy and unguided, which its recipe
sets (omniseq.recipe DEMO_SAMPLING).

Sampling follows gpt-fast: the exponential-race trick (argmax of p / Exp(1) noise) draws from p without
`torch.multinomial`'s host sync. Each row has its own seeded `torch.Generator`, so a row's tokens do not
depend on the other rows of the batch (batched generation equals unbatched generation).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch

from omniseq.config import ConfigError
from omniseq.vocab import MODALITIES


@dataclass
class ModalitySampling:
    temperature: float = 0.7  # softmax temperature; 0 = greedy (argmax)
    top_k: int = 0  # keep the k most likely tokens; 0 = off
    top_p: float = 0.9  # nucleus: keep the smallest set with this much probability; 1 = off
    repetition_penalty: float = 1.0  # CTRL-style (Keskar et al. 2019) on ids seen in the row; 1 = off


@dataclass
class GuidanceConfig:
    """Classifier-free guidance scale per media modality (Ho & Salimans 2022); 1 = off. Guidance is
    applied only while a row is inside a span of that modality; text is never guided."""

    image: float = 3.0  # Chameleon and Emu3 use 3.0 (Janus 5)
    audio: float = 1.0  # MIO samples speech without guidance
    video: float = 3.0  # video frames are image grids: same default as images


@dataclass
class SamplingConfig:
    text: ModalitySampling = field(default_factory=ModalitySampling)  # Chameleon text: T 0.7, top-p 0.9
    image: ModalitySampling = field(default_factory=ModalitySampling)  # Chameleon image: T 0.7, top-p 0.9
    audio: ModalitySampling = field(
        default_factory=lambda: ModalitySampling(temperature=1.0, top_p=0.7, repetition_penalty=1.15)
    )  # MIO speech: top-p 0.7, repetition penalty 1.15
    video: ModalitySampling = field(default_factory=ModalitySampling)  # as images
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)  # CFG scales per media modality

    def validate(self) -> SamplingConfig:
        for m in MODALITIES:
            s = getattr(self, m)
            checks = {
                "temperature": s.temperature >= 0,
                "top_k": s.top_k >= 0,
                "top_p": 0 < s.top_p <= 1,
                "repetition_penalty": s.repetition_penalty > 0,
            }
            for key, ok in checks.items():
                if not ok:
                    raise ConfigError(f"sampling.{m}.{key}: got {getattr(s, key)}, expected {_RANGES[key]}")
        for f in fields(self.guidance):
            if getattr(self.guidance, f.name) < 0:
                raise ConfigError(f"sampling.guidance.{f.name}: got {getattr(self.guidance, f.name)}, expected >= 0")
        return self

    def guided(self) -> bool:
        """Whether any modality asks for guidance (and so for the unconditional rows)."""
        return any(getattr(self.guidance, f.name) != 1.0 for f in fields(self.guidance))


_RANGES = {"temperature": ">= 0", "top_k": ">= 0", "top_p": "in (0, 1]", "repetition_penalty": "> 0"}


class Sampler:
    """Draws one token per row from masked logits with the settings of each row's modality."""

    def __init__(self, cfg: SamplingConfig, seeds: list[int], device: torch.device | str = "cpu"):
        cfg.validate()
        self.device = torch.device(device)
        per = [getattr(cfg, m) for m in MODALITIES]  # indexed by MODALITY_ID
        as_t = lambda xs, dt: torch.tensor(xs, dtype=dt, device=self.device)  # noqa: E731
        self.temperature = as_t([s.temperature for s in per], torch.float32)
        self.top_k = as_t([s.top_k for s in per], torch.long)
        self.top_p = as_t([s.top_p for s in per], torch.float32)
        self.penalty = as_t([s.repetition_penalty for s in per], torch.float32)
        self.scale = as_t([1.0] + [cfg.guidance.image, cfg.guidance.audio, cfg.guidance.video], torch.float32)
        # Sorting the vocabulary every step is only needed when some modality truncates.
        self.truncates = any(s.top_k > 0 or s.top_p < 1 for s in per)
        self.penalises = any(s.repetition_penalty != 1 for s in per)
        self.generators = [torch.Generator(self.device).manual_seed(int(s)) for s in seeds]

    def guidance_scale(self, modality: torch.Tensor) -> torch.Tensor:
        """[B] CFG scale of each row from its MODALITY_ID (1 for text rows)."""
        return self.scale[modality]

    def sample(
        self,
        logits: torch.Tensor,
        allowed: torch.Tensor,
        modality: torch.Tensor,
        seen: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """logits [B, V] (any float dtype), allowed [B, V] bool, modality [B] -> token ids [B] (no sync).

        Order: repetition penalty on `seen` ids, constraint mask, temperature, top-k, top-p, draw.
        """
        x = logits.float()
        if self.penalises and seen is not None:
            p = self.penalty[modality][:, None]
            x = torch.where(seen, torch.where(x > 0, x / p, x * p), x)
        x = x.masked_fill(~allowed, float("-inf"))
        greedy_tok = x.argmax(-1)
        temp = self.temperature[modality]
        x = x / torch.where(temp > 0, temp, 1.0)[:, None]
        if self.truncates:
            x, order = x.sort(-1, descending=True)
            rank = torch.arange(x.shape[-1], device=x.device)
            k = self.top_k[modality]
            keep = rank[None, :] < torch.where(k > 0, k, x.shape[-1])[:, None]
            probs = x.masked_fill(~keep, float("-inf")).softmax(-1)
            # Keep a token while the mass before it is below top-p: the most likely token always stays.
            keep &= (probs.cumsum(-1) - probs) < self.top_p[modality][:, None]
            x = x.masked_fill(~keep, float("-inf"))
        probs = x.softmax(-1)
        noise = torch.stack([torch.empty_like(probs[0]).exponential_(generator=g) for g in self.generators])
        pick = (probs / noise).argmax(-1)
        tok = order.gather(-1, pick[:, None])[:, 0] if self.truncates else pick
        return torch.where(temp > 0, tok, greedy_tok)
