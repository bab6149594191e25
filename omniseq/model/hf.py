"""Hugging Face Llama-family checkpoints <-> omniseq, so a run can start from Llama-2 / Yi / Mistral (as
AnyGPT and MIO did) and its result can be served by standard tools as a `LlamaForCausalLM`.

Import (`import_hf_llama`): reads a local directory (config.json + model.safetensors or a sharded
model.safetensors.index.json), maps the weights by name (both sides use the rotate-half RoPE layout, so no
permutation is needed) and expands the vocabulary to the omniseq layout: the layout's text ids [0, T) are
the LLM's ids [0, T), so those rows are copied bit for bit; every new row (specials and media codes) is the
mean of the copied rows (Liquid, Wu et al. 2024, found mean-initialised new rows start at a lower loss than
random ones). LLM rows >= T (reserved or added tokens the text tokenizer does not produce) are dropped.

Export (`export_hf_llama`): writes config.json (through transformers' LlamaConfig, so it matches the
installed version) and model.safetensors with the full omniseq vocabulary.

CLI:  python -m omniseq.model.hf import HF_DIR MANIFEST.json OUT_DIR   (omniseq model dir: model.yaml +
      model.safetensors);  python -m omniseq.model.hf export MODEL_DIR OUT_DIR [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from omniseq.config import ConfigError, load_config, save_config
from omniseq.model.config import ModelConfig
from omniseq.model.transformer import Transformer

# omniseq name (per layer, with {i}) -> Hugging Face Llama name
LAYER_KEYS = {
    "layers.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "layers.{i}.attn.wq.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "layers.{i}.attn.wk.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "layers.{i}.attn.wv.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "layers.{i}.attn.wo.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "layers.{i}.mlp_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "layers.{i}.mlp.w_gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "layers.{i}.mlp.w_up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "layers.{i}.mlp.w_down.weight": "model.layers.{i}.mlp.down_proj.weight",
}
GLOBAL_KEYS = {"embed.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight"}
SUPPORTED_TYPES = ("llama", "mistral")  # Yi ships as model_type "llama"


def key_map(n_layers: int, tied: bool) -> dict[str, str]:
    keys = dict(GLOBAL_KEYS)
    if not tied:
        keys["lm_head.weight"] = "lm_head.weight"
    for i in range(n_layers):
        keys.update({k.format(i=i): v.format(i=i) for k, v in LAYER_KEYS.items()})
    return keys


def config_from_hf(hf: dict, vocab_size: int, where: str = "config.json", **overrides) -> ModelConfig:
    """A ModelConfig for the Hugging Face config dict `hf` with the omniseq vocabulary size."""
    if hf.get("model_type") not in SUPPORTED_TYPES:
        raise ConfigError(f"{where}: model_type {hf.get('model_type')!r}, expected one of {SUPPORTED_TYPES}")
    for flag in ("attention_bias", "mlp_bias"):
        if hf.get(flag):
            raise ConfigError(f"{where}: {flag} is true; omniseq's Llama has no biases")
    if hf.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"{where}: hidden_act {hf['hidden_act']!r}, expected 'silu' (SwiGLU)")
    # transformers >= 5 nests RoPE settings in rope_parameters; older configs keep rope_theta/rope_scaling.
    rope = hf.get("rope_parameters") or {
        "rope_theta": hf.get("rope_theta", 10000.0),
        **(hf.get("rope_scaling") or {}),
    }
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    scaling = {}
    if rope_type == "llama3":
        scaling = dict(
            rope_scaling_factor=float(rope["factor"]),
            rope_low_freq_factor=float(rope["low_freq_factor"]),
            rope_high_freq_factor=float(rope["high_freq_factor"]),
            rope_original_max_len=int(rope["original_max_position_embeddings"]),
        )
    elif rope_type != "default":
        raise ConfigError(f"{where}: RoPE scaling {rope_type!r} is not supported (plain RoPE or 'llama3')")
    window = hf.get("sliding_window") if hf.get("use_sliding_window", True) else None
    if window and window < hf.get("max_position_embeddings", 0):
        warnings.warn(
            f"{where}: sliding_window {window} is ignored (omniseq attends over the whole document); "
            f"the model matches the checkpoint for sequences up to {window} tokens",
            stacklevel=2,
        )
    n_heads = hf["num_attention_heads"]
    fields = dict(
        vocab_size=vocab_size,
        dim=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"],
        n_heads=n_heads,
        n_kv_heads=hf.get("num_key_value_heads") or n_heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // n_heads,
        ffn_hidden=hf["intermediate_size"],
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope_base=float(rope.get("rope_theta", 10000.0)),
        max_seq_len=hf.get("max_position_embeddings", 2048),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        **scaling,
    )
    return ModelConfig(**{**fields, **overrides})


def read_safetensors(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of model.safetensors, or of the shards listed in model.safetensors.index.json."""
    single, index = directory / "model.safetensors", directory / "model.safetensors.index.json"
    if single.is_file():
        return load_file(single)
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state = {}
        for shard in shards:
            state.update(load_file(directory / shard))
        return state
    raise FileNotFoundError(f"{directory}: no model.safetensors or model.safetensors.index.json")


