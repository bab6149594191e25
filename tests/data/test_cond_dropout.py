"""Condition dropout gives training the unconditional twin the sampler builds for guidance."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from omniseq.data.cond_dropout import CondDropout
from omniseq.data.corpus import CorpusConfig, PairConfig, parse_record
from omniseq.data.shardset import decode_sample, encode_sample
from omniseq.document import DocumentCodec
from omniseq.sample.guidance import uncond_prompt

CODES = [[1, 2, 3], [4, 5, 6]]


@pytest.mark.parametrize(
    "direction, template",
    [
        ("x2t", "{media}\n{text}"),
        ("x2t", "Describe the {modality}: {media}\n{text}"),
        ("t2x", "{text}\n{media}"),
        ("t2x", "Generate the {modality} for: {text}\n{media}"),
    ],
)
def test_dropped_pair_is_the_sampler_twin_of_its_prompt_then_its_target(
    text_tokenizer, tiny_layout, direction, template
):
    pair = PairConfig(p_x_to_text=float(direction == "x2t"), x_to_text=[template], text_to_x=[template])
    line = f'{{"image_codes": {CODES}, "text": "a red cat"}}'
    (rec,) = parse_record(line, CorpusConfig(path="pairs.jsonl", format="pair"), pair, 1, 0)
    assert rec.direction == direction
    seq = DocumentCodec(tiny_layout, text_tokenizer).encode(rec.segments)
    doc = decode_sample(encode_sample("k", seq, {}), "x", tiny_layout.size)
    always = dataclasses.replace(CondDropout.from_layout(tiny_layout, 0.5, 0), p=0.999999)
    target = int(seq.spans[-1, 0])  # the last segment: the caption, or the image
    twin = uncond_prompt(tiny_layout, seq.ids[:target]).tolist()
    out = always.apply(doc, 0, 0)
    assert out.ids.tolist() == twin + seq.ids[target:].tolist()
    assert out.loss[1] == 0 and out.loss[2:].all()  # <|uncond|> carries no loss, the target all of it
    kept = doc.media_spans[doc.media_spans[:, 0] >= target]  # the target's media span, moved with it
    assert out.media_spans.tolist() == (kept - (target - len(twin))).tolist()


def test_a_conversations_last_request_is_dropped_and_the_sampler_twin_matches(text_tokenizer, tiny_layout):
    """System turn, a first exchange, then the request the last answer answers: only that request becomes
    <|uncond|>, in training and in the sampler's twin of the prompt up to the last answer."""
    from omniseq.document import Segment

    L = tiny_layout
    segments = [
        Segment("text", text="be brief", role="system"),
        Segment("text", text="hello", role="user"),
        Segment("text", text="hi", role="assistant"),
        Segment("text", text="draw a red cat", role="user"),
        Segment("image", codes=CODES, role="assistant"),
    ]
    seq = DocumentCodec(L, text_tokenizer).encode(segments)
    doc = decode_sample(encode_sample("k", seq, {}), "x", L.size)
    always = dataclasses.replace(CondDropout.from_layout(L, 0.5, 0), p=0.999999)
    answer = int(np.flatnonzero(seq.ids == L.id("<|assistant|>"))[-1]) + 1  # the prompt: up to the last answer
    twin = uncond_prompt(L, seq.ids[:answer]).tolist()
    out = always.apply(doc, 0, 0)
    assert out.ids.tolist() == twin + seq.ids[answer:].tolist()
    request = text_tokenizer.encode("draw a red cat")
    assert len(twin) == answer - len(request) + 1  # only the request's words went, into one <|uncond|>
    for kept in ("be brief", "hello", "hi"):  # the system turn and the first exchange stay
        words = text_tokenizer.encode(kept)
        assert any(twin[i : i + len(words)] == words for i in range(len(twin)))
