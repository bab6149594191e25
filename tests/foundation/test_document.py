"""Documents <-> ids: exact round trips for every modality and flattening, the chat template's loss mask."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omniseq.document import DocumentCodec, Segment, normalize, segment_from_json
from omniseq.vocab import MODALITY_ID, CodebookSpec, DecodeError, VocabLayout, VocabMismatchError

text_st = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=20)


def layout_for(tok, flatten: str, row_end: bool) -> VocabLayout:
    return VocabLayout.build(
        tok.spec(),
        [
            CodebookSpec("image", "t", 16, grid=None if row_end else (2, 3), row_end=row_end),
            CodebookSpec("audio", "t", 8, num_layers=3, flatten=flatten),
            CodebookSpec("video", "t", 16, shares="image", grid=None if row_end else (2, 3), row_end=row_end),
        ],
    )


def segment_st(flatten: str, row_end: bool, role: st.SearchStrategy):
    rows = st.integers(1, 3) if row_end else st.just(2)
    cols = st.integers(1, 4) if row_end else st.just(3)
    layers = 1 if flatten == "first" else 3

    def grid(r, c, t=None):
        shape = (r, c) if t is None else (t, r, c)
        return st.lists(st.integers(0, 15), min_size=int(np.prod(shape)), max_size=int(np.prod(shape))).map(
            lambda xs: np.array(xs).reshape(shape)
        )

    image = st.tuples(rows, cols).flatmap(lambda rc: grid(*rc)).map(lambda c: ("image", c))
    video = st.tuples(rows, cols, st.integers(1, 3)).flatmap(lambda rct: grid(*rct)).map(lambda c: ("video", c))
    audio = st.integers(1, 5).flatmap(
        lambda F: st.lists(st.integers(0, 7), min_size=layers * F, max_size=layers * F).map(
            lambda xs: ("audio", np.array(xs).reshape(layers, F))
        )
    )
    text = text_st.map(lambda t: ("text", t))
    return st.tuples(st.one_of(text, image, audio, video), role).map(
        lambda p: (
            Segment(p[0][0], text=p[0][1], role=p[1])
            if p[0][0] == "text"
            else Segment(p[0][0], codes=p[0][1], role=p[1])
        )
    )


@pytest.mark.parametrize("flatten", ["frame", "layer", "first"])
@pytest.mark.parametrize("row_end", [True, False])
def test_random_documents_round_trip(text_tokenizer, flatten, row_end):
    codec = DocumentCodec(layout_for(text_tokenizer, flatten, row_end), text_tokenizer)

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(segment_st(flatten, row_end, st.none()), min_size=1, max_size=6))
    def plain(doc):
        assert codec.decode(codec.encode(doc).ids) == normalize(doc)

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        st.lists(
            segment_st(flatten, row_end, st.sampled_from(["system", "user", "assistant"])),
            min_size=1,
            max_size=6,
        )
    )
    def chat(doc):
        assert codec.decode(codec.encode(doc).ids) == normalize(doc)

    plain()
    chat()


def test_spans_and_loss_of_a_plain_document(text_tokenizer, tiny_layout):
    codec = DocumentCodec(tiny_layout, text_tokenizer)
    doc = [Segment("text", text="a cat"), Segment("image", codes=np.arange(6).reshape(2, 3))]
    seq = codec.encode(doc)
    assert (
        seq.ids.dtype == np.int32 and seq.ids[0] == tiny_layout.id("<bos>") and seq.ids[-1] == tiny_layout.id("<eos>")
    )
    (s0, e0, m0), (s1, e1, m1) = seq.spans.tolist()
    assert (m0, m1) == (MODALITY_ID["text"], MODALITY_ID["image"]) and e0 == s1 and e1 == len(seq) - 1
    assert seq.ids[s1] == tiny_layout.id("<|image|>") and seq.ids[e1 - 1] == tiny_layout.id("<|/image|>")
    assert seq.loss_mask.tolist() == [0] + [1] * (len(seq) - 1)  # AnyGPT: loss on every token after <bos>
    assert (seq.token_modalities()[s1:e1] == MODALITY_ID["image"]).all()


def test_chat_template_supervises_only_the_assistant(text_tokenizer, tiny_layout):
    codec = DocumentCodec(tiny_layout, text_tokenizer)
    doc = [
        Segment("text", text="you draw", role="system"),
        Segment("text", text="draw a red circle", role="user"),
        Segment("image", codes=np.arange(6).reshape(2, 3), role="assistant"),
        Segment("text", text="done", role="assistant"),
        Segment("text", text="thanks", role="user"),
    ]
    seq = codec.encode(doc)
    ids, loss = seq.ids.tolist(), seq.loss_mask.tolist()
    L = tiny_layout
    roles = [i for i, t in enumerate(ids) if t in (L.id("<|system|>"), L.id("<|user|>"), L.id("<|assistant|>"))]
    assert [ids[i] for i in roles] == [
        L.id("<|system|>"),
        L.id("<|user|>"),
        L.id("<|assistant|>"),
        L.id("<|user|>"),
    ]
    a_start, u2 = roles[2], roles[3]
    # the assistant's content and its closing <|end|> carry loss; nothing else does
    assert all(loss[i] == 1 for i in range(a_start + 1, u2)) and ids[u2 - 1] == L.id("<|end|>")
    assert not any(loss[i] for i in range(0, a_start + 1)) and not any(loss[i] for i in range(u2, len(ids)))


def test_loss_override_per_segment(text_tokenizer, tiny_layout):
    codec = DocumentCodec(tiny_layout, text_tokenizer)
    seq = codec.encode([Segment("image", codes=np.zeros((2, 3), int), loss=False), Segment("text", text="a cat")])
    s, e, _ = seq.spans[0]
    assert not seq.loss_mask[s:e].any() and seq.loss_mask[e:].all()


def _end_losses(seq, layout) -> list[tuple[str, int]]:
    """(role of the turn, loss of its <|end|>) for each turn of an encoded conversation."""
    roles = {layout.id(f"<|{r}|>"): r for r in ("system", "user", "assistant")}
    out, role = [], None
    for t, on in zip(seq.ids.tolist(), seq.loss_mask.tolist()):
        if t in roles:
            role = roles[t]
        elif t == layout.id("<|end|>"):
            out.append((role, on))
    return out


def test_end_takes_the_loss_of_the_turns_last_segment(text_tokenizer, tiny_layout):
    codec = DocumentCodec(tiny_layout, text_tokenizer)
    doc = [
        Segment("text", text="q", role="user"),
        Segment("text", text="an earlier answer", role="assistant", loss=False),  # masked, <|end|> too
        Segment("text", text="q2", role="user", loss=True),  # trained, <|end|> too
        Segment("text", text="the answer", role="assistant"),
        Segment("image", codes=np.zeros((2, 3), int), role="assistant", loss=False),  # last: its <|end|> masked
    ]
    seq = codec.encode(doc)
    assert _end_losses(seq, tiny_layout) == [("user", 0), ("assistant", 0), ("user", 1), ("assistant", 0)]
    s, e, _ = seq.spans[3]  # the unmasked text of the last turn keeps its loss
    assert seq.loss_mask[s:e].all()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["system", "user", "assistant"]), text_st), min_size=1, max_size=6))
def test_without_loss_overrides_only_assistant_turns_train_their_end(text_tokenizer, tiny_layout, turns):
    codec = DocumentCodec(tiny_layout, text_tokenizer)
    seq = codec.encode([Segment("text", text=t, role=r) for r, t in turns])
    ends = _end_losses(seq, tiny_layout)
    assert ends and all(on == (role == "assistant") for role, on in ends)


def test_round_trip_is_exact_up_to_loss(text_tokenizer):
    # the ids carry no loss flags: decode gives loss=None, and merges text that differed only in loss
    flatten = "layer"
    codec = DocumentCodec(layout_for(text_tokenizer, flatten, True), text_tokenizer)
    losses = st.sampled_from([None, True, False])

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        st.lists(st.tuples(segment_st(flatten, True, st.sampled_from(["user", "assistant"])), losses), max_size=6),
        st.lists(st.tuples(segment_st(flatten, True, st.none()), losses), min_size=1, max_size=6),
    )
    def check(chat, plain):
        for doc in ([replace(s, loss=on) for s, on in chat], [replace(s, loss=on) for s, on in plain]):
            assert codec.decode(codec.encode(doc).ids) == normalize([replace(s, loss=None) for s in doc])

    check()
    doc = [Segment("text", text="a", loss=False), Segment("text", text="b")]
    assert normalize(doc) == doc and codec.decode(codec.encode(doc).ids) == [Segment("text", text="ab")]


def test_conversation_needs_roles_everywhere(text_tokenizer, tiny_layout):
    codec = DocumentCodec(tiny_layout, text_tokenizer)
    with pytest.raises(ValueError, match="segment 1"):
        codec.encode([Segment("text", text="hi", role="user"), Segment("text", text="there")])


def test_decode_rejects_stray_specials(text_tokenizer, tiny_layout):
    codec = DocumentCodec(tiny_layout, text_tokenizer)
    ids = [tiny_layout.id("<bos>"), 5, tiny_layout.id("<|uncond|>"), 6]
    with pytest.raises(DecodeError) as e:
        codec.decode(ids)
    assert e.value.position == 2


def test_codec_checks_tokenizer_fingerprints(text_tokenizer, tiny_layout):
    import dataclasses

    other = VocabLayout.build(dataclasses.replace(text_tokenizer.spec(), fingerprint="f" * 64))
    with pytest.raises(VocabMismatchError, match="fingerprint"):
        DocumentCodec(other, text_tokenizer)
    assert DocumentCodec(tiny_layout, text_tokenizer).layout is tiny_layout


def test_segment_from_json(tmp_path):
    seg = segment_from_json({"image": "img/a.png", "role": "user"}, base_dir=tmp_path)
    assert seg.media == tmp_path / "img/a.png" and seg.role == "user"
    assert segment_from_json({"text": "hi", "loss": False}).loss is False
    for bad, msg in [
        ({"text": "a", "image": "b"}, "exactly one"),
        ({"txt": "a"}, "exactly one"),
        ({"text": 3}, "text: expected a string"),
        ({"audio": ""}, "file path"),
        ({"text": "a", "role": "bot"}, "unknown role"),
        ({"text": "a", "loss": "yes"}, "true or false"),
        ([1], "expected an object"),
    ]:
        with pytest.raises(ValueError, match=msg):
            segment_from_json(bad, where="doc.jsonl:3")


def test_media_without_tokenizer_is_a_clear_error(text_tokenizer, tiny_layout, tmp_path):
    codec = DocumentCodec(tiny_layout, text_tokenizer)
    with pytest.raises(ValueError, match="no image tokenizer"):
        codec.encode([Segment("image", media=tmp_path / "a.png")])
