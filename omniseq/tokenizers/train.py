"""Train a tokenizer: `python -m omniseq.tokenizers.train {text,image,audio} [options]`.

Each kind's trainer lives in its own module (`omniseq.tokenizers.<kind>_train`) with a `main(argv)`;
`--help` after the kind lists its options.
"""

from __future__ import annotations

import importlib
import sys

KINDS = ("text", "image", "audio")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in KINDS:
        print(__doc__.strip(), file=sys.stderr)
        raise SystemExit(f"expected a tokenizer kind, one of {', '.join(KINDS)}")
    kind, rest = argv[0], argv[1:]
    importlib.import_module(f"omniseq.tokenizers.{kind}_train").main(rest)


if __name__ == "__main__":
    from omniseq.cli import run

    run(main)
