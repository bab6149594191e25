"""A recipe end to end, step by step, with the time of each step: `make demo`, `make real`, `make real-cpu`.

    python -m omniseq.recipe [--config configs/recipes/X.yaml] [--out DIR] [--scale small|micro] [key=value ...]

corpus -> tokenizers (text, image, audio, video) -> vocabulary -> shards -> stage1 -> stage2 -> stage3
-> sft -> samples (files + index.html) -> evaluation table. Every step writes its outputs under `out`
and a marker in `out/.done/`; a rerun skips finished steps (`--redo STEP` reruns one and all after it).
Training runs as `python -m omniseq.train` subprocesses, exactly as `make stage1` ... `make sft` do.

Two worlds share the steps: `demo` (the built-in generator, omniseq.data.demo_corpus, scored by the
demo harness) and `real` (../shared/data through omniseq.data.real_corpus, scored by omniseq.eval.real).
Without --config the recipe is the demo (configs/recipes/ holds the others; every key: RecipeConfig).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

from omniseq.config import ConfigError, config_sources, load_config
from omniseq.train.config import STOPPED_EXIT, STOPPED_FILE

REPO = Path(__file__).resolve().parents[1]
STEPS = ("corpus", "tokenizers", "vocab", "shards", "stage1", "stage2", "stage3", "sft", "samples", "eval")
STAGES = {"stage1": "stage1_alignment", "stage2": "stage2_interleaved", "stage3": "stage3_speech", "sft": "sft"}
WORK_DIRS = {  # what a redone step deletes first, so that it starts over instead of resuming stale work
    "tokenizers": ("tokenizers/image_training", "tokenizers/audio_training"),
    "corpus": ("corpus",),  # a kind left out would otherwise leave its old files for the later steps
    "shards": ("shards",),
    **{s: (s,) for s in STAGES},
    "samples": ("samples",),
}
# The first step each recipe key changes: a step done before records the keys of its own and earlier steps, and
# a rerun whose keys differ there is refused (it would reuse stale results). `out` and `data` say where things
# are, not what they are, so a run can move (scripts/real_gpu_stages.sh) or read the same sets elsewhere. The
# config files the keys name are recorded too, by their settings (`step_files`): an edited shard YAML is refused.
FIRST_STEP = {
    "world": "corpus", "scale": "corpus", "seed": "corpus", "corpus_overrides": "corpus",
    "text_vocab": "tokenizers", "image_tokenizer": "tokenizers", "audio_tokenizer": "tokenizers",
    "image_sources": "tokenizers", "audio_sources": "tokenizers", "image_overrides": "tokenizers",
    "audio_overrides": "tokenizers", "reproducible": "tokenizers", "shard_configs": "shards",
    "stage_overrides": "stage1", "train_minutes": "stage1", "nproc": "stage1", "per_stage": "stage1",
    "sample_overrides": "samples", "eval_per_direction": "eval", "eval_overrides": "eval",
}  # fmt: skip
SHARD_SETS = ("pairs", "speech", "interleaved", "sft", "pairs_eval", "sft_eval")
WORLDS = ("demo", "real")


DEMO_SAMPLING = ("generate.sampling.image.temperature=0", "generate.sampling.guidance.image=1.0")


@dataclass
class RecipeConfig:
    out: str = "runs/demo"  # everything the recipe writes
    world: str = "demo"  # demo: the built-in generator | real: the sets of `data` (omniseq.data.real_corpus)
    data: str = ""  # real world: the folder of real sets ("" = ../shared/data beside the checkout)
    scale: str = "small"  # demo corpus size: small (`make demo`) | micro (the CI smoke test: seconds)
    seed: int = 0  # corpus, tokenizers, training and sampling
    corpus_overrides: list[str] = field(default_factory=list)  # key=value for the corpus generator/builder
    text_vocab: int = 1000  # sentencepiece pieces of the text tokenizer
    image_tokenizer: str = "configs/tokenizers/image_demo.yaml"  # training config of the image VQ
    audio_tokenizer: str = "configs/tokenizers/audio_spec_demo.yaml"  # training config of the audio codec
    image_sources: list[str] = field(default_factory=lambda: ["media/image/train"])  # under the corpus folder
    audio_sources: list[str] = field(  # under the corpus folder: train-split pair files
        default_factory=lambda: ["melody.train.jsonl", "sound.train.jsonl", "speech.train.jsonl"]
    )
    image_overrides: list[str] = field(default_factory=list)  # key=value for the image tokenizer's training
    audio_overrides: list[str] = field(default_factory=list)  # key=value for the audio tokenizer's training
    shard_configs: str = "configs/data/demo_{name}.yaml"  # one per shard set ({name}: pairs, speech, ...)
    stage_overrides: list[str] = field(default_factory=list)  # key=value applied to every stage
    per_stage: dict[str, list[str]] = field(default_factory=dict)  # stage1|stage2|stage3|sft -> key=value
    # wall-clock budget of the stages this run trains (all four, or those not done before), split in proportion
    # to each stage's planned tokens (steps x batch x seq_len) and given to it as max_minutes: a stage that would
    # overrun trains fewer steps on a rescaled schedule (omniseq/train/config.py). 0 = off. The CPU recipes set
    # it: the 2-core machines differ 4-5x in speed (docs/training.md "Time budgets").
    train_minutes: float = 0.0
    # true: every budget counts steps, not minutes (the tokenizers' max_minutes and train_minutes are off), so a
    # rerun on the same machine gives the same tokenizers, weights and table bit for bit, in any folder: for
    # A/B runs (docs/recipes.md "Reproducible runs"). The run then takes as long as its steps take there.
    reproducible: bool = False
    # key=value for the SampleConfig of the samples and eval steps. The demo's default: images greedy and
    # unguided (the local image encoder codes a patch's content alike in every scene, so the most likely
    # code is the right one; on one demo checkpoint text->image scored 92% so, against 87% sampled and 84%
    # greedy with CFG 3, docs/benchmarks.md). Decoding runs in bf16 where the CPU computes it natively (dtype
    # auto: 1.6x faster eval on an AVX512-BF16 machine, same table). The real recipes set [] (configs/recipes/).
    sample_overrides: list[str] = field(default_factory=lambda: list(DEMO_SAMPLING))
    eval_per_direction: int = 40  # held-out prompts per direction in the table (fewer where the corpus has fewer)
    eval_overrides: list[str] = field(default_factory=list)  # key=value for the world's eval config
    nproc: int = 2  # training processes (torchrun; gloo on CPU, one per core of the 2-core demo machine)


MICRO = RecipeConfig(
    scale="micro",
    out="runs/demo-micro",
    text_vocab=400,
    image_overrides=["steps=4", "max_minutes=0", "holdout=4"],
    audio_overrides=["steps=4", "max_minutes=0"],
    stage_overrides=[
        "steps=3",
        "log_every=1",
        "model_size=tiny",
        "data.seq_len=256",
        "data.batch_size=2",
        "eval_batches=1",
        "compile=false",
    ],  # fmt: skip
    eval_per_direction=1,
    nproc=1,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd: list[str], stopped: Path | None = None) -> None:
    """A step's subprocess, its output streamed; a failure stops the recipe with the command named. A stage
    stopped by SIGTERM exits 143, but torchrun reports its ranks' stop as 1: `stopped`, the stage's
    STOPPED_FILE, tells the two apart."""
    print("  $", " ".join(cmd), flush=True)
    rc = subprocess.call(cmd, cwd=REPO)
    if rc == STOPPED_EXIT or rc != 0 and stopped is not None and stopped.is_file():
        raise SystemExit(
            f"recipe step stopped by SIGTERM after a checkpoint (rerun the recipe to resume): {' '.join(cmd)}"
        )
    if rc != 0:
        raise SystemExit(f"recipe step failed: {' '.join(cmd)}")


def stage_overrides(cfg: RecipeConfig, step: str) -> list[str]:
    """The key=value list a stage of this recipe trains with (before its time budget)."""
    root = Path(cfg.out).resolve()
    return [f"root={root}", f"seed={cfg.seed}", *cfg.stage_overrides, *cfg.per_stage.get(step, [])]


class Recipe:
    def __init__(self, cfg: RecipeConfig):
        self.cfg = cfg
        self.out = Path(cfg.out).resolve()
        self.tok = self.out / "tokenizers"
        self.pending: set[str] = set(STEPS)  # the steps this run makes (main: those not done before)

    def corpus(self) -> str:
        if self.cfg.world == "real":
            from omniseq.data.real_corpus import RealCorpusConfig, generate

            data = [f"data={self.cfg.data}"] if self.cfg.data else []
            overrides = [f"out={self.out / 'corpus'}", f"seed={self.cfg.seed}", *data, *self.cfg.corpus_overrides]
            index = generate(load_config(RealCorpusConfig, None, overrides))
        else:
            from omniseq.data.demo_corpus import DemoConfig, generate

            scale = "tiny" if self.cfg.scale == "micro" else self.cfg.scale
            cfg = load_config(DemoConfig(scale=scale, seed=self.cfg.seed), None, self.cfg.corpus_overrides)
            index = generate(cfg, self.out / "corpus")
        notes = "; ".join(index.get("notes", []))
        return f"{sum(sum(c.values()) for c in index['counts'].values())} items{'; ' + notes if notes else ''}"

    def _train_media_tokenizers(self, jobs: dict[str, tuple[str, list[Path], list[str]]]) -> None:
        """Train the image and audio tokenizers at once, one process each: every trainer runs on one
        thread, so on the 2-core demo machine running them side by side halves the step (~150 -> ~90 s).
        Each one's output goes to its work folder's train.log; a failure shows that log's tail."""
        procs = {}
        for kind, (config, sources, overrides) in jobs.items():
            work = self.tok / f"{kind}_training"
            work.mkdir(parents=True, exist_ok=True)
            srcs = "[" + ",".join(str(s) for s in sources if s.exists()) + "]"
            overrides = self._kept_source_weights(kind, config, sources, overrides)
            clock = ["max_minutes=0"] if self.cfg.reproducible else []
            cmd = [sys.executable, "-m", "omniseq.tokenizers.train", kind, "--config", config, f"out={work}",
                   f"sources={srcs}", f"seed={self.cfg.seed}", *overrides, *clock]  # fmt: skip
            print("  $", " ".join(cmd), f"> {work / 'train.log'}", flush=True)
            log = (work / "train.log").open("w")
            procs[kind] = (cmd, work, log, subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT))
        failed = []
        for cmd, work, log, proc in procs.values():
            code = proc.wait()
            log.close()
            if code != 0:
                tail = (work / "train.log").read_text(errors="replace")[-2000:]
                failed.append(f"{' '.join(cmd)}\n--- {work / 'train.log'} (tail) ---\n{tail}")
        if failed:
            raise SystemExit("tokenizer training failed:\n" + "\n".join(failed))
        for kind, (_, work, _, _) in procs.items():
            shutil.rmtree(self.tok / kind, ignore_errors=True)
            shutil.copytree(work / "tokenizer", self.tok / kind)

    @staticmethod
    def _kept_source_weights(kind: str, config: str, sources: list[Path], overrides: list[str]) -> list[str]:
        """The audio codec's `source_weights` (one per source, in order) without those of the sources this
        corpus lacks (a real corpus built from some of the sets), so that the two lists still pair up."""
        if kind != "audio" or all(s.exists() for s in sources):
            return overrides
        from omniseq.tokenizers.audio_train import AudioTrainConfig

        weights = load_config(AudioTrainConfig, REPO / config, overrides).source_weights  # as the subprocess reads it
        if len(weights) != len(sources):
            return overrides  # not paired with these sources: the trainer names the mismatch
        kept = [str(w) for w, s in zip(weights, sources) if s.exists()]
        return [*overrides, f"source_weights=[{','.join(kept)}]"]

    def tokenizers(self) -> str:
        from omniseq.tokenizers.text import TextTokenizer, TextTrainConfig
        from omniseq.tokenizers.video import FrameVideoConfig, FrameVideoTokenizer

        corpus = self.out / "corpus"
        images = [corpus / s for s in self.cfg.image_sources]
        if not images:
            raise ConfigError("image_sources: empty; name the image folders (or .npz files) under the corpus")
        missing = [str(p) for p in images if not p.exists()]  # a real corpus without emoji has no emoji folder
        if len(missing) == len(images):
            raise ConfigError(f"image_sources: {missing} not found; rebuild the corpus (--redo corpus: corpora "
                              "built before 2026-12-08 keep their scenes in media/image) or fix the key")  # fmt: skip
        if missing:
            print(f"  image_sources: {missing} not in this corpus; the image tokenizer trains without them")
        text, _ = TextTokenizer.train([corpus / "text.txt"], self.tok / "text",
                                      TextTrainConfig(vocab_size=self.cfg.text_vocab, seed=self.cfg.seed))  # fmt: skip
        # Both tokenizers train on the train split only: the audio codec on its pair files, the image VQ on the
        # train folders (media/<kind>/train in either world), so no held-out item shapes a codebook.
        audio = [corpus / s for s in self.cfg.audio_sources]
        self._train_media_tokenizers({
            "image": (self.cfg.image_tokenizer, images, self.cfg.image_overrides),
            "audio": (self.cfg.audio_tokenizer, audio, self.cfg.audio_overrides),
        })  # fmt: skip
        video = FrameVideoTokenizer.from_image_dir(FrameVideoConfig(image_tokenizer=str(self.tok / "image")))
        video.save(self.tok / "video")
        return f"text {text.vocab_size} pieces; image, audio and video tokenizers in {self.tok}"

    def vocab(self) -> str:
        from omniseq.tokenizers.vocab import build_layout, load_tokenizers

        text, media = load_tokenizers(self.tok / "text", {m: self.tok / m for m in ("image", "audio", "video")})
        layout = build_layout(text, media)
        layout.save(self.out / "vocab")
        return f"{layout.size} ids, hash {layout.hash[:12]}"

    def shards(self) -> str:
        from omniseq.data.shards import ShardConfig, build_shards

        made = []
        for name in SHARD_SETS:
            cfg = load_config(ShardConfig, REPO / self.cfg.shard_configs.format(name=name), [f"root={self.out}"])
            if not all(Path(c.path).is_file() for c in cfg.corpora):
                continue  # the demo's speech, when espeak-ng is absent
            m = build_shards(cfg, progress=True)
            made.append(f"{name} {m['samples']} docs/{m['tokens']['total']} tokens")
        return "; ".join(made)

    def stage(self, step: str) -> str:
        from omniseq.train.config import StageConfig

        config = REPO / f"configs/stages/{STAGES[step]}.yaml"
        overrides = self._stage_overrides(step)
        stage = load_config(StageConfig, config, overrides)
        if self.cfg.reproducible:
            overrides.append("max_minutes=0")
        elif self.cfg.train_minutes:
            # 6 significant digits, so a small positive share never rounds to 0 (= no budget)
            overrides.append(f"max_minutes={self.stage_minutes(step):.6g}")
        present = [s for s in stage.data.sources if (Path(s.path) / "manifest.json").is_file()]
        if len(present) < len(stage.data.sources):  # no speech shards without espeak-ng
            srcs = ",".join(f"{{path: '{s.path}', share: {s.share}}}" for s in present)
            overrides.append(f"data.sources=[{srcs}]")
        launch = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={self.cfg.nproc}",
                  f"--master_port={free_port()}"] if self.cfg.nproc > 1 else [sys.executable]  # fmt: skip
        out = REPO / stage.out_dir  # the stage runs in REPO: a relative out_dir is relative to it
        marker = out / STOPPED_FILE
        marker.unlink(missing_ok=True)  # the trainer removes it too, but a run that fails before that must not find it
        run([*launch, "-m", "omniseq.train", "--config", str(config), *overrides], stopped=marker)
        result = json.loads((out / "result.json").read_text())
        held = f"; held-out {result['eval/loss']:.3f}" if "eval/loss" in result else ""
        short = result.get("steps", stage.steps) < stage.steps
        fitted = f"; {result['steps']} of {stage.steps} steps fit train_minutes" if short else ""
        return f"loss {result['train/loss']:.3f}{held}{fitted}"

    def _stage_overrides(self, step: str) -> list[str]:
        return stage_overrides(self.cfg, step)

    def stage_minutes(self, step: str) -> float:
        """The stage's share of train_minutes: its planned tokens over those of the stages this run trains (all
        four, unless some were done before: a rerun from a later stage gives its stages the whole budget)."""
        todo = [s for s in STAGES if s in self.pending] or list(STAGES)
        return self.cfg.train_minutes * self._planned_tokens[step] / sum(self._planned_tokens[s] for s in todo)

    @cached_property
    def _planned_tokens(self) -> dict[str, int]:
        """steps x grad_accum x batch x seq_len of each stage, from its config (loaded once per recipe run)."""
        from omniseq.train.config import StageConfig

        def tokens(step: str) -> int:
            s = load_config(StageConfig, REPO / f"configs/stages/{STAGES[step]}.yaml", self._stage_overrides(step))
            return s.steps * s.grad_accum * s.data.batch_size * s.data.seq_len

        return {step: tokens(step) for step in STAGES}

    def _sample_config(self):
        from omniseq.sample.run import SampleConfig

        cfg = SampleConfig(
            checkpoint=str(self.out / "sft" / "export"),
            text_tokenizer=str(self.tok / "text"),
            media_tokenizers={m: str(self.tok / m) for m in ("image", "audio", "video")},
            out=str(self.out / "samples"),
        )
        return load_config(cfg, None, self.cfg.sample_overrides)

    def _prompts(self) -> list:
        from omniseq.document import Segment
        from omniseq.sample.run import Prompt

        def text(t: str, force: str | None = None) -> Prompt:
            return Prompt([Segment("text", text=t)], force)

        def ask(t: str, modality: str, corpus_file: str, key: str, force: str | None = None) -> list[Prompt]:
            path = self.out / "corpus" / corpus_file  # the first held-out item of a pair file, when present
            first = next((ln for ln in path.read_text().splitlines() if ln.strip()), None) if path.is_file() else None
            if first is None:
                return []
            media = Path(json.loads(first)[key])
            media = media if media.is_absolute() else path.parent / media
            return [Prompt([Segment("text", text=t), Segment(modality, media=media)], force)]

        if self.cfg.world == "real":
            return [
                text("draw the digit seven.", "image"),
                text("say three.", "audio"),
                text("make the sound of rain.", "audio"),
                *ask("what digit is this? ", "image", "digit_image.eval.jsonl", "image"),
                *ask("what number is said? ", "audio", "digit_speech.eval.jsonl", "audio"),
                # not forced: a chained answer (RealCorpusConfig.chain) says the digit before its image
                *ask("draw the digit you hear. ", "audio", "digit_speech.eval.jsonl", "audio"),
            ]
        return [
            text("show me a large red circle at the top left.", "image"),
            text("show me a small blue square at the bottom right.", "image"),
            text("hum C E G.", "audio"),
            text("play a tone that falls.", "audio"),
            text("make a video of a green triangle moving left.", "video"),
            *ask("what melody is this? ", "audio", "melody.eval.jsonl", "audio"),
        ]

    def samples(self) -> str:
        from omniseq.sample.run import SamplingSession

        prompts = self._prompts()
        manifest = SamplingSession(self._sample_config()).run(prompts)
        ok = sum(r["error"] is None for r in manifest["rows"])
        return f"{ok}/{len(prompts)} prompts rendered -> {self.out / 'samples' / 'index.html'}"

    def eval_config(self):
        """The eval step's config (the world's), with `eval_overrides`; its keys checked."""
        sample = self._sample_config()
        if not any(o.partition("=")[0].strip() == "batch_size" for o in self.cfg.sample_overrides):
            sample.batch_size = 16  # the eval's default; a batch_size in sample_overrides is the user's
        if self.cfg.world == "real":
            from omniseq.eval.real import RealEvalConfig, check_config

            cfg = RealEvalConfig(corpus=str(self.out / "corpus"), per_direction=self.cfg.eval_per_direction,
                                 scorers=str(self.out / "scorers"), out=str(self.out / "eval"), seed=self.cfg.seed,
                                 sample=sample, **({"data": self.cfg.data} if self.cfg.data else {}))  # fmt: skip
        else:
            from omniseq.eval.harness import EvalConfig, check_config

            cfg = EvalConfig(corpus=str(self.out / "corpus"), per_direction=self.cfg.eval_per_direction,
                             out=str(self.out / "eval"), sample=sample,
                             perplexity_sources=[str(self.out / "shards" / "pairs_eval")])  # fmt: skip
        cfg = load_config(cfg, None, self.cfg.eval_overrides)
        check_config(cfg)
        return cfg

    def eval(self) -> str:
        if self.cfg.world == "real":
            from omniseq.eval.real import evaluate, format_table
        else:
            from omniseq.eval.harness import evaluate, format_table
        cfg = self.eval_config()
        results = evaluate(cfg)
        print(format_table(results))
        return f"table -> {Path(cfg.out).resolve() / 'results.md'}"

    def step(self, name: str) -> str:
        return self.stage(name) if name in STAGES else getattr(self, name)()


