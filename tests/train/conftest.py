"""A tiny world for trainer tests: codes-only corpora (no media tokenizers needed) built into shard sets."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from omniseq.data.corpus import CorpusConfig
from omniseq.data.shards import ShardConfig, build_shards
from omniseq.vocab import CodebookSpec, VocabLayout

REPO = Path(__file__).resolve().parents[2]
WORDS = "the a red green blue cat dog sat on mat circle square".split()


@pytest.fixture(scope="session")
def train_world(tmp_path_factory, text_tokenizer) -> dict:
    """vocab + two shard sets: `pretrain` (pairs and interleaved) and `sft` (conversations)."""
    d = tmp_path_factory.mktemp("train_world")
    layout = VocabLayout.build(
        text_tokenizer.spec(),
        [CodebookSpec("image", "codes", 16, grid=(2, 3), row_end=True),
         CodebookSpec("audio", "codes", 8, num_layers=2, flatten="layer")],
    )  # fmt: skip
    layout.save(d / "vocab")
    text_tokenizer.save(d / "text_tok")
    rng = np.random.default_rng(0)
    words = lambda k: " ".join(rng.choice(WORDS, size=k))  # noqa: E731
    pairs, inter, chat = [], [], []
    for _ in range(120):
        pairs.append({"image_codes": rng.integers(0, 16, (2, 3)).tolist(), "text": words(3)})
        inter.append({"segments": [{"text": words(4)}, {"audio_codes": rng.integers(0, 8, (2, 5)).tolist()}]})
        answer = {"role": "assistant", "image_codes": rng.integers(0, 16, (2, 3)).tolist()}
        chat.append({"messages": [{"role": "user", "text": "draw " + words(2)}, answer]})
    for name, rows in (("pairs", pairs), ("inter", inter), ("chat", chat)):
        (d / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    def shards(name, corpora):
        cfg = ShardConfig(corpora=corpora, vocab=str(d / "vocab"), text_tokenizer=str(d / "text_tok"),
                          out=str(d / name), name=name, samples_per_shard=60)  # fmt: skip
        build_shards(cfg, progress=False)
        return str(d / name)

    return {
        "dir": d,
        "vocab": str(d / "vocab" / "manifest.json"),
        "layout": layout,
        "pretrain": shards(
            "pretrain",
            [
                CorpusConfig(str(d / "pairs.jsonl"), "pair"),
                CorpusConfig(str(d / "inter.jsonl"), "interleaved"),
            ],
        ),  # fmt: skip
        "sft": shards("sft", [CorpusConfig(str(d / "chat.jsonl"), "conversation")]),
    }


def stage_yaml(world: dict, path: Path, **keys) -> Path:
    """A tiny stage config (CPU, seconds) written to `path`."""
    cfg = {
        "name": path.stem,
        "out_dir": str(path.parent / path.stem),
        "vocab": world["vocab"],
        "model_size": "tiny",
        "data": {"sources": [{"path": world["pretrain"], "share": 1.0}], "seq_len": 64, "batch_size": 2},
        "steps": 6,
        "log_every": 1,
        "save_every": 3,
        "tensorboard": False,
        "optim": {"lr": 3e-3},
        "deepspeed": str(REPO / "configs/deepspeed/zero2.json"),
    }
    for k, v in keys.items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) and isinstance(cfg.get(k), dict) else v
    import yaml

    path.write_text(yaml.safe_dump(cfg))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(config: Path, nproc: int = 1, overrides: tuple[str, ...] = (), check: bool = True, **popen):
    """Run `python -m omniseq.train` under torchrun with `nproc` CPU processes (gloo)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           f"--master_port={free_port()}", "-m", "omniseq.train", "--config", str(config), *overrides]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    if popen:
        return subprocess.Popen(cmd, cwd=REPO, env=env, **popen)
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    if check and res.returncode != 0:
        raise AssertionError(f"training failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-5000:]}")
    return res


def losses(out_dir: Path) -> dict[int, float]:
    """step -> train/loss; a resumed run appends, the last line for a step wins."""
    out = {}
    for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "train/loss" in r:
            out[r["step"]] = r["train/loss"]
    return out
