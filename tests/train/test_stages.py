"""Multi-process DeepSpeed runs (gloo, 2 CPU processes): the stage chain under ZeRO-2 and ZeRO-3, and
resume equivalence after SIGKILL."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import time

import pytest

from omniseq.train.checkpoint import load_export

from .conftest import REPO, launch, losses, stage_yaml

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("zero", [2, 3])
def test_stage_chain_two_processes(train_world, tmp_path, zero):
    ds = str(REPO / f"configs/deepspeed/zero{zero}.json")
    s1 = stage_yaml(train_world, tmp_path / "stage1.yaml", deepspeed=ds, steps=4)
    launch(s1, nproc=2)
    export1 = tmp_path / "stage1" / "export"
    sft = stage_yaml(train_world, tmp_path / "sft.yaml", deepspeed=ds, steps=4, init_from=str(export1),
                     data={"sources": [{"path": train_world["sft"], "share": 1.0}],
                           "options": {"cond_dropout": 0.1}})  # fmt: skip
    launch(sft, nproc=2)
    result = json.loads((tmp_path / "sft" / "result.json").read_text())
    assert math.isfinite(result["train/loss"])
    model, layout = load_export(tmp_path / "sft" / "export", train_world["layout"])
    assert layout.hash == train_world["layout"].hash and model.cfg.vocab_size == layout.size
    first, last = losses(tmp_path / "stage1")[1], losses(tmp_path / "sft")[4]
    assert last < first  # the chain learns: SFT ends below where stage 1 began


def test_resume_after_sigkill_gives_the_same_losses(train_world, tmp_path):
    steps = 30  # long enough that the kill below lands mid-stage even on a fast, idle machine
    cfg = stage_yaml(train_world, tmp_path / "run.yaml", steps=steps, save_every=2)
    launch(cfg, nproc=2, overrides=(f"out_dir={tmp_path / 'straight'}",))
    killed = tmp_path / "killed"
    proc = launch(cfg, nproc=2, overrides=(f"out_dir={killed}",), stdout=subprocess.DEVNULL,
                  stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    deadline = time.time() + 300
    while time.time() < deadline and 5 not in (losses(killed) if (killed / "metrics.jsonl").exists() else {}):
        time.sleep(0.05)
    import os

    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks, mid-stage
    proc.wait()
    latest = int((killed / "checkpoints" / "latest").read_text().strip().removeprefix("step"))
    assert 4 <= latest < steps  # killed mid-stage, after at least one complete checkpoint
    res = launch(cfg, nproc=2, overrides=(f"out_dir={killed}",))
    assert "resumed from" in res.stdout + res.stderr
    straight, resumed = losses(tmp_path / "straight"), losses(killed)
    assert sorted(resumed) == sorted(straight) == list(range(1, steps + 1))
    for step in straight:
        assert resumed[step] == pytest.approx(straight[step], abs=1e-5), step


def test_time_budget_shortens_the_schedule_on_every_rank(train_world, tmp_path):
    """max_minutes far below what 200 steps take: the stage fits its steps after FIT_AFTER of them, both
    ranks stop at the same step, and the rescaled cosine still ends at min_lr. Run again, it resumes from
    the last checkpoint on the fitted schedule: done, where the planned 200 steps would train on."""
    from omniseq.train.budget import FIT_AFTER

    cfg = stage_yaml(train_world, tmp_path / "run.yaml", steps=200, max_minutes=0.001, log_every=1)
    res = launch(cfg, nproc=2)
    assert "steps fit; schedule rescaled" in res.stdout + res.stderr
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert (result["steps"], result["planned_steps"]) == (FIT_AFTER + 1, 200)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in rows if "lr" in r]
    assert len(lrs) == FIT_AFTER + 1
    assert lrs[-1] == pytest.approx(3e-3 * 0.1, rel=1e-3)  # stage_yaml's lr x the default min_lr_ratio
    assert max(lrs) > lrs[-1]  # it decayed there, from its peak
    again = launch(cfg, nproc=2)
    assert f"at step {FIT_AFTER + 1}" in again.stdout + again.stderr  # "resumed from ... at step 11"
    assert json.loads((tmp_path / "run" / "result.json").read_text())["steps"] == FIT_AFTER + 1


def test_sigterm_to_the_launcher_stops_both_ranks_at_one_checkpoint_and_a_rerun_resumes(train_world, tmp_path):
    """A preemption as a scheduler sends it: SIGTERM to torchrun, which passes it to both ranks. They finish the
    step, write one checkpoint together and say so (each rank then exits 143, and torchrun itself 1: its
    SignalException). The checkpoint is complete, nothing is exported, stopped.json names the step for the
    recipe, and a rerun resumes there, finishes the stage and removes stopped.json."""
    from omniseq.train.config import STOPPED_FILE

    steps = 40
    cfg = stage_yaml(train_world, tmp_path / "run.yaml", steps=steps, save_every=1000, log_every=1)
    out = tmp_path / "run"
    with (tmp_path / "launcher.log").open("w") as sink:  # a file, not a pipe nobody reads while it trains
        proc = launch(cfg, nproc=2, stdout=sink, stderr=subprocess.STDOUT)
        deadline = time.time() + 300
        while time.time() < deadline and 3 not in (losses(out) if (out / "metrics.jsonl").exists() else {}):
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=300)
    log = (tmp_path / "launcher.log").read_text()
    assert proc.returncode != 0, log[-3000:]  # `make stage1 && make stage2` stops here
    stopped = int((out / "checkpoints" / "latest").read_text().strip().removeprefix("step"))
    assert 3 <= stopped < steps and not (out / "export").exists(), log[-3000:]
    assert log.count(f"stopped by SIGTERM at step {stopped} (checkpointed)") == 2  # both ranks, the same step
    assert (out / "checkpoints" / f"step{stopped:08d}" / "COMPLETE").exists()
    assert json.loads((out / STOPPED_FILE).read_text()) == {"step": stopped}
    res = launch(cfg, nproc=2)
    assert f"at step {stopped}" in res.stdout + res.stderr
    assert json.loads((out / "result.json").read_text())["steps"] == steps and (out / "export").is_dir()
    assert not (out / STOPPED_FILE).exists()