def step_files(cfg: RecipeConfig, name: str) -> dict[str, str]:
    """The config files step `name` reads besides the recipe (the tokenizers' and shard sets' YAMLs, a stage's
    YAML and DeepSpeed JSON, each YAML with its `base` chain) -> a digest of their settings: an edit to a
    comment or the layout leaves it, one to a value changes it."""
    if name == "tokenizers":
        yamls = [cfg.image_tokenizer, cfg.audio_tokenizer]
    elif name == "shards":
        yamls = [cfg.shard_configs.format(name=s) for s in SHARD_SETS]
    elif name in STAGES:
        yamls = [f"configs/stages/{STAGES[name]}.yaml"]
    else:
        return {}
    settings: dict[str, object] = {}
    for path in yamls:
        try:
            settings.update(config_sources(REPO / path))
        except ConfigError:  # gone since (or unreadable): recorded so, refused or kept like any other change
            settings[str((REPO / path).resolve())] = "missing"
    if name in STAGES:
        from omniseq.train.config import StageConfig

        ds = REPO / load_config(StageConfig, REPO / yamls[0], stage_overrides(cfg, name)).deepspeed
        settings[str(ds.resolve())] = json.loads(ds.read_text()) if ds.is_file() else "missing"

    def shown(path: str) -> str:
        p = Path(path)
        return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else path

    return {
        shown(path): hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]
        for path, value in settings.items()
    }


