"""Token-share mixing: choose which source the next document comes from.

Stages are specified by the share of *tokens* each source contributes (MIO ramps speech from 12.5% to
37.5% to 75% across its stages), not the share of samples: a speech clip is hundreds of tokens and a
caption a dozen, so sample-count mixing would miss token targets by an order of magnitude. The rule
is deterministic deficit-following: draw from the source whose realised token share lies furthest
below its target. After N tokens every share is within (longest document / N) of its target, and the
state is just the token counts, so a resumed stream makes exactly the same choices.
"""

from __future__ import annotations

import numpy as np


class TokenMixer:
    def __init__(self, shares: list[float], names: list[str] | None = None):
        shares_arr = np.asarray(shares, dtype=np.float64)
        names = names or [f"source {i}" for i in range(len(shares))]
        if not len(shares_arr):
            raise ValueError("the mixer needs at least one source")
        if len(set(names)) != len(names):  # shares() is keyed by name
            raise ValueError(f"source names must be distinct, got {names}")
        bad = [n for n, s in zip(names, shares_arr) if not s > 0]
        if bad:
            raise ValueError(f"token shares must be positive; {bad[0]} has {shares_arr[names.index(bad[0])]}")
        self.targets = shares_arr / shares_arr.sum()  # shares need not sum to 1: they are normalised
        self.names = names
        self.tokens = np.zeros(len(shares_arr), dtype=np.int64)  # tokens drawn from each source so far

    def choose(self) -> int:
        total = self.tokens.sum()
        realised = self.tokens / total if total else np.zeros_like(self.targets)
        return int(np.argmax(self.targets - realised))

    def add(self, source: int, tokens: int) -> None:
        self.tokens[source] += tokens

    def shares(self) -> dict[str, float]:
        total = max(int(self.tokens.sum()), 1)
        return {n: float(t) / total for n, t in zip(self.names, self.tokens)}

    def state_dict(self) -> dict:
        return {"tokens": self.tokens.tolist()}

    def load_state_dict(self, state: dict) -> None:
        tokens = np.asarray(state["tokens"], dtype=np.int64)
        if tokens.shape != self.tokens.shape:
            raise ValueError(f"mixer state has {len(tokens)} sources, this stream has {len(self.tokens)}")
        self.tokens = tokens
