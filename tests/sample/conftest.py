"""Helpers for the sampling tests: layouts per RVQ flattening and a stand-in for the model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omniseq.sample import SpanConstraints
from omniseq.sample.generate import CachelessDecoder
from omniseq.vocab import CodebookSpec, VocabLayout


def make_layout(text_spec, flatten: str = "layer", num_layers: int = 3, row_end: bool = True, shared_video=True):
    """Image 2x3 (row ends optional), audio K=8 with the given flattening, video on the image range or
    on its own 2x2 codebook."""
    video = (
        CodebookSpec("video", "test", 16, shares="image", row_end=row_end, rate=4.0)
        if shared_video
        else CodebookSpec("video", "test", 5, grid=(2, 2), row_end=not row_end, rate=4.0)
    )
    return VocabLayout.build(
        text_spec,
        [
            CodebookSpec("image", "test", 16, grid=(2, 3), row_end=row_end),
            CodebookSpec("audio", "test", 8, num_layers=num_layers, flatten=flatten, rate=50.0),
            video,
        ],
    )


@pytest.fixture(autouse=True)
def one_thread():
    """These tests run thousands of tiny ops: on the shared 2-core machine torch's thread pool only
    spins against the other processes (measured: a 60-step generation 4.3 s with the default, 0.35 s
    with one thread)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def layouts(text_tokenizer) -> dict:
    """Every flattening, with and without row ends and with a shared or own video codebook."""
    spec = text_tokenizer.spec()
    out = {}
    for flatten in ("frame", "layer", "first"):
        out[(flatten, True)] = make_layout(spec, flatten, row_end=True, shared_video=True)
        out[(flatten, False)] = make_layout(spec, flatten, row_end=False, shared_video=False)
    out[("layer1", True)] = make_layout(spec, "layer", num_layers=1)  # layer-major with one layer: no separators
    return out


class RandomLogits:
    """A stand-in model: logits depend only on a row's last token and position (so a row's output does
    not depend on its batch), plus a bias on the special tokens so that spans open often."""

    def __init__(self, layout: VocabLayout, seed: int, special_bias: float = 4.0, scale: float = 2.0):
        g = torch.Generator().manual_seed(seed)
        V = layout.size
        self.table = torch.randn(V, V, generator=g) * scale
        self.pos = torch.randn(32, V, generator=g)
        self.table[:, layout.text.size : layout.text.size + len(layout.specials)] += special_bias

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1])
        return self.table[ids] + self.pos[positions % 32]  # [B, T, V]

    def decoder(self) -> CachelessDecoder:
        return CachelessDecoder(self)


def allowed_ids(state: SpanConstraints, b: int = 0) -> set[int]:
    return set(np.flatnonzero(state.allowed()[b].numpy()).tolist())
