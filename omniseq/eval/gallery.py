"""What an evaluation's generation tasks made, to look at and listen to rather than read as a percentage.

For every task whose answer is an image, a clip or a video (the real table's text -> digit image or label ->
sound; the demo's text -> image, melody, sound, speech, video), `write_gallery` writes each generated item as a
file named by its place in the answers, what was asked and what the scorer or analyser made of it
(`text2digit_image/007-seven-as-one.png`, `.wav` for clips, `.mp4` for videos; lower-cased, other characters as
`_`), and one contact sheet per task (`text2digit_image.png`). With a few labels (the ten digits, ESC-10's
classes) the sheet has a column per asked label and up to `per_label` items down it; with many (the demo's
captions) it shows the first `max_items` items in a grid, each under its request. Each item is marked with what
was made of it: green when it scored 1, red at 0, orange between; clips appear as log-mel spectrograms, videos
as four frames on a 2 x 2 grid. A column of red sevens drawn as ones says at a glance what a row of 60% hides.
Items that made no span of the asked modality have no file; the sheet's title counts them, and says how many
of the made items it shows.
"""

from __future__ import annotations

import re
import shutil
import textwrap
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from omniseq.data.real_sets import DIGIT_WORDS
from omniseq.sample.render import write_media
from omniseq.tokenizers.audio import log_mel

COLUMNS_UP_TO = 12  # more distinct labels than this: a grid of items instead of a column per label


def _slug(text: str | None) -> str:
    return re.sub(r"[^a-z0-9]+", "_", str(text).lower()).strip("_")[:60] or "none"


def item_name(index: int, said: dict) -> str:
    """The file stem of answer `index`: `007-seven-as-one`, `012-dog_bark-as-rain`."""
    return f"{index:03d}-{_slug(said['label'])}-as-{_slug(said['scored_as'])}"


def write_gallery(
    out_dir: str | Path, answers: list[dict], media: list, modalities: list[str | None], rates: dict,
    per_label: int = 3, max_items: int = 30,
) -> dict:  # fmt: skip
    """`answers[i]` is the record of item i: task, label (what was asked), scored_as (what was made of the
    answer) and, optionally, score in [0, 1] (else: scored_as == label); `modalities[i]` the modality its task
    generates (None for a text answer); `media[i]` what the model generated (uint8 [H, W, 3], float [N] / [C, N]
    audio, uint8 [T, H, W, 3] video), None where it made no such span; `rates[modality]` what it plays at
    (`render.media_rate`: the audio's sample rate, the video's frames per second).

    Replaces `out_dir` (a rerun with other tasks leaves no stale files). Returns {"sheets": task -> sheet file
    name in `out_dir`, "no_span": task -> count, "errors": ["file: reason", ...]}: an output that cannot be
    written and a sheet that cannot be drawn are listed there and do not stop the rest, nor the evaluation
    that called this after computing its table."""
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
        name = item_name(i, said)
        try:
            write_media(folder / name, modality, made, rates.get(modality))
        except Exception as e:  # noqa: BLE001 (a codec's odd output or a writer's failure: listed, the rest goes on)
            errors.append(f"{name}: {type(e).__name__}: {e}")
            continue
        by_task[task].append((said, np.asarray(made), modality))
    sheets = {}
    for task in sorted(set(by_task) | set(no_span)):
        out.mkdir(parents=True, exist_ok=True)
        rows, missing = by_task.get(task, []), no_span.get(task, 0)
        try:
            _contact_sheet(task, rows, missing, rates.get("audio"), per_label, max_items, out / f"{task}.png")
        except Exception as e:  # noqa: BLE001 (a picture that cannot be drawn is not worth the table)
            errors.append(f"{task}.png: {type(e).__name__}: {e}")
            continue
        sheets[task] = f"{task}.png"
    return {"sheets": sheets, "no_span": dict(no_span), "errors": errors}


