"""The span state machine: the allowed set at each step, forced closes, budgets, prompts, batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omniseq.sample import ConstraintConfig, ConstraintError, SpanConstraints
from omniseq.vocab import MODALITY_ID, OPEN

from .conftest import allowed_ids


def state_after(layout, prompt, cfg=None, budget=1000, force=None):
    s = SpanConstraints(layout, cfg or ConstraintConfig(), 1, budget, [force])
    s.prefill([prompt])
    return s


def feed(state, *tokens):
    for t in tokens:
        state.advance(torch.tensor([t]), check=True)


def codes(layout, modality, layer=0):
    lo, _ = layout.code_range(modality)
    K = layout.codebook(modality).codebook_size
    return set(range(lo + layer * K, lo + (layer + 1) * K))


def text_set(layout):
    return set(range(layout.text.size))


def test_text_mode_allows_text_eos_and_opens(tiny_layout):
    L = tiny_layout
    s = state_after(L, [L.id("<bos>")])
    opens = {L.id(x) for x in ("<|image|>", "<|audio|>", "<|video|>")}
    assert allowed_ids(s) == text_set(L) | {L.id("<eos>")} | opens
    assert s.modality().tolist() == [MODALITY_ID["text"]]


def test_image_grid_with_row_ends_then_forced_close(tiny_layout):
    L = tiny_layout
    s = state_after(L, [L.id("<bos>"), L.id("<|image|>")])
    img = codes(L, "image")
    for _ in range(2):
        for _ in range(3):
            assert allowed_ids(s) == img
            assert s.modality().tolist() == [MODALITY_ID["image"]]
            feed(s, min(img))
        assert allowed_ids(s) == {L.id("<|row_end|>")}
        feed(s, L.id("<|row_end|>"))
    assert allowed_ids(s) == {L.id("<|/image|>")}
    feed(s, L.id("<|/image|>"))
    assert L.id("<eos>") in allowed_ids(s) and not s.in_media().any()


def test_image_grid_without_row_ends(layouts):
    L = layouts[("frame", False)]
    s = state_after(L, [L.id("<bos>"), L.id("<|image|>")])
    for _ in range(6):
        assert allowed_ids(s) == codes(L, "image")
        feed(s, min(codes(L, "image")))
    assert allowed_ids(s) == {L.id("<|/image|>")}


def test_audio_layer_major_structure(tiny_layout):
    L = tiny_layout  # 3 layers, layer-major, K=8
    cfg = ConstraintConfig(audio_min_frames=2, audio_max_frames=3)
    s = state_after(L, [L.id("<bos>"), L.id("<|audio|>")], cfg)
    sep, l0 = L.id("<|rvq_sep|>"), codes(L, "audio", 0)
    assert allowed_ids(s) == l0  # below the minimum: no separator yet
    feed(s, min(l0))
    assert allowed_ids(s) == l0
    feed(s, min(l0))
    assert allowed_ids(s) == l0 | {sep}
    feed(s, min(l0))
    assert allowed_ids(s) == {sep}  # the maximum of 3 frames is reached
    feed(s, sep)
    for layer in (1, 2):
        for _ in range(3):  # every later layer exactly as long as the first
            assert allowed_ids(s) == codes(L, "audio", layer)
            feed(s, min(codes(L, "audio", layer)))
        nxt = sep if layer == 1 else L.id("<|/audio|>")
        assert allowed_ids(s) == {nxt}
        feed(s, nxt)
    assert not s.in_media().any()


@pytest.mark.parametrize("flatten", ["frame", "first"])
def test_audio_free_length_closes_only_at_frame_boundaries(layouts, flatten):
    L = layouts[(flatten, True)]
    layers = 3 if flatten == "frame" else 1
    cfg = ConstraintConfig(audio_min_frames=2, audio_max_frames=3)
    s = state_after(L, [L.id("<bos>"), L.id("<|audio|>")], cfg)
    close = L.id("<|/audio|>")
    for frame in range(3):
        for layer in range(layers):
            want = codes(L, "audio", layer)
            if layer == 0 and frame >= 2:
                want = want | {close}
            assert allowed_ids(s) == want, (frame, layer)
            feed(s, min(codes(L, "audio", layer)))
    assert allowed_ids(s) == {close}
    if flatten == "first":
        assert L.codebook("audio").layers_in_ids == 1


def test_video_frames_with_separators_and_limits(tiny_layout):
    L = tiny_layout
    cfg = ConstraintConfig(video_min_frames=2, video_max_frames=3)
    s = state_after(L, [L.id("<bos>"), L.id("<|video|>")], cfg)
    frame_sep, close = L.id("<|frame|>"), L.id("<|/video|>")
    vid = codes(L, "video")

    def one_frame():
        for _ in range(2):
            for _ in range(3):
                assert allowed_ids(s) == vid
                feed(s, min(vid))
            feed(s, L.id("<|row_end|>"))

    one_frame()
    assert allowed_ids(s) == {frame_sep}  # below the minimum of 2 frames
    feed(s, frame_sep)
    one_frame()
    assert allowed_ids(s) == {frame_sep, close}
    feed(s, frame_sep)
    one_frame()
    assert allowed_ids(s) == {close}  # the maximum of 3 frames is reached
    assert s.modality().tolist() == [MODALITY_ID["video"]]


def test_opening_needs_budget_for_the_whole_span(tiny_layout):
    L = tiny_layout
    need = 2 + 2 * (3 + 1)  # image: sentinels + 2 rows of 3 codes and a row end
    for budget, ok in ((need - 1, False), (need, True)):
        s = state_after(L, [L.id("<bos>")], budget=budget)
        assert (L.id("<|image|>") in allowed_ids(s)) is ok
    # audio layer-major, 3 layers, min 1 frame: sentinels + 3 codes + 2 separators
    s = state_after(L, [L.id("<bos>")], budget=6)
    assert L.id("<|audio|>") not in allowed_ids(s)
    s = state_after(L, [L.id("<bos>")], budget=7)
    assert L.id("<|audio|>") in allowed_ids(s)


def test_free_length_span_stops_growing_before_the_budget_runs_out(tiny_layout):
    L = tiny_layout
    s = state_after(L, [L.id("<bos>")], ConstraintConfig(audio_max_frames=100), budget=12)
    l0, sep = codes(L, "audio", 0), L.id("<|rvq_sep|>")
    feed(s, L.id("<|audio|>"), min(l0))  # 10 left; 1 frame so far
    # a second layer-1 code needs 1 + 2 * (2 + 1) + 1 = 8 <= 10 tokens: allowed; a third would need 10 > 9
    assert allowed_ids(s) == l0 | {sep}
    feed(s, min(l0))
    assert allowed_ids(s) == {sep}


def test_forced_modality_and_finished_rows(tiny_layout):
    L = tiny_layout
    s = state_after(L, [L.id("<bos>")], force="image")
    assert allowed_ids(s) == {L.id("<|image|>")}
    feed(s, L.id("<|image|>"), *([min(codes(L, "image"))] * 3 + [L.id("<|row_end|>")]) * 2, L.id("<|/image|>"))
    assert L.id("<eos>") in allowed_ids(s) and len(allowed_ids(s)) > 3  # the force is spent
    feed(s, L.id("<eos>"))
    assert allowed_ids(s) == {L.id("<pad>")} and s.done().all()


@pytest.mark.parametrize("force", ["image", "audio", "video"])
def test_media_spans_in_the_prompt_leave_the_force_set(tiny_layout, text_tokenizer, force):
    """The prompt's clip (sample.py --audio x.wav --force image) is the question, not the answer: prefill
    opens and closes its spans, and the row must still open the forced span first."""
    L = tiny_layout
    rng = np.random.default_rng(0)
    spans = [
        L.media_ids("image", rng.integers(0, 16, (2, 3))),
        L.media_ids("audio", rng.integers(0, 8, (3, 2))),
        L.media_ids("video", rng.integers(0, 16, (2, 2, 3))),
    ]
    user = [L.id("<|user|>"), *text_tokenizer.encode("what is this?"), *np.concatenate(spans).tolist()]
    s = state_after(L, [L.id("<bos>"), *user, L.id("<|end|>"), L.id("<|assistant|>")], force=force)
    assert allowed_ids(s) == {L.id(OPEN[force])}
    assert s.force.tolist() == [MODALITY_ID[force]]


def test_span_the_prompt_ends_inside_leaves_room_for_the_forced_one(tiny_layout):
    """A prompt ending inside a video with an image forced: the video may not grow into the image's budget."""
    L = tiny_layout
    frame = ([min(codes(L, "image"))] * 3 + [L.id("<|row_end|>")]) * 2
    s = state_after(L, [L.id("<bos>"), L.id("<|video|>")], budget=9 + 10, force="image")  # close 9, image 10
    feed(s, *frame)
    assert allowed_ids(s) == {L.id("<|/video|>")}  # another frame would fit only without the image
    feed(s, L.id("<|/video|>"))
    assert allowed_ids(s) == {L.id("<|image|>")} and int(s.remaining[0]) == 10
    roomy = state_after(L, [L.id("<bos>"), L.id("<|video|>")], budget=9 + 10 + 9, force="image")
    feed(roomy, *frame)
    assert allowed_ids(roomy) == {L.id("<|frame|>"), L.id("<|/video|>")}


