"""Train the text tokenizer (sentencepiece BPE with byte fallback) on text files.

python -m omniseq.tokenizers.train text --input corpus.txt [more.txt ...] --out tok/text [key=value ...]
Keys are the fields of TextTrainConfig (vocab_size, character_coverage, on_bad_line, ...).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from omniseq.config import load_config
from omniseq.tokenizers.text import TextTokenizer, TextTrainConfig


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="omniseq.tokenizers.train text", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--input", nargs="+", type=Path, required=True, help="UTF-8 text files, one sentence per line")
    ap.add_argument("--out", type=Path, required=True, help="directory for tokenizer.model")
    ap.add_argument("--config", type=Path, help="YAML with TextTrainConfig keys")
    ap.add_argument("overrides", nargs="*", help="key=value overrides of TextTrainConfig")
    args = ap.parse_args(argv)
    cfg = load_config(TextTrainConfig, args.config, args.overrides)
    t0 = time.perf_counter()
    tok, report = TextTokenizer.train(args.input, args.out, cfg)
    skipped = sum(report.skipped.values())
    print(
        f"trained {tok.vocab_size} pieces on {report.lines} lines from {report.files} file(s) in "
        f"{time.perf_counter() - t0:.1f} s; {report.empty} empty lines ignored, {skipped} bad lines skipped"
    )
    for where in report.first_bad:
        print(f"  skipped {where}")
    print(f"wrote {tok.model_path}")


if __name__ == "__main__":
    main()
