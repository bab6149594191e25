"""The demo harness (omniseq.eval.harness): what results.json keeps."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

import omniseq.eval.harness as harness
from omniseq.data import demo_media as dm
from omniseq.document import Segment
from omniseq.eval.analysers import SAMPLE_RATE, analyse
from omniseq.eval.harness import EvalConfig, Item, task_means
from omniseq.sample.run import Prompt
from omniseq.tokenizers.audio_io import resample


def test_task_means_leave_the_rows_intact():
    rows = [
        {"task": "text2image", "main": 1.0},
        {"task": "text2image", "main": 0.0},
        {"task": "sound2text", "main": 1.0},
    ]
    before = json.dumps(rows)
    assert task_means(rows) == {"text2image": {"main": 0.5, "n": 2}, "sound2text": {"main": 1.0, "n": 1}}
    assert json.dumps(rows) == before


def test_results_json_rows_keep_their_task_labels(tmp_path, monkeypatch):
    """The per-item rows of results.json name their direction (the table was built by popping the label)."""
    items = [Item("text2image", "image", [], {}), Item("image2text", "image", [], {})]
    monkeypatch.setattr(harness, "load_items", lambda corpus, n: items)
    monkeypatch.setattr(harness, "SamplingSession", lambda cfg: SimpleNamespace(codec=SimpleNamespace(media={})))
    drawn = np.zeros((8, 8, 3), np.uint8)
    scores = lambda session, items, prompts, recogniser, tokens: (  # noqa: E731
        [{"task": it.task, "main": 1.0, "exact": 1.0} for it in items],
        [{"task": it.task, "label": "draw it", "scored_as": "it", "score": 1.0} for it in items],
        [drawn if it.task == "text2image" else None for it in items],
    )
    monkeypatch.setattr(harness, "score_rows", scores)
    harness.evaluate(EvalConfig(references=[], out=str(tmp_path)))
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["task"] for r in results["rows"]["trained"]] == ["text2image", "image2text"]
    assert results["table"]["trained"]["image2text"] == {"main": 1.0, "exact": 1.0, "n": 1}
    assert results["table"]["trained"]["text2image"]["distinct"] == 1  # media directions count their drawings
    assert "distinct generated media (trained): text2image 1 of 1" in (tmp_path / "results.md").read_text()
    # the generated image is in the gallery, named by what was asked and made of it; the text answer is not
    assert results["gallery"]["sheets"] == {"text2image": "text2image.png"}
    assert [p.name for p in (tmp_path / "generated" / "text2image").iterdir()] == ["000-draw_it-as-it.png"]


def test_generated_audio_is_analysed_at_the_analysers_rate_and_kept_at_the_codecs(tmp_path):
    """A codec that decodes at 24 kHz (EnCodec): the melody analyser must hear the clip resampled to its 16 kHz
    (fed as it is, every note is a fifth lower and half as long again), and the gallery keeps the decode."""
    notes = ["C", "E", "G", "B"]
    at_24k = resample(dm.render_melody(notes, 0.3), SAMPLE_RATE, 24000)
    assert analyse("melody", at_24k)["notes"] != notes  # what the harness read before it resampled
    codec = SimpleNamespace(
        media={"audio": SimpleNamespace(kind="fake", sample_rate=24000)},
        decode=lambda ids: [Segment("audio", codes=np.zeros(4, np.int64), role="assistant")],
        render=lambda seg: at_24k,
    )
    session = SimpleNamespace(
        codec=codec,
        layout=SimpleNamespace(codebook=lambda m: SimpleNamespace(rate=50, layers_in_ids=1)),
        generate=lambda prompts, budgets: (
            [np.zeros(1, np.int64)] * len(prompts),
            [np.zeros(1, np.int64)] * len(prompts),
        ),
    )
    dm.save_wav(dm.render_melody(notes, 0.3), tmp_path / "ref.wav")
    answer = [Segment("audio", media=str(tmp_path / "ref.wav"), role="assistant")]
    item = Item("text2melody", "melody", [Segment("text", text="play C E G B", role="user")], {"notes": notes}, answer)
    rows, said, made = harness.score_rows(session, [item], [Prompt(item.prompt, "audio")], None, 8)
    assert rows[0]["main"] == 1.0 and said[0]["scored_as"] == "C E G B"
    assert made[0] is at_24k  # the gallery writes it at the codec's rate (media_rate)


@pytest.mark.parametrize(
    "keys, match",
    [({"per_direction": 0}, "per_direction: expected at least 1"), ({"references": ["blnd"]}, "references")],
)
def test_eval_keys_it_would_act_on_wrongly_are_refused_before_loading(tmp_path, keys, match):
    from omniseq.config import ConfigError

    with pytest.raises(ConfigError, match=match):
        harness.evaluate(EvalConfig(corpus=str(tmp_path / "none"), **keys))


def test_the_tokenizer_row_scores_each_items_own_media_after_the_round_trip(tmp_path):
    """The answer of text -> image and the question of image -> text go through the tokenizer and the analyser;
    a tokenizer that keeps the scene scores it right, one that loses it scores it wrong, and a file asked
    about in both directions is encoded once."""
    rng = np.random.default_rng(0)
    scene, objects = dm.render_scene(rng, 32, 1)
    dm.save_png(scene, tmp_path / "s.png")
    path = str(tmp_path / "s.png")
    image = Segment("image", media=path, role="user")
    items = [
        Item("text2image", "image", [Segment("text", text="draw it", role="user")], {"objects": objects},
             [Segment("image", media=path, role="assistant")]),
        Item("image2text", "image", [image, Segment("text", text="what is it?", role="user")], {"objects": objects}),
    ]  # fmt: skip
    encoded = []

    def session(decode):
        tok = SimpleNamespace(encode=lambda media: encoded.append(media) or np.asarray(media), decode=decode)
        return SimpleNamespace(codec=SimpleNamespace(media={"image": tok}))

    kept = harness.tokenizer_rows(session(lambda codes: np.asarray(Image.open(str(codes)).convert("RGB"))), items, None)
    assert [r["main"] for r in kept] == [1.0, 1.0] and encoded == [path]
    lost = harness.tokenizer_rows(session(lambda codes: np.zeros((32, 32, 3), np.uint8)), items, None)
    assert [r["main"] for r in lost] == [0.0, 0.0]


def test_an_audio_answer_may_run_a_quarter_longer_than_its_reference(tmp_path):
    """A 16-note melody of 0.3 s notes (4.8 s) got 3 seconds before, and its last notes were never heard."""
    layout = SimpleNamespace(codebook=lambda m: SimpleNamespace(rate=50, layers_in_ids=2))
    budgets = []
    for seconds in (1.2, 4.8):
        dm.save_wav(np.zeros(int(seconds * SAMPLE_RATE), np.float32), tmp_path / "ref.wav")
        answer = [Segment("audio", media=str(tmp_path / "ref.wav"), role="assistant")]
        item = Item("text2melody", "melody", [Segment("text", text="play", role="user")], {}, answer)
        budgets.append(harness.budget(item, layout, 8))
    assert budgets == [int((1.25 * s + 0.5) * 50 * 2) + 2 + 4 for s in (1.2, 4.8)]
    assert budgets[1] > 4.8 * 50 * 2  # the whole melody fits


def test_distinct_media_counts_different_answers_by_content():
    """Greedy decoding draws one image per request: equal arrays are one drawing, a missing span none."""
    a, b = np.zeros((4, 4, 3), np.uint8), np.ones((4, 4, 3), np.uint8)
    made = [a, a.copy(), b, None, np.zeros(48, np.uint8), np.zeros((4, 12), np.uint8)]
    tasks = ["text2image"] * 4 + ["text2sound"] * 2
    assert harness.distinct_media(tasks, made) == {"text2image": 2, "text2sound": 2}  # same bytes, other shape
