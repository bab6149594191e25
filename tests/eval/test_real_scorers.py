"""Real-media scorers (issue 10): accuracy on the real eval splits, save/load, caching, input checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from omniseq.data import real_sets
from omniseq.data.real_sets import MissingDataError
from omniseq.eval import real_scorers as rs
from tests.conftest import SHARED_DATA

# Eval-split accuracy each scorer must reach with its DEFAULTS config. Measured (bench/real_scorers.py, seeds
# 0 and 1): MNIST 0.988/0.986, FSDD 0.983/0.980, ESC-10 0.925/0.925; the thresholds leave a margin for other
# seeds and machines (ESC-10's eval is 80 clips: one clip is 1.25 points).
MIN_ACCURACY = {"digit_image": 0.97, "spoken_digit": 0.94, "sound": 0.8}
# The same on media degraded like generated media (measured 0.978/0.976 and 0.925/0.925): MNIST through a
# 12x12 bottleneck decoded as 32x32 RGB, ESC-10 clips cut to their loudest 2 s.
MIN_ACCURACY_BLURRED_DIGITS = 0.94
MIN_ACCURACY_SOUND_2S = 0.8
TINY = ("epochs=1", "limit=32")  # a fast, barely trained scorer: enough for API tests, never for accuracy


def blurred_rgb(image: np.ndarray) -> np.ndarray:
    small = Image.fromarray(image).resize((12, 12), Image.Resampling.BILINEAR)
    return np.asarray(small.resize((32, 32), Image.Resampling.BILINEAR).convert("RGB"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """name -> (scorer, report, cache dir, eval media) for every scorer, trained with TINY settings once."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (set OMNISEQ_SHARED_DATA to point at it)")
    out = {}
    for name in rs.SCORERS:
        cache = tmp_path_factory.mktemp(name)
        scorer, report = rs.load_or_train(name, SHARED_DATA, cache, seed=0, overrides=TINY)
        _, _, eval_x, _, _ = rs.SCORERS[name].read(SHARED_DATA)
        out[name] = (scorer, report, cache, eval_x[:4])
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", list(rs.SCORERS))
def test_default_scorer_reaches_its_accuracy_on_the_eval_split(name, shared_data, tmp_path):
    torch.set_num_threads(1)
    scorer, report = rs.load_or_train(name, shared_data, tmp_path, seed=0)
    assert report["cached"] is False and report["train"] > report["eval"] > 0
    assert report["eval_accuracy"] >= MIN_ACCURACY[name], report
    if name == "digit_image":
        images, labels, split = real_sets.mnist(shared_data)
        blurred = [blurred_rgb(x) for x in images[split == "eval"]]
        assert scorer.accuracy(blurred, labels[split == "eval"].tolist()) >= MIN_ACCURACY_BLURRED_DIGITS
    if name == "sound":
        _, _, waves, targets, _ = rs.SoundScorer.read(shared_data)
        crops = [rs.loudest_window(w, 2.0) for w in waves]
        assert all(len(c) == 2 * rs.SAMPLE_RATE for c in crops)
        assert scorer.accuracy(crops, targets) >= MIN_ACCURACY_SOUND_2S


@pytest.mark.parametrize("name", list(rs.SCORERS))
def test_report_counts_the_splits_and_predictions_are_labels(tiny, name):
    scorer, report, _, eval_x = tiny[name]
    assert report["train"] == report["eval"] == 32 and 0.0 <= report["eval_accuracy"] <= 1.0
    assert report["cached"] is False
    predictions = scorer.predict(eval_x)
    assert len(predictions) == len(eval_x) and set(predictions) <= set(scorer.labels)


@pytest.mark.parametrize("name", list(rs.SCORERS))
def test_save_load_round_trip_gives_identical_predictions(tiny, name, tmp_path):
    scorer, _, _, eval_x = tiny[name]
    loaded = rs.Scorer.load(scorer.save(tmp_path / name))
    assert type(loaded) is type(scorer) and loaded.cfg == scorer.cfg
    assert torch.equal(loaded.probabilities(eval_x), scorer.probabilities(eval_x))
    assert loaded.predict(eval_x) == scorer.predict(eval_x)


@pytest.mark.parametrize("name", list(rs.SCORERS))
def test_cache_is_reused_without_retraining(tiny, name, monkeypatch):
    scorer, report, cache, eval_x = tiny[name]

    def no_training(*args, **kwargs):
        raise AssertionError("load_or_train retrained although the cache matched")

    monkeypatch.setattr(rs.Scorer, "fit", no_training)
    again, second = rs.load_or_train(name, SHARED_DATA, cache, seed=0, overrides=TINY)
    assert second["cached"] is True
    assert {k: second[k] for k in ("train", "eval", "eval_accuracy")} == {
        k: report[k] for k in ("train", "eval", "eval_accuracy")
    }
    assert again.predict(eval_x) == scorer.predict(eval_x)
    with pytest.raises(AssertionError, match="retrained"):  # another seed is another fingerprint
        rs.load_or_train(name, SHARED_DATA, cache, seed=1, overrides=TINY)


