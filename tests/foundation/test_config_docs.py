"""Every key of every typed config is documented: each config class has a docs page whose tables name each field.

A user who reads `docs/` for a key (the brief: "documentation of every config key") finds it in a table row
(`| key | default | meaning |`), by its name in backticks, alone or under a prefix (`sampling.<m>.top_k`,
`caps.mnist_train`). A new config class must be added to DOCS, so a new key cannot go undocumented.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import re
import typing
from pathlib import Path

import pytest

import omniseq

DOCS_DIR = Path(__file__).resolve().parents[2] / "docs"

# config class (module.Class) -> the docs page holding its key table
DOCS = {
    "omniseq.recipe.RecipeConfig": "recipes.md",
    "omniseq.model.config.ModelConfig": "model.md",
    "omniseq.train.config.StageConfig": "training.md",
    "omniseq.train.config.StageData": "training.md",
    "omniseq.train.config.OptimConfig": "training.md",
    "omniseq.data.loader.DataConfig": "data.md",
    "omniseq.data.loader.SourceConfig": "data.md",
    "omniseq.data.loader.LoaderOptions": "data.md",
    "omniseq.data.shards.ShardConfig": "data.md",
    "omniseq.data.corpus.CorpusConfig": "data.md",
    "omniseq.data.corpus.PairConfig": "data.md",
    "omniseq.data.demo_corpus.DemoConfig": "demo_world.md",
    "omniseq.eval.harness.EvalConfig": "demo_world.md",
    "omniseq.data.real_corpus.RealCorpusConfig": "real_data.md",
    "omniseq.data.real_corpus.Caps": "real_data.md",
    "omniseq.eval.real.RealEvalConfig": "recipes.md",
    "omniseq.eval.real_scorers.ScorerConfig": "recipes.md",
    "omniseq.tokenizers.text.TextTrainConfig": "token_layout.md",
    "omniseq.tokenizers.image.VQImageConfig": "tokenizers_image.md",
    "omniseq.tokenizers.image_train.ImageTrainConfig": "tokenizers_image.md",
    "omniseq.tokenizers.image_io.ImageIOConfig": "tokenizers_image.md",
    "omniseq.tokenizers.hf_image.HFImageConfig": "tokenizers_image.md",
    "omniseq.tokenizers.video.FrameVideoConfig": "tokenizers_image.md",
    "omniseq.tokenizers.audio.RVQCodecConfig": "tokenizers_audio.md",
    "omniseq.tokenizers.audio_spec.SpecCodecConfig": "tokenizers_audio.md",
    "omniseq.tokenizers.audio_train.AudioTrainConfig": "tokenizers_audio.md",
    "omniseq.tokenizers.audio_io.AudioIOConfig": "tokenizers_audio.md",
    "omniseq.tokenizers.encodec.EncodecTokenizerConfig": "tokenizers_audio.md",
    "omniseq.sample.run.SampleConfig": "sampling.md",
    "omniseq.sample.generate.GenerateConfig": "sampling.md",
    "omniseq.sample.constraints.ConstraintConfig": "sampling.md",
    "omniseq.sample.sampling.SamplingConfig": "sampling.md",
    "omniseq.sample.sampling.ModalitySampling": "sampling.md",
    "omniseq.sample.sampling.GuidanceConfig": "sampling.md",
}


def _resolve(qualname: str) -> type:
    module, _, name = qualname.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _table_rows(page: str) -> list[str]:
    return [line for line in (DOCS_DIR / page).read_text().splitlines() if line.startswith("|")]


def _documented(key: str, rows: list[str]) -> bool:
    # the key in backticks in a table row's first cell, alone or as the last part of a dotted path or one of
    # several keys sharing the row (`min_notes`, `max_notes`)
    pattern = re.compile(r"`[^`]*(?<![\w])" + re.escape(key) + r"(?![\w])[^`]*`")
    return any(pattern.search(row.split("|")[1]) for row in rows if row.count("|") > 2)


def _config_classes() -> set[str]:
    """Every dataclass named *Config in omniseq, and every dataclass one of them holds as a key (`caps: Caps`)."""
    todo = []
    for info in pkgutil.walk_packages(omniseq.__path__, "omniseq."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if name.endswith("Config") and dataclasses.is_dataclass(obj) and obj.__module__ == info.name:
                todo.append(obj)
    found = set()
    while todo:
        cls = todo.pop()
        if f"{cls.__module__}.{cls.__qualname__}" in found:
            continue
        found.add(f"{cls.__module__}.{cls.__qualname__}")
        hints = typing.get_type_hints(cls)
        todo += [hints[f.name] for f in dataclasses.fields(cls) if dataclasses.is_dataclass(hints[f.name])]
    return found


def test_every_config_class_has_a_docs_page():
    assert _config_classes() - set(DOCS) == set(), "config classes without a docs page in DOCS"


@pytest.mark.parametrize("qualname", sorted(DOCS))
def test_every_key_is_in_a_docs_table(qualname):
    rows = _table_rows(DOCS[qualname])
    missing = [f.name for f in dataclasses.fields(_resolve(qualname)) if not _documented(f.name, rows)]
    assert missing == [], f"{qualname}: keys missing from the tables of docs/{DOCS[qualname]}"


def test_an_undocumented_key_is_caught():
    rows = ["| `steps` | 10 | optimiser steps, see `lr` |", "| `sampling.<m>.top_k` | 0 | off |"]
    assert _documented("steps", rows) and _documented("top_k", rows)
    assert not _documented("step", rows) and not _documented("top", rows)
    assert not _documented("lr", rows)  # named in a meaning is not documented
