"""The demo harness (omniseq.eval.harness): what results.json keeps."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np

import omniseq.eval.harness as harness
from omniseq.eval.harness import EvalConfig, Item, task_means


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
    # the generated image is in the gallery, named by what was asked and made of it; the text answer is not
    assert results["gallery"]["sheets"] == {"text2image": "text2image.png"}
    assert [p.name for p in (tmp_path / "generated" / "text2image").iterdir()] == ["000-draw_it-as-it.png"]
