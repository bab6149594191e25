"""Which checkpoint a restarted run resumes from (docs/training.md): the newest one with a COMPLETE marker."""

from __future__ import annotations

import json
from pathlib import Path

from omniseq.train.checkpoint import COMPLETE, LATEST, latest_complete


def checkpoint(root: Path, step: int, complete: bool) -> str:
    """A checkpoint folder as a run leaves it: DeepSpeed's and the ranks' files, and COMPLETE once every rank
    finished writing (a run killed while writing leaves the files without it)."""
    tag = f"step{step:08d}"
    (root / tag / "global_step").mkdir(parents=True)
    (root / tag / "global_step" / "mp_rank_00_model_states.pt").write_bytes(b"weights")
    (root / tag / "rank00000.pt").write_bytes(b"data position")
    if complete:
        (root / tag / COMPLETE).write_text(json.dumps({"step": step, "world_size": 1}) + "\n")
    return tag


def test_a_checkpoint_without_complete_is_ignored_on_resume(tmp_path):
    root = tmp_path / "checkpoints"
    done = checkpoint(root, 2, complete=True)
    checkpoint(root, 4, complete=False)  # the run died while writing step 4: newer, but not resumable
    (root / LATEST).write_text(done)
    assert latest_complete(root) == done
    (root / LATEST).unlink()  # no `latest` file: the scan skips the incomplete folder too
    assert latest_complete(root) == done
    # `latest` naming a folder whose marker is gone (save() removes it while rewriting a tag): not trusted
    (root / LATEST).write_text("step00000004")
    assert latest_complete(root) == done
    (root / done / COMPLETE).unlink()  # no complete checkpoint at all: nothing to resume from
    assert latest_complete(root) is None


def test_the_newest_complete_checkpoint_wins_the_scan(tmp_path):
    root = tmp_path / "checkpoints"
    for step, complete in ((3, True), (10, True), (12, False)):
        checkpoint(root, step, complete)
    assert latest_complete(root) == "step00000010"  # by step, not by the incomplete folder's newer name
