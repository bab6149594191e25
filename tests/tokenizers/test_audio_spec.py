"""The spectrogram RVQ codec (rvq_spec_audio): shapes, flattenings, determinism, training, save/load, pitch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from omniseq.config import ConfigError
from omniseq.tokenizers.audio_spec import (
    SpecAudioTokenizer,
    SpecCodec,
    SpecCodecConfig,
    griffin_lim,
    log_magnitude,
)
from omniseq.tokenizers.audio_train import main as train_main
from omniseq.tokenizers.base import load_tokenizer
from omniseq.vocab import FLATTENINGS, TextSpec, VocabLayout

SR = 16000
DEMO = Path(__file__).resolve().parents[2] / "configs" / "tokenizers" / "audio_spec_demo.yaml"


def tiny_cfg(**kw) -> SpecCodecConfig:
    base = dict(n_fft=320, subframes=2, n_mels=16, channels=16, res_dilations=[1], latent_dim=8,
                num_quantizers=4, layers_used=2, codebook_size=32, kmeans_iters=2, griffin_lim_iters=4)  # fmt: skip
    return SpecCodecConfig(**{**base, **kw})


def synthetic_batch(n: int, seconds: float, seed: int) -> torch.Tensor:
    """Sines of random pitch and amplitude plus a little noise: [n, 1, T]."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * SR)) / SR
    f = 100 + 900 * torch.rand(n, 1, 1, generator=g)
    a = 0.2 + 0.5 * torch.rand(n, 1, 1, generator=g)
    return a * torch.sin(2 * torch.pi * f * t) + 0.01 * torch.randn(n, 1, len(t), generator=g)


def initialised(cfg: SpecCodecConfig) -> SpecAudioTokenizer:
    """A tokenizer whose codebooks went through their k-means init (one training forward)."""
    torch.manual_seed(0)
    model = SpecCodec(cfg).train()
    model(synthetic_batch(4, 0.64, seed=1))  # a multiple of every hop used here
    return SpecAudioTokenizer(cfg, model)