def test_chat_end_finishes_only_inside_a_turn(tiny_layout, text_tokenizer):
    L = tiny_layout
    plain = state_after(L, [L.id("<bos>")])
    assert L.id("<|end|>") not in allowed_ids(plain)
    prompt = [
        L.id("<bos>"),
        L.id("<|user|>"),
        *text_tokenizer.encode("hi"),
        L.id("<|end|>"),
        L.id("<|assistant|>"),
    ]
    s = state_after(L, prompt)
    assert L.id("<|end|>") in allowed_ids(s) and L.id("<|user|>") not in allowed_ids(s)
    feed(s, L.id("<|end|>"))
    assert s.done().all()


def test_budget_spent_in_text_finishes_the_row(tiny_layout):
    L = tiny_layout
    s = state_after(L, [L.id("<bos>")], budget=2)
    feed(s, 5, 6)
    assert s.done().all() and allowed_ids(s) == {L.id("<pad>")}


def test_prompt_may_end_inside_a_span(tiny_layout):
    L = tiny_layout
    c = min(codes(L, "image"))
    s = state_after(L, [L.id("<bos>"), L.id("<|image|>"), c, c, c, L.id("<|row_end|>"), c, c])
    assert allowed_ids(s) == codes(L, "image")
    feed(s, c)
    assert allowed_ids(s) == {L.id("<|row_end|>")}


