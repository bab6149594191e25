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
    gallery = write_gallery(tmp_path, answers, media, modalities, sample_rate=16000, per_label=1)

    # a text answer makes nothing; an audio task whose only item made no span gets a sheet saying so
    assert gallery["sheets"] == {t: f"{t}.png" for t in ("text2digit_image", "text2digit_speech", "text2sound")}
    assert gallery["no_span"] == {"text2digit_speech": 1} and gallery["errors"] == []
    assert sorted(p.name for p in (tmp_path / "text2digit_image").iterdir()) == [
        "000-seven-as-seven.png", "001-seven-as-one.png", "002-two-as-two.png"]  # fmt: skip
    assert np.array_equal(np.asarray(Image.open(tmp_path / "text2digit_image" / "001-seven-as-one.png")), media[1])
    wave, rate = sf.read(tmp_path / "text2sound" / "004-dog_bark-as-rain.wav")
    assert rate == 16000 and len(wave) == 16000
    assert sf.read(tmp_path / "text2sound" / "006-rooster-as-rain.wav")[0].shape == (8000, 2)
    for sheet in gallery["sheets"].values():
        with Image.open(tmp_path / sheet) as im:
            assert im.size[0] > 100 and im.size[1] > 100


def test_an_output_that_is_not_an_image_is_listed_not_written_and_the_rest_goes_on(tmp_path):
    rng = np.random.default_rng(0)
    answers = [_said("text2digit_image", "one", "one"), _said("text2digit_image", "two", "one")]
    media = [np.zeros((8, 8), np.uint8), rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)]  # a 2-D "image" first
    gallery = write_gallery(tmp_path, answers, media, ["image", "image"], sample_rate=16000)
    assert len(gallery["errors"]) == 1 and gallery["errors"][0].startswith("000-one-as-one: image decoder returned")
    assert [p.name for p in (tmp_path / "text2digit_image").iterdir()] == ["001-two-as-one.png"]
    assert (tmp_path / "text2digit_image.png").is_file()
