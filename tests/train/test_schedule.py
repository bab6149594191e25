"""The learning-rate schedule (omniseq/train/schedule.py) and that the trainer's steps run at it."""

from __future__ import annotations

import json
import math

import pytest
import torch

from omniseq.config import load_config
from omniseq.train.config import StageConfig
from omniseq.train.schedule import WarmupCosine, lr_factor

from .conftest import stage_yaml


def test_warmup_starts_at_step_one_and_the_cosine_ends_at_the_floor():
    factors = [lr_factor(k, total=6, warmup=2, floor=0.1) for k in range(1, 7)]
    assert factors[:2] == [0.5, 1.0]  # step 1 already moves the weights; step W is at the peak
    assert factors[-1] == pytest.approx(0.1)  # the last step at lr * min_lr_ratio
    assert all(a > b for a, b in zip(factors[1:], factors[2:]))
    assert factors[3] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 2 / 4)))


def test_without_warmup_step_one_runs_at_the_peak():
    assert lr_factor(1, total=10, warmup=0, floor=0.1) == 1.0
    assert lr_factor(10, total=10, warmup=0, floor=0.1) == pytest.approx(0.1)
    assert lr_factor(11, total=10, warmup=0, floor=0.1) == pytest.approx(0.1)  # past the end: the floor
    assert lr_factor(1, total=1, warmup=0, floor=0.1) == 1.0  # a one-step stage trains


def test_only_the_step_count_is_checkpointed_and_loading_sets_the_next_lr():
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = WarmupCosine(opt, total=6, warmup=2, floor=0.1)
    assert opt.param_groups[0]["lr"] == 0.5  # step 1's
    for _ in range(3):
        opt.step()
        sched.step()
    state = sched.state_dict()
    assert set(state) == {"last_epoch", "_step_count"}
    fresh_opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    fresh = WarmupCosine(fresh_opt, total=6, warmup=2, floor=0.1)
    fresh.load_state_dict(state)
    assert fresh_opt.param_groups[0]["lr"] == opt.param_groups[0]["lr"] == lr_factor(4, 6, 2, 0.1)
    fresh.reshape(total=4, warmup=1)  # a time budget's cut: step 4 becomes the last
    assert fresh_opt.param_groups[0]["lr"] == pytest.approx(0.1)


def lrs_used(trainer) -> list[float]:
    """Record the lr of every optimizer step (DeepSpeed's wrapper: ZeRO steps the torch optimizer once per
    parameter group), as the groups hold it when the update runs."""
    opt = trainer.engine.optimizer
    real, used = opt.step, []

    def step(*args, **kwargs):
        used.append(opt.param_groups[0]["lr"])
        return real(*args, **kwargs)

    opt.step = step
    return used


def logged(out_dir, key: str) -> dict[int, float]:
    rows = [json.loads(x) for x in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r[key] for r in rows if key in r}


def test_every_step_trains_at_the_schedule_and_logs_the_lr_it_used(train_world, tmp_path):
    from omniseq.train.trainer import Trainer

    cfg = load_config(StageConfig, stage_yaml(train_world, tmp_path / "s.yaml", optim={"warmup": 2}))
    t = Trainer(cfg)
    used = lrs_used(t)
    t.fit()
    expected = [cfg.optim.lr * lr_factor(k, 6, 2, cfg.optim.min_lr_ratio) for k in range(1, 7)]
    assert used == pytest.approx(expected, rel=1e-12)
    assert used[0] > 0 and max(used) == pytest.approx(cfg.optim.lr)  # step 1 trains; the peak is used
    assert list(logged(tmp_path / "s", "lr").values()) == used


@pytest.mark.parametrize(
    "keys",
    [{}, {"model": {"dropout": 0.1}, "data": {"options": {"num_workers": 1}}}],
    ids=["plain", "dropout-with-a-worker"],
)
def test_a_resumed_stage_repeats_the_losses_and_lrs_bit_for_bit(train_world, tmp_path, keys):
    """With dropout and a DataLoader worker too: the worker's base seed must not come from torch's global
    generator, or the resumed run's dropout masks shift (the review found step 3 at 5.716 against 5.706)."""
    from omniseq.train.trainer import Trainer

    yaml = stage_yaml(train_world, tmp_path / "s.yaml", optim={"warmup": 2}, save_every=100, **keys)
    Trainer(load_config(StageConfig, yaml, [f"out_dir={tmp_path / 'straight'}"])).fit()
    resumed = load_config(StageConfig, yaml, [f"out_dir={tmp_path / 'resumed'}"])
    first = Trainer(resumed)
    for _ in range(2):
        first.train_step()
    first.save()  # stopped after step 2
    second = Trainer(resumed)
    assert second.step == 2
    second.fit()
    for key in ("train/loss", "lr"):
        straight, again = logged(tmp_path / "straight", key), logged(tmp_path / "resumed", key)
        assert {s: v for s, v in straight.items() if s > 2} == again, key


def test_a_resumed_stage_trains_with_its_configs_optimizer_settings(train_world, tmp_path):
    """DeepSpeed restores the optimizer after the scheduler, and with it the saved groups' lr, decay, betas and
    eps: a resume with a lower lr and other AdamW settings must use the new ones from its first step."""
    from omniseq.train.trainer import Trainer

    yaml = stage_yaml(train_world, tmp_path / "s.yaml", optim={"warmup": 0, "lr": 3e-3}, save_every=100)
    first = Trainer(load_config(StageConfig, yaml, [f"out_dir={tmp_path / 'r'}"]))
    for _ in range(2):
        first.train_step()
    first.save()
    changed = ["optim.lr=1e-4", "optim.weight_decay=0.0", "optim.beta2=0.5", "optim.eps=1e-6"]
    cfg = load_config(StageConfig, yaml, [f"out_dir={tmp_path / 'r'}", *changed])
    second = Trainer(cfg)
    groups = second.engine.optimizer.param_groups
    assert [(g["weight_decay"], g["betas"], g["eps"]) for g in groups] == [(0.0, (0.9, 0.5), 1e-6)] * 2
    used = lrs_used(second)
    second.fit()
    expected = [1e-4 * lr_factor(k, 6, 0, cfg.optim.min_lr_ratio) for k in range(3, 7)]
    assert used == pytest.approx(expected, rel=1e-12)


def test_a_resume_past_the_configs_steps_is_refused(train_world, tmp_path):
    from omniseq.config import ConfigError
    from omniseq.train.trainer import Trainer

    yaml = stage_yaml(train_world, tmp_path / "s.yaml", save_every=100)
    first = Trainer(load_config(StageConfig, yaml, [f"out_dir={tmp_path / 'r'}"]))
    for _ in range(4):
        first.train_step()
    first.save()
    with pytest.raises(ConfigError, match="key 'steps': 2, but .* has trained 4"):
        Trainer(load_config(StageConfig, yaml, [f"out_dir={tmp_path / 'r'}", "steps=2"]))


def test_a_checkpoint_of_deepspeeds_old_scheduler_is_refused_with_advice():
    import pytest
    import torch

    from omniseq.config import ConfigError
    from omniseq.train.schedule import WarmupCosine

    schedule = WarmupCosine(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0), 10, 2, 0.1)
    with pytest.raises(ConfigError, match="new out_dir"):
        schedule.load_state_dict({"last_batch_iteration": 4})
