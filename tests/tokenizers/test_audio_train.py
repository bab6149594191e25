"""The audio codec training CLI on a few generated files: outputs, skipping bad files, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from omniseq.tokenizers.audio import RVQAudioTokenizer
from omniseq.tokenizers.audio_train import main
from omniseq.tokenizers.base import load_tokenizer

TINY = Path(__file__).resolve().parents[2] / "configs" / "tokenizers" / "audio_tiny.yaml"


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_train_writes_outputs_skips_bad_files_and_resumes(tmp_path, capsys):
    data = tmp_path / "wavs"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        t = np.arange(8000 + 1000 * i) / 8000
        sf.write(
            data / f"tone{i}.wav",
            0.4 * np.sin(2 * np.pi * (200 + 50 * i) * t) + 0.01 * rng.standard_normal(len(t)),
            8000,
        )
    (data / "broken.wav").write_bytes(b"RIFF garbage")
    out = tmp_path / "run"
    args = ["--config", str(TINY), f"sources=[{data}]", f"out={out}", "checkpoint_every=2",
            "valid_fraction=0.3", "max_valid_clips=2"]  # fmt: skip
    main([*args, "steps=4"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["step"] == 4
    assert any("broken.wav" in s for s in metrics["skipped"])
    assert {"si_snr_db", "mel_distance", "codebook_usage"} <= set(metrics)
    assert len(metrics["codebook_usage"]) == 2  # layers_used of the tiny config
    assert (out / "spectrograms.png").stat().st_size > 0
    tok = load_tokenizer(out / "tokenizer")
    assert isinstance(tok, RVQAudioTokenizer) and tok.num_layers == 2

    main([*args, "steps=6"])
    assert "resumed from" in capsys.readouterr().out
    assert json.loads((out / "metrics.json").read_text())["step"] == 6
