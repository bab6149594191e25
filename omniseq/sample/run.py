"""Sampling from a trained stage: prompts (text and/or media files, or a JSONL) -> files + manifest + page.

    python sample.py --prompt "draw a red circle at the top left" --force image
    python sample.py --prompt "what melody is this?" --audio melody.wav
    python sample.py --prompts prompts.jsonl checkpoint=runs/demo/sft/export generate.max_new_tokens=256

A prompts JSONL line is {"segments": [{"text": ...}, {"image": "a.png"}, ...], "force": "image", "seed": 3}
(media paths relative to the JSONL's folder; "force" and "seed" optional). With `chat: true` (SFT
checkpoints) the prompt is the user's turn and the model answers as the assistant.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from omniseq.config import ConfigError
from omniseq.document import DocumentCodec, Segment, segment_from_json
from omniseq.model.precision import pick_device, use_bf16
from omniseq.sample.generate import GenerateConfig, generate, prompt_ids
from omniseq.sample.guidance import uncond_prompt
from omniseq.sample.render import render
from omniseq.tokenizers.base import load_tokenizer
from omniseq.tokenizers.text import TextTokenizer
from omniseq.train.checkpoint import load_export
from omniseq.vocab import MEDIA, OPEN


@dataclass
class SampleConfig:
    checkpoint: str = "runs/demo/sft/export"  # a stage's export folder (model.safetensors + vocab.json)
    text_tokenizer: str = "runs/demo/tokenizers/text"  # folder with tokenizer.model
    media_tokenizers: dict[str, str] = field(  # modality -> tokenizer folder; must match the vocabulary
        default_factory=lambda: {m: f"runs/demo/tokenizers/{m}" for m in MEDIA}
    )
    out: str = "runs/demo/samples"  # files, manifest.json and index.html go here
    chat: bool = True  # prompts are the user's turn (SFT checkpoints); false: continue a plain document
    batch_size: int = 8  # prompts generated together
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "auto"  # auto (bf16 on GPU and on a CPU with native bf16, else fp32) | bf16 | fp32
    compile: bool = False  # torch.compile the one-token decode step (GPU)
    generate: GenerateConfig = field(default_factory=GenerateConfig)  # budgets, constraints, sampling, CFG


@dataclass
class Prompt:
    segments: list[Segment]
    force: str | None = None
    seed: int | None = None
    where: str | None = None  # "file:line" of a prompts JSONL, for errors; None: "prompt <index>"


PROMPT_KEYS = {"segments", "force", "seed"}


def read_prompts(path: str | Path) -> list[Prompt]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file not found: {path}")
    prompts = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{where}: not valid JSON ({e})") from None
        shape = '{"segments": [...], "force"?: ..., "seed"?: ...}'
        if not isinstance(obj, dict) or not isinstance(obj.get("segments"), list) or not obj["segments"]:
            raise ConfigError(f"{where}: expected {shape}")
        if extra := sorted(set(obj) - PROMPT_KEYS):
            raise ConfigError(f"{where}: unknown key(s) {extra}; expected {shape}")
        try:
            segs = [segment_from_json(s, path.parent, f"{where}.segments[{i}]") for i, s in enumerate(obj["segments"])]
        except ValueError as e:
            raise ConfigError(str(e)) from None
        for i, seg in enumerate(segs):
            if seg.media is not None and not Path(seg.media).is_file():
                raise ConfigError(f"{where}.segments[{i}].{seg.modality}: file not found: {seg.media}")
        force, seed = obj.get("force"), obj.get("seed")
        if force is not None and force not in MEDIA:
            raise ConfigError(f"{where}.force: expected one of {MEDIA}, got {force!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ConfigError(f"{where}.seed: expected an integer, got {seed!r}")
        prompts.append(Prompt(segs, force, seed, where))
    if not prompts:
        raise ConfigError(f"{path}: no prompts")
    return prompts


def load_codec(cfg: SampleConfig, layout) -> DocumentCodec:
    media = {}
    for mod, d in cfg.media_tokenizers.items():
        if mod not in MEDIA:
            raise ConfigError(f"key 'media_tokenizers': unknown modality {mod!r}; expected one of {MEDIA}")
        if mod in layout.codebooks and d:
            media[mod] = load_tokenizer(d)
    return DocumentCodec(layout, TextTokenizer(cfg.text_tokenizer), media)


class SamplingSession:
    """A loaded model + tokenizers, reused across batches of prompts (the demo and eval call `run`)."""

    def __init__(self, cfg: SampleConfig):
        for key, value in (("batch_size", cfg.batch_size), ("generate.max_new_tokens", cfg.generate.max_new_tokens),
                           ("generate.stop_check_every", cfg.generate.stop_check_every)):  # fmt: skip
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"key {key!r}: expected an integer >= 1, got {value!r}")
        self.cfg = cfg
        self.device = pick_device(cfg.device)
        bf16 = use_bf16(cfg.dtype, self.device)
        model, layout = load_export(cfg.checkpoint, dtype=torch.bfloat16 if bf16 else torch.float32)
        self.model, self.layout = model.eval().to(self.device), layout
        self.codec = load_codec(cfg, layout)  # checks every tokenizer's fingerprint against the vocabulary
        if cfg.compile:
            self.model.decode_step = torch.compile(self.model.decode_step, mode="reduce-overhead")

    def ids_of(self, prompt: Prompt) -> np.ndarray:
        segs = [Segment(s.modality, s.text, s.codes, s.media, "user" if self.cfg.chat and s.role is None else s.role,
                        s.loss) for s in prompt.segments]  # fmt: skip
        try:
            return prompt_ids(self.codec, segs)
        except ValueError as e:  # a conversation missing a role, media the tokenizer cannot read, ...
            raise ConfigError(f"{prompt.where or 'prompt'}: {e}") from None

    def generate(
        self, prompts: list[Prompt], budgets: list[int] | None = None
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """(prompt ids, generated ids) per prompt, in batches of cfg.batch_size; `budgets` caps each row."""
        ids = [self.ids_of(p) for p in prompts]
        seeds = [p.seed if p.seed is not None else self.cfg.generate.seed + i for i, p in enumerate(prompts)]
        names = [p.where or f"prompt {i}" for i, p in enumerate(prompts)]
        return ids, self.generate_ids(ids, budgets, [p.force for p in prompts], seeds, names=names)

    def generate_ids(
        self,
        ids: list[np.ndarray],
        budgets: list[int] | None = None,
        force: list[str | None] | None = None,
        seeds: list[int] | None = None,
        uncond: list[np.ndarray] | None = None,
        names: list[str] | None = None,
    ) -> list[np.ndarray]:
        """`generate` on prompt ids: per row its budget, forced modality, seed (default cfg.generate.seed + row)
        and unconditional twin for guidance (default `uncond_prompt` of the row). `names` are the rows' names
        in errors (default "prompt <index>"), so a refused row is named across batches."""
        cfg = self.cfg
        if not ids:
            return []
        names = names or [f"prompt {i}" for i in range(len(ids))]
        budgets = self.row_budgets(ids, budgets, uncond, names)
        force = force or [None] * len(ids)
        for name, m in zip(names, force):
            if m is not None and m not in self.layout.codebooks:
                raise ConfigError(f"{name}: force {m!r}, but the checkpoint has {sorted(self.layout.codebooks)}")
        seeds = seeds or [cfg.generate.seed + i for i in range(len(ids))]
        out = []
        for i in range(0, len(ids), cfg.batch_size):
            part = slice(i, i + cfg.batch_size)
            out += generate(self.model, self.layout, ids[part], cfg.generate, force=force[part], seeds=seeds[part],
                            budgets=budgets[part], uncond_prompts=uncond[part] if uncond else None,
                            device=self.device, names=names[part],
                            cache_bucket=self.model.cfg.max_seq_len if cfg.compile else 0)  # fmt: skip
        return out

    def row_budgets(
        self,
        ids: list[np.ndarray],
        budgets: list[int] | None,
        uncond: list[np.ndarray] | None = None,
        names: list[str] | None = None,
    ) -> list[int]:
        """Each row's budget: its own (default cfg.generate.max_new_tokens), at most max_new_tokens, and at most
        the context its prompt (and its unconditional twin) leaves. Per row: rows have their own positions, so
        one long prompt does not shorten the others."""
        context, cap = self.model.cfg.max_seq_len, self.cfg.generate.max_new_tokens
        budgets = budgets or [cap] * len(ids)
        if len(budgets) != len(ids):
            raise ConfigError(f"{len(budgets)} budgets for {len(ids)} prompts")
        out = []
        for b, (p, budget) in enumerate(zip(ids, budgets)):
            longest = max(len(p), len(uncond[b]) if uncond else 0)
            if longest >= context:
                name = names[b] if names else f"prompt {b}"
                what = name if longest == len(p) else f"the unconditional twin of {name}"
                raise ConfigError(f"{what} has {longest} tokens; the model's context is {context}")
            out.append(min(budget, cap, context - longest))
        return out

    def media_after_words(
        self, ids: list[np.ndarray], said: list[np.ndarray], modality: str, budgets: list[int], words_only: bool = False
    ) -> list[np.ndarray]:
        """A chained answer's media ("seven. " and then the drawing): the `modality` span generated after what
        the assistant said first (`said`: generated ids; cut before its first span or the end of its turn),
        guided against the turn's twin *without* those words. In one pass the twin rows share every generated
        token, the named label included, so guidance would amplify what the prompt adds beyond the label (the
        speaker, not the digit); this twin is the one a plain text -> media turn has (`uncond_prompt` of the
        user's turn), which training's condition dropout makes. `words_only`: the media is drawn after the words
        with the user's turn shown as that twin too (a chain of modalities inside one model: the prompt's media
        decides the words, the words decide the drawing). Returns the words and the span, per row."""
        L = self.layout
        stops = [L.id("<|end|>"), L.id("<eos>"), *(L.id(OPEN[m]) for m in MEDIA if m in L.codebooks)]
        words = []
        for s in said:
            cut = np.flatnonzero(np.isin(s, stops))
            words.append(s[: cut[0]] if cut.size else s)
        twins = [uncond_prompt(L, p) for p in ids]
        prompts = [np.concatenate([t if words_only else p, w]) for p, t, w in zip(ids, twins, words)]
        spans = self.generate_ids(prompts, budgets, [modality] * len(ids), uncond=twins)
        return [np.concatenate([w, o]) for w, o in zip(words, spans)]

    def run(self, prompts: list[Prompt], out_dir: str | Path | None = None) -> dict:
        ids, out = self.generate(prompts)
        rows = [np.concatenate([p, o]) for p, o in zip(ids, out)]
        return render(self.codec, rows, out_dir or self.cfg.out, prompt_lens=[len(p) for p in ids])
