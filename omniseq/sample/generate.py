"""The generation loop, written against a small decoder protocol so that any model plugs in.

Protocol (`Decoder`), the static-KV-cache interface of omniseq.model.Transformer (gpt-fast style): cache
slot s holds position s, so prompts of different lengths are RIGHT-padded and each row carries its own
positions; no left padding and no key mask are needed.

    setup_cache(batch_size, max_seq_len)          allocate a cache of batch_size rows x max_seq_len slots
    prefill(input_ids [B, T], lengths [B]) -> logits [B, V]
        run right-padded prompts (row b real for its first lengths[b] ids) into slots 0..T-1 and return
        the logits after each row's last real token
    decode_step(input_ids [B, 1], positions [B]) -> logits [B, V]
        write one token per row at slot positions[b] (row b's first generated token goes to lengths[b])
        and return the next logits; padding left in later slots is overwritten before it is ever read

With guidance the decoder sees 2B rows, [conditional; unconditional], and both halves get the same
tokens. `CachelessDecoder` adapts a plain full-sequence forward (no cache) to the protocol, for tests
and models without a cache.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from tqdm import tqdm

from omniseq.document import DocumentCodec, Segment, normalize
from omniseq.sample.constraints import ConstraintConfig, ConstraintError, SpanConstraints
from omniseq.sample.guidance import split_guided, uncond_prompt
from omniseq.sample.sampling import Sampler, SamplingConfig
from omniseq.vocab import OPEN, VocabLayout


class Decoder(Protocol):
    def setup_cache(self, batch_size: int, max_seq_len: int) -> None: ...

    def prefill(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor: ...

    def decode_step(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor: ...


@dataclass
class GenerateConfig:
    max_new_tokens: int = 1024  # per-row budget of generated tokens (spans are never cut: see constraints)
    seed: int = 0  # row i draws with a generator seeded seed + i, unless per-row seeds are given
    progress: bool = True  # tqdm bar over decode steps
    stop_check_every: int = 16  # steps between host syncs that stop once every row has finished
    check_constraints: bool = False  # verify every sampled token against its mask (one sync per step)
    constraints: ConstraintConfig = field(default_factory=ConstraintConfig)  # span limits
    sampling: SamplingConfig = field(default_factory=SamplingConfig)  # per-modality settings and CFG


class CachelessDecoder:
    """`forward(input_ids [B, T]) -> logits [B, T, V]` (causal, positions 0..T-1) as a `Decoder`: keeps
    the ids in a buffer laid out like the cache and recomputes the prefix every step (quadratic)."""

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor]):
        self.forward = forward

    def setup_cache(self, batch_size: int, max_seq_len: int) -> None:
        self.buf = torch.zeros(batch_size, max_seq_len, dtype=torch.long)

    def prefill(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        self.buf = self.buf.to(input_ids.device)
        self.buf[:, : input_ids.shape[1]] = input_ids
        return self._logits_at(lengths - 1)

    def decode_step(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        self.buf[torch.arange(len(positions)), positions] = input_ids[:, 0]
        return self._logits_at(positions)

    def _logits_at(self, positions: torch.Tensor) -> torch.Tensor:
        logits = self.forward(self.buf[:, : int(positions.max()) + 1])  # [B, T, V]
        return logits[torch.arange(len(positions)), positions]


def prompt_ids(codec: DocumentCodec, segments: list[Segment], open_span: str | None = None) -> np.ndarray:
    """Document segments -> prompt ids: `DocumentCodec.encode` without the closing `<eos>`. A conversation
    (segments with roles) continues in the assistant's turn: its last assistant turn stays open, or
    `<|assistant|>` opens a new one. `open_span` appends that modality's opening sentinel, so the answer
    starts inside a span (an alternative to forcing the modality)."""
    segments = normalize(segments)  # as encode sees them: an empty assistant segment does not open a turn
    ids = codec.encode(segments).ids.astype(np.int64)[:-1]  # drop <eos>
    L = codec.layout
    if any(s.role is not None for s in segments):
        if segments[-1].role == "assistant":
            ids = ids[:-1]  # reopen the assistant's turn: drop its <|end|>
        else:
            ids = np.append(ids, L.id("<|assistant|>"))
    if open_span is not None:
        ids = np.append(ids, L.id(OPEN[open_span]))
    return ids


def right_pad(rows: Sequence[np.ndarray], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of different lengths -> ids [B, T] (padded at the end) and lengths [B]."""
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, : len(r)] = torch.as_tensor(np.asarray(r, dtype=np.int64))
    return ids.to(device), torch.tensor([len(r) for r in rows], device=device)


