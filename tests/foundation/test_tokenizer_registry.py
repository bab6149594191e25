"""The media tokenizer protocol: registry, save/load, fingerprints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from omniseq.tokenizers.base import MediaTokenizer, load_tokenizer, register_tokenizer
from omniseq.vocab import CodebookSpec


@register_tokenizer
class ToyImageTokenizer(MediaTokenizer):
    """Maps an image to codes by thresholding a learned table (enough to exercise the protocol)."""

    kind = "toy_image_for_tests"
    modality = "image"

    def __init__(self, levels: int, table: torch.Tensor | None = None):
        self.levels = levels
        self.table = torch.linspace(0, 255, levels) if table is None else table

    @property
    def codebook_size(self) -> int:
        return self.levels

    def encode(self, media):
        return np.abs(np.asarray(media, float)[..., None] - self.table.numpy()).argmin(-1)

    def decode(self, codes):
        return self.table.numpy()[codes].astype(np.uint8)

    def tokens_for(self, media):
        return int(np.asarray(media).size)

    def config_dict(self):
        return {"levels": self.levels}

    def codebook_spec(self):
        return CodebookSpec("image", self.kind, self.levels, grid=None, row_end=True, fingerprint=self.fingerprint())

    def weights(self):
        return {"table": self.table}

    @classmethod
    def from_config(cls, config, weights=None):
        return cls(config["levels"], None if weights is None else weights["table"])


def test_save_load_gives_the_same_codes_and_fingerprint(tmp_path):
    # a learned (non-default) table: a load that fell back to the default linspace would differ
    table = torch.tensor([3.0, 17.0, 40.0, 90.0, 130.0, 171.0, 222.0, 250.0])
    tok = ToyImageTokenizer(8, table)
    assert not torch.equal(table, ToyImageTokenizer(8).table)
    img = np.random.default_rng(0).integers(0, 256, (4, 4))
    again = load_tokenizer(tok.save(tmp_path / "tok"))
    assert isinstance(again, ToyImageTokenizer)
    torch.testing.assert_close(again.table, table, rtol=0, atol=0)
    assert again.weights().keys() == tok.weights().keys()
    np.testing.assert_array_equal(again.encode(img), tok.encode(img))
    assert again.fingerprint() == tok.fingerprint()
    by_class = ToyImageTokenizer.load(tmp_path / "tok")
    torch.testing.assert_close(by_class.table, table, rtol=0, atol=0)
    assert by_class.fingerprint() == tok.fingerprint()


def test_fingerprint_follows_config_and_weights():
    a = ToyImageTokenizer(8)
    assert ToyImageTokenizer(8).fingerprint() == a.fingerprint()
    assert ToyImageTokenizer(9).fingerprint() != a.fingerprint()
    nudged = a.table.clone()
    nudged[3] += 1e-3
    assert ToyImageTokenizer(8, nudged).fingerprint() != a.fingerprint()


def test_load_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json is missing"):
        load_tokenizer(tmp_path / "absent")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "tokenizer.json").write_text(json.dumps({"kind": "no_such_kind", "config": {}}))
    with pytest.raises(ValueError, match="unknown tokenizer kind 'no_such_kind'"):
        load_tokenizer(tmp_path / "bad")
    (tmp_path / "bad" / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="expected JSON"):
        load_tokenizer(tmp_path / "bad")


def test_a_missing_or_truncated_weights_file_is_an_error_naming_it(tmp_path):
    # without the file, the tokenizer would be freshly initialised and its codes would mean nothing
    d = ToyImageTokenizer(4, torch.tensor([0.0, 10.0, 20.0, 30.0])).save(tmp_path / "tok")
    weights = (d / "weights.safetensors").read_bytes()
    (d / "weights.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(ValueError, match=r"weights.safetensors: unreadable weights"):
        load_tokenizer(d)
    (d / "weights.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"weights.safetensors is missing"):
        load_tokenizer(d)


def test_registering_a_kind_twice_is_refused():
    with pytest.raises(ValueError, match="registered twice"):

        @register_tokenizer
        class Clash(ToyImageTokenizer):
            pass
