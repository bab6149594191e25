"""Attention backends agree with each other and with a naive softmax reference on packed rows."""

from __future__ import annotations

import importlib

import pytest
import torch

from omniseq.model.attention import (
    AttentionBackend,
    attention,
    cu_seqlens_from_documents,
    document_causal_mask,
    prepare_mask,
    resolve_backend,
)


def naive_attention(q, k, v, document_ids):
    """Reference: explicit scores, -inf outside the document-causal mask, softmax, GQA by repetition."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    T = q.shape[2]
    allowed = torch.ones(T, T, dtype=torch.bool).tril() & (document_ids[:, :, None] == document_ids[:, None, :])
    scores = scores.masked_fill(~allowed[:, None], float("-inf"))
    return scores.softmax(-1) @ v


def qkv(B=2, Hq=4, Hkv=2, T=24, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, h, T, D, generator=g) for h in (Hq, Hkv, Hkv))


DOCS = torch.tensor([[0] * 10 + [1] * 6 + [2] * 8, [0] * 3 + [1] * 17 + [2] * 4], dtype=torch.int32)


def run(backend, q, k, v, docs):
    return attention(q, k, v, prepare_mask(docs, q.shape[0], q.shape[2], q.device, q.dtype, backend))


def test_sdpa_masked_equals_plain_causal_on_one_document():
    q, k, v = qkv()
    one_doc = torch.zeros(2, 24, dtype=torch.int32)
    torch.testing.assert_close(run("sdpa_masked", q, k, v, one_doc), run("sdpa_causal", q, k, v, None))


@pytest.mark.parametrize("backend", ["sdpa_masked", "auto"])
def test_backend_matches_naive_reference_on_packed_rows(backend):
    q, k, v = qkv()
    torch.testing.assert_close(run(backend, q, k, v, DOCS), naive_attention(q, k, v, DOCS))


@pytest.mark.parametrize("T, block", [(24, 8), (30, 8), (300, 128)])  # even, ragged, the real block
def test_cpu_query_blocks_give_whole_row_attention_and_gradients(monkeypatch, T, block):
    """The CPU's sdpa_masked in query blocks (each over the keys up to its end) equals the reference on
    packed rows, forward and backward, whether or not T is a multiple of the block."""
    attn = importlib.import_module("omniseq.model.attention")  # the package exports a function of that name

    g = torch.Generator().manual_seed(T)
    docs = torch.cumsum(torch.rand(2, T, generator=g) < 0.05, dim=1).to(torch.int32)  # documents of ~20
    monkeypatch.setattr(attn, "CPU_QUERY_BLOCK", block)
    q, k, v = (x.requires_grad_() for x in qkv(T=T, seed=T))
    out = run("sdpa_masked", q, k, v, docs)
    ref = naive_attention(q, k, v, docs)
    torch.testing.assert_close(out, ref)
    w = torch.randn(out.shape, generator=g)
    grads = torch.autograd.grad((out * w).sum(), (q, k, v))
    for a, b in zip(grads, torch.autograd.grad((ref * w).sum(), (q, k, v))):
        torch.testing.assert_close(a, b)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_forward_matches_naive_reference():
    # FlexAttention runs forward-only on the CPU (no backward there), so this parity check runs without grad.
    q, k, v = qkv(T=32)
    docs = torch.tensor([[0] * 20 + [1] * 12, [0] * 5 + [1] * 27], dtype=torch.int32)
    with torch.no_grad():
        out = run("flex", q, k, v, docs)
    torch.testing.assert_close(out, naive_attention(q, k, v, docs))


def test_document_causal_mask_blocks_future_and_other_documents():
    docs = torch.tensor([[0, 0, 1, 1, 2]])
    mask = document_causal_mask(docs)[0, 0]
    expected = torch.tensor(
        [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 1]],
        dtype=torch.bool,
    )
    assert torch.equal(mask, expected)


def test_cu_seqlens_cut_at_documents_and_rows():
    docs = torch.tensor([[0, 0, 0, 1, 1], [0, 1, 1, 1, 2]])
    cu, longest = cu_seqlens_from_documents(docs)
    assert cu.tolist() == [0, 3, 5, 6, 9, 10] and cu.dtype == torch.int32
    assert longest == 3


def test_auto_resolution_on_cpu_and_unsupported_backends():
    cpu = torch.device("cpu")
    assert resolve_backend("auto", cpu, torch.float32, has_documents=True) is AttentionBackend.sdpa_masked
    assert resolve_backend("auto", cpu, torch.float32, has_documents=False) is AttentionBackend.sdpa_causal
    with pytest.raises(RuntimeError, match="no backward on the CPU"):
        AttentionBackend.flex.assert_supported(cpu)
    with pytest.raises(RuntimeError, match="CUDA"):
        AttentionBackend.flash_varlen.assert_supported(cpu)
    with pytest.raises(ValueError, match="expected one of"):
        resolve_backend("xformers", cpu, torch.float32, True)
    with pytest.raises(ValueError, match="ignores document boundaries"):
        prepare_mask(DOCS, 2, 24, cpu, backend="sdpa_causal")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ["flex", "flash_varlen"])
def test_gpu_backends_match_sdpa_masked_forward_and_backward(backend):
    try:
        AttentionBackend(backend).assert_supported("cuda")
    except RuntimeError as e:
        pytest.skip(str(e))
    q, k, v = (x.cuda().bfloat16().requires_grad_() for x in qkv(T=256, D=64))
    docs = torch.tensor([[0] * 100 + [1] * 156, [0] * 7 + [1] * 200 + [2] * 49], dtype=torch.int32).cuda()
    out = run(backend, q, k, v, docs)
    ref = run("sdpa_masked", q, k, v, docs)
    torch.testing.assert_close(out, ref, atol=2e-2, rtol=2e-2)
    g = torch.autograd.grad(out.float().square().sum(), (q, k, v))
    g_ref = torch.autograd.grad(ref.float().square().sum(), (q, k, v))
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, atol=5e-2, rtol=5e-2)
