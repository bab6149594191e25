"""A trainable RVQ audio codec (kind "rvq_audio"): SEANet-style conv encoder/decoder + residual VQ.

Architecture (SoundStream, Zeghidour et al. 2021, arXiv:2107.03312; EnCodec, Défossez et al. 2022,
arXiv:2210.13438), scaled down to train on a CPU:
- encoder: conv(7) -> per stride s: residual units (dilated conv(3) + conv(1)) then a strided
  conv(2s) that doubles the channels -> conv(3) to `latent_dim`. The strides' product is the hop, so
  16 kHz with strides (2, 4, 5, 8) gives 50 frames/s (SpeechTokenizer's and MIO's frame rate).
- quantizer: vector-quantize-pytorch's ResidualVQ, L layers of K codes, k-means init, EMA codebook
  updates, dead-code restarts and quantizer dropout. Quantizer dropout (SoundStream section 3.3)
  trains every prefix of the layers to decode on its own, which is what lets `decode` take fewer
  layers than the codec has (the `first` flattening keeps only layer 1).
- decoder: the mirror image with transposed convs; no output non-linearity (EnCodec), clamped on decode.
Losses (`codec_losses`): waveform L1, multi-resolution STFT (spectral convergence + log magnitude,
Yamamoto et al. 2020, arXiv:1910.11480), log-mel L1, and the RVQ commitment loss. No adversarial loss:
a discriminator doubles the CPU cost, and the goal here is intelligible tokens, not studio audio.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange, reduce
from torch import nn
from vector_quantize_pytorch import ResidualVQ

from omniseq.config import ConfigError
from omniseq.tokenizers.audio_io import AudioIOConfig, load_audio
from omniseq.tokenizers.base import MediaTokenizer, freeze_untrained_codebooks, load_weights, register_tokenizer
from omniseq.vocab import FLATTENINGS, CodebookSpec

if TYPE_CHECKING:  # audio_spec imports this module
    from omniseq.tokenizers.audio_spec import SpecCodecConfig


@dataclass
class RVQCodecConfig:
    sample_rate: int = 16000  # the codec's rate; input is resampled to it
    strides: list[int] = field(default_factory=lambda: [2, 4, 5, 8])  # product = hop; rate / hop = frames/s
    channels: int = 16  # encoder width at full rate, doubled after every stride
    res_dilations: list[int] = field(default_factory=lambda: [1, 3])  # dilations of the residual units per stage
    latent_dim: int = 64  # dimension of each frame's vector fed to the quantizer
    num_quantizers: int = 8  # RVQ layers the codec has
    layers_used: int = 4  # RVQ layers encode() returns (<= num_quantizers); recorded in the manifest
    codebook_size: int = 1024  # K codes per layer
    flatten: str = "layer"  # frame | layer | first: how the vocabulary flattens [L, F] codes (omniseq.vocab)
    kmeans_iters: int = 10  # k-means iterations that initialise each codebook on the first batch
    ema_decay: float = 0.99  # EMA decay of the codebook updates
    # passed as threshold_ema_dead_code, which vector-quantize-pytorch 1.34 turns into a ratio (this /
    # codebook_size when >= 1, else as is; 0 = off): a code whose EMA count falls below ratio x its layer's
    # mean EMA count is restarted from the batch. Not an absolute count: docs/tokenizers_audio.md
    dead_code_threshold: float = 2.0
    commitment_weight: float = 1.0  # weight of the commitment loss inside ResidualVQ
    quantize_dropout: bool = True  # train on random prefixes of the layers (decode with fewer layers)
    io: AudioIOConfig = field(default_factory=AudioIOConfig)  # reading: length limit, trim, silence

    @property
    def hop(self) -> int:
        return math.prod(self.strides)

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop

    def validate(self) -> None:
        if self.flatten not in FLATTENINGS:
            raise ConfigError(f"rvq_audio config: flatten must be one of {FLATTENINGS}, got {self.flatten!r}")
        if not 1 <= self.layers_used <= self.num_quantizers:
            raise ConfigError(
                f"rvq_audio config: layers_used must be in [1, {self.num_quantizers}], got {self.layers_used}"
            )
        if self.sample_rate % self.hop:
            raise ConfigError(
                f"rvq_audio config: sample_rate {self.sample_rate} is not a multiple of the hop {self.hop}"
            )


def _stride_pad(s: int) -> int:
    # kernel 2s, stride s, padding ceil(s/2) maps n*s samples to exactly n frames (odd and even s alike)
    return (s + 1) // 2


class ResidualUnit(nn.Module):
    def __init__(self, ch: int, dilation: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.ELU(),
            nn.Conv1d(ch, ch // 2, 3, dilation=dilation, padding=dilation),
            nn.ELU(),
            nn.Conv1d(ch // 2, ch, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class Encoder(nn.Module):
    def __init__(self, cfg: RVQCodecConfig):
        super().__init__()
        ch = cfg.channels
        layers: list[nn.Module] = [nn.Conv1d(1, ch, 7, padding=3)]
        for s in cfg.strides:
            layers += [ResidualUnit(ch, d) for d in cfg.res_dilations]
            layers += [nn.ELU(), nn.Conv1d(ch, 2 * ch, 2 * s, stride=s, padding=_stride_pad(s))]
            ch *= 2
        layers += [nn.ELU(), nn.Conv1d(ch, cfg.latent_dim, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:  # [B, 1, T] -> [B, D, T / hop]
        return self.net(wav)


class Decoder(nn.Module):
    def __init__(self, cfg: RVQCodecConfig):
        super().__init__()
        ch = cfg.channels * 2 ** len(cfg.strides)
        layers: list[nn.Module] = [nn.Conv1d(cfg.latent_dim, ch, 7, padding=3)]
        for s in reversed(cfg.strides):
            layers += [
                nn.ELU(),
                nn.ConvTranspose1d(ch, ch // 2, 2 * s, stride=s, padding=_stride_pad(s), output_padding=s % 2),
            ]
            ch //= 2
            layers += [ResidualUnit(ch, d) for d in cfg.res_dilations]
        layers += [nn.ELU(), nn.Conv1d(ch, 1, 7, padding=3)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # [B, D, F] -> [B, 1, F * hop]
        return self.net(z)


def residual_vq(cfg: RVQCodecConfig | SpecCodecConfig) -> ResidualVQ:
    """Both codecs' quantizer, from the RVQ keys their configs share: vector-quantize-pytorch's ResidualVQ
    with k-means init, EMA updates, dead-code restarts and quantizer dropout (SoundStream 3.3)."""
    return ResidualVQ(
        dim=cfg.latent_dim,
        num_quantizers=cfg.num_quantizers,
        codebook_size=cfg.codebook_size,
        kmeans_init=True,
        kmeans_iters=cfg.kmeans_iters,
        decay=cfg.ema_decay,
        threshold_ema_dead_code=cfg.dead_code_threshold,
        commitment_weight=cfg.commitment_weight,
        quantize_dropout=cfg.quantize_dropout,
    )


class RVQCodec(nn.Module):
    """Waveform [B, 1, T] (T a multiple of the hop) <-> codes [B, F, L]."""

    def __init__(self, cfg: RVQCodecConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder, self.decoder = Encoder(cfg), Decoder(cfg)
        self.rvq = residual_vq(cfg)
        self.init_weights()

    def init_weights(self) -> None:
        """Zero conv biases. Speech sits at RMS ~0.05; PyTorch's default biases (~U(+-1/sqrt(fan_in)))
        then dwarf the signal, the latents become nearly constant over time and the k-means-initialised
        codebooks collapse to one or two codes (measured here: layer-1 perplexity 1-3 of 1024)."""
        for m in self.modules():
            if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d)):
                nn.init.zeros_(m.bias)

    def forward(self, wav: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if wav.shape[-1] % self.cfg.hop:
            raise ValueError(f"waveform length {wav.shape[-1]} is not a multiple of the hop {self.cfg.hop}")
        z = rearrange(self.encoder(wav), "b d f -> b f d")
        q, codes, commit = self.rvq(z)  # q [B, F, D], codes [B, F, L], commit [L]
        return self.decoder(rearrange(q, "b f d -> b d f")), codes, commit.sum()

    @torch.no_grad()
    def encode(self, wav: torch.Tensor) -> torch.Tensor:  # [B, 1, T] -> [B, F, L]
        _, codes, _ = self.rvq(rearrange(self.encoder(wav), "b d f -> b f d"))
        return codes

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, F, L'] with L' <= num_quantizers (the first L' layers) -> [B, 1, F * hop]."""
        n = codes.shape[-1]
        books = self.rvq.codebooks[:n]  # [L', K, D]
        layer = torch.arange(n, device=codes.device)[:, None, None]
        vecs = books[layer, rearrange(codes, "b f l -> l b f")]  # [L', B, F, D]
        q = self.rvq.project_out(reduce(vecs, "l b f d -> b f d", "sum"))
        return self.decoder(rearrange(q, "b f d -> b d f"))


