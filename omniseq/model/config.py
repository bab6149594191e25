"""Model hyper-parameters: the `ModelConfig` dataclass and the size registry (torchtitan-style).

`vocab_size` is not part of a size: it comes from the merged vocabulary (`VocabLayout.size`), so one size
serves every tokenizer set. Build a config with `model_config("125M", vocab_size=layout.size)` or load
`configs/model/<size>.yaml` with `load_config(ModelConfig, path, overrides)`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from omniseq.config import ConfigError


@dataclass
class ModelConfig:
    # -- shape ----------------------------------------------------------------------------------------
    vocab_size: int = 0  # ids in the merged vocabulary (VocabLayout.size); 0 = not set yet
    dim: int = 64  # residual stream width
    n_layers: int = 2  # transformer blocks
    n_heads: int = 4  # query heads
    n_kv_heads: int = 0  # key/value heads (GQA, Ainslie et al. 2023); 0 = n_heads (plain multi-head)
    head_dim: int = 0  # width of one head; 0 = dim // n_heads (Llama 3.2 and Gemma decouple the two)
    ffn_hidden: int = 0  # SwiGLU hidden width; 0 = Llama's rule: 2/3 * 4 * dim rounded up to ffn_multiple_of
    ffn_multiple_of: int = 64  # rounding of the derived SwiGLU width (tensor-core friendly)
    norm_eps: float = 1e-5  # RMSNorm epsilon (Llama-2 uses 1e-5, Llama-3 1e-5, Yi 1e-5, Mistral 1e-5)
    rope_base: float = 10000.0  # RoPE theta; Llama-3 uses 500000 for long context
    max_seq_len: int = 2048  # longest position the RoPE tables (and the default KV cache) cover
    # Llama-3.1 RoPE frequency scaling (Hugging Face rope_type "llama3"), needed to import Llama-3.1/3.2
    rope_scaling_factor: float = 0.0  # long wavelengths are divided by this (Llama-3.1: 8); 0 = plain RoPE
    rope_low_freq_factor: float = 1.0  # wavelengths above original_len / this are fully scaled (Llama-3.1: 1)
    rope_high_freq_factor: float = 4.0  # wavelengths below original_len / this are untouched (Llama-3.1: 4)
    rope_original_max_len: int = 8192  # context length of the unscaled pretraining (Llama-3.1: 8192)
    tie_embeddings: bool = False  # share the input embedding with the output projection (small models)
    # -- stability (Chameleon, Team 2024: both were needed for stable mixed-modal training) --------------
    qk_norm: bool = False  # RMSNorm on each query and key head before RoPE
    z_loss: float = 0.0  # coefficient of the z-loss mean(logsumexp(logits)^2) (PaLM: 1e-4); 0 = off
    # -- regularisation -----------------------------------------------------------------------------------
    # dropout on the embeddings and on each block's attention and MLP outputs before they join the residual
    # stream (GPT-2, nanoGPT's `dropout`); training only. 0 = off, as in Llama pretraining. For small data
    # a big model memorises: the 125M real recipe's held-out loss rose after ~400 steps (docs/benchmarks.md)
    dropout: float = 0.0
    # -- loss ---------------------------------------------------------------------------------------------
    # modality -> loss weight, 1 when absent (Emu3 trained with image 0.5)
    loss_weights: dict[str, float] = field(default_factory=dict)
    loss_chunk_tokens: int = 2048  # tokens per chunk of the output projection + CE (bounds fp32 logit memory)
    # a micro-batch whose fp32 logits take at most this many MiB keeps them for backward instead of
    # recomputing each chunk's (1.13-1.20x the tokens/s of the CPU recipe's 2.5M model: docs/benchmarks.md); 0 = always
    # recompute. 256 keeps the CPU demo's (40 MiB), the CPU real recipe's (36) and demo_h200's (161); it recomputes
    # real_small's (32 x 1,024 tokens: over 570 MiB)
    loss_keep_logits_mib: float = 256.0
    # -- execution ----------------------------------------------------------------------------------------
    attention: str = "auto"  # auto | flash_varlen | flex | sdpa_masked | sdpa_causal (see attention.py)
    activation_checkpointing: bool = False  # recompute each block in backward: less memory, ~1/3 more compute
    init_std: float = 0.02  # std of the normal init; output projections get init_std / sqrt(2 * n_layers)

    def __post_init__(self) -> None:
        if self.n_heads <= 0 or self.dim <= 0:
            raise ConfigError(f"model config: dim and n_heads must be positive, got {self.dim} and {self.n_heads}")
        if self.ffn_multiple_of <= 0:  # before it divides below
            raise ConfigError(f"model config: key 'ffn_multiple_of' = {self.ffn_multiple_of!r}, expected positive")
        if self.n_kv_heads == 0:
            self.n_kv_heads = self.n_heads
        if self.head_dim == 0:
            self.head_dim = self.dim // self.n_heads
        if self.ffn_hidden == 0:
            hidden = int(2 * 4 * self.dim / 3)
            self.ffn_hidden = self.ffn_multiple_of * -(-hidden // self.ffn_multiple_of)
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first key that cannot work."""
        checks = [
            ("n_layers", self.n_layers >= 1, "at least 1 (0 or fewer builds a model of no blocks)"),
            ("n_kv_heads", self.n_kv_heads >= 1, "positive (0 = n_heads)"),
            (
                "n_heads",
                self.n_heads > 0 and self.n_heads % self.n_kv_heads == 0,
                "a positive multiple of n_kv_heads",
            ),
            (
                "head_dim",
                self.head_dim > 0 and self.head_dim % 2 == 0,
                "positive and even (RoPE rotates pairs)",
            ),
            ("vocab_size", self.vocab_size >= 0, "a non-negative id count (set it from VocabLayout.size)"),
            ("max_seq_len", self.max_seq_len > 0, "positive"),
            ("loss_chunk_tokens", self.loss_chunk_tokens > 0, "positive"),
            ("loss_keep_logits_mib", self.loss_keep_logits_mib >= 0, "non-negative"),
            ("z_loss", self.z_loss >= 0, "non-negative"),
            ("dropout", 0 <= self.dropout < 1, "a probability in [0, 1)"),
            (
                "rope_high_freq_factor",
                self.rope_high_freq_factor > self.rope_low_freq_factor,
                "> rope_low_freq_factor",
            ),
        ]
        for key, ok, expected in checks:
            if not ok:
                raise ConfigError(f"model config: key {key!r} = {getattr(self, key)!r}, expected {expected}")
        from omniseq.model.attention import AttentionBackend
        from omniseq.vocab import MODALITIES

        backends = [b.value for b in AttentionBackend]
        if self.attention not in backends:
            raise ConfigError(f"model config: key 'attention' = {self.attention!r}, expected one of {backends}")

        unknown = sorted(set(self.loss_weights) - set(MODALITIES))
        if unknown:
            raise ConfigError(f"model config: loss_weights has unknown modality {unknown}; known: {list(MODALITIES)}")
        bad = {m: w for m, w in self.loss_weights.items() if not math.isfinite(w) or w < 0}
        if bad:  # a negative weight is gradient ascent on that modality
            raise ConfigError(f"model config: loss_weights {bad}: expected finite weights >= 0")

    def num_params(self, embedding: bool = True) -> int:
        """Parameter count; `embedding=False` leaves out the input embedding (it costs no FLOPs)."""
        attn = self.dim * self.head_dim * (2 * self.n_heads + 2 * self.n_kv_heads)
        norms = 2 * self.dim + (2 * self.head_dim if self.qk_norm else 0)
        block = attn + 3 * self.dim * self.ffn_hidden + norms
        out = 0 if self.tie_embeddings and embedding else self.vocab_size * self.dim
        emb = self.vocab_size * self.dim if embedding else 0
        return self.n_layers * block + self.dim + out + emb

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per token (forward + backward), nanoGPT / PaLM appendix B: 6 N for the matmuls
        (N without the input embedding, a lookup) + 12 n_layers n_heads head_dim seq_len for attention
        scores, counted over the full row so packed and causal runs compare on the same work."""
        return 6 * self.num_params(embedding=False) + 12 * self.n_layers * self.n_heads * self.head_dim * seq_len


# Sizes; vocab_size comes from the layout. "tiny" runs the unit tests in milliseconds, "demo" trains on the
# CPU in minutes, the others follow the Llama / OLMo shapes of the same parameter counts.
SIZES: dict[str, dict] = {
    "tiny": dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=512, tie_embeddings=True),
    "demo": dict(dim=256, n_layers=4, n_heads=4, n_kv_heads=2, max_seq_len=1024, tie_embeddings=True),
    "125M": dict(dim=768, n_layers=12, n_heads=12, n_kv_heads=12, max_seq_len=2048, tie_embeddings=True),
    "1B": dict(dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, max_seq_len=4096, ffn_hidden=8192),
    "7B": dict(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, max_seq_len=4096, ffn_hidden=14336),
}


def model_config(size: str, vocab_size: int, **overrides) -> ModelConfig:
    """The registered `size` with `vocab_size` and any field overridden by keyword."""
    if size not in SIZES:
        raise ConfigError(f"unknown model size {size!r}; known: {list(SIZES)}")
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    bad = sorted(set(overrides) - names)
    if bad:
        raise ConfigError(f"model config: unknown key(s) {bad}")
    return ModelConfig(**{**SIZES[size], "vocab_size": vocab_size, **overrides})
