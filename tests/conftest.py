"""Shared fixtures: a small trained text tokenizer, tiny layouts, and the real data folder."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from omniseq.tokenizers.text import TextTokenizer, TextTrainConfig
from omniseq.vocab import CodebookSpec, VocabLayout

SHARED_DATA = Path(os.environ.get("OMNISEQ_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))

WORDS = (
    "the a cat dog sat ran on under mat red green blue circle square 1 2 3 42 2026 "
    "猫 犬 が 座った 漢字 Привет мир émoji naïve ñandú مرحبا 🙂 🎵 👀 ✨"
).split()


def multilingual_lines(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12))) for _ in range(n)]


@pytest.fixture(scope="session")
def text_tokenizer(tmp_path_factory) -> TextTokenizer:
    d = tmp_path_factory.mktemp("text_tok")
    corpus = d / "corpus.txt"
    corpus.write_text("\n".join(multilingual_lines(3000)) + "\n", encoding="utf-8")
    tok, _ = TextTokenizer.train([corpus], d / "tok", TextTrainConfig(vocab_size=400))
    return tok


@pytest.fixture(scope="session")
def tiny_layout(text_tokenizer) -> VocabLayout:
    """Every modality: image 2x3 grid with row ends, audio 3 RVQ layers layer-major, video on image ids."""
    return VocabLayout.build(
        text_tokenizer.spec(),
        [
            CodebookSpec("image", "test", 16, grid=(2, 3), row_end=True),
            CodebookSpec("audio", "test", 8, num_layers=3, flatten="layer", rate=50.0),
            CodebookSpec("video", "test", 16, shares="image", row_end=True, rate=4.0),
        ],
    )


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (set OMNISEQ_SHARED_DATA to point at it)")
    return SHARED_DATA
