"""One trainer on the DeepSpeed engine, the same code on one CPU process, one GPU or many nodes.

    python -m omniseq.train --config configs/stages/stage1_alignment.yaml [key=value ...]
    torchrun --nproc_per_node 8 -m omniseq.train --config ...            (one node)
    deepspeed --hostfile hosts --module omniseq.train --config ...       (many nodes)

A step: `grad_accum` micro-batches of packed rows (omniseq.data.loader) -> Transformer forward with
document-causal attention -> chunked cross entropy with per-modality sums -> DeepSpeed backward/step
(ZeRO, bf16, clipping, warmup + cosine: omniseq/train/schedule.py). A non-finite loss on any rank skips
that micro-batch on every rank and is counted; SIGTERM checkpoints at the end of the step and exits; a
restarted run resumes from the newest COMPLETE checkpoint with its data position and RNG.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import socket
import time
from dataclasses import MISSING, asdict, fields
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist

from omniseq.atomic import write_text_atomic
from omniseq.config import ConfigError, save_config
from omniseq.data.loader import stream_from_config
from omniseq.data.shardset import read_manifest
from omniseq.model.config import SIZES, ModelConfig, model_config
from omniseq.model.hf import import_hf_llama, load_model_config
from omniseq.model.loss import IGNORE_INDEX
from omniseq.model.precision import use_bf16
from omniseq.model.transformer import Transformer
from omniseq.train import checkpoint as ckpt
from omniseq.train.budget import TimeBudget, steps_that_fit
from omniseq.train.config import STOPPED_FILE, StageConfig
from omniseq.train.logger import RunLogger, device_peak_tflops, plot_loss_curves
from omniseq.train.schedule import WarmupCosine
from omniseq.vocab import MODALITIES, VocabLayout


class TooManyBadSteps(RuntimeError):
    pass


def init_distributed() -> tuple[int, int, torch.device]:
    """Works under torchrun / the deepspeed launcher, and as a plain single process."""
    for key, default in (
        ("RANK", "0"),
        ("WORLD_SIZE", "1"),
        ("LOCAL_RANK", "0"),
        ("MASTER_ADDR", "127.0.0.1"),
    ):
        os.environ.setdefault(key, default)
    if "MASTER_PORT" not in os.environ:  # a lone process: any free port (a fixed one collides with other jobs)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(sock.getsockname()[1])
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        # DeepSpeed JIT-compiles a shared-memory all-reduce op for CPU runs (50-100 s on a fresh machine),
        # after probing every op with compiler subprocesses. gloo is plenty for the CPU runs we do (tests,
        # the demo): record the op as unavailable, which also skips the probe (its only reader is comm/torch.py).
        deepspeed.ops.__compatible_ops__ = {"deepspeed_shm_comm": False}
        device, backend = torch.device("cpu"), "gloo"
    deepspeed.init_distributed(dist_backend=backend)
    return dist.get_rank(), dist.get_world_size(), device


def check_inputs(cfg: StageConfig) -> VocabLayout:
    """Fail before any compute: paths, vocab hashes of every shard set and of the starting checkpoint."""
    cfg.validate()
    layout = VocabLayout.load(cfg.vocab)
    for src in [*cfg.data.sources, *cfg.eval_sources]:
        layout.check_hash(read_manifest(src.path)["vocab_hash"], f"shard set {src.path}")
    if cfg.init_from not in ("scratch",) and not cfg.init_from.startswith("hf:"):
        meta = Path(cfg.init_from) / ckpt.EXPORT_META
        if not meta.is_file():
            raise ConfigError(f"key 'init_from': {cfg.init_from} is not a stage export ({meta} is missing)")
        layout.check_hash(json.loads(meta.read_text())["vocab_hash"], f"checkpoint {cfg.init_from}")
    # the model config with this stage's keys, built without any weights
    if cfg.init_from == "scratch":
        if cfg.model_size not in SIZES:
            raise ConfigError(f"key 'model_size': {cfg.model_size!r} is not one of {sorted(SIZES)}")
        check_context(scratch_config(cfg, layout), cfg)
    elif not cfg.init_from.startswith("hf:"):  # an hf: model's context is known once build_model loads it
        check_context(export_config(load_model_config(cfg.init_from), cfg), cfg)
    precision = None if cfg.precision == "auto" else cfg.precision
    deepspeed_config(cfg, precision, int(os.environ.get("WORLD_SIZE", "1")))  # its contradictions with the stage
    return layout


def check_context(mcfg: ModelConfig, cfg: StageConfig) -> ModelConfig:
    """Rows longer than the model's RoPE table fail at whichever step first packs a position past it (the
    packer numbers a row's padding tail from 0 too), as an IndexError, or a device-side assert on a GPU."""
    if cfg.data.seq_len > mcfg.max_seq_len:
        raise ConfigError(
            f"key 'data.seq_len': {cfg.data.seq_len}, but the model's max_seq_len is {mcfg.max_seq_len}; "
            "shorten the rows or raise model.max_seq_len (a scratch model's key)"
        )
    return mcfg


