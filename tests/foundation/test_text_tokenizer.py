"""The sentencepiece text tokenizer: exact round trips, persistence, corpus checks, Llama-2 loading."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omniseq.config import ConfigError
from omniseq.tokenizers.text import CorpusError, TextTokenizer, TextTrainConfig
from omniseq.tokenizers.text_train import main as train_main
from omniseq.vocab import VocabLayout

from ..conftest import multilingual_lines

LLAMA2 = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "llama2_tokenizer.model"


def test_multilingual_corpus_round_trips(text_tokenizer):
    for line in multilingual_lines(500, seed=1):
        assert text_tokenizer.decode(text_tokenizer.encode(line)) == line


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40))
def test_any_text_round_trips(text_tokenizer, s):
    ids = text_tokenizer.encode(s)
    assert all(0 <= i < text_tokenizer.vocab_size for i in ids)
    assert text_tokenizer.decode(ids) == s


def test_whitespace_and_the_sentencepiece_space_char(text_tokenizer):
    for s in ["  two  spaces\tand\ttabs\n", " lead", "trail ", "x\u2581y", "\u2581", "猫\u3000犬", "🙂🎵"]:
        assert text_tokenizer.decode(text_tokenizer.encode(s)) == s


def test_saved_and_reloaded_model_gives_the_same_ids(text_tokenizer, tmp_path):
    text_tokenizer.save(tmp_path / "copy")
    again = TextTokenizer(tmp_path / "copy")
    lines = multilingual_lines(50, seed=2)
    assert [again.encode(s) for s in lines] == [text_tokenizer.encode(s) for s in lines]
    assert again.fingerprint() == text_tokenizer.fingerprint()


def test_training_is_deterministic(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(multilingual_lines(400, seed=3)), encoding="utf-8")
    a, _ = TextTokenizer.train([corpus], tmp_path / "a", TextTrainConfig(vocab_size=350))
    b, _ = TextTokenizer.train([corpus], tmp_path / "b", TextTrainConfig(vocab_size=350))
    assert a.fingerprint() == b.fingerprint()


def bad_corpus(tmp_path) -> Path:
    p = tmp_path / "bad.txt"
    p.write_bytes(b"good line\n\n\nnul\x00byte\nlatin1 caf\xe9\nanother good line\n")
    return p


def test_bad_lines_raise_with_file_and_line(tmp_path):
    p = bad_corpus(tmp_path)
    with pytest.raises(CorpusError, match=rf"{p.name}:4: NUL byte"):
        TextTokenizer.train([p], tmp_path / "t", TextTrainConfig(vocab_size=300))


def test_bad_lines_skipped_and_counted(tmp_path):
    p = bad_corpus(tmp_path)
    _, report = TextTokenizer.train([p], tmp_path / "t", TextTrainConfig(vocab_size=300, on_bad_line="skip"))
    assert report.lines == 2 and report.empty == 2
    assert report.skipped == {"nul_byte": 1, "invalid_utf8": 1}
    assert any(":5: invalid UTF-8" in w for w in report.first_bad)


def test_too_many_bad_lines_is_an_error(tmp_path):
    p = bad_corpus(tmp_path)
    with pytest.raises(CorpusError, match="more than 1 bad lines"):
        TextTokenizer.train([p], tmp_path / "t", TextTrainConfig(vocab_size=300, on_bad_line="skip", max_bad_lines=1))


def test_empty_corpus_is_a_clear_error(tmp_path):
    p = tmp_path / "empty.txt"
    p.write_text("\n\n")
    with pytest.raises(CorpusError, match="no usable text"):
        TextTokenizer.train([p], tmp_path / "t")


def test_missing_model_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.model"):
        TextTokenizer(tmp_path / "nope.model")


def test_cli_trains_and_rejects_unknown_keys(tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(multilingual_lines(200)), encoding="utf-8")
    with pytest.raises(ConfigError, match="raise vocab_size"):
        train_main(["--input", str(corpus), "--out", str(tmp_path / "tok"), "vocab_size=260"])
    train_main(["--input", str(corpus), "--out", str(tmp_path / "tok"), "vocab_size=400"])
    assert (tmp_path / "tok" / "tokenizer.model").is_file() and "trained" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="vocab_sz"):
        train_main(["--input", str(corpus), "--out", str(tmp_path / "tok2"), "vocab_sz=300"])


def test_llama2_tokenizer_loads_and_builds_a_layout():
    if not LLAMA2.is_file():
        pytest.skip(f"fixture {LLAMA2} is absent")
    tok = TextTokenizer(LLAMA2)
    assert tok.vocab_size == 32000
    assert tok.encode("Hello world, 你好") == [15043, 3186, 29892, 29871, 30919, 31076]
    layout = VocabLayout.build(tok.spec())
    assert layout.special_ids["<pad>"] == 32000  # omniseq's specials follow the LLM's own ids
