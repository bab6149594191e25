"""The generation loop against a stand-in model: random-logits fuzz, batching, guidance, budgets."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
import torch

from omniseq.document import DocumentCodec, Segment
from omniseq.sample import (
    CachelessDecoder,
    ConstraintConfig,
    GenerateConfig,
    GuidanceConfig,
    ModalitySampling,
    SamplingConfig,
    SpanConstraints,
    generate,
)
from omniseq.sample.generate import prompt_ids, right_pad
from omniseq.vocab import OPEN

from .conftest import RandomLogits

LIMITS = ConstraintConfig(audio_max_frames=6, video_max_frames=3)


def whole_span(L, modality: str) -> list[int]:
    """A complete span of `modality` (all codes 1), as a prompt holds a question's clip."""
    grid = L.codebook(modality).grid or L.codebook("image").grid
    shape = {"image": grid, "audio": (L.codebook("audio").num_layers, 2), "video": (2, *grid)}[modality]
    return L.media_ids(modality, np.ones(shape, dtype=np.int64)).tolist()


def random_prompt(L, text_tokenizer, rng: random.Random) -> list[int]:
    """A prompt that ends in text, in a chat turn (with or without a whole media span in the user's turn),
    or inside an image / audio / video span."""
    bos = L.id("<bos>")
    words = text_tokenizer.encode(rng.choice(["draw", "a red cat", "say hi", "🙂 漢字"]))
    kind = rng.choice(["bos", "text", "chat", "media", "image", "audio", "video"])
    if kind == "bos":
        return [bos]
    if kind == "text":
        return [bos, *words]
    if kind == "chat":
        return [bos, L.id("<|user|>"), *words, L.id("<|end|>"), L.id("<|assistant|>")]
    if kind == "media":
        span = whole_span(L, rng.choice(["image", "audio", "video"]))
        return [bos, L.id("<|user|>"), *words, *span, L.id("<|end|>"), L.id("<|assistant|>")]
    if kind == "image":
        return [bos, *words, L.id("<|image|>"), *[L.code_range("image")[0] + 1] * rng.randint(0, 2)]
    if kind == "video":
        return [bos, L.id("<|video|>")]
    return [bos, L.id("<|audio|>"), *[L.code_range("audio")[0]] * rng.randint(0, 1)]


LAYOUT_KEYS = [(f, r) for f in ("frame", "layer", "first") for r in (True, False)] + [("layer1", True)]


def fuzz(layouts, text_tokenizer, key, seeds) -> int:
    """Generate from random logits for each seed (batch 1-8, random prompts, forced modalities, budgets
    and guidance), parse every row with its prompt and check that a forced row's first generated span is
    the forced modality; returns the number of rows checked."""
    L = layouts[key]
    codec = DocumentCodec(L, text_tokenizer)
    opened = Counter()
    rows = 0
    for seed in seeds:
        rng = random.Random(seed)
        B = rng.randint(1, 8)
        prompts = [random_prompt(L, text_tokenizer, rng) for _ in range(B)]
        force = [rng.choice([None, None, "image", "audio", "video"]) for _ in range(B)]
        budgets = [rng.randint(30, 70) for _ in range(B)]
        sampling = SamplingConfig(guidance=GuidanceConfig(image=rng.choice([1.0, 3.0])))
        cfg = GenerateConfig(progress=False, check_constraints=True, constraints=LIMITS, sampling=sampling)
        model = RandomLogits(L, seed, special_bias=rng.uniform(0, 6))
        out = generate(model.decoder(), L, prompts, cfg, force=force, budgets=budgets, seeds=range(seed, seed + B))
        for p, o, budget, m in zip(prompts, out, budgets, force):
            assert len(o) <= budget
            full = np.concatenate([p, o])
            pieces = L.parse(full)
            for piece in pieces:
                opened[piece.modality] += piece.end > len(p)
            if m is not None:  # a span the prompt ends inside is finished first; the next one is forced
                spans = [q.modality for q in pieces if q.start >= len(p) and q.modality not in ("text", "special")]
                first = spans[0] if spans else None
                assert first == m, (p, o, m)
            codec.decode(full)
            rows += 1
    assert opened["image"] and opened["audio"] and opened["video"], opened
    return rows


