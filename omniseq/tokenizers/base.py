"""The protocol every media tokenizer implements, and the registry that loads them by kind.

A tokenizer directory holds `tokenizer.json` ({"kind": ..., "config": {...}}) and, for learned
tokenizers, `weights.safetensors`. Its fingerprint (sha256 of the canonical config and of every
weight tensor's bytes) goes into the vocabulary manifest, so the vocab hash changes exactly when a
tokenizer's config or weights change.
"""

from __future__ import annotations

import abc
import hashlib
import importlib
import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from omniseq.vocab import CodebookSpec, canonical_json

_REGISTRY: dict[str, type[MediaTokenizer]] = {}
# Modules that register kinds when imported; load_tokenizer imports them lazily so that reading a
# text-only setup never pays for the media stacks.
_KIND_MODULES = (
    "omniseq.tokenizers.image",
    "omniseq.tokenizers.hf_image",
    "omniseq.tokenizers.audio",
    "omniseq.tokenizers.audio_spec",
    "omniseq.tokenizers.encodec",
    "omniseq.tokenizers.video",
)
CONFIG_FILE, WEIGHTS_FILE = "tokenizer.json", "weights.safetensors"


class MediaError(ValueError):
    """Media that cannot be read or used (corrupt, empty, too large, wrong format); names the file."""

    def __init__(self, source: object, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source, self.reason = source, reason


class WeightsMismatchError(ValueError):
    """Saved weights that do not fit the model their config describes; `load_tokenizer` names both files."""


def load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """`model.load_state_dict(weights)`, strictly; a mismatch is a WeightsMismatchError saying what differs
    (torch's own error lists every key, names no file and is a RuntimeError that callers do not expect)."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    reshaped = [
        f"{k} {tuple(weights[k].shape)} instead of {tuple(v.shape)}"
        for k, v in expected.items()
        if k in weights and weights[k].shape != v.shape
    ]
    found = (("missing", missing), ("unexpected", unexpected), ("of another shape", reshaped))
    problems = [f"{len(keys)} {what}: {', '.join(keys[:3])}{', ...' * (len(keys) > 3)}" for what, keys in found if keys]
    if problems:
        raise WeightsMismatchError("; ".join(problems))
    model.load_state_dict(weights, strict=True)


def register_tokenizer(cls: type[MediaTokenizer]) -> type[MediaTokenizer]:
    """Class decorator: make `cls` loadable by its `kind`."""
    if cls.kind in _REGISTRY and _REGISTRY[cls.kind] is not cls:
        raise ValueError(f"tokenizer kind {cls.kind!r} registered twice")
    _REGISTRY[cls.kind] = cls
    return cls


def _import_kind_modules() -> None:
    for name in _KIND_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:  # the module exists but one of its own imports is missing
                raise


def registered_kinds() -> list[str]:
    _import_kind_modules()
    return sorted(_REGISTRY)


def tokenizer_class(kind: str, where: str = "tokenizer") -> type[MediaTokenizer]:
    """The class registered for `kind` (importing the kind modules on first use)."""
    if kind not in _REGISTRY:
        _import_kind_modules()
    if kind not in _REGISTRY:
        raise ValueError(f"{where}: unknown tokenizer kind {kind!r}; known: {sorted(_REGISTRY)}")
    return _REGISTRY[kind]


def fingerprint(config: dict, weights: dict[str, torch.Tensor] | None = None) -> str:
    """sha256 over the canonical config JSON and each weight's name, dtype, shape and bytes."""
    h = hashlib.sha256(canonical_json(config).encode())
    for name in sorted(weights or {}):
        t = weights[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class MediaTokenizer(abc.ABC):
    """encode(media) -> integer codes; decode(codes) -> media.

    Code shapes: image [rows, cols]; audio [layers, frames]; video [frames, rows, cols].
    Subclasses set `kind` and `modality`, implement the abstract methods and, when learned, return
    their tensors from `weights()` and accept them in `from_config(config, weights)`.
    """

    kind: ClassVar[str]
    modality: ClassVar[str]

    @property
    @abc.abstractmethod
    def codebook_size(self) -> int: ...

    @property
    def num_layers(self) -> int:
        return 1

    @abc.abstractmethod
    def encode(self, media: Any) -> np.ndarray: ...

    @abc.abstractmethod
    def decode(self, codes: np.ndarray) -> Any: ...

    @abc.abstractmethod
    def tokens_for(self, media: Any) -> int:
        """Number of codes `encode(media)` yields (without sentinels or structure tokens)."""

    @abc.abstractmethod
    def config_dict(self) -> dict: ...

    @abc.abstractmethod
    def codebook_spec(self) -> CodebookSpec:
        """What the vocabulary layout records about this tokenizer (fingerprint included)."""

    def identity_config(self) -> dict:
        """The config as fingerprints and the vocabulary record it: `config_dict()` less where things were read
        from (a pretrained model's `path`), since the same weights in another folder are the same tokenizer."""
        return self.config_dict()

    def weights(self) -> dict[str, torch.Tensor]:
        return {}

    @classmethod
    @abc.abstractmethod
    def from_config(cls, config: dict, weights: dict[str, torch.Tensor] | None = None) -> MediaTokenizer: ...

    @classmethod
    def saves_weights(cls, config: dict) -> bool:
        """Whether a saved tokenizer of this config keeps its learned weights in WEIGHTS_FILE (rather than
        reading them from elsewhere, as a video tokenizer made from an image tokenizer's folder does)."""
        return True

    def fingerprint(self) -> str:
        return fingerprint({"kind": self.kind, **self.config_dict()}, self.weights())

    def save(self, directory: str | Path) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        weights = {k: v.detach().cpu().contiguous() for k, v in self.weights().items()}
        if weights:
            save_file(weights, d / WEIGHTS_FILE)
        (d / CONFIG_FILE).write_text(json.dumps({"kind": self.kind, "config": self.config_dict()}, indent=2) + "\n")
        return d

    @classmethod
    def load(cls, directory: str | Path) -> MediaTokenizer:
        return load_tokenizer(directory, expect=cls)


def load_tokenizer(directory: str | Path, expect: type | None = None) -> MediaTokenizer:
    """Rebuild a saved tokenizer from `directory`; a missing path is an error naming it."""
    d = Path(directory)
    cfg_path = d / CONFIG_FILE
    if not cfg_path.exists():
        raise FileNotFoundError(f"no tokenizer at {d}: {cfg_path} is missing (train one or fix the path)")
    try:
        spec = json.loads(cfg_path.read_text())
        kind, config = spec["kind"], spec["config"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{cfg_path}: expected JSON with 'kind' and 'config' ({e})") from e
    cls = tokenizer_class(kind, str(cfg_path))
    if expect is not None and expect is not MediaTokenizer and not issubclass(cls, expect):
        raise TypeError(f"{cfg_path}: holds a {kind!r} tokenizer, not a {expect.__name__}")
    weights_path = d / WEIGHTS_FILE
    weights = None
    if weights_path.exists():
        try:
            weights = load_file(weights_path)
        except Exception as e:  # safetensors raises its own error type, naming no file
            raise ValueError(f"{weights_path}: unreadable weights ({e}); save the tokenizer again") from None
    try:
        tok = cls.from_config(config, weights)
    except WeightsMismatchError as e:
        raise WeightsMismatchError(
            f"{weights_path} does not fit the {kind!r} model that {cfg_path} describes ({e}); "
            "expected the two files of one save()"
        ) from None
    if weights is None and tok.weights() and cls.saves_weights(config):
        # without the file the tokenizer would be freshly initialised: its codes would mean nothing
        raise FileNotFoundError(f"{weights_path} is missing: the {kind!r} tokenizer in {d} has learned weights")
    return tok


@torch.no_grad()
def freeze_untrained_codebooks(model: torch.nn.Module, cosine: bool = False) -> None:
    """vector-quantize-pytorch's k-means-initialised codebooks are all zeros until their first forward
    pass, which then runs k-means on whatever it is given, even in eval mode: an untrained tokenizer's
    encode would rewrite its weights and two copies would differ by what each encoded first. Such a
    codebook (tests, benchmarks, a tokenizer built but not trained) gets a fixed random one instead."""
    gen = torch.Generator().manual_seed(0)
    for book in model.modules():
        if not hasattr(book, "initted") or bool(book.initted.all()):
            continue
        embed = torch.randn(book.embed.shape, generator=gen)
        book.embed.copy_(torch.nn.functional.normalize(embed, dim=-1) if cosine else embed)
        book.embed_avg.copy_(book.embed)
        book.initted.fill_(True)
