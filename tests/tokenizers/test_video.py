"""Frame-VQ video: reading MP4/GIF/npz, frame sampling, codes through the vocabulary, save/load, MP4 out."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from omniseq.tokenizers.base import MediaError, load_tokenizer
from omniseq.tokenizers.image import VQImageConfig, VQImageTokenizer
from omniseq.tokenizers.image_io import ImageIOConfig
from omniseq.tokenizers.video import FrameVideoConfig, FrameVideoTokenizer, read_video, write_mp4
from omniseq.vocab import TextSpec, VocabError, VocabLayout


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    torch.manual_seed(0)
    cfg = VQImageConfig(image=ImageIOConfig(size=16), downsample=4, base_channels=8, channel_mult=[1, 2])
    cfg.embed_dim, cfg.codebook_size, cfg.codebook_dim = 8, 32, 4
    return VQImageTokenizer(cfg).save(tmp_path_factory.mktemp("img") / "tok")


def clip(t: int = 16, size: int = 16) -> np.ndarray:
    """A square moving right one pixel per frame: every frame differs from the previous one."""
    frames = np.full((t, size, size, 3), 255, np.uint8)
    for i, f in enumerate(frames):
        f[4:10, i % (size - 6) : i % (size - 6) + 6] = (200, 30, 30)
    return frames


def video_tok(image_dir, **kw) -> FrameVideoTokenizer:
    return FrameVideoTokenizer.from_image_dir(FrameVideoConfig(image_tokenizer=str(image_dir), **kw))


def test_mp4_gif_and_npz_frame_counts(image_dir, tmp_path):
    tok = video_tok(image_dir, fps=4, max_frames=16, source_fps=8)
    mp4 = write_mp4(clip(), tmp_path / "c.mp4", fps=8)  # 16 frames at 8 fps = 2 s
    frames = [Image.fromarray(f) for f in clip()]
    frames[0].save(tmp_path / "c.gif", save_all=True, append_images=frames[1:], duration=125, loop=0)
    np.savez(tmp_path / "one.npz", frames=clip())
    np.savez(tmp_path / "many.npz", clips=np.stack([clip(), clip()]))
    for source in (mp4, tmp_path / "c.gif", tmp_path / "one.npz", f"{tmp_path / 'many.npz'}:clips:1", clip()):
        codes = tok.encode(source)
        assert codes.shape == (8, 4, 4), source  # 2 s at 4 fps
        assert codes.dtype == np.int64
    assert len(read_video(mp4, tok.cfg)[0]) == 16
    assert tok.tokens_for(mp4) == 8 * 16


def test_max_frames_and_difference_sampling(image_dir):
    assert video_tok(image_dir, fps=8, max_frames=5).encode(clip()).shape == (5, 4, 4)
    frames = clip()
    frames[8:] = frames[7]  # the second half is static: difference sampling must skip it
    tok = video_tok(image_dir, sampling="difference", max_frames=8)
    kept = tok.frames(frames)
    assert len(kept) == 8 and np.array_equal(kept, frames[:8])


def test_encode_is_deterministic_and_decodes_to_frames_and_mp4(image_dir, tmp_path):
    tok = video_tok(image_dir)
    codes = tok.encode(clip())
    assert np.array_equal(codes, tok.encode(clip()))
    frames = tok.decode(codes)
    assert frames.shape == (len(codes), 16, 16, 3) and frames.dtype == np.uint8
    mp4 = tok.decode_to_mp4(codes, tmp_path / "out.mp4")
    assert len(read_video(mp4, tok.cfg)[0]) == len(codes)
    with pytest.raises(ValueError, match=r"\[0, 32\)"):
        tok.decode(np.full((2, 4, 4), 99))


def test_vocab_round_trip_with_frame_separators(image_dir):
    tok = video_tok(image_dir, max_frames=3)
    layout = VocabLayout.build(TextSpec("sentencepiece", 50), [tok.image.codebook_spec(), tok.codebook_spec()])
    assert layout.codebook("video").shares == "image"
    assert layout.code_range("video") == layout.code_range("image")
    codes = tok.encode(clip())
    ids = layout.media_ids("video", codes)
    assert (ids == layout.id("<|frame|>")).sum() == len(codes) - 1
    (piece,) = layout.parse(ids)
    assert piece.modality == "video" and np.array_equal(piece.payload, codes)


def test_save_load_is_self_contained(image_dir, tmp_path):
    tok = video_tok(image_dir)
    saved = tok.save(tmp_path / "video")
    loaded = load_tokenizer(saved)
    assert isinstance(loaded, FrameVideoTokenizer)
    assert np.array_equal(loaded.encode(clip()), tok.encode(clip()))
    assert loaded.fingerprint() == tok.fingerprint()
    moved = FrameVideoTokenizer(FrameVideoConfig(image_tokenizer="/elsewhere"), tok.image)
    assert moved.fingerprint() == tok.fingerprint()  # the directory is not part of the identity
    # ... nor of the vocabulary's: the same tokenizers in two run folders make one layout hash
    build = lambda t: VocabLayout.build(TextSpec("sentencepiece", 50), [t.image.codebook_spec(), t.codebook_spec()])
    assert build(moved).hash == build(tok).hash
    assert video_tok(image_dir, fps=2).fingerprint() != tok.fingerprint()


def test_bad_videos_raise_media_error(image_dir, tmp_path):
    tok = video_tok(image_dir)
    (tmp_path / "bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 definitely not a video")
    (tmp_path / "empty.mp4").write_bytes(b"")
    for name in ("bad.mp4", "empty.mp4", "missing.mp4"):
        with pytest.raises(MediaError, match=name):
            tok.encode(tmp_path / name)
    np.savez(tmp_path / "many.npz", clips=np.stack([clip(), clip()]))
    with pytest.raises(MediaError, match="index"):
        tok.encode(tmp_path / "many.npz")
    with pytest.raises(MediaError, match="no frames"):
        tok.encode(np.zeros((0, 16, 16, 3), np.uint8))


def test_pil_frames_are_converted_by_their_mode_and_odd_channel_counts_refused(image_dir):
    palette = Image.new("P", (16, 16))
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.putpixel((0, 0), 1)
    frames, _ = read_video([palette, Image.new("RGBA", (16, 16), (0, 0, 0, 0))], FrameVideoConfig())
    assert frames[0, 0, 0].tolist() == [0, 0, 255] and frames[0, 1, 1].tolist() == [255, 0, 0]
    assert frames[1, 0, 0].tolist() == [255, 255, 255]  # transparent on white, as the image readers do
    with pytest.raises(MediaError, match=r"\[H, W, 1\|3\|4\], got shape \(16, 16, 2\)"):
        read_video([np.zeros((16, 16, 2), np.uint8)], FrameVideoConfig())


def test_a_video_sharing_the_image_range_must_code_with_the_layouts_image_tokenizer(image_dir, tmp_path):
    video = video_tok(image_dir)
    torch.manual_seed(1)
    cfg = VQImageConfig(image=ImageIOConfig(size=16), downsample=4, base_channels=8, channel_mult=[1, 2])
    cfg.embed_dim, cfg.codebook_size, cfg.codebook_dim = 8, 32, 4
    retrained = VQImageTokenizer(cfg)  # same shape, other weights: the same ids would mean other codes
    text = TextSpec("sentencepiece", 100, "t")
    VocabLayout.build(text, [load_tokenizer(image_dir).codebook_spec(), video.codebook_spec()])
    with pytest.raises(VocabError, match="codes with another image tokenizer"):
        VocabLayout.build(text, [retrained.codebook_spec(), video.codebook_spec()])


def test_real_animated_emoji_clip(image_dir, shared_data):
    tok = video_tok(image_dir, fps=4, source_fps=8)
    codes = tok.encode(f"{shared_data / 'noto_animated_emoji' / 'clips_16x64x64.npz'}:clips:0")
    assert codes.shape == (8, 4, 4)


def test_a_config_naming_only_its_image_tokenizers_folder_loads_without_a_weights_file(image_dir, tmp_path):
    import json

    d = tmp_path / "video"
    d.mkdir()
    config = {"kind": FrameVideoTokenizer.kind, "config": {"image_tokenizer": str(image_dir)}}
    (d / "tokenizer.json").write_text(json.dumps(config))
    tok = load_tokenizer(d)
    assert tok.fingerprint() == video_tok(image_dir).fingerprint()


def test_bad_npz_clips_raise_media_error_naming_the_file(image_dir, tmp_path):
    # the shard builder skips media that raise MediaError: IndexError or BadZipFile would crash it instead
    tok = video_tok(image_dir)
    many, one = tmp_path / "many.npz", tmp_path / "one.npz"
    np.savez(many, clips=np.stack([clip(), clip()]))
    np.savez(one, frames=clip())
    np.savez(tmp_path / "none.npz")
    (tmp_path / "cut.npz").write_bytes(many.read_bytes()[:300])
    np.save(tmp_path / "bare.npy", clip())
    (tmp_path / "bare.npy").rename(tmp_path / "bare.npz")
    cases = [
        (f"{many}:clips:2", many, r"clip index '2' .*expected 0 to 1"),
        (f"{many}:clips:-1", many, "expected 0 to 1"),
        (f"{one}:frames:3", one, "one clip"),
        (tmp_path / "cut.npz", tmp_path / "cut.npz", "unreadable npz"),
        (tmp_path / "none.npz", tmp_path / "none.npz", "no arrays"),
        (tmp_path / "bare.npz", tmp_path / "bare.npz", "not an npz archive"),
    ]
    for source, name, match in cases:
        with pytest.raises(MediaError, match=match) as e:
            tok.encode(source)
        assert str(name) in str(e.value), source


def test_a_single_image_array_is_refused_not_read_as_a_video_of_its_rows(image_dir):
    tok = video_tok(image_dir)
    image = clip()[0]  # [16, 16, 3]: read as frames it was 16 frames of 16 x 3 pixels
    with pytest.raises(MediaError, match=r"\[T, H, W, 1\|3\|4\], got shape \(16, 16, 3\)"):
        tok.encode(image)
    assert tok.encode(image[None]).shape == (1, 4, 4)  # a one-frame video is the way to say it


@pytest.mark.parametrize("fps, seconds", [(2.5, 4.0), (0.5, 20.0), (12.5, 0.8)])
def test_an_mp4_plays_at_its_exact_frame_rate(tmp_path, fps, seconds):
    import av

    mp4 = write_mp4(np.zeros((10, 16, 16, 3), np.uint8), tmp_path / "c.mp4", fps=fps)
    with av.open(str(mp4)) as c:
        s = c.streams.video[0]
        assert float(s.average_rate) == pytest.approx(fps)
        assert float(s.duration * s.time_base) == pytest.approx(seconds, rel=1e-3)
