"""Metrics: generated text parses back to the ground truth, and scores count what they claim."""

from __future__ import annotations

import numpy as np
import pytest

from omniseq.data import demo_media as dm
from omniseq.eval import metrics as m
from omniseq.eval.harness import main_score


def test_captions_parse_back_to_their_objects():
    rng = np.random.default_rng(0)
    for _ in range(200):
        _, objects = dm.render_scene(rng, 32, int(rng.integers(1, 4)))
        assert m.parse_text("image", dm.describe_objects(objects)) == {"objects": objects}


def test_position_wordings():
    assert m.parse_objects("a red circle at the top left")["objects"][0]["position"] == "top left"
    assert m.parse_objects("a red circle on the right")["objects"][0]["position"] == "right"
    assert m.parse_objects("a red circle in the middle")["objects"][0]["position"] == "centre"
    assert m.parse_objects("a red circle")["objects"][0]["position"] is None


def test_notes_parse_from_text():
    assert m.parse_text("melody", "C E G") == {"notes": ["C", "E", "G"]}
    assert m.parse_text("melody", "a melody: D4, F4, A4") == {"notes": ["D", "F", "A"]}


@pytest.mark.parametrize("kind", list(dm.SOUNDS))
def test_every_sound_wording_parses_to_its_class(kind):
    assert {m.parse_text("sound", w)["sound"] for w in dm.SOUNDS[kind]} == {kind}


def test_motion_caption_parses():
    truth = {"colour": "blue", "shape": "square", "direction": "up"}
    assert m.parse_text("video", dm.caption_video(truth)) == truth


def test_image_scores_count_each_attribute():
    truth = [{"colour": "red", "shape": "circle", "size": "large", "position": "top left"}]
    wrong_shape = [{**truth[0], "shape": "square"}]
    assert m.compare("image", {"objects": truth}, {"objects": truth})["exact"] == 1.0
    s = m.compare("image", {"objects": wrong_shape}, {"objects": truth})
    assert (s["shape"], s["colour"], s["exact"]) == (0.0, 1.0, 0.0)
    s = m.compare("image", {"objects": truth + wrong_shape}, {"objects": truth})
    assert (s["shape"], s["count"], s["exact"]) == (0.5, 0.0, 0.0)  # the extra object counts against it
    assert m.compare("image", {"objects": []}, {"objects": truth})["colour"] == 0.0


def test_naming_every_colour_does_not_beat_one_honest_answer():
    """Scores are over max(true, predicted) objects: a hedge of six objects matches the true one but is
    five objects wrong, and scores below a single object of the wrong colour."""
    truth = [{"colour": "red", "shape": "circle", "size": "large", "position": "top left"}]
    hedge = [{**truth[0], "colour": c} for c in ("red", "green", "blue", "yellow", "purple", "orange")]
    honest = [{**truth[0], "colour": "blue"}]
    main = lambda pred: main_score("image", m.compare("image", {"objects": pred}, {"objects": truth}))  # noqa: E731
    assert main(hedge) < main(honest) == 0.75


def test_sequence_scores_and_means():
    s = m.compare("melody", {"notes": ["C", "E", "A"]}, {"notes": ["C", "E", "G"]})
    assert s == {"exact": 0.0, "accuracy": pytest.approx(2 / 3)}
    s = m.compare("speech", {"transcript": "Red circle."}, {"transcript": "red circle"})
    assert s["exact"] == 1.0
    assert m.mean_scores([{"exact": 1.0}, {"exact": 0.0}]) == {"exact": 0.5, "n": 2}
    assert m.mean_scores([]) == {"n": 0}


def test_video_and_sound_scores():
    truth = {"colour": "red", "shape": "circle", "direction": "left"}
    s = m.compare("video", {**truth, "direction": "right"}, truth)
    assert (s["colour"], s["direction"], s["exact"]) == (1.0, 0.0, 0.0)
    assert m.compare("sound", {"sound": "warble"}, {"sound": "warble"}) == {"exact": 1.0}


def test_describe_gives_a_short_caption_of_any_attributes():
    describe = m.describe
    scene = {"objects": [{"colour": "red", "shape": "circle", "size": "large", "position": "top left"},
                         {"colour": "blue", "shape": "square", "size": "small", "position": "centre"}]}  # fmt: skip
    assert describe(scene) == "red circle large top left; blue square small centre"
    assert describe({"notes": ["C", "E", "G"]}) == "C E G"
    assert describe({"sound": "beeps", "bursts": 3}) == "beeps 3"
    assert describe({"sound": "warble", "bursts": 0}) == "warble"
    assert describe({"colour": "blue", "shape": "square", "direction": "up"}) == "blue square up"
    assert describe({"objects": []}) == describe({}) == describe({"colour": None}) == "nothing"