@pytest.mark.parametrize("key", LAYOUT_KEYS, ids=lambda k: f"{k[0]}-{'rowend' if k[1] else 'plain'}")
def test_random_logits_fuzz_every_sequence_parses(layouts, text_tokenizer, key):
    """A CPU-sized version of "1000 random-weight samples": every generated row parses, in every layout."""
    assert fuzz(layouts, text_tokenizer, key, range(6)) >= 6


@pytest.mark.slow
def test_random_logits_fuzz_over_a_thousand_rows(layouts, text_tokenizer):
    rows = sum(fuzz(layouts, text_tokenizer, key, range(100, 140)) for key in LAYOUT_KEYS)
    assert rows >= 1000


def test_forced_modality_answers_with_that_span(tiny_layout):
    L = tiny_layout
    model = RandomLogits(L, 0, special_bias=0.0)
    cfg = GenerateConfig(progress=False, check_constraints=True, constraints=LIMITS)
    prompts = [[L.id("<bos>")]] * 3
    out = generate(model.decoder(), L, prompts, cfg, force=["image", "audio", "video"], budgets=[40] * 3)
    for o, m in zip(out, ["image", "audio", "video"]):
        assert L.parse(o)[0].modality == m


def test_force_survives_media_spans_in_the_prompt(tiny_layout, text_tokenizer):
    """sample.py --audio x.wav --force image, or a real eval task: the prompt's own spans do not spend the
    force, so the first generated token opens the forced span whatever the prompt held."""
    L = tiny_layout
    words = text_tokenizer.encode("what is this?")
    media = ["image", "audio", "video"]
    prompts = [
        [L.id("<bos>"), L.id("<|user|>"), *words, *whole_span(L, held), L.id("<|end|>"), L.id("<|assistant|>")]
        for held in media
        for _ in media
    ]
    force = media * 3
    cfg = GenerateConfig(progress=False, check_constraints=True, constraints=LIMITS)
    out = generate(RandomLogits(L, 0).decoder(), L, prompts, cfg, force=force, budgets=[40] * 9)
    for p, o, m in zip(prompts, out, force):
        assert o[0] == L.id(OPEN[m])
        L.parse(np.concatenate([p, o]))


def test_forced_span_after_a_prompt_span_needs_budget_for_both(tiny_layout):
    """A prompt ending inside an image (9 tokens to close) with audio forced (7 tokens): 16 tokens finish both;
    15 would cut the forced span, so it is refused up front."""
    L = tiny_layout
    prompt = [L.id("<bos>"), L.id("<|image|>")]
    cfg = GenerateConfig(progress=False, check_constraints=True, constraints=ConstraintConfig(audio_max_frames=4))
    model = RandomLogits(L, 2, special_bias=-4.0)
    with pytest.raises(ValueError, match="needs 7 tokens after the 9 that finish its prompt's span; budget 15"):
        generate(model.decoder(), L, [prompt], cfg, force=["audio"], budgets=[15])
    out = generate(model.decoder(), L, [prompt], cfg, force=["audio"], budgets=[16])[0]
    pieces = L.parse(np.concatenate([prompt, out]))
    assert [q.modality for q in pieces[1:3]] == ["image", "audio"]


