"""A batch-safe finite-state constrained decoder over the merged vocabulary.

Chameleon's sampler forces exactly 1024 image codes and then the end token, and the Hugging Face port
notes that the model degrades badly without it; nobody constrains audio spans (ANCHORS.md, lesson 1).
Here every row of a batch carries a small *phase* (text, inside an image row, at an audio frame
boundary, ...) plus integer counters (row, column, frames, RVQ layer) as [B] tensors. The allowed set
for the next token is one row of a precomputed [E, V] boolean table, picked by an index `eff` computed
from the phase and counters with a handful of elementwise ops: no Python loop over the batch or the
vocabulary, and no device sync. docs/sampling.md draws the machine.

Budgets: `remaining[b]` counts the tokens row b may still generate. An opening sentinel is allowed
only when the remaining budget holds the shortest whole span, and inside free-length spans (audio,
video) continuing is allowed only while the rest of the span still fits, so a row never runs out of
budget inside a span: every generated sequence parses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from omniseq.vocab import CLOSE, MEDIA, MODALITY_ID, OPEN, ROLES, VocabLayout

# Phases (what the row is doing); the variants of a phase are separate rows of the mask table.
TEXT, DONE, IMG_CODE, IMG_ROW_END, IMG_CLOSE, VID_CODE, VID_ROW_END, VID_BOUNDARY = range(8)
AUD_BOUNDARY, AUD_FRAME_CODE, AUD_L1, AUD_LAYER, AUD_SEP, AUD_CLOSE = range(8, 14)
PHASE_NAMES = (
    "text", "finished", "image code", "image row end", "image close", "video code", "video row end",
    "video frame boundary", "audio frame boundary", "audio code", "audio layer 1", "audio layer code",
    "audio layer separator", "audio close",
)  # fmt: skip
PHASE_MODALITY = [MODALITY_ID[m] for m in ["text"] * 2 + ["image"] * 3 + ["video"] * 3 + ["audio"] * 6]
# Token classes: the transition reads the class of the consumed token, not the token itself.
C_TEXT, C_EOS, C_END, C_ROLE, C_OTHER, C_PAD, C_CODE, C_ROW_END, C_FRAME, C_SEP = range(10)
C_OPEN = {m: 10 + i for i, m in enumerate(MEDIA)}
C_CLOSE = {m: 13 + i for i, m in enumerate(MEDIA)}


@dataclass
class ConstraintConfig:
    audio_min_frames: int = 1  # shortest audio span, in codec frames (the span closes only after this)
    audio_max_frames: int = 0  # longest audio span in frames; 0: audio_max_seconds * the codebook's rate
    audio_max_seconds: float = 10.0  # used when audio_max_frames is 0 (needs CodebookSpec.rate > 0)
    video_min_frames: int = 1  # shortest video span, in frames
    video_max_frames: int = 16  # longest video span, in frames
    grid: list[int] | None = None  # [rows, cols] of image/video spans when the layout fixes no grid


class ConstraintError(ValueError):
    """A prompt that breaks the span structure, a budget too small for a forced or unfinished span, or a
    layout/config the decoder cannot constrain: a user error (names the row, position or config key)."""


class SpanConstraints:
    """Per-row constraint state for a batch of `batch_size` rows.

    Use: `prefill(prompts)` consumes the prompts (validating them; generation may start inside a
    span), then per step `allowed()` -> [B, V] mask, sample, `advance(tokens)`. `force[b]` is a
    MODALITY_ID or -1: while it is set and the row is in text, only that modality's opening sentinel
    is allowed; it clears when the row opens a span during generation ("answer with an image"). Spans in
    the prompt leave it set (the question's clip is no answer), and so does a span the prompt ends inside:
    the row finishes that span, then opens the forced one.
    """

    def __init__(
        self,
        layout: VocabLayout,
        cfg: ConstraintConfig,
        batch_size: int,
        budgets: torch.Tensor | int,
        force: list[str | None] | None = None,
        device: torch.device | str = "cpu",
    ):
        self.layout, self.cfg, self.B, self.device = layout, cfg, batch_size, torch.device(device)
        self._resolve_shapes()
        self._build_classes()
        self._build_masks()
        z = lambda: torch.zeros(batch_size, dtype=torch.long, device=self.device)  # noqa: E731
        self.phase, self.row, self.col, self.frames, self.layer, self.pos = (z() for _ in range(6))
        self.in_turn = torch.zeros(batch_size, dtype=torch.bool, device=self.device)
        self.remaining = torch.as_tensor(budgets, dtype=torch.long, device=self.device).expand(batch_size).clone()
        force = force or [None] * batch_size
        if len(force) != batch_size:
            raise ConstraintError(f"force has {len(force)} entries for a batch of {batch_size}")
        for b, m in enumerate(force):
            if m is not None and m not in self.present:
                raise ConstraintError(f"force[{b}] = {m!r}: expected one of {sorted(self.present)} or None")
        self.force = torch.tensor([MODALITY_ID[m] if m else -1 for m in force], device=self.device)
        self._phase_modality = torch.tensor(PHASE_MODALITY, device=self.device)
        need_by_id = [0] * len(MODALITY_ID)
        for m, n in self.need.items():
            need_by_id[MODALITY_ID[m]] = n
        self.need_by_id = torch.tensor(need_by_id, device=self.device)  # shortest span by MODALITY_ID

    # -- set-up ---------------------------------------------------------------------------------------
    def _resolve_shapes(self) -> None:
        L, cfg = self.layout, self.cfg
        self.present = {m for m in MEDIA if m in L.codebooks}
        self.grid, self.row_end = {}, {}
        for m in [m for m in ("image", "video") if m in self.present]:
            cb = L.codebook(m)
            grid = cb.grid or (L.codebooks[cb.shares].grid if cb.shares else None) or cfg.grid
            if grid is None or len(grid) != 2 or min(grid) <= 0:
                raise ConstraintError(
                    f"{m} spans need a fixed grid: CodebookSpec.grid is unset in the layout and "
                    f"constraints.grid is {cfg.grid!r} (expected [rows, cols])"
                )
            self.grid[m], self.row_end[m] = (int(grid[0]), int(grid[1])), cb.row_end
        self.free_audio = True
        self.need = {}  # shortest whole span per modality, sentinels included
        if "image" in self.present:
            self.need["image"] = 2 + self._frame_len("image")
        if "video" in self.present:
            if not 1 <= cfg.video_min_frames <= cfg.video_max_frames:
                raise ConstraintError(f"constraints: need 1 <= video_min_frames <= video_max_frames, got {cfg}")
            self.need["video"] = 2 + cfg.video_min_frames * (self._frame_len("video") + 1) - 1
        if "audio" in self.present:
            cb = L.codebook("audio")
            self.L = cb.layers_in_ids
            self.free_audio = cb.flatten != "layer" or self.L == 1  # layer-major needs <|rvq_sep|>
            max_f = cfg.audio_max_frames
            if max_f <= 0:
                if cb.rate <= 0:
                    raise ConstraintError("constraints.audio_max_frames is 0 and the audio codebook has no rate")
                max_f = int(cfg.audio_max_seconds * cb.rate)
            if not 1 <= cfg.audio_min_frames <= max_f:
                raise ConstraintError(
                    f"constraints: need 1 <= audio_min_frames ({cfg.audio_min_frames}) <= max frames ({max_f})"
                )
            self.audio_min, self.audio_max = cfg.audio_min_frames, max_f
            seps = 0 if self.free_audio else self.L - 1
            self.need["audio"] = 2 + self.L * self.audio_min + seps

    def _frame_len(self, m: str) -> int:
        rows, cols = self.grid[m]
        return rows * (cols + int(self.row_end[m]))

    def _build_classes(self) -> None:
        L = self.layout
        cls = np.full(L.size, C_CODE, dtype=np.int64)
        cls[: L.text.size] = C_TEXT
        cls[L.text.size : L.text.size + len(L.specials)] = C_OTHER
        named = {
            "<eos>": C_EOS,
            "<|end|>": C_END,
            "<pad>": C_PAD,
            "<|row_end|>": C_ROW_END,
            "<|frame|>": C_FRAME,
        }
        named |= {"<|rvq_sep|>": C_SEP} | {f"<|{r}|>": C_ROLE for r in ROLES}
        named |= {OPEN[m]: C_OPEN[m] for m in MEDIA} | {CLOSE[m]: C_CLOSE[m] for m in MEDIA}
        for name, c in named.items():
            if name in L.special_ids:
                cls[L.id(name)] = c
        self.cls = torch.from_numpy(cls).to(self.device)

    def _build_masks(self) -> None:
        """The [E, V] table; `self.base[phase]` is a phase's first row, variants follow it."""
        L, V = self.layout, self.layout.size
        rows: list[np.ndarray] = []

        def add(*token_sets) -> int:
            m = np.zeros(V, dtype=bool)
            for s in token_sets:
                m[s] = True
            rows.append(m)
            return len(rows) - 1

        ids = lambda *names: [L.id(n) for n in names if n in L.special_ids]  # noqa: E731
        text = slice(0, L.text.size)
        self.base = {}
        # TEXT: 16 variants by bits image-open ok 1, audio-open ok 2, video-open ok 4, <|end|> ok 8.
        self.base[TEXT] = len(rows)
        for bits in range(16):
            opens = [L.id(OPEN[m]) for i, m in enumerate(("image", "audio", "video")) if bits >> i & 1]
            add(text, ids("<eos>"), opens, ids("<|end|>") if bits & 8 else [])
        self.force_base = len(rows)
        for m in MEDIA:  # FORCE rows, indexed by MODALITY_ID - 1
            add(ids(OPEN[m]))
        self.base[DONE] = add(ids("<pad>"))
        absent = [OPEN[m] for m in MEDIA if m not in self.present]
        structure = ids("<eos>", "<pad>", "<|row_end|>", "<|frame|>", "<|rvq_sep|>", *CLOSE.values(), *absent)
        prompt_text = np.zeros(V, dtype=bool)
        prompt_text[: L.text.size + len(L.specials)] = True
        prompt_text[structure] = False
        rows.append(prompt_text)
        self.prompt_text = len(rows) - 1
        for m, (code, rend, third) in {
            "image": (IMG_CODE, IMG_ROW_END, IMG_CLOSE),
            "video": (VID_CODE, VID_ROW_END, VID_BOUNDARY),
        }.items():
            if m not in self.present:
                continue
            self.base[code] = add(slice(*L.code_range(m)))
            self.base[rend] = add(ids("<|row_end|>"))
            if m == "image":
                self.base[third] = add(ids(CLOSE["image"]))
            else:  # VID_BOUNDARY: bits <|frame|> ok 1, close ok 2
                self.base[third] = len(rows)
                for bits in range(4):
                    add(ids("<|frame|>") if bits & 1 else [], ids(CLOSE["video"]) if bits & 2 else [])
        if "audio" in self.present:
            lo, _ = L.code_range("audio")
            K = L.codebook("audio").codebook_size
            self.audio_layer_base = len(rows)
            for layer in range(self.L):
                add(slice(lo + layer * K, lo + (layer + 1) * K))
            self.base[AUD_FRAME_CODE] = self.base[AUD_LAYER] = self.audio_layer_base
            close = ids(CLOSE["audio"])
            for phase, other in ((AUD_BOUNDARY, close), (AUD_L1, ids("<|rvq_sep|>"))):
                self.base[phase] = len(rows)  # bits: layer-1 code ok 1, close / separator ok 2
                for bits in range(4):
                    add(slice(lo, lo + K) if bits & 1 else [], other if bits & 2 else [])
            self.base[AUD_SEP] = add(ids("<|rvq_sep|>"))
            self.base[AUD_CLOSE] = add(close)
        base = np.zeros(len(PHASE_NAMES), dtype=np.int64)
        for phase, e in self.base.items():
            base[phase] = e
        self.base_t = torch.from_numpy(base).to(self.device)
        self.table = torch.from_numpy(np.stack(rows)).to(self.device)  # [E, V]

    # -- queries --------------------------------------------------------------------------------------
    def eff(self, strict: bool = True) -> torch.Tensor:
        """Row of the mask table for each batch row [B]. `strict=False` (prompts) drops budgets, forcing
        and length limits and lets prompts hold roles, <bos> and <|uncond|>."""
        ph, f = self.phase, self.frames
        e = self.base_t[ph]
        one = torch.ones_like(self.in_turn)
        # A forced row still inside its prompt's span keeps the forced span's shortest length in reserve, so the
        # span it is finishing cannot grow into the budget the forced one needs (in text the force row rules).
        reserve = torch.where(self.force >= 0, self.need_by_id[self.force.clamp(min=0)], 0)
        rem = self.remaining - reserve if strict else torch.full_like(self.remaining, 2**62)
        bits = (self.in_turn & ("<|end|>" in self.layout.special_ids)).long() * 8
        for i, m in enumerate(("image", "audio", "video")):
            if m in self.present:
                bits += (rem >= self.need[m]).long() << i
        text = self.base[TEXT] + bits if strict else torch.full_like(ph, self.prompt_text)
        if strict:
            text = torch.where(self.force >= 0, self.force_base + self.force - 1, text)
        e = torch.where(ph == TEXT, text, e)
        if "video" in self.present:
            frame_ok = (f < self.cfg.video_max_frames) & (rem >= self._frame_len("video") + 2) if strict else one
            close_ok = f >= self.cfg.video_min_frames if strict else one
            e = torch.where(ph == VID_BOUNDARY, e + frame_ok.long() + 2 * close_ok.long(), e)
        if "audio" in self.present:
            L = self.L
            e = torch.where((ph == AUD_FRAME_CODE) | (ph == AUD_LAYER), e + self.layer, e)
            code_ok = (f < self.audio_max) & (rem >= L + 1) if strict else one
            close_ok = f >= (self.audio_min if strict else 1)
            e = torch.where(ph == AUD_BOUNDARY, e + code_ok.long() + 2 * close_ok.long(), e)
            code_ok = (f < self.audio_max) & (rem >= (L - 1) * (f + 2) + 2) if strict else one
            e = torch.where(ph == AUD_L1, e + code_ok.long() + 2 * close_ok.long(), e)
        if strict:
            e = torch.where(self.done(), self.base[DONE], e)
        return e

    def allowed(self) -> torch.Tensor:
        """[B, V] bool: the tokens each row may emit next."""
        return self.table[self.eff()]

    def tokens_to_close(self) -> list[int]:
        """Per row, the fewest tokens that close the span it is in (0 in text): a prompt that ends inside
        a span needs at least this much budget. Called once after `prefill`, so a Python loop is fine."""
        out = []
        counters = (self.phase, self.row, self.col, self.frames, self.layer, self.pos)
        for ph, r, c, f, layer, j in zip(*(t.tolist() for t in counters)):
            if ph in (TEXT, DONE):
                out.append(0)
            elif ph in (IMG_CODE, IMG_ROW_END, IMG_CLOSE):
                out.append(self._grid_left("image", ph == IMG_ROW_END, r, c) * (ph != IMG_CLOSE) + 1)
            elif ph in (VID_CODE, VID_ROW_END):
                more = max(0, self.cfg.video_min_frames - f - 1) * (self._frame_len("video") + 1)
                out.append(self._grid_left("video", ph == VID_ROW_END, r, c) + more + 1)
            elif ph == VID_BOUNDARY:
                out.append(max(0, self.cfg.video_min_frames - f) * (self._frame_len("video") + 1) + 1)
            elif ph == AUD_BOUNDARY:
                out.append(max(0, self.audio_min - f) * self.L + 1)
            elif ph == AUD_FRAME_CODE:
                out.append(self.L - layer + max(0, self.audio_min - f - 1) * self.L + 1)
            elif ph == AUD_L1:
                n = max(f, self.audio_min)
                out.append(n - f + (self.L - 1) * (n + 1) + 1)
            elif ph == AUD_LAYER:
                out.append(f - j + (self.L - 1 - layer) * (f + 1) + 1)
            elif ph == AUD_SEP:
                out.append((self.L - 1 - layer) * (f + 1) + 1)
            else:  # AUD_CLOSE
                out.append(1)
        return out

    def _grid_left(self, m: str, at_row_end: bool, r: int, c: int) -> int:
        """Ids left in the current grid at row r, column c (or at row r's <|row_end|>)."""
        rows, width = self.grid[m][0], self.grid[m][1] + int(self.row_end[m])
        return (rows - r) * width - (width - 1 if at_row_end else c)

    def done(self) -> torch.Tensor:
        """[B] bool: rows that finished (<eos>, a generated <|end|>) or spent their budget in text."""
        return (self.phase == DONE) | ((self.remaining <= 0) & (self.phase == TEXT))

    def modality(self) -> torch.Tensor:
        """[B] MODALITY_ID of what each row is generating: text outside spans, else the span's."""
        return self._phase_modality[self.phase]

    def in_media(self) -> torch.Tensor:
        return self.modality() != MODALITY_ID["text"]

    # -- transitions ----------------------------------------------------------------------------------
    def advance(self, tokens: torch.Tensor, check: bool = False) -> None:
        """Consume one generated token per row [B]; `check` verifies it was allowed (a device sync)."""
        if check:
            self._check(tokens, self.eff(), torch.ones_like(self.in_turn), "generated")
        was_done = self.done()
        self._step(tokens, torch.ones_like(self.in_turn), generating=True)
        self.remaining -= (~was_done).long()

    def prefill(self, prompts: list) -> None:
        """Consume the prompts (lists of ids, any lengths), validating their span structure."""
        if len(prompts) != self.B:
            raise ConstraintError(f"{len(prompts)} prompts for a batch of {self.B}")
        T = max((len(p) for p in prompts), default=0)
        ids = torch.zeros(self.B, T, dtype=torch.long)
        for b, p in enumerate(prompts):
            ids[b, : len(p)] = torch.as_tensor(np.asarray(p, dtype=np.int64))
        lens = torch.tensor([len(p) for p in prompts])
        bad = (ids < 0) | (ids >= self.layout.size)
        if bad.any():
            b, t = (int(x) for x in bad.nonzero()[0])
            raise ConstraintError(f"prompt row {b}, position {t}: id {int(ids[b, t])} outside [0, {self.layout.size})")
        ids, lens = ids.to(self.device), lens.to(self.device)
        for t in range(T):
            active = lens > t
            self._check(ids[:, t], self.eff(strict=False), active, "prompt", t)
            self._step(ids[:, t], active, generating=False)

    def _check(self, tok: torch.Tensor, eff: torch.Tensor, active: torch.Tensor, what: str, t: int = -1) -> None:
        ok = self.table[eff, tok] | ~active
        if not bool(ok.all()):
            b = int((~ok).nonzero()[0])
            where = f"position {t}" if t >= 0 else "this step"
            tid = int(tok[b])
            name = next((n for n, i in self.layout.special_ids.items() if i == tid), f"id {tid}")
            raise ConstraintError(
                f"{what} row {b}, {where}: {name} is not allowed in phase {PHASE_NAMES[int(self.phase[b])]!r}"
            )

    def _step(self, tok: torch.Tensor, active: torch.Tensor, generating: bool) -> None:
        c, ph = self.cls[tok], self.phase
        new = {k: getattr(self, k).clone() for k in ("phase", "row", "col", "frames", "layer", "pos")}
        in_turn, force = self.in_turn.clone(), self.force.clone()

        def put(sel, **values):
            sel = sel & active
            for k, v in values.items():
                new[k] = torch.where(sel, v, new[k])

        text = ph == TEXT
        put(text & (c == C_OPEN["image"]), phase=IMG_CODE, row=0, col=0)
        put(text & (c == C_OPEN["video"]), phase=VID_CODE, row=0, col=0, frames=0)
        put(text & (c == C_OPEN["audio"]), phase=AUD_BOUNDARY if self.free_audio else AUD_L1,
            frames=0, layer=0)  # fmt: skip
        if generating:  # a span in the prompt does not answer the force: only a generated one spends it
            opened = text & ((c == C_OPEN["image"]) | (c == C_OPEN["audio"]) | (c == C_OPEN["video"])) & active
            force = torch.where(opened, -1, force)
        put(text & (c == C_EOS), phase=DONE)
        if generating:
            put(text & (c == C_END), phase=DONE)
        else:
            in_turn = torch.where(text & active & (c == C_END), False, in_turn)
        in_turn = torch.where(text & active & (c == C_ROLE), True, in_turn)
        for m, (code, rend, after) in {
            "image": (IMG_CODE, IMG_ROW_END, IMG_CLOSE),
            "video": (VID_CODE, VID_ROW_END, VID_BOUNDARY),
        }.items():
            if m in self.present:
                self._grid_step(put, m, code, rend, after)
        put(ph == IMG_CLOSE, phase=TEXT)
        put((ph == VID_BOUNDARY) & (c == C_FRAME), phase=VID_CODE, row=0, col=0)
        put((ph == VID_BOUNDARY) & (c == C_CLOSE["video"]), phase=TEXT)
        if "audio" in self.present:
            L, f, layer = self.L, self.frames, self.layer
            code = c == C_CODE
            put(
                (ph == AUD_BOUNDARY) & code,
                **({"frames": f + 1} if L == 1 else {"phase": AUD_FRAME_CODE, "layer": 1}),
            )
            put((ph == AUD_BOUNDARY) & (c == C_CLOSE["audio"]), phase=TEXT)
            last = layer + 1 == L
            put((ph == AUD_FRAME_CODE) & last, phase=AUD_BOUNDARY, frames=f + 1, layer=0)
            put((ph == AUD_FRAME_CODE) & ~last, layer=layer + 1)
            put((ph == AUD_L1) & code, frames=f + 1)
            put((ph == AUD_L1) & (c == C_SEP), phase=AUD_LAYER, layer=1, pos=0)
            full = self.pos + 1 == f
            put(ph == AUD_LAYER, pos=self.pos + 1)
            put((ph == AUD_LAYER) & full, phase=torch.where(last, AUD_CLOSE, AUD_SEP))
            put(ph == AUD_SEP, phase=AUD_LAYER, layer=layer + 1, pos=0)
            put(ph == AUD_CLOSE, phase=TEXT)
        for k, v in new.items():
            setattr(self, k, v)
        self.in_turn, self.force = in_turn, force

    def _grid_step(self, put, m: str, code: int, rend: int, after: int) -> None:
        """One image / video-frame grid token: codes row by row, optional <|row_end|> after each row."""
        rows, cols = self.grid[m]
        ph, r, col = self.phase, self.row, self.col
        last_row = r + 1 == rows
        if self.row_end[m]:
            put((ph == code) & (col + 1 == cols), phase=rend)
            put((ph == code) & (col + 1 < cols), col=col + 1)
            put((ph == rend) & ~last_row, phase=code, row=r + 1, col=0)
            put((ph == rend) & last_row, phase=after, frames=self.frames + 1)
        else:
            put((ph == code) & (col + 1 < cols), col=col + 1)
            put((ph == code) & (col + 1 == cols) & ~last_row, row=r + 1, col=0)
            put((ph == code) & (col + 1 == cols) & last_row, phase=after, frames=self.frames + 1)
