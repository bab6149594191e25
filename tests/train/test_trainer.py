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
from omniseq.train.trainer import RUNTIME_KEYS, build_model, check_inputs, deepspeed_config
from omniseq.vocab import VocabMismatchError

from .conftest import REPO, stage_yaml


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
        # periods the loop divides by, and a checkpoint count the export needs: refused before compute
        (("save_every=0",), ConfigError, "'save_every': expected a positive number of steps, got 0"),
        (("log_every=0",), ConfigError, "'log_every': expected a positive number of steps, got 0"),
        (("keep_last=0",), ConfigError, "'keep_last': expected at least 1"),
        (("model={attention: sdpa_causal}",), ConfigError, "'model.attention'.*packed documents"),
        # values AdamW would refuse only after the process group and the model are up, or take silently
        (("optim.warmup=7",), ConfigError, "'optim.warmup': expected at most the stage's 6 steps, got 7"),
        (("optim.lr=-1",), ConfigError, "'optim.lr': expected > 0"),
        (("optim.beta2=1.5",), ConfigError, r"'optim.beta2': expected in \[0, 1\)"),
        (("optim.eps=0",), ConfigError, "'optim.eps': expected > 0"),
        (("optim.weight_decay=-3",), ConfigError, "'optim.weight_decay': expected >= 0"),
        (("optim.grad_clip=-1",), ConfigError, "'optim.grad_clip': expected >= 0"),
        (("loss_weights={image: -0.5}",), ConfigError, "'loss_weights': expected weights >= 0"),
        # rows past the RoPE table fail at whichever step first packs such a position, as an IndexError
        (("data.seq_len=1024",), ConfigError, "'data.seq_len': 1024, but the model's max_seq_len is 512"),
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


def test_a_stage_trains_with_its_own_runtime_keys_not_the_exports(train_world, tmp_path):
    """The runtime keys an export was trained with (dropout, loss weights, z-loss, ...) are not inherited:
    a stage that sets none trains with ModelConfig's defaults, and `loss_weights: {}` means no weights."""
    layout = train_world["layout"]
    trained = model_config("tiny", layout.size, dropout=0.3, z_loss=1e-3, loss_weights={"image": 0.5},
                           attention="sdpa_masked", loss_chunk_tokens=64)  # fmt: skip
    start = Transformer.build(trained)
    export = ckpt.export(start.state_dict(), start.cfg, tmp_path / "export", layout, {})
    plain = build_model(load(train_world, tmp_path, f"init_from={export}", "loss_weights={}"), layout)
    defaults = model_config("tiny", layout.size)
    assert all(getattr(plain.cfg, k) == getattr(defaults, k) for k in RUNTIME_KEYS)
    assert plain.cfg.dim == trained.dim and plain.cfg.tie_embeddings  # the shape is the export's
    own = build_model(load(train_world, tmp_path, f"init_from={export}", "model={z_loss: 1e-4}",
                           "loss_weights={audio: 2.0}"), layout)  # fmt: skip
    assert (own.cfg.z_loss, own.cfg.loss_weights, own.cfg.dropout) == (1e-4, {"audio": 2.0}, 0.0)


@pytest.mark.parametrize(
    "key, value, stage_key",
    [
        ("gradient_accumulation_steps", 2, "grad_accum = 1"),
        ("train_micro_batch_size_per_gpu", 4, "data.batch_size = 2"),
        ("train_batch_size", 8, "data.batch_size x grad_accum x 1 rank(s) = 2"),
        ("gradient_clipping", 0.5, "optim.grad_clip = 1.0"),
    ],
)
def test_a_deepspeed_json_contradicting_the_stage_is_refused(train_world, tmp_path, key, value, stage_key):
    ds = json.loads((REPO / "configs/deepspeed/zero2.json").read_text())
    (tmp_path / "ds.json").write_text(json.dumps({**ds, key: value}))
    with pytest.raises(ConfigError) as e:
        check_inputs(load(train_world, tmp_path, f"deepspeed={tmp_path / 'ds.json'}"))
    assert str(e.value).startswith(
        f"{tmp_path / 'ds.json'}: key {key!r} = {value!r} contradicts the stage's {stage_key}"
    )
    agreeing = {"gradient_accumulation_steps": 1, "train_micro_batch_size_per_gpu": 2, "train_batch_size": 2}
    (tmp_path / "ds.json").write_text(json.dumps({**ds, **agreeing, "gradient_clipping": 1.0}))
    check_inputs(load(train_world, tmp_path, f"deepspeed={tmp_path / 'ds.json'}"))  # numbers that agree are fine