def model_overrides(cfg: StageConfig) -> dict:
    """The ModelConfig keys this stage sets: `model` and `loss_weights`."""
    overrides = dict(cfg.model)
    if cfg.loss_weights:
        overrides["loss_weights"] = dict(cfg.loss_weights)
    return overrides


def scratch_config(cfg: StageConfig, layout: VocabLayout) -> ModelConfig:
    try:
        return model_config(cfg.model_size, vocab_size=layout.size, **model_overrides(cfg))
    except TypeError as e:
        raise ConfigError(f"key 'model': {e}") from None


# ModelConfig keys a stage may change on the weights it loads: the rest fix the modules' shapes and RoPE tables
RUNTIME_KEYS = (
    "z_loss",
    "dropout",
    "loss_weights",
    "loss_chunk_tokens",
    "loss_keep_logits_mib",
    "attention",
    "activation_checkpointing",
)


def runtime_defaults() -> dict:
    """ModelConfig's defaults of the runtime keys."""
    return {
        f.name: f.default if f.default is not MISSING else f.default_factory()
        for f in fields(ModelConfig)
        if f.name in RUNTIME_KEYS
    }


def export_config(saved: ModelConfig, cfg: StageConfig) -> ModelConfig:
    """An export's shape with this stage's runtime keys: the stage's values, ModelConfig's defaults where it
    sets none. The export's own (the previous stage's dropout, loss weights, z-loss, ...) are not inherited,
    so a stage trains with what its config says, whichever stage made the weights it loads."""
    fixed = {k: v for k, v in model_overrides(cfg).items() if k not in RUNTIME_KEYS and getattr(saved, k, v) != v}
    if fixed:
        k = next(iter(fixed))
        raise ConfigError(
            f"key 'model.{k}': {fixed[k]!r}, but {cfg.init_from} was trained with {getattr(saved, k)!r}; "
            f"a stage that loads an export may change only {list(RUNTIME_KEYS)}"
        )
    try:
        return ModelConfig(**{**asdict(saved), **runtime_defaults(), **model_overrides(cfg)})
    except TypeError as e:
        raise ConfigError(f"key 'model': {e}") from None


def build_model(cfg: StageConfig, layout: VocabLayout) -> Transformer:
    torch.manual_seed(cfg.seed)  # every rank builds identical weights; the dropout masks follow the seed too
    if cfg.init_from == "scratch":
        return Transformer.build(scratch_config(cfg, layout))
    if cfg.init_from.startswith("hf:"):
        model = import_hf_llama(cfg.init_from[3:], layout.size, layout.text.size, torch.float32, **model_overrides(cfg))
        check_context(model.cfg, cfg)
        return model
    model, _ = ckpt.load_export(cfg.init_from, layout)
    model.cfg = export_config(model.cfg, cfg)  # read at every forward: the modules need no rebuild
    return model


