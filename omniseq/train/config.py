"""A training stage as a config: `python -m omniseq.train --config configs/stages/X.yaml key=value ...`.

The four-stage recipe (MIO, Wang et al. 2024) is four files of this schema: alignment, interleaved,
speech-enhanced and SFT differ in their data sources and token shares, steps, learning rate and the
checkpoint they start from. Every key is checked before any compute (`validate`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from omniseq.config import ConfigError
from omniseq.data.loader import DataConfig, SourceConfig
from omniseq.vocab import MODALITIES

# The exit status of a stage that SIGTERM stopped after its checkpoint: 128 + SIGTERM, what a shell reports for
# a process SIGTERM ended, so schedulers, `&&` chains and the recipe read "preempted", not "done".
STOPPED_EXIT = 143
# Written into out_dir by rank 0 when SIGTERM stopped the stage ({"step": N}), removed when a run starts: under
# torchrun the launcher exits 1, not 143, and the recipe reads this to tell a stop from a failure.
STOPPED_FILE = "stopped.json"

PRECISIONS = ("auto", "bf16", "fp32")
# attention backends a training stage can use: its rows pack several documents, and sdpa_causal (one causal
# sequence a row) refuses the document ids that keep them apart
TRAIN_ATTENTION = ("auto", "flash_varlen", "flex", "sdpa_masked")


@dataclass
class StageData(DataConfig):
    """A stage's data: DataConfig whose seed defaults to the stage's `seed`. The loader takes the resolved
    `StageConfig.stream_data()` (or `eval_data()`), never this: its seed may still be null."""

    seed: int | None = None  # data order and condition dropout; null = the stage's seed


@dataclass
class OptimConfig:
    lr: float = 3e-4  # peak learning rate (MIO: 3e-5 when continuing a 6B LLM; small models from scratch: 1e-3)
    warmup: float = 0.03  # warmup length: a fraction of `steps` when < 1 (MIO: 3%), else a step count
    min_lr_ratio: float = 0.1  # the cosine ends at lr * min_lr_ratio
    weight_decay: float = 0.1  # AdamW decay on matrices (not on norms or embeddings)
    beta1: float = 0.9  # AdamW
    beta2: float = 0.95  # AdamW (0.95 is the usual choice for LLM pretraining stability)
    eps: float = 1e-8  # AdamW
    grad_clip: float = 1.0  # global gradient-norm clipping; 0 = off


@dataclass
class StageConfig:
    name: str = "stage"  # shown in logs and recorded in checkpoints
    root: str = "runs/demo"  # the run's folder; other paths may use it as ${root}/... (the demo configs do)
    out_dir: str = "runs/stage"  # checkpoints/, export/, tb/, metrics.jsonl, loss_curves.png
    vocab: str = "runs/demo/vocab/manifest.json"  # the merged vocabulary every shard set must match
    init_from: str = "scratch"  # scratch | <export dir of an earlier stage> | hf:<local Llama-family directory>
    model_size: str = "demo"  # a size of omniseq.model.config.SIZES (ignored when init_from is a stage export)
    model: dict = field(default_factory=dict)  # ModelConfig overrides, e.g. {qk_norm: true, z_loss: 1e-5}
    loss_weights: dict[str, float] = field(default_factory=dict)  # modality -> loss weight (Emu3: image 0.5)
    data: StageData = field(default_factory=StageData)  # shard sets + token shares, seq_len, micro-batch
    eval_sources: list[SourceConfig] = field(default_factory=list)  # held-out shard sets; empty = no eval
    eval_every: int = 0  # steps between held-out evaluations; 0 = only at the end (when eval_sources)
    eval_batches: int = 4  # micro-batches per held-out evaluation
    steps: int = 100  # optimizer steps in this stage
    # wall-clock budget of the training loop (compile, mid-stage evals and saves included; start-up and export
    # not); 0 = off. From its 10th step on the stage times its steps and, when `steps` would overrun, trains
    # only as many as fit, its warmup and cosine rescaled so it still ends at min_lr. Never adds steps; a
    # resumed stage gets what is left (omniseq/train/budget.py; docs/training.md "Time budgets").
    max_minutes: float = 0.0
    grad_accum: int = 1  # micro-batches per optimizer step (per rank)
    optim: OptimConfig = field(default_factory=OptimConfig)
    deepspeed: str = "configs/deepspeed/zero2.json"  # DeepSpeed JSON; "auto" values are filled from this file
    zero_stage: int = -1  # overrides the JSON's ZeRO stage (0-3); -1 keeps it
    precision: str = "auto"  # auto (bf16 on GPU and on a CPU with native bf16, else fp32) | bf16 | fp32
    compile: bool = False  # torch.compile the model (inductor; CPU and GPU)
    # model init (scratch), dropout masks, and, unless data.seed is set, data order and condition dropout
    seed: int = 0
    log_every: int = 10  # steps between log lines / TensorBoard points
    save_every: int = 100  # steps between checkpoints (and one at the end)
    keep_last: int = 2  # complete checkpoints kept
    max_bad_steps: int = 10  # non-finite losses skipped before the run stops
    tensorboard: bool = True  # write TensorBoard scalars to <out_dir>/tb

    def data_seed(self) -> int:
        """The seed of the data order and condition dropout: data.seed when set, else the stage's."""
        return self.seed if self.data.seed is None else self.data.seed

    def stream_data(self) -> DataConfig:
        """The training stream's config: `data` with its seed resolved."""
        return DataConfig(
            self.data.sources, self.data.seq_len, self.data.batch_size, self.data_seed(), self.data.options
        )

    def eval_data(self) -> DataConfig:
        """The held-out stream's config: the eval shard sets read as the training data is, but without
        condition dropout (held-out losses measure the conditional model, the task the samples ask for)."""
        options = replace(self.data.options, cond_dropout=0.0)
        return DataConfig(self.eval_sources, self.data.seq_len, self.data.batch_size, self.data_seed(), options)

    def warmup_steps(self) -> int:
        w = self.optim.warmup
        return int(round(w * self.steps)) if w < 1 else int(w)

    def validate(self, where: str = "stage config") -> None:
        """Everything that can be checked without compute: values, and that every path exists."""

        def bad(key: str, expected: str, got=None):
            raise ConfigError(f"{where}: key {key!r}: expected {expected}" + ("" if got is None else f", got {got!r}"))

        if self.max_minutes < 0:
            bad("max_minutes", ">= 0 (0 = no budget)", self.max_minutes)
        if self.steps <= 0:
            bad("steps", "a positive number of optimizer steps", self.steps)
        if self.grad_accum <= 0:
            bad("grad_accum", "a positive number", self.grad_accum)
        for key in ("log_every", "save_every"):  # periods: the loop divides the step by them
            if getattr(self, key) <= 0:
                bad(key, "a positive number of steps", getattr(self, key))
        if self.keep_last < 1:
            bad("keep_last", "at least 1 (the export is read from the newest checkpoint)", self.keep_last)
        if self.eval_every < 0:
            bad("eval_every", ">= 0 (0 = held-out evaluation at the end only)", self.eval_every)
        if self.eval_batches < 1:
            bad("eval_batches", "a positive number of micro-batches", self.eval_batches)
        if self.optim.warmup < 0:
            bad("optim.warmup", ">= 0 (a fraction of steps when < 1, else a step count)", self.optim.warmup)
        if not 0 <= self.optim.min_lr_ratio <= 1:
            bad("optim.min_lr_ratio", "a fraction of the peak lr in [0, 1]", self.optim.min_lr_ratio)
        if self.warmup_steps() > self.steps:  # the lr would never reach its peak
            bad("optim.warmup", f"at most the stage's {self.steps} steps", self.optim.warmup)
        o = self.optim  # AdamW's own checks would fire only after the process group and the model are up
        for key, ok, expected in (
            ("lr", o.lr > 0, "> 0"),
            ("beta1", 0 <= o.beta1 < 1, "in [0, 1)"),
            ("beta2", 0 <= o.beta2 < 1, "in [0, 1)"),
            ("eps", o.eps > 0, "> 0"),
            ("weight_decay", o.weight_decay >= 0, ">= 0"),
            ("grad_clip", o.grad_clip >= 0, ">= 0 (0 = no clipping)"),
        ):
            if not ok:
                bad(f"optim.{key}", expected, getattr(o, key))
        attention = self.model.get("attention", "auto")
        if attention not in TRAIN_ATTENTION:
            bad("model.attention", f"one of {TRAIN_ATTENTION} (sdpa_causal cannot keep packed documents apart)",
                attention)  # fmt: skip
        if self.precision not in PRECISIONS:
            bad("precision", f"one of {PRECISIONS}", self.precision)
        if self.zero_stage not in (-1, 0, 1, 2, 3):
            bad("zero_stage", "-1 (keep the JSON's) or 0-3", self.zero_stage)
        if not 0 <= self.data.options.cond_dropout < 1:
            bad("data.options.cond_dropout", "a probability in [0, 1)", self.data.options.cond_dropout)
        unknown = set(self.loss_weights) - set(MODALITIES)
        if unknown:
            bad("loss_weights", f"modalities among {MODALITIES}", sorted(unknown))
        negative = {m: w for m, w in self.loss_weights.items() if w < 0}
        if negative:  # a negative weight is gradient ascent on that modality
            bad("loss_weights", "weights >= 0", negative)
        if not Path(self.vocab).is_file():
            bad("vocab", "an existing manifest.json (build the tokenizers and shards first)", self.vocab)
        if not Path(self.deepspeed).is_file():
            bad("deepspeed", "an existing DeepSpeed JSON file", self.deepspeed)
        if not self.data.sources:
            bad("data.sources", "at least one shard set")
        for i, src in enumerate([*self.data.sources, *self.eval_sources]):
            key = f"data.sources[{i}]" if i < len(self.data.sources) else f"eval_sources[{i - len(self.data.sources)}]"
            if not (Path(src.path) / "manifest.json").is_file():
                bad(f"{key}.path", "a shard-set folder with manifest.json (run `make shards`)", src.path)
            if src.share <= 0:
                bad(f"{key}.share", "a positive token share", src.share)
        if self.init_from != "scratch":
            path = Path(self.init_from.removeprefix("hf:"))
            if not path.is_dir():
                bad(
                    "init_from",
                    "scratch, an earlier stage's export folder, or hf:<local directory>",
                    self.init_from,
                )
