"""The VQ image tokenizer: shapes, determinism, training, save/load, fingerprints, bad codes."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from omniseq.config import ConfigError, load_config
from omniseq.tokenizers.base import MediaError, load_tokenizer
from omniseq.tokenizers.image import VQImageConfig, VQImageTokenizer, to_pixels
from omniseq.tokenizers.image_io import ImageIOConfig
from omniseq.tokenizers.image_train import ImageTrainConfig, main, read_source, train

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "tokenizers"


def tiny_cfg(**kw) -> VQImageConfig:
    base = dict(image=ImageIOConfig(size=16), downsample=4, stem_patch=1, base_channels=8, channel_mult=[1, 2])
    base |= dict(embed_dim=8, codebook_size=32, codebook_dim=4, num_res_blocks=1)
    return VQImageConfig(**(base | kw))


def shapes(n: int, size: int = 16, seed: int = 0) -> np.ndarray:
    """Coloured rectangles on white: structure a tiny autoencoder can learn in a few steps."""
    rng = np.random.default_rng(seed)
    out = np.full((n, size, size, 3), 255, np.uint8)
    for img in out:
        y, x = rng.integers(0, size // 2, 2)
        img[y : y + size // 2, x : x + size // 2] = rng.integers(0, 256, 3)
    return out


@pytest.mark.parametrize("quantizer", ["vq", "fsq", "lfq"])
def test_encode_decode_shapes_and_determinism(quantizer):
    torch.manual_seed(0)
    tok = VQImageTokenizer(tiny_cfg(quantizer=quantizer, fsq_levels=[8, 4]))
    img = shapes(1)[0]
    codes = tok.encode(img)
    assert codes.shape == (4, 4) and codes.dtype == np.int64
    assert 0 <= codes.min() and codes.max() < tok.codebook_size == 32
    assert np.array_equal(codes, tok.encode(img))
    out = tok.decode(codes)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    assert np.array_equal(out, tok.decode(codes))


@pytest.mark.parametrize("quantizer", ["vq", "fsq", "lfq"])
def test_decoding_codes_equals_the_autoencoder_forward(quantizer):
    """decode(encode(x)) must rebuild exactly the latent the decoder saw in training (non-square grid,
    codebook_dim != embed_dim: the case where a channels-first lookup would scramble positions)."""
    torch.manual_seed(0)
    tok = VQImageTokenizer(tiny_cfg(quantizer=quantizer, fsq_levels=[8, 4], image=ImageIOConfig(size=0)))
    x = to_pixels(np.random.default_rng(0).integers(0, 256, (2, 12, 20, 3), dtype=np.uint8))
    with torch.no_grad():
        recon, codes, _ = tok.model(x)
        assert torch.allclose(tok.model.decode(codes.long()), recon, atol=1e-5)


def test_batched_encode_matches_single_and_handles_sizes():
    torch.manual_seed(0)
    tok = VQImageTokenizer(tiny_cfg(image=ImageIOConfig(size=0)))
    imgs = [shapes(1, 16, seed=i)[0] for i in range(3)] + [np.zeros((8, 12, 3), np.uint8)]
    many = tok.encode_many(imgs, batch_size=2)
    assert [c.shape for c in many] == [(4, 4)] * 3 + [(2, 3)]
    for img, c in zip(imgs, many):
        assert np.array_equal(tok.encode(img), c)
    assert tok.tokens_for(imgs[3]) == 6


def test_inputs_of_any_mode_and_size(tmp_path):
    from PIL import Image

    tok = VQImageTokenizer(tiny_cfg())
    Image.new("P", (40, 30)).save(tmp_path / "p.png")
    assert tok.encode(tmp_path / "p.png").shape == (4, 4)
    assert tok.encode(Image.new("L", (7, 100))).shape == (4, 4)
    assert tok.encode(np.zeros((5, 5), np.uint8)).shape == (4, 4)


def test_bad_inputs_raise_media_error(tmp_path):
    tok = VQImageTokenizer(tiny_cfg())
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(MediaError, match="empty.png"):
        tok.encode(tmp_path / "empty.png")
    with pytest.raises(MediaError, match="zero-size"):
        tok.encode(np.zeros((0, 3), np.uint8))
    with pytest.raises(MediaError, match="smaller than one"):
        VQImageTokenizer(tiny_cfg(image=ImageIOConfig(size=0))).encode(np.zeros((2, 9, 3), np.uint8))


def test_decode_rejects_codes_outside_the_codebook():
    tok = VQImageTokenizer(tiny_cfg())
    with pytest.raises(ValueError, match=r"\[0, 32\)"):
        tok.decode(np.full((4, 4), 32))
    with pytest.raises(ValueError, match=r"\[0, 32\)"):
        tok.decode(np.full((4, 4), -1))
    with pytest.raises(ValueError, match="integer"):
        tok.decode(np.zeros((4, 4), np.float32))


def test_codebook_spec():
    spec = VQImageTokenizer(tiny_cfg()).codebook_spec()
    assert (spec.modality, spec.kind, spec.codebook_size, spec.grid, spec.row_end) == (
        "image",
        "vq_image",
        32,
        (4, 4),
        True,
    )
    assert spec.fingerprint and spec.config["downsample"] == 4
    fsq = VQImageTokenizer(tiny_cfg(quantizer="fsq", fsq_levels=[4, 3, 3], row_end=False)).codebook_spec()
    assert (fsq.codebook_size, fsq.row_end) == (36, False)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="downsample"):
        tiny_cfg(downsample=6)
    with pytest.raises(ValueError, match="quantizer"):
        tiny_cfg(quantizer="rvq")
    with pytest.raises(ValueError, match="fsq_levels"):
        tiny_cfg(quantizer="fsq", fsq_levels=[4, 2])


def test_save_load_same_codes_and_fingerprint(tmp_path):
    torch.manual_seed(0)
    tok = VQImageTokenizer(tiny_cfg())
    tok.model.train()
    tok.model(torch.randn(4, 3, 16, 16))  # k-means init + EMA update: buffers change, must survive save
    tok.model.eval()
    img = shapes(1)[0]
    loaded = load_tokenizer(tok.save(tmp_path / "tok"))
    assert isinstance(loaded, VQImageTokenizer)
    assert np.array_equal(loaded.encode(img), tok.encode(img))
    assert loaded.fingerprint() == tok.fingerprint()
    assert VQImageTokenizer.load(tmp_path / "tok").fingerprint() == tok.fingerprint()


def test_fingerprint_changes_with_weights_and_config():
    torch.manual_seed(0)
    tok = VQImageTokenizer(tiny_cfg())
    before = tok.fingerprint()
    with torch.no_grad():
        next(tok.model.parameters()).view(-1)[0] += 1e-3
    assert tok.fingerprint() != before
    assert VQImageTokenizer(tiny_cfg(row_end=False), tok.model).fingerprint() != tok.fingerprint()


def _train_cfg(tmp_path: Path, steps: int, **over) -> ImageTrainConfig:
    np.savez(tmp_path / "shapes.npz", images=shapes(64, 32))
    args = [f"sources=[{tmp_path / 'shapes.npz'}]", f"out={tmp_path / 'run'}", f"steps={steps}", "threads=1"]
    return load_config(ImageTrainConfig, CONFIGS / "image_tiny.yaml", args + [f"{k}={v}" for k, v in over.items()])


def test_training_lowers_reconstruction_loss(tmp_path):
    torch.manual_seed(0)
    metrics = train(_train_cfg(tmp_path, steps=40, lr=0.005, warmup=5))
    assert metrics["final_rec_loss_ema"] < 0.5 * metrics["first_rec_loss"]
    out = tmp_path / "run"
    assert (out / "recon.png").is_file() and (out / "ckpt.pt").is_file()
    tok = load_tokenizer(out / "tokenizer")
    assert tok.fingerprint() == metrics["fingerprint"]
    assert 0 < metrics["usage"] <= 1 and metrics["tokens_per_image"] == 64 and metrics["psnr_db"] > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_training_on_the_gpu_lowers_the_loss_resumes_and_saves_a_cpu_tokenizer(tmp_path):
    torch.manual_seed(0)
    metrics = train(_train_cfg(tmp_path, steps=40, lr=0.005, warmup=5, device="cuda", ckpt_every=20))
    assert metrics["device"] == "cuda" and metrics["final_rec_loss_ema"] < 0.5 * metrics["first_rec_loss"]
    tok = load_tokenizer(tmp_path / "run" / "tokenizer")
    assert tok.device.type == "cpu" and tok.fingerprint() == metrics["fingerprint"]
    state = torch.load(tmp_path / "run" / "ckpt.pt", weights_only=False)
    assert state["step"] == 40 and "cuda_rng" in state  # the GPU's draws continue where they were
    again = train(_train_cfg(tmp_path, steps=45, device="cuda"))
    # 5 more steps from the checkpoint, which carries the first run's first loss and loss EMA
    assert again["steps"] == 45 and again["first_rec_loss"] == metrics["first_rec_loss"]
    assert again["final_rec_loss_ema"] < 0.5 * metrics["first_rec_loss"]


def test_training_on_cuda_without_one_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="device: cuda asked for"):
        train(_train_cfg(tmp_path, steps=2, device="cuda"))
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_training_resumes_from_its_checkpoint(tmp_path):
    main(["--config", str(CONFIGS / "image_tiny.yaml"), *_train_args(tmp_path, 3)])
    metrics = main(["--config", str(CONFIGS / "image_tiny.yaml"), *_train_args(tmp_path, 5)])
    assert metrics["steps"] == 5
    assert torch.load(tmp_path / "run" / "ckpt.pt", weights_only=False)["step"] == 5  # 2 more steps, not 5 anew


def test_a_resumed_run_keeps_the_time_budget_of_the_first(tmp_path):
    # the checkpoint carries the seconds trained: a run stopped by max_minutes has nothing left to train
    first = main(["--config", str(CONFIGS / "image_tiny.yaml"), *_train_args(tmp_path, 10**6), "max_minutes=0.02"])
    again = main(["--config", str(CONFIGS / "image_tiny.yaml"), *_train_args(tmp_path, 10**6), "max_minutes=0.02"])
    assert again["steps"] == first["steps"] and again["train_seconds"] >= first["train_seconds"]


def _train_args(tmp_path: Path, steps: int) -> list[str]:
    np.savez(tmp_path / "shapes.npz", images=shapes(24, 32))
    return [f"sources=[{tmp_path / 'shapes.npz'}]", f"out={tmp_path / 'run'}", f"steps={steps}", "threads=1"]


def test_training_reads_image_folders_and_skips_bad_files(tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, img in enumerate(shapes(12, 32)):
        Image.fromarray(img).save(folder / f"{i:02d}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG garbage")
    cfg = load_config(
        ImageTrainConfig,
        CONFIGS / "image_tiny.yaml",
        [f"sources=[{folder}]", f"out={tmp_path / 'run'}", "steps=2", "holdout=4", "threads=1"],
    )
    metrics = train(cfg)
    assert metrics["skipped_images"] == 1 and "broken.png" in metrics["first_skipped"][0]
    assert metrics["train_images"] == 8
    with pytest.raises(MediaError, match="broken.png"):
        train(load_config(ImageTrainConfig, CONFIGS / "image_tiny.yaml",
                          [f"sources=[{folder}]", f"out={tmp_path / 'strict'}", "on_bad_image=raise"]))  # fmt: skip


def test_shipped_configs_load():
    cfg = load_config(ImageTrainConfig, CONFIGS / "image.yaml")
    tok = VQImageTokenizer(cfg.tokenizer)
    assert tok.codebook_size == 1024 and tok.codebook_spec().grid == (16, 16)


def test_local_encoder_codes_depend_on_their_own_patch_only():
    """local_encoder: repainting one patch changes that patch's latent and no other, and two empty
    patches anywhere in any image get one code (the demo's background)."""
    torch.manual_seed(0)
    img = np.zeros((16, 16, 3), np.uint8)
    img[0:4, 0:4] = (230, 25, 25)
    other = img.copy()
    other[8:12, 4:8] = (40, 80, 240)  # patch (row 2, column 1)
    local = VQImageTokenizer(tiny_cfg(local_encoder=True, quantizer="fsq", fsq_levels=[8, 4]))
    with torch.no_grad():
        za, zb = (local.model.encoder(to_pixels(x[None]))[0] for x in (img, other))
    moved = (za - zb).abs().amax(0) > 1e-6
    assert moved.nonzero().tolist() == [[2, 1]]
    codes, codes_other = local.encode(img), local.encode(other)
    assert len(np.unique(codes[1:, 1:])) == 1 and codes[0, 1] == codes[3, 3] == codes_other[0, 3]
    # the default encoder mixes the whole image (GroupNorm statistics, 3x3 convs): not local
    glob = VQImageTokenizer(tiny_cfg(quantizer="fsq", fsq_levels=[8, 4]))
    with torch.no_grad():
        za, zb = (glob.model.encoder(to_pixels(x[None]))[0] for x in (img, other))
    assert not torch.allclose(za[:, 0, 3], zb[:, 0, 3])


def test_a_resumed_run_reports_the_whole_runs_first_loss_loss_ema_and_cpu_seconds(tmp_path):
    run = lambda d, steps: main(["--config", str(CONFIGS / "image_tiny.yaml"), *_train_args(d, steps)])  # noqa: E731
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    straight = run(tmp_path / "a", 6)
    first = run(tmp_path / "b", 3)
    ckpt = tmp_path / "b" / "run" / "ckpt.pt"
    state = torch.load(ckpt, weights_only=False)
    state["train_cpu_seconds"] = 1000.0  # as if the first part had trained long: the resumed run adds to it
    torch.save(state, ckpt)
    resumed = run(tmp_path / "b", 6)
    assert resumed["first_rec_loss"] == straight["first_rec_loss"] == first["first_rec_loss"]
    assert resumed["final_rec_loss_ema"] == pytest.approx(straight["final_rec_loss_ema"], rel=1e-6)
    assert resumed["train_cpu_seconds"] >= 1000.0


def test_a_checkpoint_without_the_loss_records_still_resumes(tmp_path):
    main(["--config", str(CONFIGS / "image_tiny.yaml"), *_train_args(tmp_path, 3)])
    ckpt = tmp_path / "run" / "ckpt.pt"
    state = torch.load(ckpt, weights_only=False)
    for key in ("first_rec_loss", "rec_loss_ema", "train_cpu_seconds"):  # as written before they were kept
        del state[key]
    torch.save(state, ckpt)
    metrics = main(["--config", str(CONFIGS / "image_tiny.yaml"), *_train_args(tmp_path, 5)])
    assert metrics["steps"] == 5 and metrics["first_rec_loss"] is not None  # restarted from the resumed part


def test_holdout_below_one_is_refused_before_training(tmp_path):
    # with nothing held out the run trained, then crashed in the evaluation before saving the tokenizer
    with pytest.raises(ValueError, match="holdout must be >= 1"):
        main(["--config", str(CONFIGS / "image_tiny.yaml"), *_train_args(tmp_path, 2), "holdout=0"])
    assert not (tmp_path / "run").exists()


def test_weights_that_do_not_fit_their_config_name_both_files(tmp_path):
    torch.manual_seed(0)
    saved = {
        name: VQImageTokenizer(cfg).save(tmp_path / name)
        for name, cfg in (
            ("a", tiny_cfg()),
            ("wider", tiny_cfg(base_channels=16)),
            ("refined", tiny_cfg(refine_channels=4)),
        )
    }
    for other, what in (("wider", "of another shape"), ("refined", "missing")):
        shutil.copy(saved["a"] / "weights.safetensors", saved[other] / "weights.safetensors")
        with pytest.raises(ValueError, match=f"does not fit the 'vq_image' model .*{what}") as e:
            load_tokenizer(saved[other])
        assert str(saved[other] / "weights.safetensors") in str(e.value)
        assert str(saved[other] / "tokenizer.json") in str(e.value)


def test_an_npz_sources_key_follows_the_last_colon(tmp_path):
    folder = tmp_path / "run:2"  # a colon in a folder name is legal on Linux
    folder.mkdir()
    np.savez(folder / "imgs.npz", pics=shapes(3))
    cfg = ImageTrainConfig(tokenizer=tiny_cfg())
    assert read_source(f"{folder / 'imgs.npz'}:pics", cfg, []).shape == (3, 16, 16, 3)


def test_rgba_npz_sources_are_composited_on_the_background(tmp_path):
    np.savez(tmp_path / "clear.npz", images=np.zeros((2, 16, 16, 4), np.uint8))  # transparent black
    cfg = ImageTrainConfig(tokenizer=tiny_cfg(image=ImageIOConfig(size=16, background=[0, 40, 200])))
    assert (read_source(str(tmp_path / "clear.npz"), cfg, []) == [0, 40, 200]).all()