@pytest.fixture(autouse=True)
def one_thread():
    """Two OpenMP threads on a shared 2-core machine spin against each other (much slower steps here)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def sine() -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * 330 * np.arange(int(0.7 * SR)) / SR)).astype(np.float32)


@pytest.mark.parametrize("domain", ["stft", "mel"])
@pytest.mark.parametrize("flatten", FLATTENINGS)
def test_encode_decode_shapes_and_vocab_round_trip(flatten, domain, sine):
    tok = initialised(tiny_cfg(flatten=flatten, domain=domain))
    codes = tok.encode(sine, sample_rate=SR)
    frames = int(np.ceil(len(sine) / tok.cfg.hop))
    assert codes.shape == (2, frames) and codes.dtype == np.int64
    assert codes.min() >= 0 and codes.max() < 32
    assert tok.tokens_for((sine, SR)) == frames * (1 if flatten == "first" else 2)
    spec = tok.codebook_spec()
    assert (spec.kind, spec.flatten, spec.num_layers, spec.rate, spec.codebook_size) == (
        "rvq_spec_audio", flatten, 2, 50.0, 32)  # fmt: skip
    layout = VocabLayout.build(TextSpec("sentencepiece", 100), [spec])
    ids = layout.media_ids("audio", codes)
    assert len(ids) - 2 == tok.tokens_for((sine, SR)) + (1 if flatten == "layer" else 0)  # + one <|rvq_sep|>
    (piece,) = layout.parse(ids)
    expected = codes[:1] if flatten == "first" else codes
    np.testing.assert_array_equal(piece.payload, expected)
    wav = tok.decode(piece.payload)
    assert wav.shape == (frames * tok.cfg.hop,) and wav.dtype == np.float32


def test_frame_rate_sets_the_hop():
    tok = initialised(tiny_cfg(frame_rate=25, n_fft=640))
    codes = tok.encode(np.zeros(SR, dtype=np.float32), sample_rate=SR)
    assert tok.cfg.hop == 640 and codes.shape == (2, 25)
    assert tok.codebook_spec().rate == 25.0


def test_decode_is_deterministic_and_accepts_fewer_layers(sine):
    tok = initialised(tiny_cfg(layers_used=4))
    codes = tok.encode(sine, sample_rate=SR)
    assert codes.shape[0] == 4
    first, again = tok.decode(codes), tok.decode(codes)
    np.testing.assert_array_equal(first, again)
    two = tok.decode(codes[:2])
    assert two.shape == first.shape and not np.allclose(first, two)  # layers 3-4 contribute
    with pytest.raises(ValueError, match="layers"):
        tok.decode(np.zeros((5, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="lie in"):
        tok.decode(np.full((2, 3), 32, dtype=np.int64))


@pytest.mark.parametrize("frames", [1, 2])
def test_decode_of_a_span_shorter_than_the_fft_window(frames):
    """A sampled audio span may close after a frame or two: decoding must give frames x hop samples, not
    fail in the STFT's reflect padding (found by the real recipe's eval)."""
    tok = initialised(tiny_cfg(n_fft=1024))  # the shipped configs' window: 1024 > one 320-sample frame
    wave = tok.decode(np.zeros((2, frames), dtype=np.int64))
    assert wave.shape[-1] == frames * tok.cfg.hop and np.isfinite(wave).all()


def test_invalid_config_names_the_key():
    with pytest.raises(ConfigError, match="layers_used"):
        SpecAudioTokenizer(tiny_cfg(layers_used=5))
    with pytest.raises(ConfigError, match="flatten"):
        SpecAudioTokenizer(tiny_cfg(flatten="zigzag"))
    with pytest.raises(ConfigError, match="frame_rate"):
        SpecAudioTokenizer(tiny_cfg(frame_rate=7))
    with pytest.raises(ConfigError, match="subframes"):
        SpecAudioTokenizer(tiny_cfg(subframes=3))
    with pytest.raises(ConfigError, match="domain"):
        SpecAudioTokenizer(tiny_cfg(domain="cqt"))
    with pytest.raises(ConfigError, match="unknown key"):
        SpecAudioTokenizer.from_config({"strides": [4]})


@pytest.mark.parametrize("domain", ["stft", "mel"])
def test_loss_falls_on_a_tiny_synthetic_set(domain):
    torch.manual_seed(0)
    model = SpecCodec(tiny_cfg(domain=domain)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    data = synthetic_batch(8, 0.32, seed=2)  # 16 frames of 320 samples

    def step() -> float:
        parts, _ = model.losses(data)
        loss = parts["log_mag"] + parts["convergence"] + parts["mel"] + parts["commit"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    losses = [step() for _ in range(40)]
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    assert last < 0.7 * first, (first, last)


@pytest.mark.parametrize("domain", ["stft", "mel"])
def test_save_load_gives_identical_codes_and_fingerprint(tmp_path, sine, domain):
    tok = initialised(tiny_cfg(domain=domain))
    tok.save(tmp_path / "tok")
    back = load_tokenizer(tmp_path / "tok")
    assert isinstance(back, SpecAudioTokenizer)
    assert back.fingerprint() == tok.fingerprint()
    codes = tok.encode(sine, sample_rate=SR)
    np.testing.assert_array_equal(back.encode(sine, sample_rate=SR), codes)
    np.testing.assert_array_equal(back.decode(codes), tok.decode(codes))


def test_mel_domain_codes_log_mel_bands_and_decodes_through_the_pseudo_inverse(sine):
    """domain=mel: the codec's features are n_mels log-mel bands a frame, and the filterbank's pseudo-inverse
    takes them back to a magnitude that keeps the bands (the loudest bin of a sine stays where it was)."""
    model = SpecCodec(tiny_cfg(domain="mel", n_fft=1024, n_mels=80))
    wave = torch.from_numpy(sine[: 32 * model.cfg.hop])[None, None]
    feats = model.features(wave)
    log_mag = log_magnitude(wave[:, 0], model.cfg)
    assert feats.shape == (1, 80, log_mag.shape[-1])
    back = model.to_log_magnitude(feats)
    assert back.shape == log_mag.shape
    assert abs(int(back[0].mean(1).argmax()) - int(log_mag[0].mean(1).argmax())) <= 2  # 330 Hz: bin ~21
    again = model.to_features(back)
    loud = feats > feats.max() - 1.0  # the sine's own bands come back exactly; neighbours take some leakage
    np.testing.assert_allclose(again[loud], feats[loud], atol=0.05)
    assert float((again - feats).abs().mean()) < 0.5


@pytest.mark.parametrize("freq", [261.6, 440.0, 1234.0])
def test_griffin_lim_of_the_true_magnitude_keeps_a_sines_pitch(freq):
    """The synthesis half of the codec on its own: phase rebuilt from |STFT| keeps the frequency."""
    cfg = SpecCodecConfig()
    x = 0.5 * torch.sin(2 * torch.pi * freq * torch.arange(SR) / SR)[None]  # [1, T], 1 s (50 frames)
    y = griffin_lim(log_magnitude(x, cfg), cfg)[0].numpy()
    mid = y[2000:-2000]  # away from the edges
    spectrum = np.abs(np.fft.rfft(mid * np.hanning(len(mid)), 1 << 17))  # zero-padded: 0.12 Hz bins
    peak = np.fft.rfftfreq(1 << 17, 1 / SR)[spectrum.argmax()]
    assert abs(12 * np.log2(peak / freq)) < 0.25, peak  # within a quarter of a semitone


def test_training_cli_trains_the_spectral_kind(tmp_path):
    data = tmp_path / "wavs"
    data.mkdir()
    rows = ["path,official_split"]
    for i in range(4):
        t = np.arange(8000 + 1000 * i) / 8000
        sf.write(data / f"tone{i}.wav", 0.4 * np.sin(2 * np.pi * (200 + 50 * i) * t), 8000)
        rows.append(f"tone{i}.wav,{'test' if i == 0 else 'train'}")
    (data / "metadata.csv").write_text("\n".join(rows) + "\n")  # one clip held out by its column, not by hash
    out = tmp_path / "run"
    train_main(["--config", str(DEMO), f"sources=[{data / 'metadata.csv'}]", f"out={out}", "steps=3",
                "batch_size=2", "segment_seconds=0.2", "holdout_column=official_split", "valid_fraction=0",
                "max_valid_clips=1", "spec_codec.n_fft=400",
                "spec_codec.channels=8", "spec_codec.codebook_size=16", "spec_codec.kmeans_iters=1",
                "spec_codec.griffin_lim_iters=2"])  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["step"] == 3
    assert {"si_snr_db", "mel_distance", "log_spectral_distance_db"} <= set(metrics)
    assert len(metrics["codebook_usage"]) == 1  # layers_used of the demo config
    tok = load_tokenizer(out / "tokenizer")
    assert isinstance(tok, SpecAudioTokenizer) and tok.num_layers == 1 and tok.codebook_size == 16


def test_training_cli_rejects_an_unknown_kind(tmp_path):
    with pytest.raises(ConfigError, match="kind must be one of"):
        train_main(["--config", str(DEMO), f"sources=[{tmp_path}]", f"out={tmp_path / 'run'}", "kind=wavenet"])


def test_frame_local_encoder_gives_a_steady_tone_one_code_sequence():
    """encoder_dilations=[]: a code sees its frame +-1 (and the STFT window), so the same tone framed
    alike gets the same codes whatever precedes it; the default encoder's context reaches further."""
    hop = 320
    t = np.arange(8 * hop) / SR
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    noise = 0.3 * np.random.default_rng(0).standard_normal(8 * hop).astype(np.float32)
    for enc, same in (([], True), (None, False)):
        tok = initialised(tiny_cfg(encoder_dilations=enc, res_dilations=[1, 2, 4], n_fft=320, layers_used=1))
        with torch.no_grad():
            waves = [torch.from_numpy(np.concatenate([head, tone]))[None, None] for head in (0 * noise, noise)]
            z = [tok.model._encode_latent(tok.model.features(w)) for w in waves]
        # frames 12..15: the tone's, at least 4 frames after the head ends
        assert torch.allclose(z[0][0, 12:], z[1][0, 12:], atol=1e-5) is same


