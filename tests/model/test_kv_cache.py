"""Decoding with the static KV cache reproduces the full forward's logits, also for ragged prompt batches."""

from __future__ import annotations

import pytest
import torch

from omniseq.model.config import model_config
from omniseq.model.transformer import Transformer

V = 50


@pytest.fixture
def model() -> Transformer:
    torch.manual_seed(0)
    return Transformer.build(model_config("tiny", V, qk_norm=True)).eval()


def greedy_continuation(model, prompts, lengths, steps):
    """Prefill right-padded prompts, then decode `steps` greedy tokens; returns (tokens, logits per step)."""
    logits = model.prefill(prompts, lengths)
    positions = lengths.clone()
    tokens, all_logits = [], [logits]
    for _ in range(steps):
        nxt = logits.argmax(-1)
        tokens.append(nxt)
        logits = model.decode_step(nxt[:, None], positions)
        all_logits.append(logits)
        positions += 1
    return torch.stack(tokens, 1), all_logits


def test_cached_decoding_equals_the_full_forward_for_ragged_prompts(model):
    lengths = torch.tensor([5, 9, 2])
    prompts = torch.randint(0, V, (3, 9))
    prompts[0, 5:] = 0  # right padding
    prompts[2, 2:] = 7
    model.setup_cache(batch_size=3, max_seq_len=32)
    tokens, step_logits = greedy_continuation(model, prompts, lengths, steps=6)
    with torch.no_grad():
        for b in range(3):
            seq = torch.cat([prompts[b, : lengths[b]], tokens[b]])[None]
            full = model(seq)[0]  # [len + 6, V]
            for s, logits in enumerate(step_logits):
                torch.testing.assert_close(logits[b], full[lengths[b] - 1 + s], rtol=1e-4, atol=1e-4)


def test_cache_reuse_after_reset_gives_the_same_logits(model):
    prompts = torch.randint(0, V, (2, 6))
    model.setup_cache(2, 16)
    first = model.prefill(prompts)
    other = model.decode_step(torch.tensor([[3], [4]]), torch.tensor([6, 6]))
    model.reset_cache()
    assert all(layer.attn.cache.k.abs().sum() == 0 for layer in model.layers)
    torch.testing.assert_close(model.prefill(prompts), first, rtol=0, atol=0)
    torch.testing.assert_close(model.decode_step(torch.tensor([[3], [4]]), torch.tensor([6, 6])), other)
    model.clear_cache()
    with pytest.raises(RuntimeError, match="setup_cache"):
        model.decode_step(torch.tensor([[3], [4]]), torch.tensor([6, 6]))


def test_cache_rejects_mismatched_batch_and_oversized_cache(model):
    model.setup_cache(2, 16)
    with pytest.raises(ValueError, match="set up for 2"):
        model.prefill(torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="max_seq_len"):
        model.setup_cache(1, model.cfg.max_seq_len + 1)


@pytest.mark.slow
def test_compiled_decode_step_matches_eager(model):
    model.setup_cache(2, 16)
    prompts = torch.randint(0, V, (2, 5))
    model.prefill(prompts)
    ids, pos = torch.tensor([[1], [2]]), torch.tensor([5, 5])
    eager = model.decode_step(ids, pos)
    compiled = torch.compile(model.decode_step, fullgraph=True)
    torch.testing.assert_close(compiled(ids, pos), eager, rtol=1e-4, atol=1e-4)


def test_a_cache_in_another_dtype_than_the_model_decodes(model):
    """setup_cache(dtype=...) is documented: an fp32 cache under a bf16 model (SDPA refused the mixed dtypes)
    decodes as the fp32 model does, to bf16's precision."""
    prompts, lengths = torch.randint(0, V, (2, 6)), torch.tensor([6, 4])
    model.setup_cache(batch_size=2, max_seq_len=16)
    with torch.no_grad():
        tokens, reference = greedy_continuation(model, prompts, lengths, steps=3)
        half = model.to(torch.bfloat16)
        half.setup_cache(batch_size=2, max_seq_len=16, dtype=torch.float32)
        assert half.layers[0].attn.cache.k.dtype == torch.float32 and half.embed.weight.dtype == torch.bfloat16
        # the fp32 model's tokens are fed back (bf16 may pick another argmax): the prefill and 3 decode steps
        mixed = [half.prefill(prompts, lengths)]
        positions = lengths.clone()
        for s in range(tokens.shape[1]):
            mixed.append(half.decode_step(tokens[:, s, None], positions))
            positions += 1
    assert len(mixed) == len(reference) == 4
    for step, (got, want) in enumerate(zip(mixed, reference)):
        assert got.dtype == torch.float32 and want.abs().max() > 0.1  # logits worth comparing, not zeros
        torch.testing.assert_close(got, want, rtol=0.05, atol=0.05, msg=lambda m, step=step: f"step {step}: {m}")