def test_forced_modality_without_budget_is_an_error(tiny_layout):
    L = tiny_layout
    with pytest.raises(ValueError, match="prompt 0 is forced to answer with image, which needs 10 tokens; budget 9"):
        generate(
            RandomLogits(L, 0).decoder(),
            L,
            [[L.id("<bos>")]],
            GenerateConfig(progress=False),
            force=["image"],
            budgets=[9],
        )


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_batched_equals_unbatched_with_the_same_row_seeds(tiny_layout, text_tokenizer, guidance):
    L = tiny_layout
    rng = random.Random(1)
    prompts = [random_prompt(L, text_tokenizer, rng) for _ in range(5)]
    force = [None, "image", None, "audio", None]
    budgets = [40, 30, 50, 25, 45]
    cfg = GenerateConfig(
        progress=False, constraints=LIMITS, sampling=SamplingConfig(guidance=GuidanceConfig(image=guidance))
    )
    model = RandomLogits(L, 3)
    seeds = [11, 12, 13, 14, 15]
    batched = generate(model.decoder(), L, prompts, cfg, force=force, budgets=budgets, seeds=seeds)
    for b in range(5):
        alone = generate(
            model.decoder(), L, [prompts[b]], cfg, force=[force[b]], budgets=[budgets[b]], seeds=[seeds[b]]
        )
        assert np.array_equal(batched[b], alone[0]), b


class UncondAware:
    """Stand-in whose image-code logits depend on the condition: code 0 is mildly preferred by the
    conditional rows and strongly by the unconditional ones (which hold <|uncond|>)."""

    def __init__(self, layout):
        self.layout, self.uncond = layout, layout.id("<|uncond|>")
        self.code0 = layout.code_range("image")[0]

    def __call__(self, ids):
        logits = torch.zeros(*ids.shape, self.layout.size)
        has_uncond = (ids == self.uncond).any(1)  # [B]
        logits[:, :, self.code0] = torch.where(has_uncond, 2.0, 1.0)[:, None]
        return logits


def test_guidance_steers_media_spans_and_scale_1_changes_nothing(tiny_layout, text_tokenizer):
    L = tiny_layout
    greedy = ModalitySampling(temperature=0.0)
    prompt = [[L.id("<bos>"), *text_tokenizer.encode("a cat")]]

    def run(image_scale, audio_scale=1.0):
        sampling = SamplingConfig(image=greedy, guidance=GuidanceConfig(image=image_scale, audio=audio_scale))
        cfg = GenerateConfig(progress=False, check_constraints=True, sampling=sampling)
        decoder = CachelessDecoder(UncondAware(L))
        return generate(decoder, L, prompt, cfg, force=["image"], budgets=[10])[0]

    plain = run(1.0)
    codes = L.parse(plain)[0].payload
    assert (codes == 0).all()  # unguided greedy: code 0 everywhere
    # guidance switched on (audio) but the image scale is 1: identical tokens, uncond rows and all
    assert np.array_equal(run(1.0, audio_scale=2.0), plain)
    guided = L.parse(run(3.0))[0].payload  # 1 + 2 * (1 - 2) = -1 < 0: code 0 is pushed out
    assert (guided != 0).all()


def test_right_pad_and_cacheless_decoder_follow_the_cache_layout():
    ids, lengths = right_pad([np.array([5, 6, 7]), np.array([9])], pad_id=0, device="cpu")
    assert ids.tolist() == [[5, 6, 7], [9, 0, 0]] and lengths.tolist() == [3, 1]
    seen = []
    dec = CachelessDecoder(lambda x: (seen.append(x.clone()), torch.zeros(*x.shape, 4))[1])
    dec.setup_cache(2, 5)
    dec.prefill(ids, lengths)
    dec.decode_step(torch.tensor([[1], [2]]), lengths)  # row 1's token overwrites its padding at slot 1
    assert seen[-1].tolist() == [[5, 6, 7, 1], [9, 2, 0, 0]]


class CountingDecoder(CachelessDecoder):
    """Counts the decode steps the loop asks for."""

    steps = 0

    def decode_step(self, input_ids, positions):
        self.steps += 1
        return super().decode_step(input_ids, positions)


