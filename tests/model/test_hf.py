"""Hugging Face Llama import and export: logits parity with transformers both ways, vocabulary expansion."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

transformers = pytest.importorskip("transformers")

from omniseq.model.hf import export_hf_llama, import_hf_llama, load_model_dir, save_model_dir  # noqa: E402

LLM_VOCAB, TEXT, VOCAB = 96, 90, 130  # the text tokenizer uses the LLM's first 90 ids


LLAMA31_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}


@pytest.fixture(params=["untied", "tied", "llama3.1-rope"])
def hf_dir(request, tmp_path):
    torch.manual_seed(0)
    rope = LLAMA31_ROPE if request.param == "llama3.1-rope" else None
    cfg = transformers.LlamaConfig(
        rope_scaling=rope,
        vocab_size=LLM_VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rope_theta=5000.0,
        rms_norm_eps=1e-5,
        max_position_embeddings=64,
        tie_word_embeddings=request.param == "tied",
    )
    model = transformers.LlamaForCausalLM(cfg).eval()
    model.save_pretrained(tmp_path / "hf")
    return tmp_path / "hf"


def hf_logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_import_matches_transformers_logits(hf_dir):
    hf = transformers.LlamaForCausalLM.from_pretrained(hf_dir).eval()
    ours = import_hf_llama(hf_dir, VOCAB, TEXT).eval()
    ids = torch.randint(0, TEXT, (2, 40))  # past original_max_position_embeddings of the scaled RoPE
    with torch.no_grad():
        logits = ours(ids)
    assert logits.shape == (2, 40, VOCAB)
    torch.testing.assert_close(logits[..., :TEXT], hf_logits(hf, ids)[..., :TEXT], rtol=1e-5, atol=1e-5)


def test_vocabulary_expansion_keeps_old_rows_and_means_new_ones(hf_dir):
    hf_state = load_file(hf_dir / "model.safetensors")
    ours = import_hf_llama(hf_dir, VOCAB, TEXT)
    pairs = [(ours.embed.weight, hf_state["model.embed_tokens.weight"])]
    if ours.lm_head is not None:
        pairs.append((ours.lm_head.weight, hf_state["lm_head.weight"]))
    for new, old in pairs:
        assert new.shape == (VOCAB, 32)
        assert torch.equal(new[:TEXT], old[:TEXT])  # bit-identical
        mean = old[:TEXT].mean(0)
        torch.testing.assert_close(new[TEXT:], mean.expand(VOCAB - TEXT, -1))


def test_export_round_trips_through_transformers(hf_dir, tmp_path):
    ours = import_hf_llama(hf_dir, VOCAB, TEXT).eval()
    out = export_hf_llama(ours, tmp_path / "export", bos=TEXT + 1, eos=TEXT + 2)
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["vocab_size"] == VOCAB
    back = transformers.LlamaForCausalLM.from_pretrained(out).eval()
    ids = torch.randint(0, VOCAB, (2, 10))  # media and special ids too
    with torch.no_grad():
        torch.testing.assert_close(hf_logits(back, ids), ours(ids), rtol=1e-5, atol=1e-5)


def test_omniseq_model_dir_round_trip(hf_dir, tmp_path):
    ours = import_hf_llama(hf_dir, VOCAB, TEXT).eval()
    loaded = load_model_dir(save_model_dir(ours, tmp_path / "omni")).eval()
    ids = torch.randint(0, VOCAB, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), ours(ids), rtol=0, atol=0)


def test_import_errors_name_the_problem(hf_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        import_hf_llama(tmp_path / "nowhere", VOCAB, TEXT)
    with pytest.raises(ValueError, match="text size"):
        import_hf_llama(hf_dir, 200, LLM_VOCAB + 1)
    config = json.loads((hf_dir / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 5e5, "factor": 8.0}
    (hf_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="yarn"):
        import_hf_llama(hf_dir, VOCAB, TEXT)


def test_command_line_import_and_export(tmp_path, tiny_layout):
    from omniseq.model.hf import main

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=tiny_layout.text.size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        max_position_embeddings=64,
    )
    hf = transformers.LlamaForCausalLM(cfg).eval()
    hf.save_pretrained(tmp_path / "hf")
    manifest = tiny_layout.save(tmp_path / "vocab")
    main(["import", str(tmp_path / "hf"), str(manifest), str(tmp_path / "omni")])
    from omniseq.train.checkpoint import load_export

    load_export(tmp_path / "omni", tiny_layout)  # a stage export: usable as init_from and by sample.py
    main(["export", str(tmp_path / "omni"), str(tmp_path / "out"), "--manifest", str(manifest)])
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["vocab_size"] == tiny_layout.size and config["eos_token_id"] == tiny_layout.id("<eos>")
    back = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "out").eval()
    ids = torch.randint(0, tiny_layout.text.size, (1, 9))
    torch.testing.assert_close(hf_logits(back, ids)[..., : tiny_layout.text.size], hf_logits(hf, ids))


def test_import_mistral_layout(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.MistralConfig(
        vocab_size=LLM_VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        max_position_embeddings=64,
        sliding_window=None,
    )
    hf = transformers.MistralForCausalLM(cfg).eval()
    hf.save_pretrained(tmp_path / "mistral")
    ours = import_hf_llama(tmp_path / "mistral", VOCAB, TEXT).eval()
    ids = torch.randint(0, TEXT, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids)[..., :TEXT], hf_logits(hf, ids)[..., :TEXT], rtol=1e-5, atol=1e-5)
