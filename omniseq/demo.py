"""`make demo`: the whole loop on the built-in demo world, step by step, with the time of each step.

    python -m omniseq.demo [--out runs/demo] [--scale small|micro] [key=value ...]

corpus -> tokenizers (text, image, audio, video) -> vocabulary -> shards -> stage1 -> stage2 -> stage3
-> sft -> samples (files + index.html) -> evaluation table. Every step writes its outputs under `out`
and a marker in `out/.done/`; a rerun skips finished steps (`--redo STEP` reruns one and all after it).
Training runs as `python -m omniseq.train` subprocesses, exactly as `make stage1` ... `make sft` do.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from omniseq.config import load_config

REPO = Path(__file__).resolve().parents[1]
STEPS = ("corpus", "tokenizers", "vocab", "shards", "stage1", "stage2", "stage3", "sft", "samples", "eval")
STAGES = {"stage1": "stage1_alignment", "stage2": "stage2_interleaved", "stage3": "stage3_speech", "sft": "sft"}
WORK_DIRS = {  # what a redone step deletes first, so that it starts over instead of resuming stale work
    "tokenizers": ("tokenizers/image_training", "tokenizers/audio_training"),
    "shards": ("shards",),
    **{s: (s,) for s in STAGES},
}
SHARD_SETS = ("pairs", "speech", "interleaved", "sft", "pairs_eval", "sft_eval")


@dataclass
class DemoRunConfig:
    out: str = "runs/demo"  # everything the demo writes
    scale: str = "small"  # small: `make demo` (minutes on a laptop CPU) | micro: the CI smoke test (seconds)
    seed: int = 0  # corpus, tokenizers, training and sampling
    text_vocab: int = 1000  # sentencepiece pieces of the demo text tokenizer
    image_tokenizer: str = "configs/tokenizers/image_demo.yaml"  # training config of the image VQ
    audio_tokenizer: str = "configs/tokenizers/audio_spec_demo.yaml"  # training config of the audio codec
    image_overrides: list[str] = field(default_factory=list)  # key=value for the image tokenizer's training
    audio_overrides: list[str] = field(default_factory=list)  # key=value for the audio tokenizer's training
    stage_overrides: list[str] = field(default_factory=list)  # key=value applied to every stage
    eval_per_direction: int = 20  # held-out prompts per direction in the table
    nproc: int = 2  # training processes (torchrun, gloo on CPU): one per core of the 2-core demo machine


MICRO = DemoRunConfig(
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
    ],  # fmt: skip
    eval_per_direction=1,
    nproc=1,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd: list[str]) -> None:
    """A step's subprocess, its output streamed; a failure stops the demo with the command named."""
    print("  $", " ".join(cmd), flush=True)
    if subprocess.call(cmd, cwd=REPO) != 0:
        raise SystemExit(f"demo step failed: {' '.join(cmd)}")