def deepspeed_config(cfg: StageConfig, precision: str | None, world: int) -> dict:
    """The JSON with its "auto" values filled from the stage config. A value there that contradicts the
    stage is an error: DeepSpeed would train with it while the stage config, the logs and the time budget's
    token counts say otherwise. So are the JSON's optimizer and scheduler blocks (DeepSpeed drops them
    without a word for the trainer's own) and an enabled fp16 block (a precision the stage does not know).
    `precision` is the resolved bf16 | fp32, or None before the device is known (`precision=auto`):
    bf16.enabled is then checked by the trainer's call."""
    ds = json.loads(Path(cfg.deepspeed).read_text())
    owned = {  # JSON block -> the stage keys that set it instead
        "optimizer": "optim.* (torch AdamW, passed to deepspeed.initialize)",
        "scheduler": "optim.* (warmup and cosine decay: omniseq/train/schedule.py)",
        "fp16": "precision (bf16 | fp32 | auto; fp16 is not supported)",
    }
    for k, stage_key in owned.items():
        harmless = k == "fp16" and isinstance(ds.get(k), dict) and ds[k].get("enabled") is False
        if k in ds and not harmless:
            raise ConfigError(f"{cfg.deepspeed}: block {k!r} is the stage's to set, by {stage_key}; remove it")
    given = ds.get("bf16", {}).get("enabled", "auto")
    if given != "auto" and precision is not None and given != (precision == "bf16"):
        raise ConfigError(
            f"{cfg.deepspeed}: key 'bf16.enabled' = {given!r} contradicts the stage's precision = {cfg.precision!r} "
            f'(resolved to {precision} here); set it to "auto" (filled from the stage config) or change precision'
        )
    batch, accum = cfg.data.batch_size, cfg.grad_accum
    fill = {  # JSON key -> (stage key, value)
        "train_micro_batch_size_per_gpu": ("data.batch_size", batch),
        "gradient_accumulation_steps": ("grad_accum", accum),
        "train_batch_size": (f"data.batch_size x grad_accum x {world} rank(s)", batch * accum * world),
        "gradient_clipping": ("optim.grad_clip", cfg.optim.grad_clip),
    }
    for k, (stage_key, v) in fill.items():
        given = ds.get(k, "auto")
        if given != "auto" and given != v:
            raise ConfigError(
                f"{cfg.deepspeed}: key {k!r} = {given!r} contradicts the stage's {stage_key} = {v!r}; "
                f'set it to "auto" (filled from the stage config) or change the stage\'s key'
            )
        ds[k] = v
    ds.pop("train_batch_size")  # derived by DeepSpeed from the two above and the world size
    ds.setdefault("bf16", {})["enabled"] = precision == "bf16"
    if cfg.zero_stage >= 0:
        ds.setdefault("zero_optimization", {})["stage"] = cfg.zero_stage
    return ds


def optimizer_for(model: torch.nn.Module, cfg: StageConfig, device: torch.device) -> torch.optim.Optimizer:
    """torch AdamW, no decay on vectors and embeddings; passing it in avoids DeepSpeed's FusedAdam JIT."""
    decay, rest = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and "embed" not in name else rest).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.optim.weight_decay},
        {"params": rest, "weight_decay": 0.0},
    ]
    o = cfg.optim
    return torch.optim.AdamW(groups, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, fused=device.type == "cuda")


def master_weights(engine, precision: str) -> dict[str, torch.Tensor]:
    """The module's state dict with the optimizer's fp32 master weights, without ZeRO. In bf16 the module
    holds bf16 roundings of them: DeepSpeed's FP16_UnfusedOptimizer (what a torch optimizer gets) updates fp32
    copies, `fp32_groups`, and copies them into its `fp16_groups`, the module's parameters, in the same order."""
    state = engine.module.state_dict(keep_vars=True)
    if precision != "bf16":
        return {k: v.detach().cpu() for k, v in state.items()}
    opt = engine.optimizer
    masters = {
        id(lp): hp
        for lps, hps in zip(getattr(opt, "fp16_groups", []), getattr(opt, "fp32_groups", []))
        for lp, hp in zip(lps, hps)
    }
    missing = [name for name, p in engine.module.named_parameters() if id(p) not in masters]
    if missing:  # never export bf16-rounded weights as fp32
        raise RuntimeError(
            f"no fp32 master weight for {missing[:3]} in DeepSpeed's {type(opt).__name__}: "
            "train with zero_stage 1-3 (exported from the checkpoint) or precision=fp32"
        )
    return {k: masters.get(id(v), v).detach().float().cpu() for k, v in state.items()}


