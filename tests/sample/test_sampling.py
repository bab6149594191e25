"""Per-modality sampling settings, the sampler, guidance combination and unconditional prompts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omniseq.config import ConfigError, load_config
from omniseq.sample import GenerateConfig, ModalitySampling, Sampler, SamplingConfig, combine, uncond_prompt
from omniseq.sample.guidance import split_guided
from omniseq.vocab import MODALITY_ID

TEXT, IMAGE, AUDIO = (MODALITY_ID[m] for m in ("text", "image", "audio"))


def sampler(seeds, **per_modality) -> Sampler:
    cfg = SamplingConfig(**{m: ModalitySampling(**kw) for m, kw in per_modality.items()})
    return Sampler(cfg, seeds)


def test_defaults_follow_the_peers_and_images_are_never_greedy():
    cfg = SamplingConfig()
    assert (cfg.text.temperature, cfg.text.top_p) == (0.7, 0.9)
    assert (cfg.image.temperature, cfg.image.top_p, cfg.guidance.image) == (0.7, 0.9, 3.0)
    assert (cfg.audio.top_p, cfg.audio.repetition_penalty) == (0.7, 1.15)
    assert cfg.image.temperature > 0 and cfg.video.temperature > 0


def test_config_loads_with_overrides_and_rejects_bad_values():
    cfg = load_config(GenerateConfig, None, ["sampling.image.temperature=0.5", "sampling.guidance.image=5"])
    assert cfg.sampling.image.temperature == 0.5 and cfg.sampling.guidance.image == 5
    cfg.sampling.audio.top_p = 0.0
    with pytest.raises(ConfigError, match=r"sampling.audio.top_p: got 0.0, expected in \(0, 1\]"):
        cfg.sampling.validate()


def test_samples_stay_inside_the_allowed_set():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 50, generator=g) * 5
    allowed = torch.rand(6, 50, generator=g) < 0.2
    allowed[:, 0] = True
    s = sampler(list(range(6)), text=dict(temperature=1.5, top_p=1.0))
    for _ in range(20):
        tok = s.sample(logits, allowed, torch.full((6,), TEXT))
        assert allowed[torch.arange(6), tok].all()


def test_greedy_top_k_1_and_tiny_top_p_take_the_best_allowed_token():
    logits = torch.tensor([[5.0, 1.0, 4.0, 3.0]] * 3)
    allowed = torch.tensor([[False, True, True, True]] * 3)
    s = sampler(
        [0, 1, 2],
        text=dict(temperature=0.0),
        image=dict(temperature=1.0, top_k=1, top_p=1.0),
        audio=dict(temperature=1.0, top_p=1e-6),
    )
    tok = s.sample(logits, allowed, torch.tensor([TEXT, IMAGE, AUDIO]))
    assert tok.tolist() == [2, 2, 2]


def test_draws_follow_the_distribution():
    n = 4000
    probs = torch.tensor([0.5, 0.3, 0.2])
    s = sampler(list(range(n)), text=dict(temperature=1.0, top_p=1.0))
    tok = s.sample(probs.log().expand(n, 3), torch.ones(n, 3, dtype=torch.bool), torch.zeros(n, dtype=torch.long))
    freq = torch.bincount(tok, minlength=3).float() / n
    assert torch.allclose(freq, probs, atol=0.03), freq


def test_top_p_drops_the_tail():
    n = 500
    probs = torch.tensor([0.6, 0.3, 0.1])
    s = sampler(list(range(n)), text=dict(temperature=1.0, top_p=0.8))
    tok = s.sample(probs.log().expand(n, 3), torch.ones(n, 3, dtype=torch.bool), torch.zeros(n, dtype=torch.long))
    assert set(tok.tolist()) == {0, 1}


def test_repetition_penalty_applies_only_to_its_modality():
    logits = torch.tensor([[2.0, 1.9, 0.0]] * 2)
    seen = torch.tensor([[True, False, False]] * 2)
    s = sampler([0, 1], text=dict(temperature=0.0), audio=dict(temperature=0.0, repetition_penalty=1.15))
    tok = s.sample(logits, torch.ones(2, 3, dtype=torch.bool), torch.tensor([TEXT, AUDIO]), seen)
    assert tok.tolist() == [0, 1]  # 2.0 / 1.15 < 1.9 for the audio row only


def test_per_row_seeds_reproduce_and_differ():
    logits = torch.zeros(2, 1000)
    allowed = torch.ones(2, 1000, dtype=torch.bool)
    mod = torch.zeros(2, dtype=torch.long)
    cfg = dict(text=dict(temperature=1.0, top_p=1.0))
    a = sampler([7, 8], **cfg).sample(logits, allowed, mod)
    b = sampler([7, 8], **cfg).sample(logits, allowed, mod)
    c = sampler([8, 7], **cfg).sample(logits, allowed, mod)
    assert a.tolist() == b.tolist() and a.tolist() == c.flip(0).tolist() and a[0] != a[1]


def test_guidance_at_scale_1_equals_the_conditional_logits():
    g = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(4, 100, generator=g) * 10, torch.randn(4, 100, generator=g) * 10
    assert torch.equal(combine(cond, uncond, torch.ones(4)), cond)
    assert torch.equal(split_guided(torch.cat([cond, uncond]), torch.ones(4)), cond)
    scale = torch.tensor([1.0, 3.0, 1.0, 0.0])
    out = combine(cond, uncond, scale)
    assert torch.equal(out[[0, 2]], cond[[0, 2]])
    assert torch.allclose(out[1], uncond[1] + 3 * (cond[1] - uncond[1]), atol=1e-4)
    assert torch.allclose(out[3], uncond[3], atol=1e-4)


def test_guidance_scale_is_per_modality_and_never_for_text():
    s = Sampler(SamplingConfig(), [0, 0, 0, 0])
    scale = s.guidance_scale(torch.tensor([MODALITY_ID[m] for m in ("text", "image", "audio", "video")]))
    assert scale.tolist() == [1.0, 3.0, 1.0, 3.0]


def test_uncond_prompt_replaces_the_condition(tiny_layout, text_tokenizer):
    L = tiny_layout
    bos, un, img = L.id("<bos>"), L.id("<|uncond|>"), L.id("<|image|>")
    words = text_tokenizer.encode("a red square")
    assert uncond_prompt(L, [bos, *words, img]).tolist() == [bos, un, img]
    chat = [bos, L.id("<|user|>"), *words, L.id("<|end|>"), L.id("<|assistant|>")]
    assert uncond_prompt(L, chat).tolist() == [
        bos,
        L.id("<|user|>"),
        un,
        L.id("<|end|>"),
        L.id("<|assistant|>"),
    ]
    # a media condition and the text around it collapse to one <|uncond|>; an unfinished span is kept
    picture = L.media_ids("image", np.zeros((2, 3), dtype=np.int64)).tolist()
    partial = [img, L.code_range("image")[0]]
    assert uncond_prompt(L, [bos, *words, *picture, *words, *partial]).tolist() == [bos, un, *partial]
    # words the assistant already said (a chained answer) stay: only the request is the condition
    said = text_tokenizer.encode("seven.")
    assert uncond_prompt(L, [*chat, *said, img]).tolist() == [bos, L.id("<|user|>"), un, *chat[-2:], *said, img]
    # a user turn not yet finished is no request: the plain rule, which keeps an unfinished span
    assert uncond_prompt(L, [bos, L.id("<|user|>"), *words, *partial]).tolist() == [bos, L.id("<|user|>"), un, *partial]
