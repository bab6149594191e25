"""The real transformer plugs into the generation loop as a `Decoder` (its static-KV-cache methods match
the protocol): cached generation equals cacheless generation token for token, guidance rows included."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omniseq.sample import CachelessDecoder, ConstraintConfig, GenerateConfig, generate

model_mod = pytest.importorskip("omniseq.model")


def test_transformer_is_a_decoder_and_cache_matches_recompute(tiny_layout, text_tokenizer):
    L = tiny_layout
    torch.manual_seed(0)
    model = model_mod.Transformer(model_mod.ModelConfig(vocab_size=L.size, max_seq_len=128)).eval()
    bos = L.id("<bos>")
    prompts = [[bos, *text_tokenizer.encode("a red cat")], [bos], [bos, L.id("<|image|>")]]
    cfg = GenerateConfig(
        max_new_tokens=30,
        progress=False,
        check_constraints=True,
        constraints=ConstraintConfig(audio_max_frames=4),
    )
    force = [None, "audio", None]
    cached = generate(model, L, prompts, cfg, force=force)
    recomputed = generate(CachelessDecoder(lambda ids: model(ids).float()), L, prompts, cfg, force=force)
    for p, a, b in zip(prompts, cached, recomputed):
        assert np.array_equal(a, b)
        L.parse(np.concatenate([p, a]))
