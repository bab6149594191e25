"""The omniseq decoder: one causal transformer over the merged vocabulary (nanoGPT-style single file).

Architecture (Llama: Touvron et al. 2023), every choice in one place:
- token embedding of the merged vocabulary; no absolute positions
- pre-norm blocks: x + attn(RMSNorm(x)), then x + SwiGLU(RMSNorm(x)); a final RMSNorm; no biases anywhere
- RMSNorm (Zhang & Sennrich 2019), normalised in fp32 and cast back, as Hugging Face Llama does
- RoPE (Su et al. 2021) in the rotate-half layout of Hugging Face checkpoints, base `rope_base`,
  positions restarting at every packed document (position_ids of the batch contract); optional Llama-3.1
  frequency scaling (`rope_scaling_factor`)
- grouped-query attention (Ainslie et al. 2023): n_kv_heads <= n_heads
- SwiGLU MLP (Shazeer 2020): w_down(silu(w_gate x) * w_up x)
- optional QK-norm: RMSNorm per query/key head before RoPE, and optional z-loss; Chameleon (Team 2024)
  needed both to keep mixed-modal training with image tokens from diverging
- optional tied input/output embeddings (small sizes)
- optional dropout (`dropout`) on the embeddings and on each block's two outputs, in training only; read
  from the config at every forward, so a stage that loads an export can switch it on or off
- document-causal attention over packed rows via attention.py (flash-attn varlen / FlexAttention / SDPA)
- construction on the meta device plus an explicit `init_weights()` (torchtitan): no wasted random init
  when weights are about to be loaded, and large models never materialise on the CPU first
- optional activation checkpointing per block
- a static KV cache (kv_cache.py) with `setup_cache` / `prefill` / `decode_step` for generation
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from omniseq.model.attention import AttentionMask, attention, cached_attention, prepare_mask
from omniseq.model.config import ModelConfig
from omniseq.model.kv_cache import KVCache
from omniseq.model.loss import LossOutput, chunked_cross_entropy, logits_fit


class RMSNorm(nn.RMSNorm):
    def forward(self, x: Tensor) -> Tensor:
        # fp32 statistics, then cast back before the gain: bit-for-bit the Hugging Face Llama order.
        return self.weight * F.rms_norm(x.float(), self.normalized_shape, eps=self.eps).type_as(x)


def rope_tables(cfg: ModelConfig, device=None) -> tuple[Tensor, Tensor]:
    """cos, sin [max_seq_len, head_dim] in fp32, rotate-half layout (both halves share frequencies)."""
    d = cfg.head_dim
    inv_freq = 1.0 / cfg.rope_base ** (torch.arange(0, d, 2, dtype=torch.float32, device=device) / d)
    if cfg.rope_scaling_factor > 0:
        inv_freq = llama3_scaled(inv_freq, cfg)
    angles = torch.outer(torch.arange(cfg.max_seq_len, dtype=torch.float32, device=device), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def llama3_scaled(inv_freq: Tensor, cfg: ModelConfig) -> Tensor:
    """Llama-3.1 frequency scaling: long wavelengths slowed by `factor`, short ones kept, a smooth ramp
    between (Meta's llama-models `apply_scaling`, Hugging Face rope_type "llama3")."""
    factor, lo, hi = cfg.rope_scaling_factor, cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    ramp = ((cfg.rope_original_max_len / wavelen - lo) / (hi - lo)).clamp(0, 1)  # 0: long, 1: short
    return (1 - ramp) * inv_freq / factor + ramp * inv_freq


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x [B, H, T, D]; cos/sin [B, 1, T, D] gathered at each token's position."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x.float() * cos + rotated.float() * sin).type_as(x)


def positions_from_documents(document_ids: Tensor) -> Tensor:
    """position_ids [B, T] restarting at 0 wherever document_ids changes (when a batch omits them)."""
    B, T = document_ids.shape
    idx = torch.arange(T, device=document_ids.device).expand(B, T)
    starts = torch.ones_like(document_ids, dtype=torch.bool)
    starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
    return idx - torch.where(starts, idx, 0).cummax(dim=1).values


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)
        self.q_norm = RMSNorm(cfg.head_dim, eps=cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, eps=cfg.norm_eps) if cfg.qk_norm else None
        self.cache: KVCache | None = None

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: AttentionMask | None, positions: Tensor) -> Tensor:
        q = rearrange(self.wq(x), "b t (h d) -> b h t d", d=self.head_dim)
        k = rearrange(self.wk(x), "b t (h d) -> b h t d", d=self.head_dim)
        v = rearrange(self.wv(x), "b t (h d) -> b h t d", d=self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if mask is None:  # generation: attend over the static cache
            k, v = self.cache.update(positions, k, v)
            # a cache in another dtype (setup_cache's `dtype`, e.g. fp32 under a bf16 model): SDPA wants one
            out = cached_attention(q.to(k.dtype), k, v, positions).to(q.dtype)
        else:
            out = attention(q, k, v, mask)
        return self.wo(rearrange(out, "b h t d -> b t (h d)"))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.w_gate = nn.Linear(cfg.dim, cfg.ffn_hidden, bias=False)
        self.w_up = nn.Linear(cfg.dim, cfg.ffn_hidden, bias=False)
        self.w_down = nn.Linear(cfg.ffn_hidden, cfg.dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, mask: AttentionMask | None, positions: Tensor, dropout: float = 0.0
    ) -> Tensor:
        x = x + F.dropout(self.attn(self.attn_norm(x), cos, sin, mask, positions), dropout, self.training)
        return x + F.dropout(self.mlp(self.mlp_norm(x)), dropout, self.training)


class Transformer(nn.Module):
    """Build on the meta device and call `init_weights()` (or load a state dict): see `Transformer.build`."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("model config: vocab_size is 0; set it from the vocabulary (VocabLayout.size)")
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, eps=cfg.norm_eps)
        # Tied: no module at all, the embedding matrix is used directly (no aliasing to break in to_empty).
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        cos, sin = rope_tables(cfg)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    @classmethod
    def build(cls, cfg: ModelConfig, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        """Construct on the meta device, allocate on `device` in `dtype`, and initialise."""
        with torch.device("meta"):
            model = cls(cfg).to(dtype)  # cast while on meta: the fp32 copy is never allocated
        model.to_empty(device=device)
        model.init_weights()
        return model

    @classmethod
    def from_state_dict(cls, cfg: ModelConfig, state: dict[str, Tensor], dtype: torch.dtype | None = None):
        """Construct on the meta device and adopt `state`'s tensors (no copy, no random init); the RoPE
        tables, which are not in the state dict, are recomputed on the CPU. Move with .to(device) after."""
        with torch.device("meta"):
            model = cls(cfg)
        model.load_state_dict(state, strict=True, assign=True)
        model.rope_cos, model.rope_sin = (torch.empty_like(b, device="cpu") for b in (model.rope_cos, model.rope_sin))
        model.reset_rope()
        return model.to(dtype) if dtype else model

    @property
    def output_weight(self) -> Tensor:
        """[V, D]: the lm_head, or the embedding when tied."""
        return self.embed.weight if self.lm_head is None else self.lm_head.weight

    @torch.no_grad()
    def init_weights(self) -> None:
        """Normal(0, init_std) everywhere; residual output projections (wo, w_down) scaled by
        1/sqrt(2 * n_layers) so the residual stream's variance does not grow with depth (GPT-2)."""
        std = self.cfg.init_std
        nn.init.normal_(self.embed.weight, std=std)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                scale = 1 / math.sqrt(2 * self.cfg.n_layers) if name.endswith(("wo", "w_down")) else 1.0
                nn.init.normal_(module.weight, std=std * scale)
            elif isinstance(module, nn.RMSNorm):
                module.reset_parameters()
        self.reset_rope()

    def _apply(self, fn, recurse=True):
        """Module.to / .bfloat16 / .half cast the weights, never the RoPE tables: training keeps them fp32
        (DeepSpeed casts parameters only), and bf16 tables would shift every angle by up to 2^-9 at sampling."""
        super()._apply(fn, recurse)
        if self.rope_cos.dtype != torch.float32:
            self.rope_cos, self.rope_sin = self.rope_cos.float(), self.rope_sin.float()
            self.reset_rope()  # recomputed: the cast already rounded the values
        return self

    @torch.no_grad()
    def reset_rope(self) -> None:
        """Recompute the RoPE tables (non-persistent buffers are garbage after meta construction)."""
        cos, sin = rope_tables(self.cfg, self.rope_cos.device)
        self.rope_cos.copy_(cos)
        self.rope_sin.copy_(sin)

    # -- training / scoring ------------------------------------------------------------------------------
    def hidden_states(
        self, input_ids: Tensor, position_ids: Tensor | None = None, document_ids: Tensor | None = None
    ) -> Tensor:
        """input_ids [B, T] -> final-normed hidden states [B, T, D]."""
        B, T = input_ids.shape
        if position_ids is None:
            if document_ids is None:
                position_ids = torch.arange(T, device=input_ids.device).expand(B, T)
            else:
                position_ids = positions_from_documents(document_ids)
        p = self.cfg.dropout
        x = F.dropout(self.embed(input_ids), p, self.training)
        mask = prepare_mask(document_ids, B, T, x.device, x.dtype, self.cfg.attention)
        cos, sin = self._rope(position_ids)
        recompute = self.cfg.activation_checkpointing and self.training and torch.is_grad_enabled()
        for layer in self.layers:
            if recompute:  # the recompute replays the RNG state, so it draws the same dropout masks
                x = checkpoint(layer, x, cos, sin, mask, position_ids, p, use_reentrant=False)
            else:
                x = layer(x, cos, sin, mask, position_ids, p)
        return self.norm(x)

    def forward(
        self,
        input_ids: Tensor,
        position_ids: Tensor | None = None,
        document_ids: Tensor | None = None,
        labels: Tensor | None = None,
        label_modality: Tensor | None = None,
        loss_weights: dict[str, float] | None = None,
    ) -> Tensor | LossOutput:
        """The packed-batch contract: input_ids, labels, label_modality int64 [B, T], position_ids int64
        [B, T] (restarting per document), document_ids int32 [B, T] (attention stays inside a document).

        Without labels: logits [B, T, V] in the model's dtype. With labels (already shifted, -100 ignored):
        a LossOutput (loss to backward, per-modality CE sums and counts) computed chunk-wise, never holding
        [B*T, V] fp32 logits. loss_weights (modality -> weight) overrides cfg.loss_weights.
        """
        h = self.hidden_states(input_ids, position_ids, document_ids)
        if labels is None:
            return h @ self.output_weight.T
        return chunked_cross_entropy(
            rearrange(h, "b t d -> (b t) d"),
            self.output_weight,
            labels.reshape(-1),
            None if label_modality is None else label_modality.reshape(-1),
            chunk_tokens=self.cfg.loss_chunk_tokens,
            loss_weights=self.cfg.loss_weights if loss_weights is None else loss_weights,
            z_loss=self.cfg.z_loss,
            recompute=not logits_fit(labels.numel(), self.cfg.vocab_size, self.cfg.loss_keep_logits_mib),
        )

    def _rope(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """cos, sin [B, 1, T, D] at positions [B, T]."""
        return self.rope_cos[positions][:, None], self.rope_sin[positions][:, None]

    # -- generation with a static KV cache ---------------------------------------------------------------
    def setup_cache(self, batch_size: int, max_seq_len: int | None = None, dtype: torch.dtype | None = None) -> None:
        """Allocate a static cache of batch_size rows x max_seq_len positions (default cfg.max_seq_len) on
        the model's device, in `dtype` (default the model's). Call again to resize; replaces the old one."""
        max_seq_len = max_seq_len or self.cfg.max_seq_len
        if max_seq_len > self.cfg.max_seq_len:
            raise ValueError(
                f"cache of {max_seq_len} positions exceeds model config max_seq_len {self.cfg.max_seq_len}"
            )
        weight = self.embed.weight
        for layer in self.layers:
            layer.attn.cache = KVCache(
                batch_size,
                self.cfg.n_kv_heads,
                max_seq_len,
                self.cfg.head_dim,
                dtype or weight.dtype,
                weight.device,
            )

    def reset_cache(self) -> None:
        """Zero the cache to reuse it for a new batch of prompts of the same batch size."""
        for layer in self.layers:
            self._cache_of(layer).reset()

    def clear_cache(self) -> None:
        """Free the cache."""
        for layer in self.layers:
            layer.attn.cache = None

    def _cache_of(self, layer: Block) -> KVCache:
        if layer.attn.cache is None:
            raise RuntimeError("no KV cache: call model.setup_cache(batch_size, max_seq_len) first")
        return layer.attn.cache

    def forward_cached(self, input_ids: Tensor, positions: Tensor) -> Tensor:
        """input_ids, positions [B, T] -> hidden states [B, T, D]; writes cache slot positions[b, t]."""
        cache = self._cache_of(self.layers[0])
        if input_ids.shape[0] != cache.batch_size:
            raise ValueError(f"batch of {input_ids.shape[0]} rows, but the cache was set up for {cache.batch_size}")
        x = self.embed(input_ids)
        cos, sin = self._rope(positions)
        for layer in self.layers:
            x = layer(x, cos, sin, None, positions)
        return self.norm(x)

    @torch.no_grad()
    def prefill(self, input_ids: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Run right-padded prompts input_ids [B, T] (row b real for its first lengths[b] tokens; default
        all T) from position 0, filling cache slots 0..T-1. Returns fp32 logits [B, V] of each row's last
        real token; row b's next token then goes to decode_step at position lengths[b]."""
        B, T = input_ids.shape
        if T > self._cache_of(self.layers[0]).max_seq_len:
            raise ValueError(f"prompt of {T} tokens exceeds the cache ({self._cache_of(self.layers[0]).max_seq_len})")
        positions = torch.arange(T, device=input_ids.device).expand(B, T)
        h = self.forward_cached(input_ids, positions)
        last = torch.full((B,), T - 1, device=h.device) if lengths is None else lengths.to(h.device) - 1
        return (h[torch.arange(B, device=h.device), last] @ self.output_weight.T).float()

    @torch.no_grad()
    def decode_step(self, input_ids: Tensor, positions: Tensor) -> Tensor:
        """One token per row: input_ids [B, 1] at positions [B] -> fp32 logits [B, V].

        Fixed shapes, no host sync: `torch.compile(model.decode_step, mode="reduce-overhead")` captures it.
        Positions must be < the cache length (not checked: checking would sync)."""
        h = self.forward_cached(input_ids, positions[:, None])
        return (h[:, 0] @ self.output_weight.T).float()
