"""sample.py's command line: what it refuses before loading any model."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from omniseq.config import ConfigError
from omniseq.sample.generate import GenerateConfig
from omniseq.sample.run import SampleConfig, SamplingSession, read_prompts

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


def test_a_prompts_line_is_read_with_its_place(tmp_path):
    (tmp_path / "cat.png").write_bytes(b"")
    path = tmp_path / "p.jsonl"
    path.write_text('{"segments": [{"text": "what is this?"}, {"image": "cat.png"}], "seed": 3}\n')
    (prompt,) = read_prompts(path)
    assert (prompt.seed, prompt.where, prompt.segments[1].media) == (3, f"{path}:1", tmp_path / "cat.png")


@pytest.mark.parametrize(
    "line, error",
    [
        ('{"segments": [{"text": "a"}], "forse": "image"}', r":1: unknown key\(s\) \['forse'\]"),
        ('{"segments": [{"text": "a"}], "seed": "abc"}', r":1.seed: expected an integer, got 'abc'"),
        ('{"segments": [{"text": "a"}], "seed": 1.7}', r":1.seed: expected an integer, got 1.7"),
        ('{"segments": [{"image": "nope.png"}]}', r":1.segments\[0\].image: file not found: .*nope.png"),
    ],
)
def test_a_bad_prompts_line_is_an_error_naming_its_place(tmp_path, line, error):
    path = tmp_path / "p.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(ConfigError, match=error):
        read_prompts(path)


@pytest.mark.parametrize(
    "cfg, key",
    [
        (SampleConfig(batch_size=0), "batch_size"),
        (SampleConfig(batch_size=-1), "batch_size"),
        (SampleConfig(generate=GenerateConfig(stop_check_every=0)), "generate.stop_check_every"),
        (SampleConfig(dtype="float16"), "dtype"),
    ],
)
def test_bad_sampling_keys_are_refused_before_the_model_loads(tmp_path, cfg, key):
    cfg.checkpoint = str(tmp_path / "none")  # never reached: the key is refused first
    with pytest.raises(ConfigError, match=key):
        SamplingSession(cfg)