@pytest.mark.parametrize(
    "block, stage_key",
    [
        ({"optimizer": {"type": "Adam", "params": {"lr": 1e-3}}}, "optim.*"),
        ({"scheduler": {"type": "WarmupLR"}}, "optim.*"),
        ({"fp16": {"enabled": True}}, "precision"),
    ],
)
def test_a_deepspeed_json_block_the_stage_replaces_is_refused(train_world, tmp_path, block, stage_key):
    ds = json.loads((REPO / "configs/deepspeed/zero2.json").read_text())
    (tmp_path / "ds.json").write_text(json.dumps({**ds, **block}))
    with pytest.raises(ConfigError) as e:
        check_inputs(load(train_world, tmp_path, f"deepspeed={tmp_path / 'ds.json'}"))
    name = next(iter(block))
    assert str(e.value).startswith(f"{tmp_path / 'ds.json'}: block {name!r} is the stage's to set, by {stage_key}")
    (tmp_path / "ds.json").write_text(json.dumps({**ds, "fp16": {"enabled": False}}))
    check_inputs(load(train_world, tmp_path, f"deepspeed={tmp_path / 'ds.json'}"))  # fp16 switched off is fine


def test_a_deepspeed_json_bf16_switch_contradicting_the_precision_is_refused(train_world, tmp_path):
    ds = json.loads((REPO / "configs/deepspeed/zero2.json").read_text())
    (tmp_path / "ds.json").write_text(json.dumps({**ds, "bf16": {"enabled": True}}))
    with pytest.raises(ConfigError, match=r"key 'bf16.enabled' = True contradicts the stage's precision = 'fp32'"):
        check_inputs(load(train_world, tmp_path, f"deepspeed={tmp_path / 'ds.json'}", "precision=fp32"))
    check_inputs(load(train_world, tmp_path, f"deepspeed={tmp_path / 'ds.json'}", "precision=bf16"))  # agrees
    # with precision=auto the device decides: the trainer checks the switch once it knows it
    check_inputs(load(train_world, tmp_path, f"deepspeed={tmp_path / 'ds.json'}", "precision=auto"))
    cfg = load(train_world, tmp_path, f"deepspeed={tmp_path / 'ds.json'}", "precision=auto")
    with pytest.raises(ConfigError, match=r"resolved to fp32 here"):
        deepspeed_config(cfg, "fp32", 1)


def first_batch(cfg: StageConfig) -> torch.Tensor:
    from omniseq.train import trainer as tr

    return next(tr.Trainer(cfg).batches)["input_ids"]


def test_the_stage_seed_sets_the_data_order_unless_data_seed_is_set(train_world, tmp_path):
    sft = {"sources": [{"path": train_world["sft"], "share": 1.0}], "options": {"cond_dropout": 0.5}}
    seed0, seed1 = (first_batch(load(train_world, tmp_path, f"seed={s}", data=sft)) for s in (0, 1))
    assert not torch.equal(seed0, seed1)  # order and condition dropout follow the stage's seed
    pinned = first_batch(load(train_world, tmp_path, "seed=1", "data.seed=0", data=sft))
    assert torch.equal(pinned, seed0)  # data.seed, when set, decides the data alone


def test_held_out_evaluation_has_no_condition_dropout(train_world, tmp_path):
    from omniseq.train import trainer as tr

    sft = {"sources": [{"path": train_world["sft"], "share": 1.0}], "options": {"cond_dropout": 0.9}}
    cfg = load(train_world, tmp_path, data=sft, eval_sources=[{"path": train_world["sft"]}], eval_batches=2)
    t = tr.Trainer(cfg)
    uncond = train_world["layout"].id("<|uncond|>")
    assert (next(t.batches)["input_ids"] == uncond).any()  # training drops conditions
    real, seen = t.engine.module.forward, []

    def spy(**batch):
        seen.append(batch["input_ids"])
        return real(**batch)

    t.engine.module.forward = spy
    t.evaluate()
    assert len(seen) == 2 and not any((ids == uncond).any() for ids in seen)


def test_without_zero_a_bf16_stage_exports_the_fp32_master_weights(train_world, tmp_path):
    from safetensors.torch import load_file

    from omniseq.train import trainer as tr

    t = tr.Trainer(load(train_world, tmp_path, "zero_stage=0", "precision=bf16", "steps=2"))
    t.fit()
    exported = load_file(tmp_path / "s" / "export" / "model.safetensors")
    module = t.engine.module.layers[0].attn.wq.weight
    master = next(hp for lps, hps in zip(t.engine.optimizer.fp16_groups, t.engine.optimizer.fp32_groups)
                  for lp, hp in zip(lps, hps) if lp is module)  # fmt: skip
    w = exported["layers.0.attn.wq.weight"]
    assert module.dtype == torch.bfloat16 and w.dtype == torch.float32
    assert torch.equal(w, master.cpu()) and not torch.equal(w, w.bfloat16().float())  # not bf16-rounded