def step_inputs(cfg: RecipeConfig, name: str) -> dict:
    """The recipe keys that step `name` and the steps before it depend on, with their values, and under
    `files` the digests of the config files those steps read (step_files)."""
    upto = STEPS.index(name)
    values = asdict(cfg)
    # per_stage by stage: changing sft's entry leaves the stages before it valid
    values["per_stage"] = {s: v for s, v in values["per_stage"].items() if s in STEPS and STEPS.index(s) <= upto}
    inputs = {k: values[k] for k, first in FIRST_STEP.items() if STEPS.index(first) <= upto}
    inputs["files"] = {f: d for s in STEPS[: upto + 1] for f, d in step_files(cfg, s).items()}
    return inputs


def check_step_inputs(cfg: RecipeConfig, done: Path, name: str, keep: bool = False) -> None:
    """Refuse to reuse a step done, or started and not finished, with other keys (a run made before the record
    has none to check); with `keep` (--keep-done), say what differs and go on."""
    record = done / f"{name}.inputs.json"
    if not record.is_file():
        return
    how = "done" if (done / name).exists() else "started (not finished)"
    then, now = json.loads(record.read_text()), json.loads(json.dumps(step_inputs(cfg, name)))
    changed = sorted(k for k in now if k in then and then[k] != now[k] and k != "files")
    files_then, files_now = then.get("files", now["files"]), now["files"]  # older records kept no files
    edited = sorted(f for f in {*files_then, *files_now} if files_then.get(f) != files_now.get(f))
    if changed or edited:
        firsts = [FIRST_STEP[k] for k in changed if k != "per_stage"]
        if "per_stage" in changed:
            firsts += [s for s in STAGES if then["per_stage"].get(s) != now["per_stage"].get(s)]
        readers = {f: s for s in reversed(STEPS[: STEPS.index(name) + 1]) for f in step_files(cfg, s)}
        firsts += [readers.get(f, name) for f in edited]  # a file no longer read: a key above changed
        first = min(firsts, key=STEPS.index)
        diff = "; ".join([*(f"{k}: {then[k]!r} then, {now[k]!r} now" for k in changed),
                          *(f"{f}: its settings changed" for f in edited)])  # fmt: skip
        if keep:
            print(f"  {name}: kept (--keep-done), though {how} with other settings ({diff})", flush=True)
            return
        raise ConfigError(
            f"{done.parent}: step {name!r} was {how} with other settings ({diff}); rerun from {first!r} with "
            f"--redo {first}, write to another --out, or reuse it as it is with --keep-done"
        )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="a recipe YAML (configs/recipes/); default: the demo")
    ap.add_argument("--out", help="output folder (default: the recipe's `out`)")
    ap.add_argument("--scale", choices=("small", "micro"), default="small")
    ap.add_argument("--redo", choices=STEPS, help="rerun this step and every later one")
    ap.add_argument("--until", choices=STEPS, default=STEPS[-1], help="stop after this step (make shards, ...)")
    keep = "reuse the steps done before even where they were made with other settings (printed)"
    ap.add_argument("--keep-done", action="store_true", help=keep)
    ap.add_argument("overrides", nargs="*", help="key=value overrides of RecipeConfig")
    args = ap.parse_intermixed_args(argv)
    base = MICRO if args.scale == "micro" else RecipeConfig()
    overrides = list(args.overrides) + ([f"out={args.out}"] if args.out else [])
    cfg = load_config(base, args.config, overrides)
    if cfg.world not in WORLDS:
        raise ConfigError(f"world: expected one of {WORLDS}, got {cfg.world!r}")
    unknown = set(cfg.per_stage) - set(STAGES)
    if unknown:
        raise ConfigError(f"per_stage: unknown stage(s) {sorted(unknown)}; expected {list(STAGES)}")
    if cfg.train_minutes < 0:
        raise ConfigError(f"train_minutes: expected >= 0 (0 = no budget), got {cfg.train_minutes}")
    recipe, done = Recipe(cfg), Path(cfg.out) / ".done"
    recipe.eval_config()  # its keys checked now, not after an hour of training
    done.mkdir(parents=True, exist_ok=True)
    if args.redo:
        for s in STEPS[STEPS.index(args.redo) :]:
            (done / s).unlink(missing_ok=True)
            (done / f"{s}.inputs.json").unlink(missing_ok=True)
            for work in WORK_DIRS.get(s, ()):
                shutil.rmtree(Path(cfg.out) / work, ignore_errors=True)
    timings, t_all = [], time.perf_counter()
    recipe.pending = {s for s in STEPS if not (done / s).exists()}
    for name in STEPS[: STEPS.index(args.until) + 1]:
        # a step started before and not finished resumes its working folders (a stage its checkpoints, the
        # shard builder its shards): checked like a done one, so it goes on only with the settings it started with
        if (done / name).exists() or name in WORK_DIRS:
            check_step_inputs(cfg, done, name, args.keep_done)
        if (done / name).exists():
            timings.append((name, None, (done / name).read_text().strip()))
            continue
        print(f"\n== {name}", flush=True)
        t0 = time.perf_counter()
        inputs = step_inputs(cfg, name)  # before the step: a file edited while it runs is not what it read
        (done / f"{name}.inputs.json").write_text(json.dumps(inputs, indent=1, sort_keys=True) + "\n")
        summary = recipe.step(name)
        timings.append((name, time.perf_counter() - t0, summary))
        (done / name).write_text(summary + "\n")
    print(f"\n== {cfg.world} recipe finished in {time.perf_counter() - t_all:.0f} s ({cfg.out})")
    for name, secs, summary in timings:
        print(f"  {name:<11} {'(done before)' if secs is None else f'{secs:6.1f} s':>13}  {summary}")


if __name__ == "__main__":
    from omniseq.cli import run as run_cli

    run_cli(main)
