"""The EnCodec backend with a tiny randomly initialised transformers EncodecModel (no downloads)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omniseq.config import ConfigError
from omniseq.tokenizers.base import load_tokenizer
from omniseq.tokenizers.encodec import EncodecTokenizer, EncodecTokenizerConfig
from omniseq.vocab import FLATTENINGS, TextSpec, VocabLayout

transformers = pytest.importorskip("transformers")
SR = 24000


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A 24 kHz-shaped EnCodec (hop 320 -> 75 frames/s) with 16 codes per layer, a few thousand weights."""
    torch.manual_seed(0)
    cfg = transformers.EncodecConfig(
        sampling_rate=SR, target_bandwidths=[0.6, 1.2], num_filters=2, upsampling_ratios=[8, 5, 4, 2],
        codebook_size=16, hidden_size=8, codebook_dim=8, num_lstm_layers=1, num_residual_layers=1,
    )  # fmt: skip
    d = tmp_path_factory.mktemp("encodec_tiny")
    transformers.EncodecModel(cfg).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return (0.4 * np.sin(2 * np.pi * 220 * np.arange(int(0.5 * SR)) / SR)).astype(np.float32)


@pytest.mark.parametrize("flatten", FLATTENINGS)
def test_encode_decode_and_vocab_round_trip(model_dir, clip, flatten):
    tok = EncodecTokenizer(EncodecTokenizerConfig(path=str(model_dir), bandwidth=1.2, flatten=flatten))
    codes = tok.encode(clip, sample_rate=SR)
    frames = int(np.ceil(len(clip) / 320))
    assert codes.shape == (4, frames) and codes.dtype == np.int64  # 1.2 kbps / (75 Hz * 4 bits) = 4 layers
    spec = tok.codebook_spec()
    assert (spec.kind, spec.num_layers, spec.rate, spec.codebook_size) == ("encodec", 4, 75.0, 16)
    layout = VocabLayout.build(TextSpec("sentencepiece", 50), [spec])
    (piece,) = layout.parse(layout.media_ids("audio", codes))
    np.testing.assert_array_equal(piece.payload, codes[:1] if flatten == "first" else codes)
    wav = tok.decode(piece.payload)
    assert wav.shape == (frames * 320,) and wav.dtype == np.float32


def test_fewer_layers_resampling_and_save_load(model_dir, clip, tmp_path):
    tok = EncodecTokenizer(EncodecTokenizerConfig(path=str(model_dir), bandwidth=1.2, layers_used=2))
    at_16k = (clip[::3].copy(), 8000)  # resampled to the model's 24 kHz on the way in
    codes = tok.encode(at_16k)
    assert codes.shape == (2, int(np.ceil(len(clip) / 320)))
    assert tok.decode(codes).shape == (codes.shape[1] * 320,)
    tok.save(tmp_path / "enc")
    again = load_tokenizer(tmp_path / "enc")
    assert isinstance(again, EncodecTokenizer) and again.fingerprint() == tok.fingerprint()
    np.testing.assert_array_equal(again.encode(at_16k), codes)


def test_missing_directory_and_bad_settings_are_clear(model_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        EncodecTokenizer(EncodecTokenizerConfig(path=str(tmp_path / "no-such-model")))
    with pytest.raises(ConfigError, match="bandwidth"):
        EncodecTokenizer(EncodecTokenizerConfig(path=str(model_dir), bandwidth=6.0))
    with pytest.raises(ConfigError, match="layers_used"):
        EncodecTokenizer(EncodecTokenizerConfig(path=str(model_dir), bandwidth=0.6, layers_used=3))


def test_the_same_weights_in_another_folder_give_the_same_layout(model_dir, tmp_path):
    import shutil

    moved = shutil.copytree(model_dir, tmp_path / "elsewhere")
    specs = [
        EncodecTokenizer(EncodecTokenizerConfig(path=str(d), bandwidth=1.2)).codebook_spec() for d in (model_dir, moved)
    ]
    hashes = [VocabLayout.build(TextSpec("sentencepiece", 100, "t"), [s]).hash for s in specs]
    assert hashes[0] == hashes[1]