def expand_rows(old: torch.Tensor, text_size: int, vocab_size: int) -> torch.Tensor:
    """[V_llm, D] -> [vocab_size, D]: rows [0, text_size) copied, the rest the mean of those rows."""
    new = old.new_empty(vocab_size, old.shape[1])
    new[:text_size] = old[:text_size]
    new[text_size:] = old[:text_size].float().mean(dim=0).to(old.dtype)
    return new


def import_hf_llama(
    path: str | Path, vocab_size: int, text_size: int, dtype: torch.dtype | None = None, **overrides
) -> Transformer:
    """Load a local Llama-family checkpoint into an omniseq Transformer of `vocab_size` ids whose text ids
    are [0, text_size) (use layout.size and layout.text.size). `overrides` set other ModelConfig keys
    (attention, activation_checkpointing, z_loss, ...). dtype defaults to the checkpoint's."""
    path = Path(path)
    config_path = path / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"Hugging Face checkpoint config not found: {config_path}")
    hf = json.loads(config_path.read_text())
    cfg = config_from_hf(hf, vocab_size, where=str(config_path), **overrides)
    if cfg.qk_norm:
        raise ConfigError("qk_norm cannot be switched on while importing: Llama checkpoints have no QK-norm")
    if not 0 < text_size <= hf["vocab_size"]:
        raise ConfigError(
            f"{config_path}: vocab_size {hf['vocab_size']} < the layout's text size {text_size}: "
            "the text tokenizer must be this LLM's (or a prefix of it)"
        )
    if vocab_size < text_size:
        raise ConfigError(f"vocab_size {vocab_size} < text_size {text_size}")
    hf_state = read_safetensors(path)
    if cfg.tie_embeddings:
        hf_state.pop("lm_head.weight", None)
    state = {}
    for ours, theirs in key_map(cfg.n_layers, cfg.tie_embeddings).items():
        if theirs not in hf_state:
            raise ConfigError(f"{path}: tensor {theirs!r} missing from the checkpoint")
        state[ours] = hf_state.pop(theirs)
    for key in ("embed.weight", "lm_head.weight"):
        if key in state:
            state[key] = expand_rows(state[key], text_size, vocab_size)
    leftover = [k for k in hf_state if "rotary_emb" not in k]
    if leftover:
        raise ConfigError(f"{path}: tensors with no place in omniseq's Llama: {leftover[:5]}")
    return Transformer.from_state_dict(cfg, state, dtype or state["embed.weight"].dtype)


def hf_config(cfg: ModelConfig, torch_dtype: torch.dtype, bos: int | None = None, eos: int | None = None):
    """The transformers LlamaConfig equivalent to `cfg`."""
    try:
        from transformers import LlamaConfig
    except ImportError as e:
        raise ImportError("exporting to Hugging Face needs transformers: pip install 'omniseq[hf]'") from e
    if cfg.qk_norm:
        raise ConfigError("model config has qk_norm=true: LlamaForCausalLM has no QK-norm, it cannot be exported")
    scaling = None
    if cfg.rope_scaling_factor > 0:
        scaling = {
            "rope_type": "llama3",
            "factor": cfg.rope_scaling_factor,
            "low_freq_factor": cfg.rope_low_freq_factor,
            "high_freq_factor": cfg.rope_high_freq_factor,
            "original_max_position_embeddings": cfg.rope_original_max_len,
        }
    return LlamaConfig(
        rope_scaling=scaling,
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.dim,
        intermediate_size=cfg.ffn_hidden,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads,
        head_dim=cfg.head_dim,
        rms_norm_eps=cfg.norm_eps,
        rope_theta=cfg.rope_base,
        max_position_embeddings=cfg.max_seq_len,
        tie_word_embeddings=cfg.tie_embeddings,
        bos_token_id=bos,
        eos_token_id=eos,
        architectures=["LlamaForCausalLM"],
        dtype=str(torch_dtype).removeprefix("torch."),
    )


