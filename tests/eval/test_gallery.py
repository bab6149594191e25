"""The real table's gallery: every generated image and clip as a file named by what was asked and what the scorer
made of it, and a contact sheet per task."""

from __future__ import annotations

import numpy as np
import soundfile as sf
from PIL import Image

from omniseq.eval.gallery import write_gallery


def _said(task: str, label: str, heard: str | None) -> dict:
    return {"task": task, "label": label, "scored_as": heard, "score": float(heard == label), "text": ""}


def test_gallery_writes_each_generated_item_and_a_sheet_per_task(tmp_path):
    rng = np.random.default_rng(0)
    image = lambda: rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    clip = lambda *shape: (0.1 * rng.standard_normal(shape)).astype(np.float32)
    answers = [_said("text2digit_image", "seven", "seven"), _said("text2digit_image", "seven", "one"),
               _said("text2digit_image", "two", "two"), _said("digit_image2text", "four", None),
               _said("text2sound", "dog bark", "rain"), _said("text2sound", "rain", "rain"),
               _said("text2sound", "rooster", "rain"), _said("text2digit_speech", "one", None)]  # fmt: skip
    # a 300-sample clip is shorter than an STFT; a stereo [C, N] clip is drawn as its channels' mean
    media = [image(), image(), image(), None, clip(16000), clip(300), clip(2, 8000), None]
    modalities = ["image", "image", "image", None, "audio", "audio", "audio", "audio"]
    (tmp_path / "text2digit_image").mkdir()
    (tmp_path / "text2digit_image" / "099-stale-as-stale.png").write_bytes(b"from an earlier run")
    gallery = write_gallery(tmp_path, answers, media, modalities, {"audio": 16000}, per_label=1)

    # a text answer makes nothing; an audio task whose only item made no span gets a sheet saying so
    assert gallery["sheets"] == {t: f"{t}.png" for t in ("text2digit_image", "text2digit_speech", "text2sound")}
    assert gallery["no_span"] == {"text2digit_speech": 1} and gallery["errors"] == []
    assert sorted(p.name for p in (tmp_path / "text2digit_image").iterdir()) == [
        "000-seven-as-seven.png", "001-seven-as-one.png", "002-two-as-two.png"]  # fmt: skip
    assert np.array_equal(np.asarray(Image.open(tmp_path / "text2digit_image" / "001-seven-as-one.png")), media[1])
    wave, rate = sf.read(tmp_path / "text2sound" / "004-dog_bark-as-rain.wav")
    assert rate == 16000 and len(wave) == 16000
    assert sf.read(tmp_path / "text2sound" / "006-rooster-as-rain.wav")[0].shape == (8000, 2)
    # a column per asked label: three labels make a wider sheet than one
    widths = {t: Image.open(tmp_path / sheet).size[0] for t, sheet in gallery["sheets"].items()}
    assert widths["text2sound"] > 2 * widths["text2digit_speech"]


def test_an_output_that_is_not_an_image_is_listed_not_written_and_the_rest_goes_on(tmp_path):
    rng = np.random.default_rng(0)
    answers = [_said("text2digit_image", "one", "one"), _said("text2digit_image", "two", "one")]
    media = [np.zeros((8, 8), np.uint8), rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)]  # a 2-D "image" first
    gallery = write_gallery(tmp_path, answers, media, ["image", "image"], {})
    assert len(gallery["errors"]) == 1
    assert gallery["errors"][0].startswith("000-one-as-one: ValueError: image decoder returned")
    assert [p.name for p in (tmp_path / "text2digit_image").iterdir()] == ["001-two-as-one.png"]
    assert (tmp_path / "text2digit_image.png").is_file()


def _has_colour(sheet, rgb: tuple[int, int, int]) -> bool:
    """Some pixel is `rgb` at least half covering the white page: small text is antialiased, so a pixel of it is
    a * rgb + (1 - a) * white, and the coverage a read off each channel must agree."""
    pixels = np.asarray(Image.open(sheet).convert("RGB")).reshape(-1, 3).astype(float)
    rgb = np.asarray(rgb, float)
    dark = rgb < 200  # the channels that tell the coverage (orange's red is as full as the page's)
    cover = (255 - pixels[:, dark]) / (255 - rgb[dark])
    page_like = (np.abs(pixels[:, ~dark] - rgb[~dark]) < 25).all(1)
    return bool((page_like & (cover.min(1) >= 0.5) & (cover.max(1) - cover.min(1) < 0.15)).any())


def test_many_requests_make_a_grid_marked_by_score_and_videos_show_frames(tmp_path):
    # 14 distinct captions (more than a column each could hold); scores 1, 0 and 0.5: green, red, orange
    scores = [1.0, 0.0, 0.5] * 5
    answers = [{"task": "text2video", "label": f"a {c} ball moves", "scored_as": "a ball", "score": scores[i]}
               for i, c in enumerate("abcdefghijklmn")]  # fmt: skip
    # five frames going from dark to light grey: no pixel of theirs has a mark's colour
    frames = np.broadcast_to(np.linspace(40, 200, 5).astype(np.uint8)[:, None, None, None], (5, 16, 16, 3))
    media = [frames.copy() for _ in answers]
    gallery = write_gallery(tmp_path, answers, media, ["video"] * len(answers), {"video": 4.0}, max_items=12)
    assert gallery["errors"] == [] and gallery["sheets"] == {"text2video": "text2video.png"}
    assert len(list((tmp_path / "text2video").glob("*.mp4"))) == 14  # every item is written, 12 are drawn
    sheet = tmp_path / "text2video.png"
    for rgb in ((44, 160, 44), (214, 39, 40), (255, 127, 14)):  # matplotlib's tab:green, tab:red, tab:orange
        assert _has_colour(sheet, rgb), rgb
    wide, tall = Image.open(sheet).size
    assert tall > 0.2 * wide  # two rows of ten (12 items): one row would be ~0.15 as tall as wide
    # each drawn video shows four of its frames (0, 1, 3, 4: levels 40, 80, 160, 200) as flat grey tiles, each
    # tile some 60 x 60 pixels of the sheet: 12 cells make tens of thousands of pixels of every level
    pixels = np.asarray(Image.open(sheet).convert("RGB")).reshape(-1, 3).astype(int)
    grey = (pixels[:, 0] == pixels[:, 1]) & (pixels[:, 1] == pixels[:, 2])
    for level in (40, 80, 160, 200):
        assert (grey & (np.abs(pixels[:, 0] - level) <= 1)).sum() > 12 * 1000, level


def test_a_sheet_that_cannot_be_drawn_is_listed_and_the_files_stay(tmp_path, monkeypatch):
    import omniseq.eval.gallery as gallery_module

    def broken(*args, **kwargs):
        raise RuntimeError("no fonts")

    monkeypatch.setattr(gallery_module, "_contact_sheet", broken)
    rng = np.random.default_rng(0)
    answers = [_said("text2digit_image", "one", "one")]
    gallery = write_gallery(tmp_path, answers, [rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)], ["image"], {})
    assert gallery["sheets"] == {} and gallery["errors"] == ["text2digit_image.png: RuntimeError: no fonts"]
    assert (tmp_path / "text2digit_image" / "000-one-as-one.png").is_file()
