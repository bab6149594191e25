"""Fixtures for the data tests: a tiny .npy image tokenizer and small corpora of every format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from omniseq.data.corpus import CorpusConfig
from omniseq.data.shards import ShardConfig
from omniseq.tokenizers.base import MediaError, MediaTokenizer, register_tokenizer
from omniseq.vocab import CodebookSpec


@register_tokenizer
class NpyImageTokenizer(MediaTokenizer):
    """kind "test_image": the media file is a .npy array of 2x3 codes in [0, 16)."""

    kind = "test_image"
    modality = "image"

    @property
    def codebook_size(self) -> int:
        return 16

    def encode(self, media) -> np.ndarray:
        try:
            codes = np.load(media, allow_pickle=False)
        except (ValueError, OSError) as e:
            if isinstance(e, FileNotFoundError):
                raise
            raise MediaError(media, f"not a readable .npy ({e})") from None
        if codes.shape != (2, 3) or codes.min() < 0 or codes.max() >= 16:
            raise MediaError(media, f"expected 2x3 codes in [0, 16), got {codes.shape}")
        return codes

    def decode(self, codes):
        return codes

    def tokens_for(self, media) -> int:
        return 6

    def config_dict(self) -> dict:
        return {}

    def codebook_spec(self) -> CodebookSpec:
        return CodebookSpec("image", self.kind, 16, grid=(2, 3), row_end=True)

    @classmethod
    def from_config(cls, config, weights=None):
        return cls()


WORDS = "the a red green cat dog sat ran on under mat circle square".split()


def write_corpora(d: Path, n: int = 24, seed: int = 0) -> list[CorpusConfig]:
    """Pairs (image files), interleaved (inline image/audio codes), conversations and plain text."""
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    words = lambda k: " ".join(rng.choice(WORDS, size=k))  # noqa: E731
    pairs, inter, chat, text = [], [], [], []
    for i in range(n):
        np.save(d / f"img{i}.npy", rng.integers(0, 16, size=(2, 3)))
        pairs.append({"image": f"img{i}.npy", "text": words(int(rng.integers(1, 6)))})
        audio = rng.integers(0, 8, size=(3, int(rng.integers(2, 30)))).tolist()
        inter.append(
            {
                "segments": [
                    {"text": words(3)},
                    {"audio_codes": audio},
                    {"text": words(2)},
                    {"image_codes": rng.integers(0, 16, size=(2, 3)).tolist()},
                ]
            }
        )
        chat.append(
            {
                "messages": [
                    {"role": "user", "text": words(4)},
                    {"role": "assistant", "image": f"img{i}.npy"},
                    {"role": "assistant", "text": words(2)},
                ]
            }
        )
        text.append({"text": words(int(rng.integers(1, 40)))})
    out = []
    for name, rows, fmt in (
        ("pairs", pairs, "pair"),
        ("inter", inter, "interleaved"),
        ("chat", chat, "conversation"),
        ("text", text, "text"),
    ):
        (d / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        out.append(CorpusConfig(path=str(d / f"{name}.jsonl"), format=fmt))
    return out


@pytest.fixture
def shard_env(tmp_path, text_tokenizer, tiny_layout):
    """(ShardConfig for all four corpora, layout); the config writes to tmp_path/shards."""
    tiny_layout.save(tmp_path / "vocab")
    NpyImageTokenizer().save(tmp_path / "tok_image")
    cfg = ShardConfig(
        corpora=write_corpora(tmp_path / "corpus"),
        vocab=str(tmp_path / "vocab"),
        text_tokenizer=str(text_tokenizer.model_path.parent),
        media_tokenizers={"image": str(tmp_path / "tok_image")},
        out=str(tmp_path / "shards"),
        samples_per_shard=10,
        seed=3,
    )
    return cfg, tiny_layout