def _colour(said: dict) -> str:
    score = said.get("score")
    score = float(said["scored_as"] == said["label"]) if score is None else score
    return "tab:green" if score >= 1 else "tab:red" if score <= 0 else "tab:orange"


def _picture(made: np.ndarray, modality: str, sample_rate: int | None) -> np.ndarray:
    """What a cell shows: the image; four frames of a video, evenly spaced, in reading order on a 2 x 2 grid
    (fewer: side by side); a clip's log-mel spectrogram."""
    if modality == "image":
        return made
    if modality == "video":
        frames = [made[i] for i in np.linspace(0, len(made) - 1, min(4, len(made))).round().astype(int)]
        rows = [frames[:2], frames[2:]] if len(frames) == 4 else [frames]
        return np.concatenate([np.concatenate(r, axis=1) for r in rows], axis=0)
    wave = made.astype(np.float32)
    wave = wave.mean(0) if wave.ndim == 2 else wave.reshape(-1)  # [C, N]: the channels' mean
    # a clip of a frame or two is shorter than the STFT's reflect padding needs
    wave = torch.from_numpy(np.pad(wave, (0, max(0, 1024 - len(wave)))))[None]
    return log_mel(wave, sample_rate)[0].numpy()


def _contact_sheet(
    task: str, rows: list, missing: int, sample_rate: int | None, per_label: int, max_items: int, path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    digits_first = lambda w: (DIGIT_WORDS.index(w), "") if w in DIGIT_WORDS else (len(DIGIT_WORDS), w)  # noqa: E731
    labels = sorted({said["label"] for said, _, _ in rows}, key=digits_first)
    if len(labels) <= COLUMNS_UP_TO:  # a column per asked label
        columns = {label: [r for r in rows if r[0]["label"] == label][:per_label] for label in labels}
        cells = {(row, col): item for col, label in enumerate(labels) for row, item in enumerate(columns[label])}
        depth, width = max([len(c) for c in columns.values()] or [1]), max(1, len(labels))
        heads = {(0, col): textwrap.fill(f"asked: {label}", 24) for col, label in enumerate(labels)}
    else:  # a grid of the first items, each under its request
        width = 10
        cells = {divmod(k, width): item for k, item in enumerate(rows[:max_items])}
        depth = -(-len(cells) // width)
        heads = {at: textwrap.fill(said["label"], 24) for at, (said, _, _) in cells.items()}
    pictures = {at: _picture(made, modality, sample_rate) for at, (_, made, modality) in cells.items()}
    # a row as tall as its tallest picture (a two-frame video strip is half as tall as wide; spectrograms are
    # drawn square), with room for wrapped requests
    ratio = max([p.shape[0] / p.shape[1] for at, p in pictures.items() if cells[at][2] != "audio"] or [1.0])
    tall = 0.4 + 1.3 * min(ratio, 2.0) + 0.35 * max([h.count("\n") for h in heads.values()] or [0])
    fig, axes = plt.subplots(depth, width, figsize=(1.5 * width, tall * depth + 0.5), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for (row, col), (said, _, modality) in cells.items():
        ax = axes[row][col]
        ax.axis("on")
        ax.set_xticks([])
        ax.set_yticks([])
        if modality == "audio":
            ax.imshow(pictures[row, col], origin="lower", aspect="auto")
        else:
            ax.imshow(pictures[row, col])
        ax.set_xlabel(textwrap.fill(f"as {said['scored_as']}", 24), fontsize=7, color=_colour(said))
    for (row, col), head in heads.items():
        axes[row][col].set_title(head, fontsize=7)
    shown = f"; {len(cells)} of the {len(rows)} made shown" if len(cells) < len(rows) else ""
    made_none = f"; {missing} of {missing + len(rows)} made no span" if missing else ""
    fig.suptitle(f"{task}: generated (green: scored right, red: wrong, orange: in part){shown}{made_none}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