@pytest.mark.parametrize(
    "bad, message",
    [
        (lambda L: [L.id("<bos>"), L.code_range("image")[0]], "not allowed in phase 'text'"),
        (lambda L: [L.id("<bos>"), L.id("<|/image|>")], "<|/image|> is not allowed"),
        (lambda L: [L.id("<|image|>"), L.id("<|row_end|>")], "phase 'image code'"),
        (
            lambda L: [
                L.id("<|audio|>"),
                L.code_range("audio")[0],
                L.id("<|rvq_sep|>"),
                L.code_range("audio")[0],
            ],
            "audio",
        ),
        (lambda L: [L.id("<bos>"), L.id("<eos>")], "<eos>"),
        (lambda L: [L.id("<bos>"), L.size], "outside"),
    ],
)
def test_malformed_prompts_are_errors_naming_row_and_position(tiny_layout, bad, message):
    with pytest.raises(ConstraintError, match="row 0") as e:
        state_after(tiny_layout, bad(tiny_layout))
    assert message in str(e.value)


def test_batch_rows_in_different_phases_match_single_rows(tiny_layout):
    L = tiny_layout
    c = min(codes(L, "image"))
    a = L.code_range("audio")[0]
    prompts = [
        [L.id("<bos>")],
        [L.id("<bos>"), L.id("<|image|>"), c, c, c],
        [L.id("<bos>"), L.id("<|audio|>"), a, a],
        [L.id("<bos>"), L.id("<|video|>"), *([c, c, c, L.id("<|row_end|>")] * 2)],
    ]
    batch = SpanConstraints(L, ConstraintConfig(), 4, torch.tensor([50, 40, 30, 20]), [None, None, None, "audio"])
    batch.prefill(prompts)
    for b, p in enumerate(prompts):
        single = state_after(L, p, budget=[50, 40, 30, 20][b], force=[None, None, None, "audio"][b])
        assert allowed_ids(batch, b) == allowed_ids(single), b
    assert batch.modality().tolist() == [MODALITY_ID[m] for m in ("text", "image", "audio", "video")]


def test_layout_without_a_grid_needs_one_in_the_config(text_tokenizer):
    from omniseq.vocab import CodebookSpec, VocabLayout

    L = VocabLayout.build(text_tokenizer.spec(), [CodebookSpec("image", "test", 16, row_end=True)])
    with pytest.raises(ConstraintError, match="constraints.grid"):
        SpanConstraints(L, ConstraintConfig(), 1, 10)
    s = SpanConstraints(L, ConstraintConfig(grid=[1, 2]), 1, 10)
    s.prefill([[L.id("<|image|>")]])
    feed(s, L.code_range("image")[0], L.code_range("image")[0])
    assert allowed_ids(s) == {L.id("<|row_end|>")}
