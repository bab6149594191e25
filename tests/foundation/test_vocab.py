"""The merged vocabulary: layout building, validation, manifest, vocab hash, flattening, parse errors."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omniseq.vocab import (
    INT32_MAX,
    SPECIAL_TOKENS,
    CodebookSpec,
    DecodeError,
    TextSpec,
    VocabError,
    VocabLayout,
    VocabMismatchError,
    flatten_codes,
    unflatten_ids,
)

TEXT = TextSpec("sentencepiece", 100, "t" * 64)


def layout(**audio) -> VocabLayout:
    return VocabLayout.build(
        TEXT,
        [
            CodebookSpec("image", "vq", 32, grid=(2, 2), row_end=True, fingerprint="i"),
            CodebookSpec(
                **{
                    "modality": "audio",
                    "kind": "rvq",
                    "codebook_size": 16,
                    "num_layers": 4,
                    "flatten": "layer",
                    **audio,
                }
            ),  # fmt: skip
            CodebookSpec("video", "fv", 32, shares="image", row_end=True),
        ],
    )


def test_ranges_follow_the_design_order():
    L = layout()
    S = len(SPECIAL_TOKENS)
    assert L.special_ids["<pad>"] == 100 and L.special_ids["<|uncond|>"] == 100 + S - 1
    assert L.code_range("image") == (100 + S, 100 + S + 32)
    assert L.code_range("audio") == (100 + S + 32, 100 + S + 32 + 4 * 16)  # L x K, layer l at l*K
    assert L.code_range("video") == L.code_range("image")  # frames through the image codebook
    assert L.size == 100 + S + 32 + 64


def test_modality_table_marks_every_range():
    L = layout()
    table = L.modality_table()
    assert (table[:100] == 0).all()
    assert (table[100 : 100 + len(SPECIAL_TOKENS)] == -1).all()
    lo, hi = L.code_range("audio")
    assert (table[lo:hi] == 2).all()
    # image codes read as image (MODALITY_ID 1); video frames share that range, so they read as image too
    lo, hi = L.code_range("image")
    assert hi - lo == 32 and (table[lo:hi] == 1).all()
    assert L.code_range("video") == (lo, hi)
    assert table.shape == (L.size,) and set(np.unique(table).tolist()) == {-1, 0, 1, 2}


def test_manifest_round_trip_and_hash(tmp_path):
    L = layout()
    path = L.save(tmp_path)
    again = VocabLayout.load(path)
    assert again.hash == L.hash and again.manifest() == L.manifest()
    assert json.loads(path.read_text())["vocab_hash"] == L.hash


@pytest.mark.parametrize(
    "change",
    [
        dict(fingerprint="other weights"),
        dict(config={"channels": 64}),
        dict(codebook_size=17),
        dict(flatten="frame"),
        dict(num_layers=3),
    ],
)
def test_hash_changes_when_a_tokenizer_changes(change):
    base = layout()
    assert layout(**change).hash != base.hash


def test_hash_is_stable_when_nothing_changes():
    assert layout().hash == layout().hash


def test_text_fingerprint_changes_hash():
    a = VocabLayout.build(TEXT)
    b = VocabLayout.build(dataclasses.replace(TEXT, fingerprint="u" * 64))
    assert a.hash != b.hash


def test_check_hash_names_both():
    L = layout()
    with pytest.raises(VocabMismatchError) as e:
        L.check_hash("deadbeef", "shard set /x")
    assert "deadbeef" in str(e.value) and L.hash in str(e.value) and "shard set /x" in str(e.value)


def test_tampered_manifest_is_rejected(tmp_path):
    path = layout().save(tmp_path)
    m = json.loads(path.read_text())
    m["codebooks"]["audio"]["codebook_size"] = 99
    path.write_text(json.dumps(m))
    with pytest.raises(VocabMismatchError, match="recorded vocab_hash"):
        VocabLayout.load(path)


def test_missing_manifest_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing"):
        VocabLayout.load(tmp_path / "nothing.json")


def test_unknown_special_rejected():
    with pytest.raises(VocabError, match="unknown special"):
        VocabLayout.build(TEXT, specials=(*SPECIAL_TOKENS, "<|bogus|>"))


def test_overlapping_ranges_rejected():
    image = dataclasses.replace(CodebookSpec("image", "vq", 32, grid=(2, 2)), offset=100)
    with pytest.raises(VocabError, match="overlap"):
        VocabLayout(TEXT, SPECIAL_TOKENS, {"image": image})


def test_more_ids_than_int32_rejected():
    with pytest.raises(VocabError, match="int32"):
        VocabLayout.build(TEXT, [CodebookSpec("audio", "rvq", 2**20, num_layers=2**12)])


def test_missing_structure_token_rejected():
    specials = tuple(s for s in SPECIAL_TOKENS if s != "<|rvq_sep|>")
    with pytest.raises(VocabError, match="rvq_sep"):
        VocabLayout.build(TEXT, [CodebookSpec("audio", "rvq", 8, num_layers=2, flatten="layer")], specials)


def test_shared_range_needs_an_owner():
    with pytest.raises(VocabError, match="shares"):
        VocabLayout.build(TEXT, [CodebookSpec("video", "fv", 8, shares="image")])


def test_int32_bound_is_the_real_limit():
    assert INT32_MAX == np.iinfo(np.int32).max


# -- flattening ---------------------------------------------------------------------------------------
codes_strategy = st.integers(1, 4).flatmap(
    lambda L: st.integers(1, 6).flatmap(
        lambda F: st.lists(st.integers(0, 7), min_size=L * F, max_size=L * F).map(lambda xs: np.array(xs).reshape(L, F))
    )
)


@settings(max_examples=150, deadline=None)
@given(codes=codes_strategy, pattern=st.sampled_from(["frame", "layer", "first"]))
def test_flattening_round_trips(codes, pattern):
    L = codes.shape[0]
    ids = flatten_codes(codes, pattern, K=8, offset=1000, sep_id=5, num_layers=L)
    back = unflatten_ids(ids, pattern, K=8, offset=1000, sep_id=5, num_layers=L)
    np.testing.assert_array_equal(back, codes[:1] if pattern == "first" else codes)


def test_flattening_orders():
    codes = np.array([[0, 1], [2, 3]])  # [L=2, F=2], K=10, offset 100
    assert flatten_codes(codes, "frame", 10, 100, -7, 2).tolist() == [100, 112, 101, 113]
    assert flatten_codes(codes, "layer", 10, 100, -7, 2).tolist() == [100, 101, -7, 112, 113]
    assert flatten_codes(codes, "first", 10, 100, -7, 2).tolist() == [100, 101]


def test_frame_pattern_rejects_a_wrong_layer_code():
    ids = flatten_codes(np.array([[0, 1], [2, 3]]), "frame", 10, 100, -7, 2)
    ids[1] = 105  # a layer-0 code where layer 1 belongs
    with pytest.raises(DecodeError) as e:
        unflatten_ids(ids, "frame", 10, 100, -7, 2)
    assert e.value.position == 1 and e.value.token_id == 105


def test_layer_pattern_rejects_uneven_layers():
    with pytest.raises(DecodeError, match="differ in length"):
        unflatten_ids(np.array([100, 101, -7, 112]), "layer", 10, 100, -7, 2)


# -- parse errors ---------------------------------------------------------------------------------------
def test_parse_errors_name_position_and_id():
    L = layout()
    img = L.media_ids("image", np.array([[1, 2], [3, 4]]))
    with pytest.raises(DecodeError) as e:
        L.parse(np.concatenate([[5, 6], img[:-1]]))  # unclosed span
    assert e.value.position == 2 and "never closed" in str(e.value)
    with pytest.raises(DecodeError) as e:
        L.parse([1, L.size + 3])
    assert e.value.position == 1 and e.value.token_id == L.size + 3
    lo, _ = L.code_range("audio")
    with pytest.raises(DecodeError) as e:
        L.parse([1, 2, lo])  # a code outside any span
    assert e.value.position == 2
    bad = img.copy()
    bad[2] = lo  # an audio code inside an image span
    with pytest.raises(DecodeError) as e:
        L.parse(bad)
    assert e.value.position == 2 and e.value.token_id == lo
    with pytest.raises(DecodeError, match="without an open span"):
        L.parse([L.id("<|/image|>")])


def test_media_ids_validates_codes():
    L = layout()
    with pytest.raises(ValueError, match=r"\[0, 32\)"):
        L.media_ids("image", np.array([[1, 2], [3, 32]]))
    with pytest.raises(ValueError, match="grid"):
        L.media_ids("image", np.zeros((3, 2), int))
    with pytest.raises(ValueError, match="integers"):
        L.media_ids("image", np.zeros((2, 2)))


def test_an_image_range_without_grid_or_row_ends_is_refused():
    # its spans could be written but never parsed back into rows
    with pytest.raises(VocabError, match="needs a fixed grid"):
        VocabLayout.build(TEXT, [CodebookSpec("image", "vq", 32, grid=None, row_end=False)])


def test_a_shared_range_must_hold_every_layer_of_the_sharer():
    # layer 1 of a 2-layer audio codebook over a 16-id image range would be ids of the next (video) range
    image = CodebookSpec("image", "vq", 16, grid=(2, 2))
    video = CodebookSpec("video", "fv", 16, grid=(2, 2))
    audio = CodebookSpec("audio", "rvq", 16, num_layers=2, flatten="frame", shares="image")
    with pytest.raises(VocabError, match=r"codebook 'audio': 2 layer\(s\) of 16 codes need 32 ids, .*'image'.* 16"):
        VocabLayout.build(TEXT, [image, audio, video])
    # one layer fits, and so does the `first` flattening, which keeps only layer 0 in ids
    for fits in (dataclasses.replace(audio, num_layers=1), dataclasses.replace(audio, flatten="first")):
        L = VocabLayout.build(TEXT, [image, fits, video])
        assert L.code_range("audio") == L.code_range("image")


@pytest.mark.parametrize("grid", [(0, 3), (-2, 3), (2,), (2, 3, 4), (2.0, 3), (True, 3)])
def test_grid_must_be_two_positive_ints(grid):
    with pytest.raises(VocabError, match=r"codebook 'image': grid must be two positive integers"):
        VocabLayout.build(TEXT, [CodebookSpec("image", "vq", 16, grid=grid)])


@pytest.mark.parametrize("grid", [[0, 3], [-2, 3], [2], 5, "2x2"])
def test_a_manifest_with_a_bad_grid_names_the_file_and_field(tmp_path, grid):
    path = layout().save(tmp_path)
    m = json.loads(path.read_text())
    m["codebooks"]["image"]["grid"] = grid
    del m["vocab_hash"]
    path.write_text(json.dumps(m))
    with pytest.raises(VocabError, match=r"manifest.json: codebook 'image': grid must be two positive integers"):
        VocabLayout.load(path)


@pytest.mark.parametrize("content", ["[]", '"x"', "3"])
def test_a_manifest_that_is_not_an_object_names_the_file(tmp_path, content):
    (tmp_path / "manifest.json").write_text(content)
    with pytest.raises(VocabError, match=r"manifest.json: expected a JSON object at the top level"):
        VocabLayout.load(tmp_path)