# -- spectral features, losses and metrics (shared by training, tests and bench/audio_digits.py) ------
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> torch.Tensor:
    """Triangular HTK-mel filters [n_mels, n_fft // 2 + 1]: torchaudio's default (no CPU build of it here)."""
    mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)
    hz = lambda m: 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    edges = hz(np.linspace(mel(0.0), mel(sample_rate / 2), n_mels + 2))
    freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    fb = np.maximum(0, np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)))
    return torch.from_numpy(fb.astype(np.float32))


def _stft_mag(x: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:  # [B, T] -> [B, n_fft//2+1, frames]
    win = torch.hann_window(n_fft, device=x.device)
    return torch.stft(x, n_fft, hop, window=win, return_complex=True).abs().clamp_min(1e-7)


@functools.lru_cache(maxsize=16)
def _filterbank_on(sample_rate: int, n_fft: int, n_mels: int, device: torch.device) -> torch.Tensor:
    """The filters, built once per size and device: the codec's loss takes log-mels several times a step, and on
    a GPU a numpy build and a host-to-device copy each time would cost more than the einsum."""
    return mel_filterbank(sample_rate, n_fft, n_mels).to(device)


def log_mel(x: torch.Tensor, sample_rate: int, n_fft: int = 1024, hop: int = 256, n_mels: int = 64) -> torch.Tensor:
    """[B, T] -> natural-log mel spectrogram [B, n_mels, frames]."""
    fb = _filterbank_on(int(sample_rate), n_fft, n_mels, x.device)
    return torch.log(torch.einsum("mf,bft->bmt", fb, _stft_mag(x, n_fft, hop) ** 2).clamp_min(1e-5))


def mel_distance(x: torch.Tensor, y: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """Mean absolute difference of natural-log mel spectrograms, per item [B]."""
    return (log_mel(x, sample_rate) - log_mel(y, sample_rate)).abs().mean(dim=(1, 2))


def si_snr(ref: torch.Tensor, est: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scale-invariant SNR in dB per item [B] (Le Roux et al. 2019, arXiv:1811.02508)."""
    ref, est = ref - ref.mean(-1, keepdim=True), est - est.mean(-1, keepdim=True)
    target = (est * ref).sum(-1, keepdim=True) / (ref.pow(2).sum(-1, keepdim=True) + eps) * ref
    return 10 * torch.log10(target.pow(2).sum(-1) / ((est - target).pow(2).sum(-1) + eps) + eps)


STFT_RESOLUTIONS = ((512, 128), (1024, 256), (256, 64))  # (n_fft, hop) pairs of the multi-resolution loss


def codec_losses(x: torch.Tensor, y: torch.Tensor, sample_rate: int) -> dict[str, torch.Tensor]:
    """Reconstruction losses of y against x, both [B, T]: waveform L1, multi-resolution STFT, log-mel L1."""
    stft = x.new_zeros(())
    for n_fft, hop in STFT_RESOLUTIONS:
        mx, my = _stft_mag(x, n_fft, hop), _stft_mag(y, n_fft, hop)
        convergence = torch.linalg.norm(mx - my) / torch.linalg.norm(mx)
        stft = stft + convergence + F.l1_loss(torch.log(my), torch.log(mx))
    return {
        "l1": F.l1_loss(y, x),
        "stft": stft / len(STFT_RESOLUTIONS),
        "mel": (log_mel(x, sample_rate) - log_mel(y, sample_rate)).abs().mean(),
    }


# -- the tokenizer ---------------------------------------------------------------------------------
@register_tokenizer
class RVQAudioTokenizer(MediaTokenizer):
    """encode(path | array+rate) -> int64 codes [layers_used, frames]; decode(codes [L', F]) -> float32 [T]"""

    kind = "rvq_audio"
    modality = "audio"
    codec_cls: type[nn.Module] = RVQCodec  # subclasses swap the codec (audio_spec.py) and keep the rest
    config_cls: type = RVQCodecConfig

    def __init__(self, cfg, model: nn.Module | None = None):
        cfg.validate()
        self.cfg = cfg
        self.model = (model or self.codec_cls(cfg)).eval()
        freeze_untrained_codebooks(self.model)

    @property
    def codebook_size(self) -> int:
        return self.cfg.codebook_size

    @property
    def num_layers(self) -> int:
        return self.cfg.layers_used

    @property
    def sample_rate(self) -> int:
        return self.cfg.sample_rate

    def _wave(self, media: Any, sample_rate: int | None) -> np.ndarray:
        return load_audio(media, self.cfg.sample_rate, self.cfg.io, sample_rate).samples

    def encode(self, media: Any, sample_rate: int | None = None) -> np.ndarray:
        x = self._wave(media, sample_rate)
        hop = self.cfg.hop
        pad = -len(x) % hop  # the last partial frame is zero-padded
        wav = torch.from_numpy(np.pad(x, (0, pad)))[None, None]  # [1, 1, T]
        codes = self.model.encode(wav.to(self._device()))[0, :, : self.cfg.layers_used]  # [F, L]
        return rearrange(codes, "f l -> l f").cpu().numpy().astype(np.int64)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        codes = np.asarray(codes)
        if codes.ndim != 2 or codes.shape[1] == 0 or not 1 <= codes.shape[0] <= self.cfg.num_quantizers:
            raise ValueError(
                f"{self.kind} codes must be [1..{self.cfg.num_quantizers} layers, frames], got {codes.shape}"
            )
        if not np.issubdtype(codes.dtype, np.integer):  # astype below would truncate 1.7 to 1 without a word
            raise ValueError(f"{self.kind} codes must be integers, got {codes.dtype}")
        if codes.min() < 0 or codes.max() >= self.cfg.codebook_size:
            raise ValueError(f"{self.kind} codes must lie in [0, {self.cfg.codebook_size})")
        t = torch.from_numpy(rearrange(codes.astype(np.int64), "l f -> 1 f l")).to(self._device())
        return self.model.decode(t)[0, 0].clamp(-1, 1).cpu().numpy().astype(np.float32)

    def tokens_for(self, media: Any, sample_rate: int | None = None) -> int:
        """Ids the span body takes: frames x layers in ids (1 for the `first` flattening)."""
        frames = math.ceil(len(self._wave(media, sample_rate)) / self.cfg.hop)
        return frames * (1 if self.cfg.flatten == "first" else self.cfg.layers_used)

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def config_dict(self) -> dict:
        return asdict(self.cfg)

    def codebook_spec(self) -> CodebookSpec:
        return CodebookSpec(
            modality="audio",
            kind=self.kind,
            codebook_size=self.cfg.codebook_size,
            num_layers=self.cfg.layers_used,
            flatten=self.cfg.flatten,
            rate=float(self.cfg.frame_rate),
            fingerprint=self.fingerprint(),
            config=self.config_dict(),
        )

    def weights(self) -> dict[str, torch.Tensor]:
        return dict(self.model.state_dict())

    @classmethod
    def from_config(cls, config: dict, weights: dict[str, torch.Tensor] | None = None) -> RVQAudioTokenizer:
        tok = cls(codec_config_from_dict(config, cls.config_cls, cls.kind))
        if weights is not None:
            load_weights(tok.model, weights)
        return tok


def codec_config_from_dict(config: dict, schema: type = RVQCodecConfig, kind: str = "rvq_audio"):
    """A saved or YAML mapping -> a codec config dataclass; unknown keys are a ConfigError naming them."""
    config = dict(config)
    io = AudioIOConfig(**config.pop("io", {}))
    known = set(schema.__dataclass_fields__)
    unknown = sorted(set(config) - known)
    if unknown:
        raise ConfigError(f"{kind} config: unknown key(s) {unknown}; known: {sorted(known)}")
    return schema(**config, io=io)
