"""Attention behind one function, with the backend chosen by availability and config (OLMo-core style).

Every backend computes document-causal attention over packed rows (the packed-batch contract): position t
may attend to s iff s <= t and document_ids[s] == document_ids[t] (masked packing, as MIO and LWM train).

    flash_varlen  flash-attn's varlen kernel on a GPU: rows are cut into documents via cu_seqlens, so no
                  mask is built and no FLOPs are spent across documents. Needs `flash-attn` (GPU only).
    flex          FlexAttention with a document-causal BlockMask on a GPU: fully masked blocks are skipped.
                  FlexAttention has no backward on the CPU, so it is GPU only for training.
    sdpa_masked   scaled_dot_product_attention with a boolean [B, 1, T, T] mask: runs everywhere (the CPU
                  path) but materialises the mask, computes every masked block, and on a GPU an explicit
                  mask rules out SDPA's flash kernel. On the CPU the queries go in blocks of CPU_QUERY_BLOCK,
                  each over the keys up to its own end: the kernel computes masked blocks too, and causality
                  makes the keys after a block's end all masked (0.70x the attention time at 512 tokens).
    sdpa_causal   plain causal SDPA over the whole row (is_causal=True): right when a row is one document
                  (generation, unpacked data, the "plain causal" benchmark); refuses document_ids.

`auto` picks flash_varlen > flex > sdpa_masked on a GPU (sdpa_causal when no document_ids are given) and
sdpa_masked / sdpa_causal on the CPU. Tensors are [B, heads, T, head_dim]; k and v may have fewer heads
than q (GQA): every backend repeats them itself.
"""

from __future__ import annotations

import enum
import functools
import importlib.util
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor


class AttentionBackend(str, enum.Enum):
    auto = "auto"
    flash_varlen = "flash_varlen"
    flex = "flex"
    sdpa_masked = "sdpa_masked"
    sdpa_causal = "sdpa_causal"

    def assert_supported(self, device: torch.device | str, needs_backward: bool = True) -> None:
        """Raise with the reason when this backend cannot run on `device` (for training if needs_backward)."""
        cuda = torch.device(device).type == "cuda"
        if self is AttentionBackend.flash_varlen:
            if not cuda:
                raise RuntimeError("attention backend 'flash_varlen' needs a CUDA device")
            if not _flash_attn_installed():
                raise RuntimeError(
                    "attention backend 'flash_varlen' needs the flash-attn package (pip install flash-attn)"
                )
        if self is AttentionBackend.flex and not cuda and needs_backward:
            raise RuntimeError("attention backend 'flex' is GPU only: FlexAttention has no backward on the CPU")


@functools.cache
def _flash_attn_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def resolve_backend(
    name: str | AttentionBackend, device: torch.device, dtype: torch.dtype, has_documents: bool
) -> AttentionBackend:
    """The concrete backend for `name` (a config string, possibly 'auto') on `device` for `dtype`."""
    try:
        backend = AttentionBackend(name)
    except ValueError:
        known = [b.value for b in AttentionBackend]
        raise ValueError(f"model config: attention = {name!r}, expected one of {known}") from None
    if backend is AttentionBackend.auto:
        if not has_documents:
            return AttentionBackend.sdpa_causal
        if device.type != "cuda":
            return AttentionBackend.sdpa_masked
        # flash-attn only has fp16/bf16 kernels; an fp32 model falls through to FlexAttention.
        candidates = [AttentionBackend.flex]
        if dtype in (torch.float16, torch.bfloat16):
            candidates.insert(0, AttentionBackend.flash_varlen)
        for candidate in candidates:
            try:
                candidate.assert_supported(device)
                return candidate
            except RuntimeError:
                continue
        return AttentionBackend.sdpa_masked
    backend.assert_supported(device, needs_backward=torch.is_grad_enabled())
    return backend


@dataclass
class AttentionMask:
    """What one backend needs to know about the documents; built once per forward, shared by all layers."""

    backend: AttentionBackend
    dense: Tensor | None = None  # sdpa_masked: bool [B, 1, T, T]
    block: object = None  # flex: a BlockMask
    cu_seqlens: Tensor | None = None  # flash_varlen: int32 [n_docs + 1] over the flattened batch
    max_len: int = 0  # flash_varlen: the longest document


def prepare_mask(
    document_ids: Tensor | None,
    batch: int,
    seq_len: int,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    backend: str | AttentionBackend = "auto",
) -> AttentionMask:
    """Resolve the backend and build its mask from document_ids [B, T] (None: one document per row)."""
    chosen = resolve_backend(backend, torch.device(device), dtype, document_ids is not None)
    if chosen is AttentionBackend.sdpa_causal:
        if document_ids is not None:
            raise ValueError("attention backend 'sdpa_causal' ignores document boundaries: pass no document_ids")
        return AttentionMask(chosen)
    if document_ids is None:
        document_ids = torch.zeros(batch, seq_len, dtype=torch.int32, device=device)
    if chosen is AttentionBackend.sdpa_masked:
        return AttentionMask(chosen, dense=document_causal_mask(document_ids))
    if chosen is AttentionBackend.flex:
        return AttentionMask(chosen, block=_flex_block_mask(document_ids))
    cu_seqlens, max_len = cu_seqlens_from_documents(document_ids)
    return AttentionMask(chosen, cu_seqlens=cu_seqlens, max_len=max_len)