class Demo:
    def __init__(self, cfg: DemoRunConfig):
        self.cfg = cfg
        self.out = Path(cfg.out).resolve()
        self.tok = self.out / "tokenizers"

    def corpus(self) -> str:
        from omniseq.data.demo_corpus import DemoConfig, generate

        index = generate(DemoConfig(scale="tiny" if self.cfg.scale == "micro" else self.cfg.scale,
                                    seed=self.cfg.seed), self.out / "corpus")  # fmt: skip
        notes = "; ".join(index.get("notes", []))
        return f"{sum(sum(c.values()) for c in index['counts'].values())} items{'; ' + notes if notes else ''}"

    def _train_tokenizer(self, kind: str, config: str, sources: list[Path], overrides: list[str]) -> None:
        work = self.tok / f"{kind}_training"
        srcs = "[" + ",".join(str(s) for s in sources if s.exists()) + "]"
        run([sys.executable, "-m", "omniseq.tokenizers.train", kind, "--config", config, f"out={work}",
             f"sources={srcs}", f"seed={self.cfg.seed}", *overrides])  # fmt: skip
        shutil.rmtree(self.tok / kind, ignore_errors=True)
        shutil.copytree(work / "tokenizer", self.tok / kind)

    def tokenizers(self) -> str:
        from omniseq.tokenizers.text import TextTokenizer, TextTrainConfig
        from omniseq.tokenizers.video import FrameVideoConfig, FrameVideoTokenizer

        corpus = self.out / "corpus"
        text, _ = TextTokenizer.train([corpus / "text.txt"], self.tok / "text",
                                      TextTrainConfig(vocab_size=self.cfg.text_vocab, seed=self.cfg.seed))  # fmt: skip
        # The audio codec trains on the train split's files only; the image trainer reads folders, so it
        # sees the held-out scenes too (a tokenizer, not the model: the eval measures the model's mapping).
        self._train_tokenizer("image", self.cfg.image_tokenizer, [corpus / "media" / "image"], self.cfg.image_overrides)
        audio = [corpus / f"{k}.train.jsonl" for k in ("melody", "sound", "speech")]
        self._train_tokenizer("audio", self.cfg.audio_tokenizer, audio, self.cfg.audio_overrides)
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
            cfg = load_config(ShardConfig, REPO / f"configs/data/demo_{name}.yaml", [f"root={self.out}"])
            if not all(Path(c.path).is_file() for c in cfg.corpora):
                continue  # speech, when espeak-ng is absent
            m = build_shards(cfg, progress=True)
            made.append(f"{name} {m['samples']} docs/{m['tokens']['total']} tokens")
        return "; ".join(made)

    def stage(self, step: str) -> str:
        from omniseq.train.config import StageConfig

        config = REPO / f"configs/stages/{STAGES[step]}.yaml"
        overrides = [f"root={self.out}", f"seed={self.cfg.seed}", *self.cfg.stage_overrides]
        stage = load_config(StageConfig, config, overrides)
        present = [s for s in stage.data.sources if (Path(s.path) / "manifest.json").is_file()]
        if len(present) < len(stage.data.sources):  # no speech shards without espeak-ng
            srcs = ",".join(f"{{path: '{s.path}', share: {s.share}}}" for s in present)
            overrides.append(f"data.sources=[{srcs}]")
        launch = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={self.cfg.nproc}",
                  f"--master_port={free_port()}"] if self.cfg.nproc > 1 else [sys.executable]  # fmt: skip
        run([*launch, "-m", "omniseq.train", "--config", str(config), *overrides])
        result = json.loads((Path(stage.out_dir) / "result.json").read_text())
        held = f"; held-out {result['eval/loss']:.3f}" if "eval/loss" in result else ""
        return f"loss {result['train/loss']:.3f}{held}"

    def _sample_config(self):
        from omniseq.sample.run import SampleConfig

        return SampleConfig(
            checkpoint=str(self.out / "sft" / "export"),
            text_tokenizer=str(self.tok / "text"),
            media_tokenizers={m: str(self.tok / m) for m in ("image", "audio", "video")},
            out=str(self.out / "samples"),
        )

    def samples(self) -> str:
        from omniseq.document import Segment
        from omniseq.sample.run import Prompt, SamplingSession

        corpus = self.out / "corpus" / "media"
        melody = next(iter(sorted((corpus / "melody").glob("*.wav"))), None)
        prompts = [
            Prompt([Segment("text", text="show me a large red circle at the top left.")], "image"),
            Prompt([Segment("text", text="show me a small blue square at the bottom right.")], "image"),
            Prompt([Segment("text", text="hum C E G.")], "audio"),
            Prompt([Segment("text", text="play a tone that falls.")], "audio"),
            Prompt([Segment("text", text="make a video of a green triangle moving left.")], "video"),
        ]
        if melody is not None:
            prompts.append(Prompt([Segment("text", text="what melody is this? "), Segment("audio", media=melody)]))
        manifest = SamplingSession(self._sample_config()).run(prompts)
        ok = sum(r["error"] is None for r in manifest["rows"])
        return f"{ok}/{len(prompts)} prompts rendered -> {self.out / 'samples' / 'index.html'}"

    def eval(self) -> str:
        from omniseq.eval.harness import EvalConfig, evaluate, format_table

        sample = self._sample_config()
        sample.batch_size = 16
        cfg = EvalConfig(corpus=str(self.out / "corpus"), per_direction=self.cfg.eval_per_direction,
                         out=str(self.out / "eval"), sample=sample,
                         perplexity_sources=[str(self.out / "shards" / "pairs_eval")])  # fmt: skip
        results = evaluate(cfg)
        print(format_table(results))
        return f"table -> {self.out / 'eval' / 'results.md'}"

    def step(self, name: str) -> str:
        return self.stage(name) if name in STAGES else getattr(self, name)()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="output folder (default runs/demo, runs/demo-micro for --scale micro)")
    ap.add_argument("--scale", choices=("small", "micro"), default="small")
    ap.add_argument("--redo", choices=STEPS, help="rerun this step and every later one")
    ap.add_argument("--until", choices=STEPS, default=STEPS[-1], help="stop after this step (make shards, ...)")
    ap.add_argument("overrides", nargs="*", help="key=value overrides of DemoRunConfig")
    args = ap.parse_intermixed_args(argv)
    base = MICRO if args.scale == "micro" else DemoRunConfig()
    overrides = list(args.overrides) + ([f"out={args.out}"] if args.out else [])
    cfg = load_config(base, None, overrides)
    demo, done = Demo(cfg), Path(cfg.out) / ".done"
    done.mkdir(parents=True, exist_ok=True)
    if args.redo:
        for s in STEPS[STEPS.index(args.redo) :]:
            (done / s).unlink(missing_ok=True)
            for work in WORK_DIRS.get(s, ()):
                shutil.rmtree(Path(cfg.out) / work, ignore_errors=True)
    timings, t_all = [], time.perf_counter()
    for name in STEPS[: STEPS.index(args.until) + 1]:
        if (done / name).exists():
            timings.append((name, None, (done / name).read_text().strip()))
            continue
        print(f"\n== {name}", flush=True)
        t0 = time.perf_counter()
        summary = demo.step(name)
        timings.append((name, time.perf_counter() - t0, summary))
        (done / name).write_text(summary + "\n")
    print(f"\n== demo finished in {time.perf_counter() - t_all:.0f} s ({cfg.out})")
    for name, secs, summary in timings:
        print(f"  {name:<11} {'(done before)' if secs is None else f'{secs:6.1f} s':>13}  {summary}")


if __name__ == "__main__":
    from omniseq.cli import run as run_cli

    run_cli(main)
