"""The audio codec training CLI on a few generated files: outputs, skipping bad files, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from omniseq.config import ConfigError
from omniseq.tokenizers.audio import RVQAudioTokenizer
from omniseq.tokenizers.audio_train import AudioSet, AudioTrainConfig, load_sets, lr_at, main, sample_batch
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

    seconds = torch.load(out / "checkpoint.pt", weights_only=False)["train_seconds"]
    assert seconds > 0  # a resumed run's max_minutes counts from here
    main([*args, "steps=6"])
    assert "resumed from" in capsys.readouterr().out
    assert torch.load(out / "checkpoint.pt", weights_only=False)["train_seconds"] > seconds
    assert json.loads((out / "metrics.json").read_text())["step"] == 6


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", ["rvq_audio", "rvq_spec_audio"])
def test_train_on_the_gpu_evaluates_resumes_and_saves_a_cpu_tokenizer(tmp_path, kind, capsys):
    data = tmp_path / "wavs"
    data.mkdir()
    for i in range(6):
        t = np.arange(8000 + 1000 * i) / 8000
        sf.write(data / f"tone{i}.wav", 0.4 * np.sin(2 * np.pi * (200 + 50 * i) * t), 8000)
    out = tmp_path / "run"
    args = ["--config", str(TINY), f"kind={kind}", f"sources=[{data}]",
            f"out={out}", "device=cuda", "checkpoint_every=2", "eval_every=2", "valid_fraction=0.3"]  # fmt: skip
    main([*args, "steps=4"])
    assert "cuda_rng" in torch.load(out / "checkpoint.pt", weights_only=False)
    main([*args, "steps=6"])
    assert "resumed from" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["device"] == "cuda" and metrics["step"] == 6 and np.isfinite(metrics["mel_distance"])
    assert [h["step"] for h in metrics["history"]] == [2, 4, 6]  # evaluated on the GPU mid-run
    tok = load_tokenizer(out / "tokenizer")
    assert next(tok.model.parameters()).device.type == "cpu" and len(tok.encode(data / "tone0.wav"))


def test_training_on_cuda_without_one_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="device: cuda asked for"):
        main(["--config", str(TINY), f"sources=[{tmp_path}]", f"out={tmp_path / 'run'}", "device=cuda"])
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_learning_rate_anneals_over_whichever_budget_ends_first():
    """A run stopped by max_minutes must end near lr/10, not at the peak: the H200 recipe's codec, stopped by
    its time cap at a quarter of its steps, had kept 87% of its learning rate."""
    cfg = AudioTrainConfig(lr=1e-3, steps=8000, max_minutes=10.0)
    assert lr_at(0, 0.0, cfg) == pytest.approx(1e-3)
    assert lr_at(2000, 600.0, cfg) == pytest.approx(1e-4)  # out of minutes at a quarter of the steps
    assert lr_at(2000, 300.0, cfg) == pytest.approx(0.55e-3)  # half the minutes gone: half the cosine
    assert lr_at(4000, 60.0, AudioTrainConfig(lr=1e-3, steps=8000, max_minutes=0.0)) == pytest.approx(0.55e-3)
    assert lr_at(8000, 0.0, cfg) == pytest.approx(1e-4)  # the steps ran out first


def test_source_weights_set_how_often_each_source_is_cropped_and_are_checked(tmp_path):
    data = AudioSet(train=[[np.full(32000, 0.5, np.float32)], [np.full(32000, -0.5, np.float32)]], valid=[],
                    skipped=[])  # fmt: skip
    cfg = AudioTrainConfig(batch_size=400, segment_seconds=0.1, source_weights=[3.0, 1.0])
    first = (sample_batch(data, cfg, np.random.default_rng(0))[:, 0, 0] > 0).float().mean().item()
    assert 0.68 < first < 0.82  # 3 of 4 crops from the first source
    even = AudioTrainConfig(batch_size=400, segment_seconds=0.1)
    assert 0.42 < (sample_batch(data, even, np.random.default_rng(0))[:, 0, 0] > 0).float().mean().item() < 0.58
    with pytest.raises(ConfigError, match="source_weights"):
        load_sets(AudioTrainConfig(sources=[str(tmp_path)], source_weights=[1.0, 2.0]))


@pytest.mark.parametrize("kind", ["folder", "jsonl"])
def test_held_out_clips_do_not_depend_on_where_the_source_lies(tmp_path, kind):
    """The split hashes the path as the source names it: two runs alike in different folders (runs/a and
    runs/b) held out different clips, so their codecs and everything after differed."""
    from omniseq.tokenizers.audio_train import _source_files

    held = []
    for where in ("runs/a", "other/place/b"):
        root = tmp_path / where
        (root / "wav").mkdir(parents=True)
        for i in range(40):
            sf.write(root / "wav" / f"clip{i:02d}.wav", np.zeros(800, np.float32), 8000)
        lines = [json.dumps({"audio": f"wav/clip{i:02d}.wav", "text": str(i)}) for i in range(40)]
        (root / "pairs.jsonl").write_text("\n".join(lines) + "\n")
        src = root / "wav" if kind == "folder" else root / "pairs.jsonl"
        files = _source_files(str(src), AudioTrainConfig(valid_fraction=0.25))
        assert all(f.is_file() for f, _ in files)  # still paths to the files themselves
        held.append([f.name for f, h in files if h])
    assert held[0] == held[1] and 0 < len(held[0]) < 40
