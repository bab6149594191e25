"""The real-media recipe (`make real-cpu`) end to end at smoke-test size on ../shared/data (issue 10).

A few items per set, 4-step tokenizers, a tiny model trained 3 steps per stage and one-epoch scorers: every
step runs and the table has every task and reference row. The quality run is `make real-cpu`
(docs/benchmarks.md); the scorers' accuracy is tests/eval/test_real_scorers.py's job.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from omniseq.config import ConfigError
from omniseq.eval.gallery import item_name
from omniseq.eval.real import RealEvalConfig, evaluate, real_sample_config
from omniseq.recipe import STEPS

REPO = Path(__file__).resolve().parents[1]
CAPS = {"mnist": (40, 10), "fsdd": (40, 10), "esc10": (20, 10), "emoji": (40, 10), "animated_emoji": (10, 5),
        "ljspeech": (2, 2)}  # fmt: skip
TASKS = {"digit_image2text", "text2digit_image", "digit_speech2text", "text2digit_speech", "digit_speech2digit_image",
         "sound2text", "text2sound", "emoji2text", "emoji_video2text"}  # fmt: skip


@pytest.mark.slow
def test_micro_real_recipe_runs_every_step_and_its_table_reruns_for_chosen_tasks(tmp_path, shared_data):
    out = tmp_path / "real"
    caps = ",".join(f"caps.{k}_{s}={n}" for k, (tr, ev) in CAPS.items() for s, n in (("train", tr), ("eval", ev)))
    stages = [f"per_stage.{s}=[steps=3]" for s in ("stage1", "stage2", "stage3", "sft")]
    cmd = [sys.executable, "-m", "omniseq.recipe", "--config", "configs/recipes/real_small_cpu.yaml", "--out", str(out),
           f"data={shared_data}", f"corpus_overrides=[{caps}]", "text_vocab=500",
           "image_overrides=[steps=4,max_minutes=0,holdout=4]", "audio_overrides=[steps=4,max_minutes=0]",
           "stage_overrides=[log_every=1,model_size=tiny,data.seq_len=256,data.batch_size=2,eval_batches=1,compile=false]",
           *stages,
           "eval_per_direction=2", 'eval_overrides=["scorer_overrides=[epochs=1,limit=200]"]', "nproc=1"]  # fmt: skip
    dist_keys = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")
    env = {k: v for k, v in os.environ.items() if k not in dist_keys}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert sorted(p.name for p in (out / ".done").iterdir() if p.suffix != ".json") == sorted(STEPS)
    assert "real recipe finished" in res.stdout
    manifest = json.loads((out / "samples" / "manifest.json").read_text())
    assert len(manifest["rows"]) == 6 and all(r["error"] is None for r in manifest["rows"])
    results = json.loads((out / "eval" / "results.json").read_text())
    assert set(results["table"]) == {"trained", "specialist", "tokenizer", "random", "chance"}
    assert TASKS <= set(results["table"]["trained"]) | set(results.get("skipped_too_long", {}))
    assert set(results["scorers"]) == {"digit_image", "digit_speech", "sound"}
    # every scored item's answer is kept: its text, and for generated media the scorer's label
    assert len(results["answers"]) == sum(row["n"] for row in results["table"]["trained"].values())
    media = [a for a in results["answers"] if not a["task"].endswith("2text")]
    assert media and all(a["score"] == float(a["scored_as"] == a["label"]) for a in media)
    # and every generated image or clip is on disk, named by its answer's index, asked label and scorer's label,
    # with a contact sheet a task
    gallery, generated = results["gallery"], out / "eval" / "generated"
    assert set(gallery["sheets"]) == {a["task"] for a in media} and gallery["errors"] == []
    for task, sheet in gallery["sheets"].items():
        made = {item_name(i, a) for i, a in enumerate(results["answers"]) if a["task"] == task and a["scored_as"]}
        assert (generated / sheet).is_file() and {f.stem for f in (generated / task).glob("*")} == made
        assert len(made) + gallery["no_span"].get(task, 0) == results["table"]["trained"][task]["n"]
    # the corpus never pairs eval items into training files
    train_ids = {json.loads(ln)["meta"]["id"] for ln in (out / "corpus" / "sft.train.jsonl").read_text().splitlines()}
    eval_ids = {json.loads(ln)["meta"]["id"] for ln in (out / "corpus" / "sft.eval.jsonl").read_text().splitlines()}
    assert not train_ids & eval_ids
    assert "| p (trained by chance) |" in (out / "eval" / "results.md").read_text()

    # a few tasks only (a sampling sweep); a task the corpus lacks is an error naming the ones it has
    only = RealEvalConfig(corpus=str(out / "corpus"), data=str(shared_data), scorers=str(out / "scorers"),
                          out=str(tmp_path / "only"), per_direction=2, references=[],
                          tasks=["digit_speech2digit_image"], scorer_overrides=["epochs=1", "limit=200"],
                          sample=real_sample_config(str(out)))  # fmt: skip
    assert set(evaluate(only)["table"]["trained"]) == {"digit_speech2digit_image"}
    only.tasks = ["speech2image"]
    with pytest.raises(ConfigError, match=r"tasks: \['speech2image'\] not in .*digit_speech2digit_image"):
        evaluate(only)


def test_a_corpus_without_a_source_drops_that_sources_codec_weight(tmp_path):
    """The real codec weighs its three sources 3:1:2 (audio_spec_real.yaml); a corpus built from some sets lacks
    a source file, and the weights passed to the trainer must pair with the sources that remain."""
    from omniseq.recipe import Recipe

    digits, speech, sound = (tmp_path / f"{n}.train.jsonl" for n in ("digit_speech", "speech", "sound"))
    digits.write_text("")
    sound.write_text("")
    config = "configs/tokenizers/audio_spec_real.yaml"
    out = Recipe._kept_source_weights("audio", config, [digits, speech, sound], ["steps=4"])
    assert out == ["steps=4", "source_weights=[3.0,2.0]"]
    assert Recipe._kept_source_weights("audio", config, [digits, sound], ["steps=4"]) == ["steps=4"]  # all there
    # three weights for two sources: left for the trainer to reject by name
    assert Recipe._kept_source_weights("audio", config, [digits, speech], ["steps=4"]) == ["steps=4"]
    assert Recipe._kept_source_weights("image", config, [digits, speech], []) == []
