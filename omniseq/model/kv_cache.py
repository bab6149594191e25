"""A static KV cache held in buffers (gpt-fast style) so that a one-token decode step has fixed shapes and
torch.compile can capture it (with CUDA graphs under mode="reduce-overhead").

Slot s of the cache holds the keys/values of position s. Rows of different prompt lengths therefore need
no left-padding: each row carries its own positions. A prompt batch is right-padded; row b writes slots
0..T-1 in prefill and its next token goes to slot lengths[b]. The padding keys left in slots >= lengths[b]
are harmless: a query at position p only sees slots <= p, and slot p is written before it is read.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn


class KVCache(nn.Module):
    """Keys and values of one attention layer: k, v [B, Hkv, S, D] (non-persistent buffers)."""

    def __init__(self, batch_size: int, n_kv_heads: int, max_seq_len: int, head_dim: int, dtype, device=None):
        super().__init__()
        shape = (batch_size, n_kv_heads, max_seq_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    @property
    def batch_size(self) -> int:
        return self.k.shape[0]

    @property
    def max_seq_len(self) -> int:
        return self.k.shape[2]

    def update(self, positions: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write k/v [B, Hkv, T, D] at slots positions [B, T]; return the whole cache (k, v)."""
        rows = torch.arange(k.shape[0], device=k.device)[:, None].expand_as(positions)
        # Advanced indices separated by a slice put the indexed dims first: the value is [B, T, Hkv, D].
        self.k[rows, :, positions] = rearrange(k, "b h t d -> b t h d").to(self.k.dtype)
        self.v[rows, :, positions] = rearrange(v, "b h t d -> b t h d").to(self.v.dtype)
        return self.k, self.v

    def reset(self) -> None:
        """Zero the cache for reuse with new prompts (not required for correctness: see the module doc)."""
        self.k.zero_()
        self.v.zero_()
