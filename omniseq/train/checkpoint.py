"""Checkpoints that a killed run resumes from, and the consolidated export that sampling reads.

    <out_dir>/checkpoints/step00000100/   DeepSpeed's files (model, optimizer, scheduler; ZeRO shards)
                                          + rank00000.pt per rank (data-stream position, RNG states)
                                          + COMPLETE, written by rank 0 after every rank has finished
    <out_dir>/checkpoints/latest          the tag of the newest COMPLETE checkpoint, replaced atomically
    <out_dir>/export/                     model.yaml + model.safetensors + vocab.json + export.json

A checkpoint without COMPLETE (the run died while writing it) is never resumed from. The data position
and RNG are per rank (each rank reads its own slice of the data), so a run resumes with the world
size it was saved with.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from omniseq.atomic import write_text_atomic
from omniseq.model.config import ModelConfig
from omniseq.model.hf import load_model_dir, save_model_dir
from omniseq.model.transformer import Transformer
from omniseq.vocab import VocabLayout, VocabMismatchError

COMPLETE, LATEST = "COMPLETE", "latest"
EXPORT_META = "export.json"


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def latest_complete(root: Path) -> str | None:
    """The newest tag with a COMPLETE marker (the `latest` file, else a scan)."""
    marker = root / LATEST
    if marker.is_file():
        tag = marker.read_text().strip()
        if (root / tag / COMPLETE).is_file():
            return tag
    tags = sorted(p.name for p in root.glob("step*") if (p / COMPLETE).is_file())
    return tags[-1] if tags else None


def save(engine, root: Path, step: int, common: dict, per_rank: dict, keep_last: int) -> str:
    """Collective: every rank calls it. Returns the tag.

    Then prunes: keeps the `keep_last` newest complete tags up to this one, and removes any tag past it. Those
    belong to a run this one left (`latest` pointed before them: a rollback, or a stop between a COMPLETE marker
    and `latest`), and left in place they would outrank this run's checkpoints in a scan or, pruned by name,
    make it delete the checkpoint it just wrote."""
    tag = f"step{step:08d}"
    rank, world = dist.get_rank(), dist.get_world_size()
    if rank == 0:
        (root / tag / COMPLETE).unlink(missing_ok=True)  # rewriting an abandoned run's tag: not complete meanwhile
    dist.barrier()
    engine.save_checkpoint(str(root), tag=tag, client_state=common, save_latest=False)
    torch.save({**per_rank, "rng": rng_state(), "world_size": world}, root / tag / f"rank{rank:05d}.pt")
    dist.barrier()
    if rank == 0:
        (root / tag / COMPLETE).write_text(json.dumps({"step": step, "world_size": world}) + "\n")
        write_text_atomic(root / LATEST, tag)
        tags = sorted(p for p in root.glob("step*") if p.is_dir())
        done = [p for p in tags if p.name <= tag and (p / COMPLETE).is_file()]
        for old in [*done[: max(len(done) - keep_last, 0)], *(p for p in tags if p.name > tag)]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return tag


def load(engine, root: Path, tag: str) -> tuple[dict, dict]:
    """Collective. Restores model, optimizer and scheduler; returns (common client state, this rank's state)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    mine = root / tag / f"rank{rank:05d}.pt"
    if not mine.is_file():
        raise FileNotFoundError(f"{mine} is missing: was {root / tag} written with {world} ranks?")
    per_rank = torch.load(mine, weights_only=False)
    if per_rank["world_size"] != world:
        raise ValueError(f"{root / tag} was written by {per_rank['world_size']} ranks; this run has {world}")
    _, common = engine.load_checkpoint(str(root), tag=tag)
    set_rng_state(per_rank["rng"])
    return common, per_rank


def export(state: dict[str, torch.Tensor], cfg: ModelConfig, out: Path, layout: VocabLayout, extra: dict) -> Path:
    """An omniseq model folder (model.yaml + model.safetensors, as omniseq.model.hf reads and exports)
    plus the vocabulary and the vocab hash: everything sampling and the HF exporter need. export.json is
    written last and removed first, so a folder caught mid-rewrite (a re-export killed halfway) is refused
    by `load_export` and the next stage's checks instead of pairing new weights with an old record."""
    (out / EXPORT_META).unlink(missing_ok=True)
    save_model_dir(Transformer.from_state_dict(cfg, {k: v.float() for k, v in state.items()}), out)
    layout.save(out / "vocab.json")
    (out / EXPORT_META).write_text(json.dumps({"vocab_hash": layout.hash, **extra}, indent=2, sort_keys=True) + "\n")
    return out


def load_export(path: str | Path, layout: VocabLayout | None = None, dtype: torch.dtype = torch.float32):
    """(model, layout) from an export folder; checks the vocab hash against `layout` when given."""
    path = Path(path)
    meta_path = path / EXPORT_META
    if not meta_path.is_file():
        raise FileNotFoundError(f"no exported model at {path}: {meta_path} is missing")
    saved_layout = VocabLayout.load(path / "vocab.json")
    if json.loads(meta_path.read_text())["vocab_hash"] != saved_layout.hash:
        raise VocabMismatchError(f"{path}: {EXPORT_META} and vocab.json disagree on the vocab hash")
    if layout is not None:
        layout.check_hash(saved_layout.hash, f"checkpoint {path}")
    return load_model_dir(path, dtype=dtype), saved_layout
