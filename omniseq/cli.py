"""Shared command-line plumbing: user errors print one clear line instead of a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable

from omniseq.config import ConfigError
from omniseq.data.shardset import DataError
from omniseq.sample.constraints import ConstraintError
from omniseq.tokenizers.base import MediaError
from omniseq.vocab import VocabError

USER_ERRORS = (ConfigError, VocabError, MediaError, DataError, ConstraintError, FileNotFoundError)


def run(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> None:
    """Call `main(argv)`; a user error exits with status 2 and `error: <message>` on stderr."""
    try:
        main(argv)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