def export_hf_llama(
    model: Transformer,
    out_dir: str | Path,
    dtype: torch.dtype | None = None,
    bos: int | None = None,
    eos: int | None = None,
) -> Path:
    """Write `model` as a LlamaForCausalLM directory (config.json + model.safetensors); returns out_dir.
    bos/eos: the layout's <bos>/<eos> ids, recorded in config.json for serving stacks."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ours = model.state_dict()
    dtype = dtype or ours["embed.weight"].dtype
    state = {
        theirs: ours[k].to(dtype).contiguous()
        for k, theirs in key_map(model.cfg.n_layers, model.cfg.tie_embeddings).items()
    }
    hf_config(model.cfg, dtype, bos, eos).to_json_file(out_dir / "config.json")
    save_file(state, out_dir / "model.safetensors", metadata={"format": "pt"})
    return out_dir


def save_model_dir(model: Transformer, out_dir: str | Path) -> Path:
    """An omniseq model directory: model.yaml (the ModelConfig) + model.safetensors (the state dict)."""
    out_dir = Path(out_dir)
    save_config(model.cfg, out_dir / "model.yaml")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, out_dir / "model.safetensors", metadata={"format": "omniseq"})
    return out_dir


def load_model_config(directory: str | Path, **overrides) -> ModelConfig:
    """The ModelConfig save_model_dir wrote (no weights read); `overrides` are `key=value`-style fields."""
    return load_config(ModelConfig, Path(directory) / "model.yaml", [f"{k}={v}" for k, v in overrides.items()])


def load_model_dir(directory: str | Path, dtype: torch.dtype | None = None, **overrides) -> Transformer:
    """Load what save_model_dir wrote; `overrides` are `key=value`-style ModelConfig fields."""
    directory = Path(directory)
    cfg = load_model_config(directory, **overrides)
    weights = directory / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"omniseq model weights not found: {weights}")
    return Transformer.from_state_dict(cfg, load_file(weights), dtype)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m omniseq.model.hf", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    imp = sub.add_parser("import", help="Hugging Face Llama dir -> omniseq model dir with the layout's vocabulary")
    imp.add_argument("hf_dir")
    imp.add_argument("manifest", help="the vocabulary manifest.json (VocabLayout)")
    imp.add_argument("out_dir")
    exp = sub.add_parser("export", help="omniseq model dir -> LlamaForCausalLM dir")
    exp.add_argument("model_dir")
    exp.add_argument("out_dir")
    exp.add_argument("--manifest", help="vocabulary manifest.json: records <bos>/<eos> ids in config.json")
    exp.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="default: as stored")
    args = parser.parse_args(argv)
    from omniseq.vocab import VocabLayout

    if args.cmd == "import":
        from omniseq.train.checkpoint import export  # a stage export: what init_from and sample.py read

        layout = VocabLayout.load(args.manifest)
        model = import_hf_llama(args.hf_dir, layout.size, layout.text.size)
        print(export(model.state_dict(), model.cfg, Path(args.out_dir), layout, {"imported_from": args.hf_dir}))
    else:
        model = load_model_dir(args.model_dir)
        ids = {}
        if args.manifest:
            layout = VocabLayout.load(args.manifest)
            ids = {"bos": layout.id("<bos>"), "eos": layout.id("<eos>")}
        dtype = getattr(torch, args.dtype) if args.dtype else None
        print(export_hf_llama(model, args.out_dir, dtype, **ids))


if __name__ == "__main__":
    from omniseq.cli import run

    run(main)