class Trainer:
    def __init__(self, cfg: StageConfig):
        self.cfg = cfg
        self.layout = check_inputs(cfg)
        self.rank, self.world, self.device = init_distributed()
        self.precision = "bf16" if use_bf16(cfg.precision, self.device, "precision") else "fp32"
        self.out = Path(cfg.out_dir)
        self.ckpt_root = self.out / "checkpoints"
        if self.rank == 0:
            self.ckpt_root.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.out / "config.yaml")
        model = build_model(cfg, self.layout).to(self.device)
        self.mcfg = model.cfg
        self.ds_config = deepspeed_config(cfg, self.precision, self.world)
        optimizer = optimizer_for(model, cfg, self.device)
        schedule = WarmupCosine(optimizer, cfg.steps, cfg.warmup_steps(), cfg.optim.min_lr_ratio)
        self.engine, *_ = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=schedule, config=self.ds_config
        )
        if self.ds_config.get("zero_optimization", {}).get("stage", 0) == 3:
            # The chunked loss reads the output projection outside the module that owns it (and the tied
            # embedding outside nn.Embedding): ZeRO-3 must gather it for the top module's forward.
            deepspeed.zero.register_external_parameter(self.engine.module, self.engine.module.output_weight)
        if cfg.compile:
            self.engine.compile()
        self.stream = stream_from_config(cfg.stream_data(), self.rank, self.world, self.layout)
        self.step, self.bad_steps, self.stop_requested = 0, 0, False
        self.total = cfg.steps  # the steps this stage trains (fit_to_budget may lower it)
        fitted, self.spent_before = 0, 0.0
        tag = ckpt.latest_complete(self.ckpt_root) if self.ckpt_root.is_dir() else None
        if tag:
            common, mine = ckpt.load(self.engine, self.ckpt_root, tag)
            self.step, self.bad_steps = common["step"], common["bad_steps"]
            if self.step > cfg.steps:
                raise ConfigError(
                    f"key 'steps': {cfg.steps}, but {self.ckpt_root / tag} has trained {self.step}; raise steps, "
                    "or train into a new out_dir (or delete its ckpt/ folder) to start the stage again"
                )
            self._apply_optim_config()
            self.stream.load_state_dict(mine["data"])
            # a budget fitted (and cut) before the stop, for this config's planned steps: resume on that
            # schedule, with what is left of the budget
            if cfg.max_minutes and common.get("planned_steps") == cfg.steps:
                fitted, self.spent_before = common.get("fitted_steps", 0), common.get("budget_spent_s", 0.0)
        self.resumed_from = tag
        self.batches = iter(self.stream)
        self.log = RunLogger(self.out, cfg.steps, self.step, self.rank == 0, cfg.tensorboard)
        if fitted:
            self._set_total(fitted)
        self.budget: TimeBudget | None = None
        self.flops_per_token = self.mcfg.flops_per_token(cfg.data.seq_len)  # the formula bench/train_step.py uses
        self.peak = device_peak_tflops(self.device)

    def _apply_optim_config(self) -> None:
        """After a resume, this config's optimizer settings. DeepSpeed loads the optimizer's state after the
        scheduler's, and torch's `load_state_dict` brings back every group's saved lr, weight decay, betas
        and eps: the first step would run at the old schedule's lr and changed `optim` keys would never
        take effect (docs/training.md: a resumed stage takes its settings from its config)."""
        o = self.cfg.optim
        groups = self.engine.lr_scheduler.optimizer.param_groups  # optimizer_for's: decayed, then not
        for group, decay in zip(groups, (o.weight_decay, 0.0)):
            group.update(weight_decay=decay, betas=(o.beta1, o.beta2), eps=o.eps)
        self.engine.lr_scheduler._apply()  # this step's lr from the config's peak and the restored count

    # -- one optimizer step ------------------------------------------------------------------------------
    def _all_reduce(self, t: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
        if self.world > 1:
            dist.all_reduce(t, op=op)
        return t

    def train_step(self) -> dict:
        """One optimizer step over `grad_accum` micro-batches a rank, its loss the mean over every label token
        of the step, as one big batch would have it: each micro-batch's backward is its loss sum (mean x its
        label tokens) over the step's label tokens on all ranks, times grad_accum x world, which DeepSpeed
        divides by again (it scales by 1/grad_accum and averages gradients over ranks). A micro-batch whose
        loss is not finite on some rank is skipped on every rank, and the next one drawn takes its place and
        its token weight, so the weights still sum to the step's label tokens."""
        lr = self.engine.get_lr()[0]  # the scheduler sets it after each step: this step's, read before it ends
        micro = [next(self.batches) for _ in range(self.cfg.grad_accum)]
        weights = [float((b["labels"] != IGNORE_INDEX).sum()) for b in micro]  # label tokens
        tokens = self._all_reduce(torch.tensor([sum(weights)], device=self.device)).item()  # the step's, all ranks
        scale = self.cfg.grad_accum * self.world / max(tokens, 1.0)
        ce = torch.zeros(len(MODALITIES), device=self.device)
        count = torch.zeros(len(MODALITIES), device=self.device)
        loss_sum, i = torch.zeros(1, device=self.device), 0
        while i < len(micro):
            batch = {k: v.to(self.device, non_blocking=True) for k, v in micro[i].items()}
            out = self.engine(**batch)
            finite = self._all_reduce(torch.isfinite(out.loss.detach()).float().reshape(1), dist.ReduceOp.MIN)
            if finite.item() == 0:
                self.bad_steps += 1
                self.log.write(f"step {self.step}: non-finite loss skipped ({self.bad_steps} so far)")
                if self.bad_steps > self.cfg.max_bad_steps:
                    raise TooManyBadSteps(
                        f"{self.bad_steps} non-finite losses (max_bad_steps={self.cfg.max_bad_steps}); "
                        "lower the learning rate, enable qk_norm / z_loss, or check the data"
                    )
                micro[i] = next(self.batches)
                continue
            self.engine.backward(out.loss * (weights[i] * scale))
            self.engine.step()
            ce += out.ce_sum.detach()
            count += out.count.detach()
            loss_sum += out.loss.detach() * weights[i]
            i += 1
        self.step += 1
        stats = self._all_reduce(torch.cat([ce, count, loss_sum]))
        ce, count = stats[: len(MODALITIES)], stats[len(MODALITIES) : 2 * len(MODALITIES)]
        out = {"train/loss": stats[-1].item() / max(tokens, 1.0)}
        out.update({f"train/loss_{m}": (ce[i] / count[i]).item() for i, m in enumerate(MODALITIES) if count[i] > 0})
        out["train/tokens"] = count.sum().item()
        out["lr"] = lr
        return out

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Held-out loss per modality over `eval_batches` micro-batches of the eval shard sets."""
        stream = stream_from_config(self.cfg.eval_data(), self.rank, self.world, self.layout)
        ce = torch.zeros(len(MODALITIES), device=self.device)
        count = torch.zeros(len(MODALITIES), device=self.device)
        self.engine.eval()
        for _, batch in zip(range(self.cfg.eval_batches), stream):
            batch = {k: v.to(self.device) for k, v in batch.items()}
            out = self.engine(**batch)
            ce += out.ce_sum
            count += out.count
        self.engine.train()
        ce, count = self._all_reduce(ce), self._all_reduce(count)
        res = {f"eval/loss_{m}": (ce[i] / count[i]).item() for i, m in enumerate(MODALITIES) if count[i] > 0}
        res["eval/loss"] = (ce.sum() / count.sum().clamp(min=1)).item()
        return res

    # -- the time budget ---------------------------------------------------------------------------------
    def _set_total(self, total: int) -> None:
        """Train `total` steps: the cosine schedule (and the warmup, in proportion) end there instead."""
        self.engine.lr_scheduler.reshape(total, round(self.cfg.warmup_steps() * total / self.cfg.steps))
        self.total = total
        self.log.bar.total = total
        self.log.bar.refresh()

    def fit_to_budget(self, now: float) -> None:
        """The slowest rank's seconds per step and seconds spent set how many steps fit in max_minutes
        (omniseq/train/budget.py); every rank takes the same number."""
        timing = torch.tensor(self.budget.timing(self.step, now), device=self.device)
        per_step, spent = self._all_reduce(timing, dist.ReduceOp.MAX).tolist()
        fit = steps_that_fit(self.step, self.total, per_step, spent, self.budget.seconds)
        if fit < self.total:
            self.log.write(f"max_minutes={self.cfg.max_minutes:g}: {per_step:.2f} s a step, so {fit} of "
                           f"{self.cfg.steps} steps fit; schedule rescaled")  # fmt: skip
            self._set_total(fit)

    def save(self) -> str:
        common = {"step": self.step, "bad_steps": self.bad_steps, "vocab_hash": self.layout.hash,
                  "config": asdict(self.cfg), "stage": self.cfg.name,
                  "fitted_steps": self.total if self.total < self.cfg.steps else 0,
                  "planned_steps": self.cfg.steps,
                  "budget_spent_s": self.budget.spent(time.perf_counter()) if self.budget else 0.0}  # fmt: skip
        return ckpt.save(self.engine, self.ckpt_root, self.step, common, {"data": self.stream.state_dict()},
                         self.cfg.keep_last)  # fmt: skip

    def export(self, tag: str) -> Path | None:
        """fp32 weights in <out_dir>/export (rank 0): under ZeRO consolidated from the checkpoint just
        written, without it the optimizer's fp32 masters (`master_weights`)."""
        zero = self.ds_config.get("zero_optimization", {}).get("stage", 0)
        if zero > 0:
            from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

            state = get_fp32_state_dict_from_zero_checkpoint(str(self.ckpt_root), tag=tag) if self.rank == 0 else None
        else:
            state = master_weights(self.engine, self.precision)
        path = None
        if self.rank == 0:
            extra = {"stage": self.cfg.name, "step": self.step, "config": asdict(self.cfg)}
            path = ckpt.export(state, self.mcfg, self.out / "export", self.layout, extra)
        dist.barrier()
        return path

    # -- the loop ---------------------------------------------------------------------------------------
    def _on_sigterm(self, signum, frame):
        self.stop_requested = True

    def fit(self) -> dict:
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        try:
            return self._fit()
        finally:
            signal.signal(signal.SIGTERM, previous)

    def _fit(self) -> dict:
        cfg = self.cfg
        if self.rank == 0:
            (self.out / STOPPED_FILE).unlink(missing_ok=True)  # an earlier stop's; this run has not stopped
        if self.resumed_from:
            self.log.write(f"resumed from {self.ckpt_root / self.resumed_from} at step {self.step}")
        tokens, t0, last = 0.0, time.perf_counter(), {}
        if cfg.max_minutes:
            self.budget = TimeBudget.begin(cfg.max_minutes, self.step, t0, self.spent_before)
        while self.step < self.total:
            last = self.train_step()
            tokens += last["train/tokens"]
            self.log.step()
            if self.budget and self.budget.due(self.step, now := time.perf_counter()):
                self.fit_to_budget(now)
            if self.step % cfg.log_every == 0 or self.step == self.total:
                if self.device.type == "cuda":
                    torch.cuda.synchronize()
                dt = time.perf_counter() - t0
                scalars = {**last, "tokens_per_s": tokens / dt,
                           "grad_norm": float(self.engine.get_global_grad_norm() or 0.0),
                           "bad_steps": self.bad_steps}  # fmt: skip
                if self.peak:
                    scalars["mfu"] = tokens / dt / self.world * self.flops_per_token / (self.peak * 1e12)
                self.log.log(
                    self.step,
                    scalars,
                    show=f"loss {last['train/loss']:.3f} {scalars['tokens_per_s']:.0f} tok/s",
                )
                tokens, t0 = 0.0, time.perf_counter()
            if cfg.eval_sources and cfg.eval_every and self.step % cfg.eval_every == 0:
                self.log.log(self.step, self.evaluate())
            stop = self._all_reduce(torch.tensor([float(self.stop_requested)], device=self.device), dist.ReduceOp.MAX)
            if self.step % cfg.save_every == 0 or stop.item() > 0:
                self.save()
            if stop.item() > 0:
                if self.rank == 0:
                    write_text_atomic(self.out / STOPPED_FILE, json.dumps({"step": self.step}) + "\n")
                self.log.write(f"SIGTERM: checkpoint written at step {self.step}; exiting")
                self.log.close()
                return {"stopped_at": self.step}
        if not last and self.rank == 0 and (self.out / "metrics.jsonl").is_file():  # resumed at the end
            logged = [json.loads(x) for x in (self.out / "metrics.jsonl").read_text().splitlines() if x.strip()]
            last = next((r for r in reversed(logged) if "train/loss" in r), {})
        result = {k: v for k, v in last.items() if k.startswith("train/")}
        if cfg.eval_sources:
            ev = self.evaluate()
            self.log.log(self.step, ev)
            result.update(ev)
        tag = ckpt.latest_complete(self.ckpt_root)
        if tag != f"step{self.step:08d}":
            tag = self.save()
        export = self.export(tag)
        result["data"] = self.stream.stats()
        result["steps"], result["planned_steps"] = self.step, cfg.steps
        self.log.close()
        if self.rank == 0:
            png = plot_loss_curves(self.out / "metrics.jsonl", self.out / "loss_curves.png", cfg.name)
            (self.out / "result.json").write_text(json.dumps({**result, "export": str(export)}, indent=2) + "\n")
            print(f"{cfg.name}: {self.step} steps; loss {result.get('train/loss', float('nan')):.4f}; "
                  f"export {export}; curves {png}")  # fmt: skip
        return result


def run(cfg: StageConfig) -> dict:
    trainer = None
    try:
        trainer = Trainer(cfg)
        return trainer.fit()
    finally:
        # The DeepSpeed engine sits in reference cycles that can hold gloo work handles: free them while the
        # interpreter is alive. Left to interpreter exit, their release can abort a rank ("terminate called
        # without an active exception", as pytorch/pytorch PR 179291 describes), seen once in the ZeRO-3
        # two-process test on a loaded machine after the stage had finished and exported.
        del trainer
        gc.collect()
        if dist.is_initialized():
            dist.destroy_process_group()
