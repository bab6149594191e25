"""Text tokenizer: a sentencepiece BPE trained here, or an existing `tokenizer.model` (Llama-2, Yi).

Round trips are exact (CJK, emoji, tabs, runs of spaces included) because the model is trained with
byte fallback, identity normalisation, no whitespace folding and no dummy prefix. One character
still needs care: sentencepiece writes spaces as U+2581 and turns every U+2581 back into a space on
decoding, so a literal U+2581 in the input is encoded through its byte-fallback pieces instead.
An existing model with a dummy prefix (Llama-2) puts a space before the text it encodes; the text
after such a U+2581 is encoded without it, so its round trip is exact too.

CLI:  python -m omniseq.tokenizers.train text --input corpus.txt --out tok/text vocab_size=4000
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import sentencepiece as spm

from omniseq.config import ConfigError
from omniseq.vocab import TextSpec

MODEL_FILE, CONFIG_FILE = "tokenizer.model", "text_tokenizer.json"
SPM_SPACE = "\u2581"
# Appended to a serialized ModelProto: field 3 (normalizer_spec) holding {add_dummy_prefix (field 3): false}.
# Protobuf merges a repeated embedded message into the first one, so only that flag changes (no protobuf
# dependency needed, and sentencepiece has no API to override it).
NO_DUMMY_PREFIX = b"\x1a\x02\x18\x00"


@dataclass
class TextTrainConfig:
    vocab_size: int = 4000  # BPE merges + 256 byte pieces + <unk>
    character_coverage: float = 0.9995  # rarer characters fall back to bytes
    max_sentences: int = 2_000_000  # lines sampled for training (sentencepiece's input_sentence_size)
    max_line_bytes: int = 16384  # longer lines are split into chunks of this size
    on_bad_line: str = "raise"  # raise | skip: lines with NUL bytes or invalid UTF-8
    max_bad_lines: int = 1000  # with on_bad_line=skip, more than this many is still an error
    seed: int = 0
    num_threads: int = 2


@dataclass
class CorpusReport:
    files: int = 0
    lines: int = 0  # lines handed to sentencepiece
    empty: int = 0  # empty lines, ignored
    skipped: dict = field(default_factory=lambda: {"nul_byte": 0, "invalid_utf8": 0})
    first_bad: list = field(default_factory=list)  # "file:line: reason" of the first few skips


class CorpusError(ValueError):
    """A corpus line that cannot be used; names the file and the line."""


def iter_corpus_lines(paths: Iterable[str | Path], cfg: TextTrainConfig, report: CorpusReport) -> Iterator[str]:
    """Yield the non-empty lines of text files, checking NUL bytes and UTF-8 per line."""
    if cfg.on_bad_line not in ("raise", "skip"):
        raise ValueError(f"on_bad_line must be 'raise' or 'skip', got {cfg.on_bad_line!r}")
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"text corpus file not found: {path}")
        report.files += 1
        with path.open("rb") as f:
            for lineno, raw in enumerate(f, 1):
                raw = raw.rstrip(b"\n").rstrip(b"\r")
                if not raw:
                    report.empty += 1
                    continue
                reason = None
                nul = raw.find(b"\x00")
                if nul >= 0:
                    reason = ("nul_byte", f"NUL byte at byte {nul + 1}")
                else:
                    try:
                        line = raw.decode("utf-8")
                    except UnicodeDecodeError as e:
                        reason = ("invalid_utf8", f"invalid UTF-8 at byte {e.start + 1}")
                if reason:
                    where = f"{path}:{lineno}: {reason[1]}"
                    if cfg.on_bad_line == "raise":
                        raise CorpusError(f"{where} (set on_bad_line=skip to skip such lines)")
                    report.skipped[reason[0]] += 1
                    if len(report.first_bad) < 5:
                        report.first_bad.append(where)
                    if sum(report.skipped.values()) > cfg.max_bad_lines:
                        raise CorpusError(f"more than {cfg.max_bad_lines} bad lines; last: {where}")
                    continue
                report.lines += 1
                for i in range(0, len(line), cfg.max_line_bytes // 4):
                    yield line[i : i + cfg.max_line_bytes // 4]


class TextTokenizer:
    """A sentencepiece model: `encode(str) -> list[int]`, `decode(ids) -> str`, ids in [0, vocab_size)."""

    kind = "sentencepiece"

    def __init__(self, model_path: str | Path):
        self.model_path = Path(model_path)
        if self.model_path.is_dir():
            self.model_path = self.model_path / MODEL_FILE
        if not self.model_path.is_file():
            raise FileNotFoundError(f"sentencepiece model not found: {self.model_path}")
        self._proto = self.model_path.read_bytes()
        try:
            self.sp = spm.SentencePieceProcessor(model_proto=self._proto)
        except RuntimeError as e:  # sentencepiece's own message names no file
            raise ValueError(
                f"{self.model_path}: not a readable sentencepiece model ({e}); expected the tokenizer.model "
                "that sentencepiece training (or an LLM's release) writes"
            ) from None
        self.vocab_size = self.sp.get_piece_size()
        space_bytes = [f"<0x{b:02X}>" for b in SPM_SPACE.encode()]
        ids = [self.sp.piece_to_id(p) for p in space_bytes]
        self._space_ids = ids if all(self.sp.id_to_piece(i) == p for i, p in zip(ids, space_bytes)) else None
        # A dummy prefix (Llama-2) turns "b" into "▁b": text after a literal U+2581 must be encoded without it,
        # or "a▁b" would decode as "a▁ b". Ours are trained without one: they need no second processor.
        prefixed = self.sp.normalize("a").startswith(SPM_SPACE)
        self._sp_inner = spm.SentencePieceProcessor(model_proto=self._proto + NO_DUMMY_PREFIX) if prefixed else self.sp

    def encode(self, text: str) -> list[int]:
        if SPM_SPACE not in text:
            return self.sp.encode(text)
        if self._space_ids is None:
            raise ValueError(f"{self.model_path} has no byte fallback, so it cannot encode U+2581 exactly")
        out: list[int] = []
        for i, part in enumerate(text.split(SPM_SPACE)):
            # only the text's start gets the model's dummy prefix, as when it is encoded whole
            out += (self._space_ids if i else []) + ((self._sp_inner if i else self.sp).encode(part) if part else [])
        return out

    def decode(self, ids: Iterable[int]) -> str:
        return self.sp.decode([int(i) for i in ids])

    def fingerprint(self) -> str:
        return hashlib.sha256(self._proto).hexdigest()

    def spec(self) -> TextSpec:
        return TextSpec(kind=self.kind, size=self.vocab_size, fingerprint=self.fingerprint())

    def save(self, directory: str | Path) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        if (d / MODEL_FILE).resolve() != self.model_path.resolve():
            shutil.copyfile(self.model_path, d / MODEL_FILE)
        return d

    @classmethod
    def train(
        cls, inputs: Iterable[str | Path], out_dir: str | Path, cfg: TextTrainConfig | None = None
    ) -> tuple[TextTokenizer, CorpusReport]:
        """Train a byte-fallback BPE on text files; writes tokenizer.model and text_tokenizer.json."""
        cfg = cfg or TextTrainConfig()
        report = CorpusReport()
        failure: list[Exception] = []

        def lines() -> Iterator[str]:
            # sentencepiece turns an exception raised inside the iterator into an opaque RuntimeError:
            # keep ours (it names the file and line) and re-raise it after training stops.
            try:
                yield from iter_corpus_lines(list(inputs), cfg, report)
            except (CorpusError, FileNotFoundError) as e:
                failure.append(e)

        model = io.BytesIO()
        spm.set_random_generator_seed(cfg.seed)  # deterministic sentence sampling
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=lines(),
                model_writer=model,
                model_type="bpe",
                vocab_size=cfg.vocab_size,
                hard_vocab_limit=False,  # a small corpus gives fewer pieces instead of failing
                byte_fallback=True,
                normalization_rule_name="identity",
                remove_extra_whitespaces=False,
                add_dummy_prefix=False,
                split_digits=True,
                allow_whitespace_only_pieces=True,
                character_coverage=cfg.character_coverage,
                input_sentence_size=cfg.max_sentences,
                shuffle_input_sentence=True,
                max_sentence_length=cfg.max_line_bytes,
                unk_id=0,
                bos_id=-1,  # <bos>/<eos>/<pad> live in the merged vocabulary's special range
                eos_id=-1,
                pad_id=-1,
                num_threads=cfg.num_threads,
                minloglevel=2,
            )
        except RuntimeError as e:
            if failure:
                raise failure[0] from None
            if report.lines == 0:
                raise CorpusError(f"no usable text lines in {report.files} file(s)") from e
            if "smaller than required_chars" in str(e):
                need = str(e).split("smaller than required_chars.")[1].split(".")[0].strip()
                raise ConfigError(
                    f"vocab_size: the corpus's characters and byte pieces need more ids ({need}); "
                    "raise vocab_size or lower character_coverage"
                ) from None
            raise RuntimeError(f"sentencepiece training failed on {report.lines} lines: {e}") from e
        if failure:
            raise failure[0]
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / MODEL_FILE).write_bytes(model.getvalue())
        (out / CONFIG_FILE).write_text(json.dumps({"train": asdict(cfg), "corpus": asdict(report)}, indent=2) + "\n")
        return cls(out / MODEL_FILE), report
