"""The pretrained backend (transformers' JanusVQVAE) behind MediaTokenizer, on a tiny random config."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from omniseq.tokenizers.base import load_tokenizer
from omniseq.tokenizers.image_io import ImageIOConfig
from omniseq.tokenizers.video import FrameVideoConfig, FrameVideoTokenizer
from omniseq.vocab import TextSpec, VocabLayout

transformers = pytest.importorskip("transformers")

from omniseq.tokenizers.hf_image import HFImageConfig, HFImageTokenizer  # noqa: E402


@pytest.fixture(scope="module")
def janus_dir(tmp_path_factory):
    torch.manual_seed(0)
    cfg = transformers.JanusVQVAEConfig(
        embed_dim=8, num_embeddings=32, latent_channels=32, base_channels=32, channel_multiplier=[1, 2],
        num_res_blocks=1, num_patches=4, projection_dim=16, image_token_embed_dim=16, num_hidden_layers=1,
    )  # fmt: skip
    d = tmp_path_factory.mktemp("janus") / "vq"
    transformers.JanusVQVAE(cfg).save_pretrained(d)
    return d


def test_encode_decode_through_the_interface(janus_dir):
    tok = HFImageTokenizer(HFImageConfig(path=str(janus_dir)))
    assert (tok.codebook_size, tok.image_size) == (32, 8)  # 4 patches of 2 px (one downsampling level)
    img = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    codes = tok.encode(img)
    assert codes.shape == (4, 4) and codes.dtype == np.int64 and codes.max() < 32
    assert np.array_equal(codes, tok.encode(img))
    out = tok.decode(codes)
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    with pytest.raises(ValueError, match=r"\[0, 32\)"):
        tok.decode(np.full((4, 4), 32))
    spec = tok.codebook_spec()
    assert (spec.kind, spec.grid, spec.codebook_size) == ("hf_vq_image", (4, 4), 32)


def test_save_load_and_fingerprint(janus_dir, tmp_path):
    tok = HFImageTokenizer(HFImageConfig(path=str(janus_dir)))
    saved = tok.save(tmp_path / "tok")
    assert not (saved / "weights.safetensors").exists()  # the weights stay in the pretrained directory
    loaded = load_tokenizer(saved)
    img = np.full((8, 8, 3), 100, np.uint8)
    assert np.array_equal(loaded.encode(img), tok.encode(img))
    assert loaded.fingerprint() == tok.fingerprint()
    with torch.no_grad():
        next(loaded.model.parameters()).view(-1)[0] += 1.0
    assert loaded.fingerprint() != tok.fingerprint()


def test_full_checkpoint_with_vq_config(janus_dir, tmp_path):
    """A full Janus checkpoint keeps the VQ-VAE under model.vqmodel. and its config under vq_config."""
    from safetensors.torch import load_file, save_file

    full = tmp_path / "full"
    full.mkdir()
    vq_cfg = json.loads((janus_dir / "config.json").read_text())
    (full / "config.json").write_text(json.dumps({"model_type": "janus", "vq_config": vq_cfg}))
    weights = load_file(next(janus_dir.glob("*.safetensors")))
    save_file({f"model.vqmodel.{k}": v for k, v in weights.items()}, full / "model.safetensors")
    img = np.full((8, 8, 3), 50, np.uint8)
    a = HFImageTokenizer(HFImageConfig(path=str(full))).encode(img)
    assert np.array_equal(a, HFImageTokenizer(HFImageConfig(path=str(janus_dir))).encode(img))


def test_emu3_backend(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.Emu3VQVAEConfig(
        codebook_size=32, embed_dim=4, latent_channels=4, base_channels=32, channel_multiplier=[1, 2],
        num_res_blocks=1, attn_resolutions=[], hidden_size=64, num_attention_heads=1,
    )  # fmt: skip
    transformers.Emu3VQVAE(cfg).save_pretrained(tmp_path / "emu3")
    tok = HFImageTokenizer(HFImageConfig(path=str(tmp_path / "emu3"), image=ImageIOConfig(size=8)))
    codes = tok.encode(np.zeros((16, 16, 3), np.uint8))
    assert codes.shape == (4, 4) and tok.codebook_spec().grid == (4, 4)
    assert tok.decode(codes).shape == (8, 8, 3)
    assert load_tokenizer(tok.save(tmp_path / "tok")).fingerprint() == tok.fingerprint()


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        HFImageTokenizer(HFImageConfig(path=str(tmp_path / "nope")))


def test_a_video_over_a_transformers_model_hashes_its_weights_not_its_folder(janus_dir, tmp_path):
    shutil.copytree(janus_dir, tmp_path / "copy")

    def video(model_dir, name: str) -> FrameVideoTokenizer:
        image = HFImageTokenizer(HFImageConfig(path=str(model_dir))).save(tmp_path / name)
        return FrameVideoTokenizer.from_image_dir(FrameVideoConfig(image_tokenizer=str(image), share_image_range=False))

    a, b = video(janus_dir, "a"), video(tmp_path / "copy", "b")
    layout_hash = lambda t: VocabLayout.build(TextSpec("sentencepiece", 50), [t.codebook_spec()]).hash  # noqa: E731
    assert a.fingerprint() == b.fingerprint() and layout_hash(a) == layout_hash(b)  # same weights, other folder
    assert "path" not in a.codebook_spec().config["image"]["config"]
    assert load_tokenizer(a.save(tmp_path / "video")).fingerprint() == a.fingerprint()  # still loads from `path`
    with torch.no_grad():
        next(b.image.model.parameters()).view(-1)[0] += 1.0  # other weights behind the same config
    assert b.fingerprint() != a.fingerprint() and layout_hash(b) != layout_hash(a)
