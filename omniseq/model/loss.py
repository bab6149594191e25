"""Cross entropy over a 100k+ vocabulary without materialising the full fp32 logits, reported per modality.

The output projection and the loss run chunk by chunk over tokens, and each chunk is wrapped in activation
checkpointing: backward keeps only the chunk's hidden states and recomputes its logits, so peak memory is
one chunk of fp32 logits ([loss_chunk_tokens, V]) instead of [B*T, V] (at B*T = 32k and V = 128k, 16 GiB in
fp32). The price is a second lm_head matmul per chunk in backward: where the logits are small (`logits_fit`),
the caller turns recomputation off (`recompute=False`), which gave the 2.5M-parameter CPU model with a
4,577-token vocabulary 1.13-1.20x the tokens/s (docs/benchmarks.md, "Kept logits").

Per-token CE is computed as logsumexp(logits) - logits[target] in fp32: the same logsumexp feeds the
optional z-loss (PaLM, Chowdhery et al. 2022; Chameleon kept logits from drifting with it), so the softmax
normaliser is computed once. Modalities are MODALITY_ID of omniseq.vocab (text 0, image 1, audio 2, video 3).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from omniseq.vocab import MODALITIES, MODALITY_ID

IGNORE_INDEX = -100


class LossOutput(dict):
    """What a forward with labels returns: sums and counts (not only means) so a trainer can all-reduce them.

    A dict with attribute access, like transformers' ModelOutput: DeepSpeed ZeRO-3 finds the tensors of a
    module's output only inside tuples, lists and dicts, and hooks them to gather parameters for backward.
      loss          scalar, differentiable: weighted_sum / n_tokens + z_loss * z_sum / n_tokens
      weighted_sum  scalar, differentiable: sum over label tokens of weight[modality] * CE
      ce_sum        [len(MODALITIES)] fp32, detached: unweighted CE summed per modality
      count         [len(MODALITIES)] fp32, detached: label tokens per modality
      z_sum         scalar fp32, detached: sum of logsumexp(logits)^2 over label tokens
    """

    loss = property(lambda self: self["loss"])
    weighted_sum = property(lambda self: self["weighted_sum"])
    ce_sum = property(lambda self: self["ce_sum"])
    count = property(lambda self: self["count"])
    z_sum = property(lambda self: self["z_sum"])

    def per_modality(self) -> dict[str, float]:
        """Mean CE of each modality that has label tokens (syncs with the device)."""
        ce, n = self.ce_sum.tolist(), self.count.tolist()
        return {m: ce[i] / n[i] for i, m in enumerate(MODALITIES) if n[i] > 0}


def modality_weights(loss_weights: dict[str, float] | None, device: torch.device) -> Tensor:
    """[len(MODALITIES)] fp32 weights, 1 for every modality not named."""
    w = torch.ones(len(MODALITIES), dtype=torch.float32, device=device)
    for name, value in (loss_weights or {}).items():
        if name not in MODALITY_ID:
            raise ValueError(f"loss_weights: unknown modality {name!r}; known: {list(MODALITIES)}")
        w[MODALITY_ID[name]] = value
    return w


def logits_fit(n_tokens: int, vocab: int, keep_mib: float) -> bool:
    """Whether the fp32 logits of n_tokens over `vocab` take at most keep_mib MiB (kept for backward then)."""
    return n_tokens * vocab * 4 <= keep_mib * 2**20


def _chunk_ce(hidden: Tensor, weight: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """hidden [n, D], weight [V, D], labels [n] -> (CE [n], logsumexp [n]) in fp32 (junk where ignored)."""
    logits = (hidden @ weight.T).float()  # [n, V]: the only fp32 logits alive at once, unless recompute=False
    lse = torch.logsumexp(logits, dim=-1)
    target = logits.gather(-1, labels.clamp(min=0)[:, None]).squeeze(-1)
    return lse - target, lse


def chunked_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    labels: Tensor,
    label_modality: Tensor | None = None,
    chunk_tokens: int = 2048,
    loss_weights: dict[str, float] | None = None,
    z_loss: float = 0.0,
    recompute: bool = True,
) -> LossOutput:
    """Loss of the projection `hidden @ weight.T` against `labels`.

    hidden [N, D] (any float dtype), weight [V, D], labels [N] (IGNORE_INDEX = -100 skipped), label_modality
    [N] (MODALITY_ID, -1 where ignored; None = all text). The mean is over label tokens, so a modality
    weight of 0.5 halves that modality's share of the gradient rather than being renormalised away.
    recompute=False keeps every chunk's logits for backward instead of recomputing them (faster, more memory).
    """
    ce_parts, lse_parts = [], []
    for start in range(0, hidden.shape[0], chunk_tokens):
        h, y = hidden[start : start + chunk_tokens], labels[start : start + chunk_tokens]
        if recompute and torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
            ce, lse = checkpoint(_chunk_ce, h, weight, y, use_reentrant=False)
        else:
            ce, lse = _chunk_ce(h, weight, y)
        ce_parts.append(ce)
        lse_parts.append(lse)
    ce, lse = torch.cat(ce_parts), torch.cat(lse_parts)  # [N] fp32

    valid = labels != IGNORE_INDEX
    validf = valid.float()
    modality = torch.zeros_like(labels) if label_modality is None else label_modality.clamp(min=0)
    modality = torch.where(valid, modality, 0)
    ce = torch.where(valid, ce, 0.0)
    z = torch.where(valid, lse.square(), 0.0)
    M = len(MODALITIES)
    ce_sum = torch.zeros(M, device=ce.device).index_add_(0, modality, ce.detach())
    count = torch.zeros(M, device=ce.device).index_add_(0, modality, validf)
    weighted_sum = (ce * modality_weights(loss_weights, ce.device)[modality]).sum()
    n = validf.sum().clamp(min=1.0)
    loss = weighted_sum / n
    if z_loss > 0:
        loss = loss + z_loss * z.sum() / n
    return LossOutput(loss=loss, weighted_sum=weighted_sum, ce_sum=ce_sum, count=count, z_sum=z.sum().detach())