def attention(q: Tensor, k: Tensor, v: Tensor, mask: AttentionMask) -> Tensor:
    """Document-causal attention. q [B, Hq, T, D], k/v [B, Hkv, T, D] -> [B, Hq, T, D]."""
    gqa = k.shape[1] != q.shape[1]
    if mask.backend is AttentionBackend.sdpa_causal:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    if mask.backend is AttentionBackend.sdpa_masked:
        if q.is_cuda or q.shape[2] <= CPU_QUERY_BLOCK:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask.dense, enable_gqa=gqa)
        return _sdpa_masked_blocks(q, k, v, mask.dense, gqa)
    if mask.backend is AttentionBackend.flex:
        from torch.nn.attention.flex_attention import flex_attention

        fn = _compiled_flex() if q.is_cuda else flex_attention
        return fn(q, k, v, block_mask=mask.block, enable_gqa=gqa)
    return _flash_varlen(q, k, v, mask.cu_seqlens, mask.max_len)


# Queries per block of the CPU's sdpa_masked. Measured on the AVX2-only EPYC, one thread, forward + backward of
# [4, 4, 512, 48] with a document-causal mask: 49.5 ms whole, 34.6 ms in blocks of 128, 50.2 ms in blocks of 64
# (the per-call cost eats the saving); docs/benchmarks.md "Causal query blocks"
CPU_QUERY_BLOCK = 128


def _sdpa_masked_blocks(q: Tensor, k: Tensor, v: Tensor, dense: Tensor, gqa: bool) -> Tensor:
    """sdpa_masked with the queries in blocks, each attending keys [0, block end): the same result, since
    every key after a query is masked, without computing the masked upper blocks. Shapes are static (T
    decides the blocks), so torch.compile traces it once."""
    T = q.shape[2]
    out = []
    for start in range(0, T, CPU_QUERY_BLOCK):
        end = min(start + CPU_QUERY_BLOCK, T)
        out.append(
            F.scaled_dot_product_attention(
                q[:, :, start:end], k[:, :, :end], v[:, :, :end], attn_mask=dense[:, :, start:end, :end], enable_gqa=gqa
            )
        )
    return torch.cat(out, dim=2)


def document_causal_mask(document_ids: Tensor) -> Tensor:
    """Boolean [B, 1, T, T]: True where query t may attend key s (s <= t, same document)."""
    T = document_ids.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=document_ids.device).tril()
    same_doc = document_ids[:, :, None] == document_ids[:, None, :]  # [B, T, T]
    return rearrange(same_doc & causal, "b t s -> b 1 t s")


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    # Uncompiled FlexAttention materialises the full score matrix; compiled it generates a fused kernel.
    return torch.compile(flex_attention, dynamic=False)


def _flex_block_mask(document_ids: Tensor):
    from torch.nn.attention.flex_attention import create_block_mask

    def document_causal(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & (document_ids[b, q_idx] == document_ids[b, kv_idx])

    B, T = document_ids.shape
    return create_block_mask(document_causal, B, None, T, T, device=document_ids.device)


def cu_seqlens_from_documents(document_ids: Tensor) -> tuple[Tensor, int]:
    """Cumulative document lengths over the flattened batch (int32 [n_docs + 1]) and the longest one.

    A document starts wherever its id changes or a row starts, so every row's padding tail (its own id)
    is a document too and the rows never attend to each other once flattened.
    """
    B, T = document_ids.shape
    starts = torch.ones_like(document_ids, dtype=torch.bool)
    starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
    idx = torch.nonzero(starts.reshape(-1)).squeeze(1)
    bounds = torch.cat([idx, idx.new_tensor([B * T])]).to(torch.int32)
    return bounds, int((bounds[1:] - bounds[:-1]).max())


def _flash_varlen(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, max_len: int) -> Tensor:
    from flash_attn import flash_attn_varlen_func

    B = q.shape[0]
    qf, kf, vf = (rearrange(x, "b h t d -> (b t) h d") for x in (q, k, v))  # flash-attn's packed layout
    out = flash_attn_varlen_func(qf, kf, vf, cu_seqlens, cu_seqlens, max_len, max_len, causal=True)
    return rearrange(out, "(b t) h d -> b h t d", b=B)


def cached_attention(q: Tensor, k: Tensor, v: Tensor, query_pos: Tensor) -> Tensor:
    """Attention of new queries over a whole static KV cache whose slot s holds position s.

    q [B, Hq, Tq, D]; k/v [B, Hkv, S, D] (the cache); query_pos [B, Tq] -> [B, Hq, Tq, D]. Slot s is visible
    to a query at position p iff s <= p: slots past a row's own position may hold stale or padding keys.
    """
    slots = torch.arange(k.shape[2], device=q.device)
    mask = rearrange(slots[None, None, :] <= query_pos[:, :, None], "b t s -> b 1 t s")
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=k.shape[1] != q.shape[1])
