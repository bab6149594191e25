"""The RVQ audio codec: shapes, every flattening through the vocabulary, training, save/load."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omniseq.config import ConfigError
from omniseq.tokenizers.audio import RVQAudioTokenizer, RVQCodec, RVQCodecConfig, codec_losses, si_snr
from omniseq.tokenizers.audio_io import resample
from omniseq.tokenizers.base import load_tokenizer
from omniseq.vocab import FLATTENINGS, TextSpec, VocabLayout

SR = 16000


def tiny_cfg(**kw) -> RVQCodecConfig:
    base = dict(strides=[4, 8, 10], channels=4, res_dilations=[1], latent_dim=16, num_quantizers=4,
                layers_used=2, codebook_size=32, kmeans_iters=2)  # fmt: skip
    return RVQCodecConfig(**{**base, **kw})


def synthetic_batch(n: int, seconds: float, seed: int) -> torch.Tensor:
    """Sines of random pitch and amplitude plus a little noise: [n, 1, T]."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * SR)) / SR
    f = 100 + 900 * torch.rand(n, 1, 1, generator=g)
    a = 0.2 + 0.5 * torch.rand(n, 1, 1, generator=g)
    return a * torch.sin(2 * torch.pi * f * t) + 0.01 * torch.randn(n, 1, len(t), generator=g)


def initialised(cfg: RVQCodecConfig) -> RVQAudioTokenizer:
    """A tokenizer whose codebooks went through their k-means init (one training forward)."""
    torch.manual_seed(0)
    model = RVQCodec(cfg).train()
    model(synthetic_batch(4, 0.5, seed=1))
    return RVQAudioTokenizer(cfg, model)


@pytest.fixture(autouse=True)
def one_thread():
    """Two OpenMP threads on a shared 2-core machine spin against each other (40x slower steps here)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def sine() -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * 330 * np.arange(int(0.7 * SR)) / SR)).astype(np.float32)


@pytest.mark.parametrize("flatten", FLATTENINGS)
def test_encode_decode_shapes_and_vocab_round_trip(flatten, sine):
    tok = initialised(tiny_cfg(flatten=flatten))
    codes = tok.encode(sine, sample_rate=SR)
    frames = int(np.ceil(len(sine) / tok.cfg.hop))
    assert codes.shape == (2, frames) and codes.dtype == np.int64
    assert codes.min() >= 0 and codes.max() < 32
    assert tok.tokens_for((sine, SR)) == frames * (1 if flatten == "first" else 2)
    spec = tok.codebook_spec()
    assert (spec.flatten, spec.num_layers, spec.rate, spec.codebook_size) == (flatten, 2, 50.0, 32)
    layout = VocabLayout.build(TextSpec("sentencepiece", 100), [spec])
    ids = layout.media_ids("audio", codes)
    assert len(ids) - 2 == tok.tokens_for((sine, SR)) + (1 if flatten == "layer" else 0)  # + one <|rvq_sep|>
    (piece,) = layout.parse(ids)
    expected = codes[:1] if flatten == "first" else codes
    np.testing.assert_array_equal(piece.payload, expected)
    wav = tok.decode(piece.payload)
    assert wav.shape == (frames * tok.cfg.hop,) and wav.dtype == np.float32


def test_decode_accepts_fewer_layers_than_the_codec_has(sine):
    tok = initialised(tiny_cfg(layers_used=4))
    codes = tok.encode(sine, sample_rate=SR)
    assert codes.shape[0] == 4
    full, two = tok.decode(codes), tok.decode(codes[:2])
    assert full.shape == two.shape
    assert not np.allclose(full, two)  # layers 3-4 contribute
    with pytest.raises(ValueError, match="layers"):
        tok.decode(np.zeros((5, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="must be integers, got float64"):  # not truncated to other codes
        tok.decode(np.array([[1.7, 2.2]]))


def test_invalid_config_names_the_key():
    with pytest.raises(ConfigError, match="layers_used"):
        RVQAudioTokenizer(tiny_cfg(layers_used=5))
    with pytest.raises(ConfigError, match="flatten"):
        RVQAudioTokenizer(tiny_cfg(flatten="zigzag"))


def test_codec_loss_falls_on_a_tiny_synthetic_set():
    torch.manual_seed(0)
    cfg = tiny_cfg()
    model = RVQCodec(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    data = synthetic_batch(8, 0.32, seed=2)  # 16 frames of 320 samples

    def step() -> float:
        y, _, commit = model(data)
        losses = codec_losses(data[:, 0], y[:, 0], SR)
        loss = losses["l1"] + losses["stft"] + losses["mel"] + commit
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    losses = [step() for _ in range(40)]
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    assert last < 0.7 * first, (first, last)


def test_si_snr_is_high_for_a_scaled_copy_and_low_for_noise():
    x = synthetic_batch(2, 0.1, seed=3)[:, 0]
    assert (si_snr(x, 0.5 * x) > 60).all()
    assert (si_snr(x, torch.randn_like(x)) < 0).all()


@pytest.mark.parametrize("sr_in", [8000, 22050, 44100])
def test_resampling_keeps_a_sine_at_its_frequency(sr_in):
    freq = 440.0
    x = np.sin(2 * np.pi * freq * np.arange(sr_in) / sr_in).astype(np.float32)  # 1 s
    y = resample(x, sr_in, SR)
    assert abs(len(y) - SR) <= 1
    spectrum = np.abs(np.fft.rfft(y))
    peak_hz = np.argmax(spectrum) * SR / len(y)
    assert abs(peak_hz - freq) <= 2.0


def test_save_and_load_give_identical_codes_and_fingerprint(tmp_path, sine):
    tok = initialised(tiny_cfg(flatten="layer"))
    tok.save(tmp_path / "tok")
    again = load_tokenizer(tmp_path / "tok")
    assert isinstance(again, RVQAudioTokenizer)
    assert again.fingerprint() == tok.fingerprint()
    assert again.codebook_spec() == tok.codebook_spec()
    np.testing.assert_array_equal(again.encode(sine, sample_rate=SR), tok.encode(sine, sample_rate=SR))
    other = initialised(tiny_cfg(flatten="frame"))
    assert other.fingerprint() != tok.fingerprint()  # the flattening is part of what the vocab records


def test_an_untrained_codec_encodes_alike_whatever_it_encoded_first(tmp_path, sine):
    # k-means-initialised codebooks would run k-means on the first clip encoded, even in eval mode
    torch.manual_seed(0)
    tok = RVQAudioTokenizer(tiny_cfg())
    before = tok.fingerprint()
    copy = load_tokenizer(tok.save(tmp_path / "tok"))
    noise = np.random.default_rng(0).uniform(-0.5, 0.5, SR).astype(np.float32)
    first = tok.encode(sine, SR)
    copy.encode(noise, SR)
    np.testing.assert_array_equal(copy.encode(sine, SR), first)
    assert tok.fingerprint() == before
