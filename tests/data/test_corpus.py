"""Corpus records: inline codes must be integers, and bad ones name the file, line and field."""

from __future__ import annotations

import json

import numpy as np
import pytest

from omniseq.data.corpus import CorpusConfig, CorpusError, PairConfig, parse_record


def pair_line(codes) -> str:
    return json.dumps({"image_codes": codes, "text": "a cat"})


@pytest.mark.parametrize(
    "codes, got",
    [
        ([[1, 2.7, 3], [4, 5, 6]], "2.7"),
        ([[1, 2, 3.0], [4, 5, 6]], "3.0"),
        ([[1, True, 3], [4, 5, 6]], "True"),
        ([[True, False, True]], "True"),
        ([["1", 2, 3], [4, 5, 6]], "'1'"),
        ([[1, None, 3]], "None"),
        ("123", "'123'"),
    ],
)
def test_inline_codes_that_are_not_integers_name_file_line_and_field(codes, got):
    cfg = CorpusConfig(path="corpus/pairs.jsonl", format="pair")
    with pytest.raises(CorpusError, match=rf"corpus/pairs.jsonl:9\.image_codes: expected .*integers, got {got}$"):
        parse_record(pair_line(codes), cfg, PairConfig(), 9, 0)
    segments = {"segments": [{"text": "a"}, {"audio_codes": codes}]}
    with pytest.raises(CorpusError, match=r"inter.jsonl:4\.segments\[1\]\.audio_codes: expected .*integers"):
        parse_record(json.dumps(segments), CorpusConfig(path="inter.jsonl", format="interleaved"), PairConfig(), 4, 0)


def test_integer_codes_are_kept_exactly():
    cfg = CorpusConfig(path="corpus/pairs.jsonl", format="pair")
    (rec,) = parse_record(pair_line([[0, 15, 3], [4, 5, 6]]), cfg, PairConfig(p_x_to_text=1.0), 9, 0)
    media = next(s for s in rec.segments if s.modality == "image")
    assert media.codes.dtype == np.int64 and media.codes.tolist() == [[0, 15, 3], [4, 5, 6]]
