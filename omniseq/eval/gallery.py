"""What the real table's generation tasks made, to look at and listen to rather than read as a percentage.

For every task whose answer is an image or a clip (text -> digit image, spoken digit -> image, text -> spoken
digit, label -> sound), `write_gallery` writes each generated item as a file named by its place in the table's
`answers`, what was asked and what the scorer made of it (`text2digit_image/007-seven-as-one.png`, `.wav` for
clips; labels lower-cased, other characters as `_`), and one contact sheet per task (`text2digit_image.png`): a
column per asked label, up to `per_label` items down it, each marked with the scorer's label, green where it is
the asked one and red where not; clips are shown as their log-mel spectrograms. A column of red sevens drawn as
ones says at a glance what a row of 60% hides. Items that made no span of the asked modality have no file; the
sheet's title counts them.
"""

from __future__ import annotations

import re
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from omniseq.data.real_sets import DIGIT_WORDS
from omniseq.sample.render import write_png, write_wav
from omniseq.tokenizers.audio import log_mel


def _slug(text: str | None) -> str:
    return re.sub(r"[^a-z0-9]+", "_", str(text).lower()).strip("_") or "none"


def item_name(index: int, said: dict) -> str:
    """The file stem of answer `index`: `007-seven-as-one`, `012-dog_bark-as-rain`."""
    return f"{index:03d}-{_slug(said['label'])}-as-{_slug(said['scored_as'])}"


def write_gallery(
    out_dir: str | Path, answers: list[dict], media: list, modalities: list[str | None], sample_rate: int,
    per_label: int = 3,
) -> dict:  # fmt: skip
    """`answers[i]` is the real table's record of item i (task, label, scored_as); `modalities[i]` the modality
    its task generates (None for a text answer); `media[i]` what the model generated (uint8 [H, W, 3], or
    float [N] / [C, N] audio at `sample_rate`), None where it made no such span.

    Replaces `out_dir` (a rerun with other tasks leaves no stale files). Returns {"sheets": task -> sheet file
    name in `out_dir`, "no_span": task -> count, "errors": ["file: reason", ...]}: a decoded output that is not
    a valid image or clip is listed there, not written, and does not stop the rest."""
    out = Path(out_dir)
    shutil.rmtree(out, ignore_errors=True)
    by_task: dict[str, list[tuple[dict, np.ndarray, str]]] = defaultdict(list)
    no_span: dict[str, int] = defaultdict(int)
    errors = []
    for i, (said, made, modality) in enumerate(zip(answers, media, modalities, strict=True)):
        if modality is None:
            continue
        task = said["task"]
        if made is None:
            no_span[task] += 1
            continue
        folder = out / task
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / item_name(i, said)
        try:
            if modality == "image":
                write_png(path.with_suffix(".png"), made)
            elif modality == "audio":
                write_wav(path.with_suffix(".wav"), made, sample_rate)
            else:
                raise ValueError(f"no gallery for {modality} outputs")
        except ValueError as e:
            errors.append(f"{path.name}: {e}")
            continue
        by_task[task].append((said, np.asarray(made), modality))
    sheets = {}
    for task in sorted(set(by_task) | set(no_span)):
        sheets[task] = f"{task}.png"
        out.mkdir(parents=True, exist_ok=True)
        _contact_sheet(task, by_task.get(task, []), no_span.get(task, 0), sample_rate, per_label, out / sheets[task])
    return {"sheets": sheets, "no_span": dict(no_span), "errors": errors}


def _contact_sheet(task: str, rows: list, missing: int, sample_rate: int, per_label: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns: dict[str, list] = defaultdict(list)
    for said, made, modality in rows:
        if len(columns[said["label"]]) < per_label:
            columns[said["label"]].append((said, made, modality))
    labels = sorted(columns, key=lambda w: (DIGIT_WORDS.index(w), "") if w in DIGIT_WORDS else (len(DIGIT_WORDS), w))
    depth = max([len(c) for c in columns.values()] or [1])
    fig, axes = plt.subplots(depth, max(1, len(labels)), figsize=(1.5 * max(1, len(labels)), 1.6 * depth + 0.5),
                             squeeze=False)  # fmt: skip
    for ax in axes.flat:
        ax.axis("off")
    for col, label in enumerate(labels):
        for row, (said, made, modality) in enumerate(columns[label]):
            ax = axes[row][col]
            ax.axis("on")
            ax.set_xticks([])
            ax.set_yticks([])
            if modality == "image":
                ax.imshow(made)
            else:
                wave = made.astype(np.float32)
                wave = wave.mean(0) if wave.ndim == 2 else wave.reshape(-1)  # [C, N]: the channels' mean
                # a clip of a frame or two is shorter than the STFT's reflect padding needs
                wave = torch.from_numpy(np.pad(wave, (0, max(0, 1024 - len(wave)))))[None]
                ax.imshow(log_mel(wave, sample_rate)[0].numpy(), origin="lower", aspect="auto")
            right = said["scored_as"] == said["label"]
            ax.set_xlabel(f"as {said['scored_as']}", fontsize=8, color="tab:green" if right else "tab:red")
        axes[0][col].set_title(f"asked: {label}", fontsize=8)
    made_none = f"; {missing} of {missing + len(rows)} made no span" if missing else ""
    fig.suptitle(f"{task}: generated (green: the scorer's label is the asked one){made_none}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
