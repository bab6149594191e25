"""Classifier-free guidance in the batch (Ho & Salimans 2022; ANCHORS.md lesson 3).

The batch holds [conditional rows; unconditional rows] so one forward serves both: Emu3 runs the two
one after the other and doubles its latency. Both halves receive the same sampled token each step, so
the unconditional rows see everything generated so far and differ only in the prompt, where the
condition is replaced by `<|uncond|>` as in training's condition dropout (`uncond_prompt`).

Guidance is switched per row: only rows currently inside a media span take their modality's scale;
text rows keep the conditional logits exactly.
"""

from __future__ import annotations

import numpy as np
import torch

from omniseq.vocab import CLOSE, MEDIA, OPEN, ROLES, VocabLayout


def combine(cond: torch.Tensor, uncond: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """guided = uncond + s * (cond - uncond), per row: cond, uncond [B, V], scale [B].

    Written as cond + (s - 1) * (cond - uncond) so that s = 1 returns `cond` bit for bit.
    """
    s = scale.to(cond.dtype)[:, None]
    return cond + (s - 1) * (cond - uncond)


def split_guided(logits: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """In-batch logits [2B, V] ([cond; uncond]) -> guided logits [B, V]."""
    cond, uncond = logits.chunk(2, dim=0)
    return combine(cond, uncond, scale)


def uncond_prompt(layout: VocabLayout, prompt) -> np.ndarray:
    """The unconditional twin of a prompt, the shape training's condition dropout gives (docs/sampling.md).

    A conversation (the prompt holds a finished `<|user|>` turn): the content of its last user turn, the
    request being answered, becomes one `<|uncond|>`; system turns and earlier turns stay, as they do in training:

        <bos><|system|> be brief <|end|><|user|> draw a cat <|end|><|assistant|>
            ->  <bos><|system|> be brief <|end|><|user|><|uncond|><|end|><|assistant|>

    A plain prompt: every maximal run of content (text ids and whole media spans) becomes one `<|uncond|>`;
    <bos> stays, and so does an unfinished media span at the end of the prompt (the start of what is being
    generated, not the condition):

        <bos> a red square <|image|>                ->  <bos> <|uncond|> <|image|>
    """
    ids = np.asarray(prompt, dtype=np.int64)
    uncond = layout.id("<|uncond|>")
    users = np.flatnonzero(ids == layout.id("<|user|>")) if "<|user|>" in layout.special_ids else []
    ends = np.flatnonzero(ids[int(users[-1]) :] == layout.id("<|end|>")) if len(users) else []
    if len(ends):  # an unfinished last user turn is not a request yet: the plain rule below
        start, end = int(users[-1]) + 1, int(users[-1]) + int(ends[0])
        return np.concatenate([ids[:start], [uncond] if end > start else [], ids[end:]]).astype(np.int64)
    keep = {layout.id(n) for n in ("<bos>", "<|end|>", *(f"<|{r}|>" for r in ROLES)) if n in layout.special_ids}
    opens = {layout.id(OPEN[m]): layout.id(CLOSE[m]) for m in MEDIA if m in layout.codebooks}
    out: list[int] = []
    i, n = 0, len(ids)
    while i < n:
        tok = int(ids[i])
        if tok in keep:
            out.append(tok)
            i += 1
            continue
        if tok in opens:
            closes = np.flatnonzero(ids[i + 1 :] == opens[tok])
            if not closes.size:  # the unfinished span being generated: keep it as is
                out.extend(ids[i:].tolist())
                break
            i += 2 + int(closes[0])
        else:
            i += 1
        if not out or out[-1] != uncond:
            out.append(uncond)
    return np.asarray(out, dtype=np.int64)