def test_stft_domain_keeps_the_fingerprint_of_tokenizers_saved_before_the_key(tmp_path, sine):
    """A tokenizer saved before `domain` existed has no such key: its fingerprint (which vocabularies and
    checkpoints record) must not change, so `domain: stft` is left out of the saved config."""
    tok = initialised(tiny_cfg())
    assert "domain" not in tok.config_dict()
    assert not [k for k in tok.weights() if k.startswith("mel_")]  # the filterbank and its inverse are not saved
    assert "domain" in initialised(tiny_cfg(domain="mel")).config_dict()
    tok.save(tmp_path / "tok")
    saved = json.loads((tmp_path / "tok" / "tokenizer.json").read_text())
    assert "domain" not in saved["config"]
    assert load_tokenizer(tmp_path / "tok").cfg.domain == "stft"


def test_a_clip_of_one_frame_encodes():
    # reflect padding of the STFT needs more than n_fft / 2 samples; one 20 ms frame at 16 kHz has 320
    tok = SpecAudioTokenizer(SpecCodecConfig(channels=16, latent_dim=8, num_quantizers=2, layers_used=2,
                                             codebook_size=16, kmeans_iters=1))  # fmt: skip
    x = (0.3 * np.sin(2 * np.pi * 300 * np.arange(300) / 16000)).astype(np.float32)
    assert tok.encode(x, 16000).shape == (2, tok.tokens_for(x, 16000) // 2)
