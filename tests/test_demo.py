"""`make demo` end to end at smoke-test size: every step runs and leaves what the next one needs.

This is the CI smoke test of issue 9 (a few tens of seconds), not the quality gate: the micro scale trains
a tiny model for a few steps, so its scores are at chance. The quality run is `make demo` (docs/benchmarks.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from omniseq.recipe import STEPS

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_micro_demo_runs_every_step(tmp_path):
    out = tmp_path / "demo"
    # not the rendezvous variables of a process group this test process may hold (tests/train run trainers
    # in-process): the demo's trainers must pick their own free port
    dist_keys = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")
    env = {k: v for k, v in os.environ.items() if k not in dist_keys}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    res = subprocess.run([sys.executable, "-m", "omniseq.recipe", "--scale", "micro", "--out", str(out)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert sorted(p.name for p in (out / ".done").iterdir() if p.suffix != ".json") == sorted(STEPS)
    assert "demo recipe finished" in res.stdout and all(f"  {s}" in res.stdout for s in STEPS)
    for stage in ("stage1", "stage2", "stage3", "sft"):
        assert (out / stage / "export" / "model.safetensors").is_file()
        assert (out / stage / "loss_curves.png").is_file()
    manifest = json.loads((out / "samples" / "manifest.json").read_text())
    assert manifest["rows"] and all(r["error"] is None for r in manifest["rows"])
    made = [p for r in manifest["rows"] for p in r["pieces"] if p["generated"] and p["modality"] != "text"]
    assert made and all(Path(out / "samples" / Path(p["file"]).name).is_file() for p in made)
    assert (out / "samples" / "index.html").is_file()
    results = json.loads((out / "eval" / "results.json").read_text())
    assert list(results["table"]) == ["trained", "blind", "random", "tokenizer"]
    assert {"text2image", "image2text", "text2melody", "melody2text"} <= set(results["table"]["trained"])
    # a second run finds every step done and redoes nothing
    again = subprocess.run([sys.executable, "-m", "omniseq.recipe", "--scale", "micro", "--out", str(out)],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert again.returncode == 0 and again.stdout.count("(done before)") == len(STEPS)
    # other settings would reuse stale results: refused, naming the key and the step to redo
    cmd = [sys.executable, "-m", "omniseq.recipe", "--scale", "micro", "--out", str(out), "text_vocab=300"]
    other = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert (
        other.returncode != 0
        and "text_vocab: 400 then, 300 now" in other.stderr
        and "--redo tokenizers" in other.stderr
    )


def test_a_stages_own_overrides_leave_the_stages_before_it_valid(tmp_path):
    from omniseq.config import ConfigError, load_config
    from omniseq.recipe import RecipeConfig, check_step_inputs, step_inputs

    before = load_config(RecipeConfig, None, [])
    for step in ("stage1", "stage3", "sft"):
        (tmp_path / f"{step}.inputs.json").write_text(json.dumps(step_inputs(before, step)))
    now = load_config(RecipeConfig, None, ["per_stage={sft: [steps=5]}"])
    check_step_inputs(now, tmp_path, "stage1")
    check_step_inputs(now, tmp_path, "stage3")
    with pytest.raises(ConfigError, match="--redo sft"):
        check_step_inputs(now, tmp_path, "sft")


def test_a_stopped_stage_does_not_resume_with_other_settings(tmp_path):
    """The record is written when a step starts: a stage stopped midway (its checkpoints on disk, no done
    marker) and rerun with another per_stage entry is refused before it resumes those checkpoints."""
    from omniseq.config import ConfigError, load_config
    from omniseq.recipe import STEPS, RecipeConfig, main, step_inputs

    out = tmp_path / "run"
    done = out / ".done"
    done.mkdir(parents=True)
    cfg = load_config(RecipeConfig, None, [f"out={out}"])
    for step in STEPS[: STEPS.index("stage1") + 1]:
        (done / f"{step}.inputs.json").write_text(json.dumps(step_inputs(cfg, step)))
        if step != "stage1":
            (done / step).write_text("done\n")
    with pytest.raises(ConfigError, match=r"step 'stage1' was started \(not finished\) with other settings.*--redo"):
        main(["--out", str(out), "--until", "stage1", "per_stage={stage1: [steps=5]}"])


def test_an_edited_config_file_is_refused_from_the_first_step_that_reads_it(tmp_path):
    """The tokenizer, shard and stage YAMLs a recipe names are recorded by their settings: a changed value
    refuses the done steps from the first one that reads the file, a changed comment does not."""
    from omniseq.config import ConfigError, load_config
    from omniseq.recipe import SHARD_SETS, RecipeConfig, check_step_inputs, step_inputs

    for name in SHARD_SETS:  # the demo's shard configs, each on its own base in the checkout
        (tmp_path / f"{name}.yaml").write_text(f"base: {REPO / 'configs' / 'data' / f'demo_{name}.yaml'}\n")
    image = tmp_path / "image.yaml"
    image.write_text(f"base: {REPO / 'configs' / 'tokenizers' / 'image_demo.yaml'}\nsteps: 10\n")
    cfg = load_config(RecipeConfig, None, [f"shard_configs={tmp_path}/{{name}}.yaml", f"image_tokenizer={image}"])
    done = tmp_path / "done"
    done.mkdir()
    for step in ("tokenizers", "vocab", "stage1"):
        (done / f"{step}.inputs.json").write_text(json.dumps(step_inputs(cfg, step)))

    image.write_text("# a comment changes no setting\n" + image.read_text())
    check_step_inputs(cfg, done, "stage1")
    (tmp_path / "sft.yaml").write_text((tmp_path / "sft.yaml").read_text() + "samples_per_shard: 200\n")
    check_step_inputs(cfg, done, "vocab")  # the shard sets come after it
    with pytest.raises(ConfigError, match=r"sft.yaml: its settings changed.*--redo shards"):
        check_step_inputs(cfg, done, "stage1")
    image.write_text(image.read_text().replace("steps: 10", "steps: 11"))
    with pytest.raises(ConfigError, match=r"image.yaml: its settings changed.*--redo tokenizers"):
        check_step_inputs(cfg, done, "tokenizers")
    record = json.loads((done / "tokenizers.inputs.json").read_text())
    del record["files"]  # a record made before the files were kept: its keys are still checked, no files
    (done / "tokenizers.inputs.json").write_text(json.dumps(record))
    check_step_inputs(cfg, done, "tokenizers")


def test_every_recipe_key_names_the_first_step_it_changes():
    from dataclasses import fields

    from omniseq.recipe import FIRST_STEP, RecipeConfig

    assert set(FIRST_STEP) == {f.name for f in fields(RecipeConfig)} - {"out", "data"}
    assert set(FIRST_STEP.values()) <= set(STEPS)


def test_sample_overrides_set_the_sampling_of_the_samples_and_eval_steps(tmp_path):
    from omniseq.config import ConfigError, load_config
    from omniseq.recipe import Recipe, RecipeConfig

    demo = Recipe(load_config(RecipeConfig, None, [f"out={tmp_path}"]))._sample_config()
    assert demo.dtype == "auto" and demo.generate.sampling.image.temperature == 0  # bf16 where native
    assert demo.generate.sampling.guidance.image == 1.0
    assert demo.generate.sampling.text.temperature == 0.7  # text keeps the peers' default
    own = ["sample_overrides=[generate.sampling.audio.top_p=0.5]", f"out={tmp_path}"]
    cfg = Recipe(load_config(RecipeConfig, None, own))._sample_config()
    assert cfg.dtype == "auto" and cfg.generate.sampling.audio.top_p == 0.5
    with pytest.raises(ConfigError, match="temprature"):
        Recipe(
            load_config(RecipeConfig, None, ["sample_overrides=[generate.sampling.image.temprature=0]"])
        )._sample_config()


@pytest.mark.parametrize("recipe", [None, *sorted((REPO / "configs" / "recipes").glob("*.yaml"))],
                         ids=lambda p: "demo" if p is None else p.stem)  # fmt: skip
def test_shipped_recipes_load_with_every_override_valid(recipe):
    """Each recipe (the files and the default demo), and the key=value lists it hands to the corpus,
    tokenizer, stage, sampling and eval configs, load against their schemas: a typo fails here, not
    minutes into a GPU run."""
    from omniseq.config import load_config
    from omniseq.data.demo_corpus import DemoConfig
    from omniseq.data.real_corpus import RealCorpusConfig
    from omniseq.eval.harness import EvalConfig
    from omniseq.eval.real import RealEvalConfig
    from omniseq.recipe import STAGES, RecipeConfig
    from omniseq.sample.run import SampleConfig
    from omniseq.tokenizers.audio_train import AudioTrainConfig
    from omniseq.tokenizers.image_train import ImageTrainConfig
    from omniseq.train.config import StageConfig

    cfg = load_config(RecipeConfig, recipe)
    real = cfg.world == "real"
    load_config(RealCorpusConfig if real else DemoConfig, None, cfg.corpus_overrides)
    load_config(SampleConfig, None, cfg.sample_overrides)
    load_config(RealEvalConfig if real else EvalConfig, None, cfg.eval_overrides)
    load_config(ImageTrainConfig, REPO / cfg.image_tokenizer, cfg.image_overrides)
    load_config(AudioTrainConfig, REPO / cfg.audio_tokenizer, cfg.audio_overrides)
    for step, name in STAGES.items():
        stage = [*cfg.stage_overrides, *cfg.per_stage.get(step, [])]
        load_config(StageConfig, REPO / f"configs/stages/{name}.yaml", ["root=runs/x", *stage])


def test_train_minutes_are_split_by_planned_tokens_and_a_negative_budget_is_refused(tmp_path):
    from omniseq.config import ConfigError, load_config
    from omniseq.recipe import STAGES, Recipe, RecipeConfig, main

    steps = {"stage1": 300, "stage2": 100, "stage3": 100, "sft": 500}
    per_stage = ", ".join(f"{s}: [steps={n}]" for s, n in steps.items())
    recipe = Recipe(load_config(RecipeConfig, None, [f"out={tmp_path}", "train_minutes=10",
                                                     f"per_stage={{{per_stage}}}"]))  # fmt: skip
    minutes = {s: recipe.stage_minutes(s) for s in STAGES}
    assert sum(minutes.values()) == pytest.approx(10)
    assert minutes["stage1"] == pytest.approx(3) and minutes["sft"] == pytest.approx(5)  # same batch x seq_len
    recipe.pending = {"sft", "samples", "eval"}  # a rerun from sft: its stage gets the whole budget
    assert recipe.stage_minutes("sft") == pytest.approx(10)
    with pytest.raises(ConfigError, match="train_minutes"):
        main([f"--out={tmp_path}", "train_minutes=-1"])


@pytest.mark.slow
def test_reproducible_runs_in_two_folders_train_the_same_weights(tmp_path):
    """`reproducible=true` counts every budget in steps: an image tokenizer capped at a fraction of a second
    still trains all its steps, and two runs in different folders end with identical tokenizers and stage-1
    weights (before, the codec's held-out split hashed the run folder, and clocks decided step counts)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    outs = [tmp_path / "a", tmp_path / "elsewhere" / "b"]
    for out in outs:
        res = subprocess.run([sys.executable, "-m", "omniseq.recipe", "--scale", "micro", "--out", str(out),
                              "--until", "stage1", "reproducible=true",
                              "image_overrides=[steps=4, max_minutes=0.00001, holdout=4]"],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        assert json.loads((out / "tokenizers/image_training/metrics.json").read_text())["steps"] == 4
    for f in ("tokenizers/image/weights.safetensors", "tokenizers/audio/weights.safetensors",
              "vocab/manifest.json", "stage1/export/model.safetensors"):  # fmt: skip
        assert (outs[0] / f).read_bytes() == (outs[1] / f).read_bytes(), f


@pytest.mark.parametrize(
    "recipe, override, match",
    [
        ("configs/recipes/real_small_cpu.yaml", "eval_per_direction=0", "per_direction: expected at least 1"),
        ("configs/recipes/real_small_cpu.yaml", "eval_overrides=[references=[blind]]", "references"),
        (None, "eval_overrides=[per_directoin=3]", "per_directoin"),
    ],
)
def test_bad_eval_keys_are_refused_before_the_first_step(tmp_path, recipe, override, match):
    from omniseq.config import ConfigError
    from omniseq.recipe import main

    args = [*(["--config", str(REPO / recipe)] if recipe else []), "--out", str(tmp_path / "run"), override]
    with pytest.raises(ConfigError, match=match):
        main(args)
    assert not (tmp_path / "run" / "corpus").exists()  # nothing ran


def test_a_batch_size_in_sample_overrides_reaches_the_eval_step():
    from omniseq.config import load_config
    from omniseq.recipe import Recipe, RecipeConfig

    plain = Recipe(load_config(RecipeConfig, None, []))
    assert plain.eval_config().sample.batch_size == 16  # the eval's own default
    mine = Recipe(load_config(RecipeConfig, None, ["sample_overrides=[batch_size=4]"]))
    assert mine.eval_config().sample.batch_size == 4


@pytest.mark.parametrize("marked", [True, False])
def test_a_step_that_exits_1_is_a_stop_only_when_its_stage_says_it_stopped(tmp_path, marked):
    """torchrun exits 1 when SIGTERM stopped its ranks: with the stage's stopped.json the recipe says "stopped
    ... rerun to resume", without it "failed"."""
    from omniseq.recipe import run

    marker = tmp_path / "stopped.json"
    if marked:
        marker.write_text('{"step": 3}\n')
    with pytest.raises(SystemExit) as e:
        run([sys.executable, "-c", "raise SystemExit(1)"], stopped=marker)
    assert ("stopped by SIGTERM" in str(e.value.code)) == marked
    assert ("failed" in str(e.value.code)) != marked


def test_a_missing_image_source_is_named_before_any_tokenizer_trains(tmp_path):
    """A corpus built before the split folders keeps its scenes in media/image: the tokenizers step names the
    missing media/image/train and the fix, instead of training the VQ on nothing ("sources is empty")."""
    from omniseq.config import ConfigError
    from omniseq.recipe import Recipe, RecipeConfig

    (tmp_path / "corpus" / "media" / "image").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"image_sources: .*media/image/train.* not found; rebuild the corpus"):
        Recipe(RecipeConfig(out=str(tmp_path))).tokenizers()
    assert not (tmp_path / "tokenizers" / "text").exists()