@torch.no_grad()
def generate(
    decoder: Decoder,
    layout: VocabLayout,
    prompts: Sequence[Sequence[int]],
    cfg: GenerateConfig,
    *,
    force: Sequence[str | None] | None = None,
    budgets: Sequence[int] | None = None,
    seeds: Sequence[int] | None = None,
    uncond_prompts: Sequence[Sequence[int]] | None = None,
    device: torch.device | str = "cpu",
    names: Sequence[str] | None = None,
    cache_bucket: int = 0,
) -> list[np.ndarray]:
    """Generate after each prompt; returns the generated ids per row, up to and including the
    `<eos>` / `<|end|>` that finished it (no padding). Every row parses together with its prompt.

    force[b]: "image" | "audio" | "video" | None: the row's first generated span is of that modality.
    budgets[b]: the row's token budget (default cfg.max_new_tokens). seeds[b]: its sampling seed.
    uncond_prompts: the unconditional prompts for guidance (default `uncond_prompt` of each prompt).
    names[b]: the row's name in a refused budget's error (default "prompt b").
    cache_bucket: 0, the cache holds what the rows need; else that rounded up to a power of two, at most
    cache_bucket positions (the context), so a compiled decode step meets a few cache shapes, not one a batch.
    """
    B = len(prompts)
    if B == 0:
        return []
    prompts = [np.asarray(p, dtype=np.int64) for p in prompts]
    empty = [b for b, p in enumerate(prompts) if len(p) == 0]
    if empty:
        raise ConstraintError(f"prompt {empty[0]} is empty: start it with <bos>")
    budget_list = list(budgets) if budgets is not None else [cfg.max_new_tokens] * B
    if len(budget_list) != B or min(budget_list) < 0:
        raise ConstraintError(f"budgets: expected {B} non-negative ints, got {budget_list}")
    seed_list = list(seeds) if seeds is not None else [cfg.seed + b for b in range(B)]
    state = SpanConstraints(
        layout, cfg.constraints, B, torch.tensor(budget_list), list(force) if force else None, device
    )
    state.prefill(prompts)
    _check_budgets(state, budget_list, force, names or [f"prompt {b}" for b in range(B)])
    sampler = Sampler(cfg.sampling, seed_list, device)
    guided = cfg.sampling.guided()
    rows = prompts
    if guided:
        un = (
            [np.asarray(u, dtype=np.int64) for u in uncond_prompts]
            if uncond_prompts
            else [uncond_prompt(layout, p) for p in prompts]
        )
        if len(un) != B:
            raise ConstraintError(f"{len(un)} unconditional prompts for {B} prompts")
        rows = prompts + un
    pad_id = layout.id("<pad>")
    ids, lengths = right_pad(rows, pad_id, device)
    steps = max(budget_list)
    # Each row has its own positions, so the cache needs the longest prompt + budget of any one row (a twin
    # row has its conditional row's budget), not the longest prompt plus the largest budget.
    slots = max(len(r) + budget_list[i % B] for i, r in enumerate(rows))
    if cache_bucket:
        slots = max(slots, min(1 << (slots - 1).bit_length(), cache_bucket))
    decoder.setup_cache(len(rows), slots)
    logits = decoder.prefill(ids, lengths)
    pos = lengths
    seen = torch.zeros(B, layout.size, dtype=torch.bool, device=device)
    seen.scatter_(1, ids[:B], True)
    out = torch.full((B, steps), pad_id, dtype=torch.long, device=device)
    for t in tqdm(range(steps), desc="generate", disable=not cfg.progress, unit="tok"):
        modality = state.modality()
        if guided:
            logits = split_guided(logits, sampler.guidance_scale(modality))
        tok = sampler.sample(logits, state.allowed(), modality, seen)
        tok = torch.where(state.done(), pad_id, tok)
        state.advance(tok, check=cfg.check_constraints)
        out[:, t] = tok
        seen.scatter_(1, tok[:, None], True)
        if t + 1 == steps or ((t + 1) % cfg.stop_check_every == 0 and bool(state.done().all())):
            break
        step_ids = torch.cat([tok, tok]) if guided else tok
        logits = decoder.decode_step(step_ids[:, None], pos)
        # A row runs out of budget (and finishes) before its position leaves the cache; a finished row keeps
        # stepping with the others, rewriting its last slot, whose logits nobody reads.
        pos = (pos + 1).clamp(max=slots - 1)
    return _trim(out.cpu().numpy(), pad_id)


def _check_budgets(
    state: SpanConstraints, budgets: list[int], force: Sequence[str | None] | None, names: Sequence[str]
) -> None:
    """Refuse budgets that would cut a span: a prompt's unfinished span, then the forced one after it."""
    closes = state.tokens_to_close()
    for b, need in enumerate(closes):
        if budgets[b] < need:
            raise ConstraintError(
                f"{names[b]} ends inside a span that needs at least {need} more tokens; budget {budgets[b]}"
            )
    for b, m in enumerate(force or []):
        if m is not None and budgets[b] < closes[b] + state.need[m]:
            after = f" after the {closes[b]} that finish its prompt's span" if closes[b] else ""
            raise ConstraintError(
                f"{names[b]} is forced to answer with {m}, which needs {state.need[m]} tokens{after}; "
                f"budget {budgets[b]}"
            )


def _trim(out: np.ndarray, pad_id: int) -> list[np.ndarray]:
    """Drop the padding a finished row emitted (a row pads only after it finished)."""
    result = []
    for row in out:
        keep = np.flatnonzero(row != pad_id)
        result.append(row[: keep[-1] + 1] if keep.size else row[:0])
    return result
