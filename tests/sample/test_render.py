"""Rendering generated ids: media files, manifest.json and index.html, with stand-in media decoders."""

from __future__ import annotations

import json

import av
import numpy as np
import soundfile as sf
from PIL import Image

from omniseq.document import DocumentCodec, Segment
from omniseq.sample import GenerateConfig, generate
from omniseq.sample.render import render

from .conftest import RandomLogits


class ImageStub:
    kind, modality = "stub-image", "image"

    def decode(self, codes):  # [h, w] -> uint8 [4h, 4w, 3]
        img = np.kron(np.asarray(codes, dtype=np.uint8) * 16, np.ones((4, 4), dtype=np.uint8))
        return np.stack([img] * 3, -1)


class AudioStub:
    kind, modality, sample_rate = "stub-audio", "audio", 8000

    def decode(self, codes):  # [L, F] -> 160 samples per frame
        t = np.arange(codes.shape[1] * 160) / self.sample_rate
        return 0.5 * np.sin(2 * np.pi * 440 * t).astype(np.float32)

    def config_dict(self):
        return {}


class VideoStub:
    kind, modality = "stub-video", "video"

    def decode(self, codes):  # [T, h, w] -> uint8 [T, 4h, 4w, 3]
        return np.stack([ImageStub().decode(frame) for frame in codes])


def codec(layout, text_tokenizer, media=True):
    stubs = {"image": ImageStub(), "audio": AudioStub(), "video": VideoStub()} if media else {}
    return DocumentCodec(layout, text_tokenizer, stubs)


def test_render_writes_files_manifest_and_page(tmp_path, tiny_layout, text_tokenizer):
    L = tiny_layout
    rng = np.random.default_rng(0)
    doc = [
        Segment("text", text="draw <a> cat & say hi", role="user"),
        Segment("image", codes=rng.integers(0, 16, (2, 3)), role="assistant"),
        Segment("audio", codes=rng.integers(0, 8, (3, 5)), role="assistant"),
        Segment("video", codes=rng.integers(0, 16, (3, 2, 3)), role="assistant"),
        Segment("text", text=" done", role="assistant"),
    ]
    seq = codec(L, text_tokenizer).encode(doc)
    ids, prompt_len = seq.ids, int(seq.spans[1][0])  # the "prompt" ends where the image starts
    broken = [L.id("<bos>"), L.id("<|image|>"), L.code_range("image")[0]]
    manifest = render(codec(L, text_tokenizer), [ids, broken], tmp_path, prompt_lens=[prompt_len, 0])

    assert json.loads((tmp_path / "manifest.json").read_text()) == manifest
    good, bad = manifest["rows"]
    assert bad["error"] and "never closed" in bad["error"] and not bad["pieces"]
    mods = [p["modality"] for p in good["pieces"]]
    assert mods == ["text", "image", "audio", "video", "text"]
    assert good["pieces"][0]["role"] == "user" and not good["pieces"][0]["generated"]
    assert good["pieces"][1]["role"] == "assistant" and good["pieces"][1]["generated"]
    for p, seg in zip(good["pieces"][1:4], doc[1:4]):
        assert p["tokens"] == len(L.media_ids(seg.modality, seg.codes))
        assert p["shape"] == list(seg.codes.shape)

    image, audio, video = (tmp_path / p["file"] for p in good["pieces"][1:4])
    assert Image.open(image).size == (12, 8)
    wave, rate = sf.read(audio)
    assert rate == 8000 and len(wave) == 5 * 160
    with av.open(str(video)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 3 and frames[0].shape == (8, 12, 3)

    page = (tmp_path / "index.html").read_text()
    assert "draw &lt;a&gt; cat &amp; say hi" in page and " done" in page
    assert f'<img src="{image.name}">' in page
    assert f'<audio controls src="{audio.name}">' in page and f'<video controls src="{video.name}">' in page
    assert "never closed" in page

    # a second render into the folder, of the broken row alone: the first render's media go with it
    (tmp_path / "notes.txt").write_text("mine")
    render(codec(L, text_tokenizer), [broken], tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.html", "manifest.json", "notes.txt"]


def test_missing_tokenizer_is_recorded_per_span(tmp_path, tiny_layout, text_tokenizer):
    L = tiny_layout
    ids = L.media_ids("image", np.zeros((2, 3), dtype=np.int64))
    manifest = render(codec(L, text_tokenizer, media=False), [ids], tmp_path)
    piece = manifest["rows"][0]["pieces"][0]
    assert piece["file"] is None and piece["error"] == "no image tokenizer loaded"
    assert "no image tokenizer loaded" in (tmp_path / "index.html").read_text()


def test_generated_rows_render(tmp_path, tiny_layout, text_tokenizer):
    """Generation output plugs straight into rendering: every forced span becomes a file."""
    L = tiny_layout
    prompts = [[L.id("<bos>")]] * 3
    cfg = GenerateConfig(progress=False)
    out = generate(RandomLogits(L, 0).decoder(), L, prompts, cfg, force=["image", "audio", "video"], budgets=[40] * 3)
    rows = [np.concatenate([p, o]) for p, o in zip(prompts, out)]
    manifest = render(codec(L, text_tokenizer), rows, tmp_path, prompt_lens=[1, 1, 1])
    for row, m in zip(manifest["rows"], ["image", "audio", "video"]):
        assert row["error"] is None
        first = row["pieces"][0]
        assert first["modality"] == m and (tmp_path / first["file"]).is_file()


def test_continued_text_is_split_where_generation_starts(tmp_path, tiny_layout, text_tokenizer):
    """chat: false continues the prompt's text run: only the continuation is the model's, in the manifest and
    on the page, and the two parts read back as the whole run."""
    L = tiny_layout
    prompt = [L.id("<bos>"), *text_tokenizer.encode("a red")]
    row = prompt + text_tokenizer.encode(" cat sat") + [L.id("<eos>")]
    manifest = render(codec(L, text_tokenizer), [row], tmp_path, prompt_lens=[len(prompt)])
    pieces = manifest["rows"][0]["pieces"]
    assert [(p["generated"], p["tokens"]) for p in pieces] == [
        (False, len(prompt) - 1),
        (True, len(row) - len(prompt) - 1),
    ]
    assert pieces[0]["text"] + pieces[1]["text"] == text_tokenizer.decode(row[1:-1])
    assert pieces[0]["text"] == "a red" and pieces[1]["text"].strip() == "cat sat"
    assert "<p class='prompt'>a red</p>" in (tmp_path / "index.html").read_text()
