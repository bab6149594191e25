"""The chunked loss equals plain cross entropy, and its per-modality sums and weights are right."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from omniseq.model.loss import chunked_cross_entropy, logits_fit
from omniseq.vocab import MODALITY_ID


def data(N=37, D=16, V=101, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, D, generator=g, requires_grad=True)
    weight = torch.randn(V, D, generator=g, requires_grad=True)
    labels = torch.randint(0, V, (N,), generator=g)
    labels[::5] = -100
    modality = torch.randint(0, 4, (N,), generator=g)
    modality[labels == -100] = -1
    return hidden, weight, labels, modality


def test_chunked_loss_and_gradients_equal_plain_cross_entropy():
    hidden, weight, labels, _ = data()
    out = chunked_cross_entropy(hidden, weight, labels, chunk_tokens=8)  # 37 tokens: a ragged last chunk
    ref = F.cross_entropy(hidden @ weight.T, labels)
    torch.testing.assert_close(out.loss, ref)
    g = torch.autograd.grad(out.loss, (hidden, weight))
    g_ref = torch.autograd.grad(ref, (hidden, weight))
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b)


def test_kept_logits_give_the_recomputed_loss_and_gradients():
    hidden, weight, labels, modality = data()
    outs = [chunked_cross_entropy(hidden, weight, labels, modality, chunk_tokens=8, recompute=r) for r in (1, 0)]
    torch.testing.assert_close(outs[0].loss, outs[1].loss, rtol=0, atol=0)
    grads = [torch.autograd.grad(o.loss, (hidden, weight)) for o in outs]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_logits_fit_counts_fp32_bytes():
    assert logits_fit(1024, 256, 1.0)  # 1024 x 256 x 4 bytes = 1 MiB exactly
    assert not logits_fit(1025, 256, 1.0)
    assert not logits_fit(1, 1, 0.0)  # 0 MiB: always recompute


def test_bf16_hidden_states_give_an_fp32_loss_close_to_the_fp32_one():
    hidden, weight, labels, _ = data()
    out = chunked_cross_entropy(hidden.bfloat16(), weight.bfloat16(), labels, chunk_tokens=16)
    assert out.loss.dtype == torch.float32
    torch.testing.assert_close(out.loss, F.cross_entropy(hidden @ weight.T, labels), atol=0.1, rtol=0.02)


def test_per_modality_sums_and_counts():
    hidden, weight, labels, modality = data()
    out = chunked_cross_entropy(hidden, weight, labels, modality, chunk_tokens=8)
    per_token = F.cross_entropy(hidden @ weight.T, labels, reduction="none")
    for name, m in MODALITY_ID.items():
        sel = (modality == m) & (labels != -100)
        assert out.count[m].item() == sel.sum().item()
        torch.testing.assert_close(out.ce_sum[m], per_token[sel].sum())
        if sel.any():
            assert abs(out.per_modality()[name] - per_token[sel].mean().item()) < 1e-5


def test_modality_weights_scale_each_modality_over_the_token_count():
    hidden, weight, labels, modality = data()
    out = chunked_cross_entropy(hidden, weight, labels, modality, loss_weights={"image": 0.5, "audio": 0.0})
    per_token = F.cross_entropy(hidden @ weight.T, labels, reduction="none")
    w = torch.ones(4)
    w[MODALITY_ID["image"]], w[MODALITY_ID["audio"]] = 0.5, 0.0
    valid = labels != -100
    expected = (per_token * w[modality.clamp(min=0)] * valid).sum() / valid.sum()
    torch.testing.assert_close(out.loss, expected)


def test_z_loss_adds_the_mean_squared_logsumexp():
    hidden, weight, labels, _ = data()
    plain = chunked_cross_entropy(hidden, weight, labels)
    with_z = chunked_cross_entropy(hidden, weight, labels, z_loss=1e-3)
    valid = labels != -100
    z = torch.logsumexp(hidden @ weight.T, dim=-1)[valid].square().mean()
    torch.testing.assert_close(with_z.loss, plain.loss + 1e-3 * z)
