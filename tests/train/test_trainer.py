"""Trainer behaviour in one process: errors before compute, NaN handling, SFT masking, condition dropout."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from omniseq.config import ConfigError, load_config
from omniseq.data.cond_dropout import CondDropout, condition_span
from omniseq.data.loader import DataConfig, SourceConfig, stream_from_config
from omniseq.data.shardset import Doc
from omniseq.model.config import model_config
from omniseq.model.transformer import Transformer
from omniseq.train import checkpoint as ckpt
from omniseq.train.config import StageConfig
from omniseq.train.trainer import build_model, check_inputs
from omniseq.vocab import VocabMismatchError

from .conftest import stage_yaml


def load(world, tmp_path, *overrides, **keys) -> StageConfig:
    return load_config(StageConfig, stage_yaml(world, tmp_path / "s.yaml", **keys), overrides)


@pytest.mark.parametrize(
    "overrides, error, match",
    [
        (("stepz=3",), ConfigError, "stepz"),
        (("data.sources=[{path: /no/such/shards}]",), ConfigError, r"data.sources\[0\].path"),
        (("init_from=/no/such/export",), ConfigError, "init_from"),
        (("vocab=/no/such/manifest.json",), ConfigError, "vocab"),
        (("loss_weights={smell: 1.0}",), ConfigError, "loss_weights"),
        (("model_size=huge",), ConfigError, "model_size"),
        (("data.options.cond_dropout=1.5",), ConfigError, "cond_dropout"),
        (("model={dropout: 1.5}",), ConfigError, "dropout"),
    ],
)
def test_bad_stage_configs_fail_before_compute(train_world, tmp_path, overrides, error, match):
    with pytest.raises(error, match=match):
        check_inputs(load(train_world, tmp_path, *overrides))


def test_a_stage_loading_an_export_switches_dropout_on(train_world, tmp_path):
    layout = train_world["layout"]
    start = Transformer.build(model_config("tiny", layout.size))
    export = ckpt.export(start.state_dict(), start.cfg, tmp_path / "export", layout, {})
    model = build_model(load(train_world, tmp_path, f"init_from={export}", "model={dropout: 0.5}"), layout)
    assert model.cfg.dropout == 0.5
    ids = torch.randint(0, layout.size, (2, 16))
    with torch.no_grad():
        assert not torch.equal(model.train()(ids), model(ids))  # masks drawn: the override took effect
        torch.testing.assert_close(model.eval()(ids), start(ids), rtol=0, atol=0)
    with pytest.raises(ConfigError, match=r"model.n_layers.*trained with 2"):
        check_inputs(load(train_world, tmp_path, f"init_from={export}", "model={n_layers: 3}"))


def test_vocab_mismatch_between_shards_and_stage_is_refused(train_world, tmp_path):
    other = train_world["layout"].manifest()
    other["codebooks"]["image"]["fingerprint"] = "another tokenizer"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "manifest.json").write_text(json.dumps(other))
    cfg = load(train_world, tmp_path, f"vocab={tmp_path / 'other' / 'manifest.json'}")
    with pytest.raises(VocabMismatchError, match="shard set"):
        check_inputs(cfg)


def test_sft_batches_supervise_only_the_assistant(train_world):
    layout = train_world["layout"]
    stream = iter(stream_from_config(DataConfig([SourceConfig(train_world["sft"])], seq_len=64, batch_size=4),
                                     0, 1, layout))  # fmt: skip
    lo, hi = layout.code_range("image")
    structure = torch.tensor([layout.id(t) for t in ("<|image|>", "<|row_end|>", "<|/image|>", "<|end|>")])
    for _ in range(5):
        batch = next(stream)
        labels = batch["labels"][batch["labels"] != -100]
        # the assistant's turn is an image span and its <|end|>: the user's words are never targets
        assert (((labels >= lo) & (labels < hi)) | torch.isin(labels, structure)).all()
        assert ((labels >= lo) & (labels < hi)).sum() > 0 and (labels < layout.text.size).sum() == 0


def test_condition_dropout_rate_and_shape(train_world):
    layout = train_world["layout"]
    drop = CondDropout.from_layout(layout, p=0.1, seed=3)
    rate = np.mean([drop.chosen(0, i) for i in range(20000)])
    assert abs(rate - 0.1) < 0.01  # 3 sigma of a binomial(20000, 0.1) is 0.0064
    ids = layout.special_ids
    img = layout.media_ids("image", np.zeros((2, 3), int))
    chat = np.array([ids["<bos>"], ids["<|user|>"], 5, 6, 7, ids["<|end|>"], ids["<|assistant|>"], *img,
                     ids["<|end|>"], ids["<eos>"]])  # fmt: skip
    spans = np.array([[7, 7 + len(img)]])
    doc = Doc(chat, np.zeros(len(chat), np.int8), None, spans)
    assert condition_span(doc, drop) == (2, 5)
    always = dataclasses.replace(drop, p=0.999999)
    out = always.apply(doc, 0, 0)
    assert out.ids[:4].tolist() == [ids["<bos>"], ids["<|user|>"], ids["<|uncond|>"], ids["<|end|>"]]
    assert out.loss[2] == 0 and out.media_spans.tolist() == [[5, 5 + len(img)]]
    assert (out.ids[5 : 5 + len(img)] == img).all()
    pair = np.array([ids["<bos>"], 5, 6, *img, ids["<eos>"]])  # caption -> image
    doc = Doc(pair, np.zeros(len(pair), np.int8), None, np.array([[3, 3 + len(img)]]))
    assert always.apply(doc, 0, 0).ids[:3].tolist() == [ids["<bos>"], ids["<|uncond|>"], img[0]]


def fit_with_poisoned_batches(cfg: StageConfig, poisoned: set[int]):
    """Run the trainer in this process with the loss of the given micro-batch calls (1-based) set to NaN.
    The single-process group stays up for later tests: DeepSpeed keeps its groups for the process's life."""
    from omniseq.train import trainer as tr

    t = tr.Trainer(cfg)
    real, calls = t.engine.module.forward, [0]

    def flaky(**batch):
        out = real(**batch)
        calls[0] += 1
        if calls[0] in poisoned:
            out["loss"] = out["loss"] * float("nan")
        return out

    t.engine.module.forward = flaky
    return t, t.fit()


def test_non_finite_losses_are_skipped_and_counted(train_world, tmp_path):
    cfg = load(train_world, tmp_path, "steps=3", "max_bad_steps=2", "deepspeed=configs/deepspeed/zero1.json")
    t, result = fit_with_poisoned_batches(cfg, {2, 3})
    assert t.step == 3 and t.bad_steps == 2 and np.isfinite(result["train/loss"])
    rows = [json.loads(x) for x in (tmp_path / "s" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["bad_steps"] == 2


def test_too_many_non_finite_losses_stop_the_run(train_world, tmp_path):
    from omniseq.train.trainer import TooManyBadSteps

    cfg = load(train_world, tmp_path, "steps=3", "max_bad_steps=1", "deepspeed=configs/deepspeed/zero1.json")
    with pytest.raises(TooManyBadSteps, match="max_bad_steps=1"):
        fit_with_poisoned_batches(cfg, {2, 3})