def test_progress_bar_and_early_stop(tiny_layout, text_tokenizer, capsys):
    L = tiny_layout
    eos, word = L.id("<eos>"), int(text_tokenizer.encode("cat")[0])
    model = RandomLogits(L, 0)
    model.table[:] = 0.0
    model.table[:, word] = 50.0  # a plain text token, until...
    model.pos[:] = 0.0
    model.pos[12, eos] = 100.0  # ...the logits at position 12 end the row: rows of different prompts end apart
    prompts = [[L.id("<bos>")], [L.id("<bos>"), *[word] * 5]]
    cfg = GenerateConfig(max_new_tokens=500, progress=True, stop_check_every=4)
    decoder = CountingDecoder(model)
    out = generate(decoder, L, prompts, cfg)
    assert [o.tolist() for o in out] == [[word] * 12 + [eos], [word] * 7 + [eos]]
    # the last row finished at step 12 (0-based); the loop checks every 4 steps, so it stops by step 12 + 4,
    # not after the 500-token budget; each step but the last asks the decoder for the next logits
    last_done = max(len(o) for o in out) - 1
    assert last_done + 1 <= decoder.steps + 1 <= last_done + 1 + cfg.stop_check_every
    assert "generate" in capsys.readouterr().err


def test_prompt_ids_from_segments(tiny_layout, text_tokenizer):
    L = tiny_layout
    codec = DocumentCodec(L, text_tokenizer)
    words = text_tokenizer.encode("a cat")
    plain = prompt_ids(codec, [Segment("text", text="a cat")], open_span="image")
    assert plain.tolist() == [L.id("<bos>"), *words, L.id("<|image|>")]
    chat = prompt_ids(codec, [Segment("text", text="a cat", role="user")])
    assert chat.tolist() == [L.id("<bos>"), L.id("<|user|>"), *words, L.id("<|end|>"), L.id("<|assistant|>")]
    turn = [Segment("text", text="hi", role="user"), Segment("text", text="a cat", role="assistant")]
    assert prompt_ids(codec, turn).tolist()[-len(words) - 1 :] == [L.id("<|assistant|>"), *words]
    # an empty assistant segment (how a prompts file may write "the assistant answers") opens a new turn
    empty = [Segment("text", text="a cat", role="user"), Segment("text", text="", role="assistant")]
    assert prompt_ids(codec, empty).tolist() == chat.tolist()


@pytest.mark.parametrize("key", LAYOUT_KEYS, ids=lambda k: f"{k[0]}-{'rowend' if k[1] else 'plain'}")
def test_prompt_cut_inside_a_span_closes_within_tokens_to_close(layouts, key):
    """Cut a whole span at every position: with a budget of exactly `tokens_to_close` the row finishes the
    span and nothing more, so the count is neither too small nor too large."""
    L = layouts[key]
    cfg = GenerateConfig(progress=False, check_constraints=True, constraints=ConstraintConfig(audio_min_frames=2))
    rng = np.random.default_rng(0)
    video_grid = L.codebook("video").grid or L.codebook("image").grid
    spans = {
        "image": L.media_ids("image", rng.integers(0, 16, (2, 3))),
        "audio": L.media_ids("audio", rng.integers(0, 8, (L.codebook("audio").num_layers, 3))),
        "video": L.media_ids("video", rng.integers(0, 5, (2, *video_grid))),
    }
    prompts, closes = [], []
    for ids in spans.values():
        for cut in range(1, len(ids) - 1):
            prompts.append([L.id("<bos>"), *ids[:cut].tolist()])
            closes.append(int(ids[-1]))
    state = SpanConstraints(L, cfg.constraints, len(prompts), 10**6)
    state.prefill(prompts)
    budgets = state.tokens_to_close()
    out = generate(RandomLogits(L, 1, special_bias=-4.0).decoder(), L, prompts, cfg, budgets=budgets)
    for p, o, close, budget in zip(prompts, out, closes, budgets):
        assert len(o) == budget and o[-1] == close
        L.parse(np.concatenate([p, o]))
    with pytest.raises(ValueError, match="ends inside a span that needs at least"):
        generate(RandomLogits(L, 1).decoder(), L, prompts[:1], cfg, budgets=[budgets[0] - 1])