def test_gradient_accumulation_weights_every_label_token_alike(train_world, tmp_path):
    """Two micro-batches of one row each train as one micro-batch of both rows: the step's loss and gradient
    are the mean over all its label tokens, though the two rows supervise different numbers of them."""
    from omniseq.train import trainer as tr

    mix = [{"path": train_world["sft"], "share": 0.5}, {"path": train_world["pretrain"], "share": 0.5}]
    results, rows = {}, {}
    for accum, batch in ((1, 2), (2, 1)):
        data = {"sources": mix, "seq_len": 32, "batch_size": batch}
        t = tr.Trainer(load(train_world, tmp_path, f"grad_accum={accum}", f"out_dir={tmp_path / str(accum)}",
                            "precision=fp32", "optim.grad_clip=0", data=data))  # fmt: skip
        stream = iter(tr.stream_from_config(t.cfg.stream_data(), 0, 1, t.layout))  # what the step will read
        rows[accum] = torch.cat([next(stream)["labels"] for _ in range(accum)])
        results[accum] = (t.train_step()["train/loss"], float(t.engine.get_global_grad_norm()))
    assert torch.equal(rows[1], rows[2])  # the same two rows
    supervised = (rows[1] != -100).sum(1)
    assert supervised[0] != supervised[1]  # of unequal weight: a mean of the two rows' means would differ
    assert results[2][0] == pytest.approx(results[1][0], rel=1e-6)
    assert results[2][1] == pytest.approx(results[1][1], rel=1e-5)


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


def test_a_sigterm_stop_checkpoints_and_exits_with_the_preempted_status(train_world, tmp_path, monkeypatch):
    """SIGTERM (here its flag) ends the stage after the step with a checkpoint and no export, and the command
    exits 143, not 0, so `make stage1 && make stage2` and the recipe do not go on as if it had finished."""
    from omniseq.train import __main__ as cli
    from omniseq.train import trainer as tr

    cfg = load(train_world, tmp_path)
    t = tr.Trainer(cfg)
    t.stop_requested = True
    assert t.fit() == {"stopped_at": 1}
    assert ckpt.latest_complete(t.ckpt_root) == "step00000001" and not (t.out / "export").exists()
    monkeypatch.setattr(tr, "run", lambda cfg: {"stopped_at": 1})
    with pytest.raises(SystemExit) as e:
        cli.main(["--config", str(tmp_path / "s.yaml")])
    assert e.value.code == cli.STOPPED_EXIT == 143


def test_a_rolled_back_run_keeps_its_own_checkpoint_and_drops_the_abandoned_ones(train_world, tmp_path):
    """`latest` set back to step 3 while step 6 is complete (a rollback, or a stop between step 6's COMPLETE and
    `latest`): the run resumes at 3, and its next save with keep_last=1 keeps that save, not step 6."""
    from omniseq.train import trainer as tr

    t = tr.Trainer(load(train_world, tmp_path, "save_every=100", "steps=10"))
    for _ in range(2):
        for _ in range(3):
            t.train_step()
        t.save()
    root = t.ckpt_root
    assert sorted(p.name for p in root.glob("step*")) == ["step00000003", "step00000006"]
    (root / "latest").write_text("step00000003")
    again = tr.Trainer(load(train_world, tmp_path, "save_every=100", "steps=10", "keep_last=1"))
    assert again.step == 3
    again.train_step()
    assert again.save() == "step00000004"
    assert sorted(p.name for p in root.glob("step*")) == ["step00000004"]
    assert ckpt.latest_complete(root) == "step00000004"


def test_an_export_killed_while_rewritten_is_refused_not_half_read(train_world, tmp_path, monkeypatch):
    """A re-export removes export.json first and writes it last: one that dies while writing the weights
    leaves a folder that loading refuses, not the old record beside new or truncated weights."""
    from omniseq.model import hf

    layout = train_world["layout"]
    model = Transformer.build(model_config("tiny", layout.size))
    out = ckpt.export(model.state_dict(), model.cfg, tmp_path / "export", layout, {})
    ckpt.load_export(out)  # a whole export loads

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed while writing the weights")

    monkeypatch.setattr(hf, "save_file", killed)
    with pytest.raises(KeyboardInterrupt):
        ckpt.export(model.state_dict(), model.cfg, out, layout, {})
    with pytest.raises(FileNotFoundError, match="export.json is missing"):
        ckpt.load_export(out)
