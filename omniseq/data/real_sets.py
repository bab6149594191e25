"""Readers and fixed train/eval splits of the small real sets in ../shared/data (issue 10).

The corpus builders (omniseq.data.real_corpus) and the scorers (omniseq.eval.real_scorers) both read the
sets through these functions, so a scorer never trains on an item the model is evaluated on. Splits:

    mnist          images 8000.. (the last 1000) are eval
    fsdd           the official test split (recording index 0-4 of every speaker and digit) is eval
    esc10_16k      fold 4 is eval, every other fold trains (the stored copy holds folds 1-4)
    ljspeech_mini  the last 4 clips are eval
    emoji_static   every emoji trains in the google style; the twitter style of every 10th is eval (a
                   style shift: the model learns the name from one style and is asked in the other)
    noto_animated  every 5th clip is eval; its name is known from the static emoji, never from a clip

Nothing is copied: audio rows carry absolute paths into the data folder.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DEFAULT_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"  # ../shared/data beside the checkout
MNIST_EVAL_FROM = 8000
LJ_EVAL = 4
EMOJI_EVAL_EVERY = 10
ANIMATED_EVAL_EVERY = 5


class MissingDataError(FileNotFoundError):
    """A real set is absent: names the file and where the sets come from."""


def require(path: Path) -> Path:
    if not path.exists():
        raise MissingDataError(f"{path} not found: the real sets live in ../shared/data (see its README.md)")
    return path


@dataclass
class AudioRow:
    path: str  # absolute path of the clip
    label: str  # the text the clip pairs with: a digit word, a sound class, a sentence
    split: str  # train | eval
    meta: dict  # set-specific fields (digit, speaker, fold, ...)


def mnist(data: str | Path = DEFAULT_DATA) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """images uint8 [N, 28, 28] (white digit on black), labels int [N], split str [N]."""
    m = np.load(require(Path(data) / "mnist" / "mnist_9000.npz"))
    split = np.where(np.arange(len(m["labels"])) >= MNIST_EVAL_FROM, "eval", "train")
    return m["images"], m["labels"].astype(np.int64), split


def fsdd(data: str | Path = DEFAULT_DATA) -> list[AudioRow]:
    root = Path(data) / "fsdd"
    rows = []
    with require(root / "metadata.csv").open(newline="") as f:
        for r in csv.DictReader(f):
            split = "eval" if r["official_split"] == "test" else "train"
            meta = {"digit": int(r["digit"]), "speaker": r["speaker"]}
            rows.append(AudioRow(str((root / r["path"]).resolve()), r["text"], split, meta))
    return rows


def esc10(data: str | Path = DEFAULT_DATA) -> list[AudioRow]:
    root = Path(data) / "esc10_16k"
    rows = []
    with require(root / "metadata.csv").open(newline="") as f:
        for r in csv.DictReader(f):
            split = "eval" if r["fold"] == "4" else "train"
            rows.append(AudioRow(str((root / r["path"]).resolve()), r["label"], split, {"fold": int(r["fold"])}))
    return rows


def ljspeech(data: str | Path = DEFAULT_DATA) -> list[AudioRow]:
    root = Path(data) / "ljspeech_mini"
    lines = [ln.rstrip("\n").split("|") for ln in require(root / "metadata.csv").read_text().splitlines() if ln]
    return [
        AudioRow(
            str((root / "flac" / f"{i}.flac").resolve()),
            text,
            "eval" if n >= len(lines) - LJ_EVAL else "train",
            {"id": i},
        )  # fmt: skip
        for n, (i, text) in enumerate(lines)
    ]


def _captions(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in require(path).read_text().splitlines() if ln.strip()]


def emoji(data: str | Path = DEFAULT_DATA, style: str = "google") -> tuple[np.ndarray, list[dict]]:
    """images uint8 [N, 64, 64, 3] of one style (google | twitter) and their caption rows (name, ...)."""
    root = Path(data) / "emoji_static"
    return np.load(require(root / f"{style}_64.npz"))["images"], _captions(root / "captions.jsonl")


def emoji_eval(index: int) -> bool:
    """Whether emoji `index` is asked about in the eval (twitter style)."""
    return index % EMOJI_EVAL_EVERY == 0


def animated_emoji(data: str | Path = DEFAULT_DATA) -> tuple[np.ndarray, list[dict], np.ndarray]:
    """clips uint8 [N, 16, 64, 64, 3], caption rows, split str [N]."""
    root = Path(data) / "noto_animated_emoji"
    clips = np.load(require(root / "clips_16x64x64.npz"))["clips"]
    split = np.where(np.arange(len(clips)) % ANIMATED_EVAL_EVERY == 0, "eval", "train")
    return clips, _captions(root / "captions.jsonl"), split
