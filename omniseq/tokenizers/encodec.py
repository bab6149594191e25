"""Pretrained EnCodec (Défossez et al. 2022, arXiv:2210.13438) as an audio tokenizer (kind "encodec").

Runs through transformers' `EncodecModel`, loaded from a local directory (e.g. a copy of
facebook/encodec_24khz or facebook/encodec_32khz): the `encodec` PyPI package hard-imports torchaudio,
which has no CPU build here, while `EncodecModel` needs only torch and loads the same weights.
Nothing is downloaded: a missing directory is an error naming it.

The bandwidth picks the number of RVQ layers (24 kHz: 1.5 kbps = 2 layers, 6 kbps = 8 layers at 75
frames/s); `layers_used` may keep fewer. Only unnormalised models are accepted (24 kHz, 32 kHz): the
48 kHz model rescales every 1 s chunk, and a scale per chunk is not something the token stream carries.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from omniseq.config import ConfigError
from omniseq.tokenizers.audio_io import AudioIOConfig, load_audio
from omniseq.tokenizers.base import MediaTokenizer, fingerprint, register_tokenizer
from omniseq.vocab import FLATTENINGS, CodebookSpec


@dataclass
class EncodecTokenizerConfig:
    path: str = ""  # local directory of a transformers EncodecModel (config.json + weights)
    bandwidth: float = 6.0  # kbps; one of the model's target_bandwidths; sets the RVQ layers produced
    layers_used: int = 0  # layers encode() returns (0 = all the bandwidth gives); recorded in the manifest
    flatten: str = "frame"  # frame | layer | first (omniseq.vocab.flatten_codes)
    io: AudioIOConfig = field(default_factory=AudioIOConfig)  # reading: length limit, trim, silence


@register_tokenizer
class EncodecTokenizer(MediaTokenizer):
    """encode(path | array+rate) -> int64 codes [layers_used, frames]; decode(codes [L', F]) -> float32 [T]"""

    kind = "encodec"
    modality = "audio"

    def __init__(self, cfg: EncodecTokenizerConfig):
        from transformers import EncodecModel  # heavy import, only when an EnCodec tokenizer is used

        d = Path(cfg.path)
        if not (d / "config.json").is_file():
            raise FileNotFoundError(f"no EnCodec model at {d}: {d / 'config.json'} is missing (give a local directory)")
        self.model = EncodecModel.from_pretrained(str(d)).eval()
        mc = self.model.config
        if mc.normalize or mc.audio_channels != 1:
            raise ConfigError(f"{d}: only mono, unnormalised EnCodec models (24 / 32 kHz) are supported")
        if cfg.bandwidth not in mc.target_bandwidths:
            raise ConfigError(f"encodec config: bandwidth {cfg.bandwidth} is not one of {mc.target_bandwidths}")
        if cfg.flatten not in FLATTENINGS:
            raise ConfigError(f"encodec config: flatten must be one of {FLATTENINGS}, got {cfg.flatten!r}")
        available = self.model.quantizer.get_num_quantizers_for_bandwidth(cfg.bandwidth)
        if not 0 <= cfg.layers_used <= available:
            raise ConfigError(
                f"encodec config: layers_used {cfg.layers_used} > {available} layers at {cfg.bandwidth} kbps"
            )
        self.cfg = cfg
        self.layers = cfg.layers_used or available
        self.hop = math.prod(mc.upsampling_ratios)
        self._fingerprint: str | None = None

    @property
    def codebook_size(self) -> int:
        return self.model.config.codebook_size

    @property
    def num_layers(self) -> int:
        return self.layers

    @property
    def sample_rate(self) -> int:
        return self.model.config.sampling_rate

    def _wave(self, media: Any, sample_rate: int | None) -> np.ndarray:
        return load_audio(media, self.sample_rate, self.cfg.io, sample_rate).samples

    @torch.no_grad()
    def encode(self, media: Any, sample_rate: int | None = None) -> np.ndarray:
        x = self._wave(media, sample_rate)
        wav = torch.from_numpy(np.pad(x, (0, -len(x) % self.hop)))[None, None]  # [1, 1, T]
        out = self.model.encode(wav, bandwidth=self.cfg.bandwidth)
        return out.audio_codes[0, 0, : self.layers].numpy().astype(np.int64)  # [chunks=1, B=1, L, F] -> [L, F]

    @torch.no_grad()
    def decode(self, codes: np.ndarray) -> np.ndarray:
        codes = np.asarray(codes)
        if codes.ndim != 2 or codes.shape[1] == 0 or not 1 <= codes.shape[0] <= self.model.config.num_quantizers:
            raise ValueError(f"encodec codes must be [layers, frames >= 1], got {codes.shape}")
        if codes.min() < 0 or codes.max() >= self.codebook_size:
            raise ValueError(f"encodec codes must lie in [0, {self.codebook_size})")
        audio = self.model.decode(torch.from_numpy(codes.astype(np.int64))[None, None], [None]).audio_values
        return audio[0, 0].clamp(-1, 1).numpy().astype(np.float32)

    def tokens_for(self, media: Any, sample_rate: int | None = None) -> int:
        """Ids the span body takes: frames x layers in ids (1 for the `first` flattening)."""
        frames = math.ceil(len(self._wave(media, sample_rate)) / self.hop)
        return frames * (1 if self.cfg.flatten == "first" else self.layers)

    def config_dict(self) -> dict:
        return asdict(self.cfg)

    def identity_config(self) -> dict:
        return {k: v for k, v in self.config_dict().items() if k != "path"}

    def fingerprint(self) -> str:
        """Weights are referenced by path, not copied on save; the fingerprint still covers their bytes."""
        if self._fingerprint is None:
            config = {"kind": self.kind, **self.identity_config()}
            self._fingerprint = fingerprint(config, self.model.state_dict())
        return self._fingerprint

    def codebook_spec(self) -> CodebookSpec:
        return CodebookSpec(
            modality="audio",
            kind=self.kind,
            codebook_size=self.codebook_size,
            num_layers=self.layers,
            flatten=self.cfg.flatten,
            rate=self.sample_rate / self.hop,
            fingerprint=self.fingerprint(),
            # where the weights sit is left out, as from the fingerprint: the same weights in another folder
            # give the same layout (vocab hash)
            config=self.identity_config(),
        )

    @classmethod
    def from_config(cls, config: dict, weights: dict[str, torch.Tensor] | None = None) -> EncodecTokenizer:
        config = dict(config)
        io = AudioIOConfig(**config.pop("io", {}))
        unknown = sorted(set(config) - set(EncodecTokenizerConfig.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"encodec config: unknown key(s) {unknown}")
        return cls(EncodecTokenizerConfig(**config, io=io))
