"""sample.py's command line: what it refuses before loading any model."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from omniseq.config import ConfigError

REPO = Path(__file__).resolve().parents[2]


def sample_main():
    spec = importlib.util.spec_from_file_location("sample_cli", REPO / "sample.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.mark.parametrize("flags", [["--prompt", "a red circle"], ["--force", "image"], ["--seed", "7"]])
def test_flags_beside_a_prompts_file_are_refused_not_ignored(tmp_path, flags):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"text": "hum C E G."}\n')
    with pytest.raises(ConfigError, match=f"{flags[0]} cannot go with it"):
        sample_main()(["--prompts", str(prompts), *flags, f"checkpoint={tmp_path / 'none'}"])


def test_nothing_to_prompt_with_is_an_error():
    with pytest.raises(ConfigError, match="nothing to prompt with"):
        sample_main()([])