@pytest.mark.parametrize("name", list(rs.SCORERS))
def test_cache_scores_without_its_data_only_for_the_same_setting(tiny, name, tmp_path, monkeypatch):
    """A machine without the sets (the GPU machine) uses a cache of the same config and seed, unchecked."""
    scorer, report, cache, eval_x = tiny[name]
    monkeypatch.setattr(rs.Scorer, "fit", lambda *a, **k: pytest.fail("retrained without data"))
    again, second = rs.load_or_train(name, tmp_path / "absent", cache, seed=0, overrides=TINY)
    assert second["cached"] is True and second["data_checked"] is False
    assert second["eval_accuracy"] == report["eval_accuracy"]
    assert again.predict(eval_x) == scorer.predict(eval_x)
    with pytest.raises(MissingDataError, match="absent"):  # another seed: the cache is not this scorer
        rs.load_or_train(name, tmp_path / "absent", cache, seed=1, overrides=TINY)
    with pytest.raises(MissingDataError, match="absent"):  # another config
        rs.load_or_train(name, tmp_path / "absent", cache, seed=0, overrides=("epochs=2", "limit=32"))
    (tmp_path / "incomplete").mkdir()  # a data folder that exists but lacks the set is an error, not the cache
    with pytest.raises(MissingDataError, match="incomplete"):
        rs.load_or_train(name, tmp_path / "incomplete", cache, seed=0, overrides=TINY)


def test_training_is_deterministic_by_seed(shared_data, tmp_path):
    settings = ("epochs=1", "limit=128")
    a, _ = rs.load_or_train("digit_image", shared_data, tmp_path / "a", seed=3, overrides=settings)
    b, _ = rs.load_or_train("digit_image", shared_data, tmp_path / "b", seed=3, overrides=settings)
    c, _ = rs.load_or_train("digit_image", shared_data, tmp_path / "c", seed=4, overrides=settings)
    same, other = a.net.state_dict(), b.net.state_dict()
    assert list(same) == list(other) == list(c.net.state_dict())
    for key, x in same.items():
        assert torch.equal(x, other[key]), key
    # the seed matters: another one starts and shuffles differently, so some weight differs
    assert any(not torch.equal(x, c.net.state_dict()[key]) for key, x in same.items())


def test_digit_scorer_takes_any_image_size_and_layout(tiny):
    scorer = tiny["digit_image"][0]
    images, _, _ = real_sets.mnist(SHARED_DATA)
    digit = images[-1]
    media = [digit, blurred_rgb(digit), np.asarray(Image.fromarray(digit).resize((64, 64))), digit[..., None]]
    assert all(p in real_sets.DIGIT_WORDS for p in scorer.predict(media))


@pytest.mark.parametrize(
    "name,item,match",
    [
        ("digit_image", np.zeros((2, 28, 28, 3), np.uint8), r"item 0: expected a uint8 image \[H, W\]"),
        ("digit_image", np.zeros((28, 28, 2), np.uint8), r"got shape \(28, 28, 2\)"),
        ("digit_image", np.zeros((28, 28), np.float32), "dtype float32"),
        ("spoken_digit", np.zeros((2, 16000), np.float32), r"item 0: expected a mono float waveform"),
        ("spoken_digit", np.zeros(0, np.float32), r"got shape \(0,\)"),
        ("sound", np.zeros(16000, np.int16), "dtype int16"),
        ("sound", np.full(16000, np.nan, np.float32), "NaN or inf"),
    ],
)
def test_wrong_input_is_a_clear_error(tiny, name, item, match):
    with pytest.raises(ValueError, match=match):
        tiny[name][0].predict([item])


def test_predict_wants_a_list(tiny):
    with pytest.raises(ValueError, match="predict takes a list of items, got ndarray"):
        tiny["digit_image"][0].predict(np.zeros((28, 28), np.uint8))


@pytest.mark.parametrize("name", list(rs.SCORERS))
def test_missing_data_names_the_file(name, tmp_path):
    with pytest.raises(MissingDataError, match=str(tmp_path)):
        rs.load_or_train(name, tmp_path, tmp_path / "cache")


def test_unknown_scorer_and_bad_saved_dir(tmp_path):
    with pytest.raises(ValueError, match="unknown scorer 'speech'; expected one of"):
        rs.load_or_train("speech", tmp_path, tmp_path)
    with pytest.raises(FileNotFoundError, match="scorer.json not found"):
        rs.Scorer.load(tmp_path)


def test_loudest_window_finds_the_burst():
    wave = np.zeros(5 * rs.SAMPLE_RATE, np.float32)
    wave[3 * rs.SAMPLE_RATE : 3 * rs.SAMPLE_RATE + 1000] = 1.0
    crop = rs.loudest_window(wave, 2.0)
    assert len(crop) == 2 * rs.SAMPLE_RATE and crop.sum() == 1000.0
    assert len(rs.loudest_window(wave[:100], 2.0)) == 100


@pytest.mark.parametrize("name", ["spoken_digit", "sound"])
def test_silent_or_short_audio_still_gets_a_label(tiny, name):
    scorer = tiny[name][0]
    media = [np.zeros(rs.SAMPLE_RATE, np.float32), np.full(100, 0.1, np.float32)]
    probs = scorer.probabilities(media)
    assert torch.isfinite(probs).all() and len(scorer.predict(media)) == 2
