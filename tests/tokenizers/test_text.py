"""Text tokenizer edge cases found in review: a corrupt model file, and U+2581 under a dummy-prefix model."""

from __future__ import annotations

from pathlib import Path

import pytest

from omniseq.tokenizers.text import TextTokenizer

LLAMA2 = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "llama2_tokenizer.model"


def test_a_corrupt_model_file_is_an_error_naming_it(tmp_path):
    bad = tmp_path / "tokenizer.model"
    bad.write_bytes(b"\x00not a sentencepiece model\xff" * 10)
    with pytest.raises(ValueError, match="not a readable sentencepiece model") as e:
        TextTokenizer(tmp_path)
    assert str(bad) in str(e.value)


@pytest.fixture(scope="module")
def llama2() -> TextTokenizer:
    if not LLAMA2.is_file():
        pytest.skip(f"Llama 2 tokenizer fixture {LLAMA2} is absent (see /work/shared/fixtures/README.md)")
    return TextTokenizer(LLAMA2)


@pytest.mark.parametrize("text", ["a\u2581b", "\u2581b", "a\u2581 b", "\u2581\u2581", " \u2581 x", "猫\u2581犬\u2581"])
def test_llama2_round_trips_text_with_a_literal_u2581(llama2, text):
    # Llama-2 puts a dummy-prefix space before what it encodes: the text after U+2581 must not get one
    assert llama2.decode(llama2.encode(text)) == text


def test_llama2_ids_of_text_without_u2581_are_unchanged(llama2):
    # the fix touches only text holding U+2581; the fixture's documented ids still hold
    assert llama2.encode("Hello world, 你好") == [15043, 3186, 29892, 29871, 30919, 31076]
    assert llama2.encode("a\u2581b")[0] == llama2.encode("a")[0]  # the text's start keeps its dummy prefix
