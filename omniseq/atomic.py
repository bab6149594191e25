"""Writes that a kill cannot leave half done: the text goes to `<name>.tmp` beside the file, then `os.replace`
puts it in place in one step, so a reader finds the old file or the new one, never a truncated one."""

from __future__ import annotations

import os
from pathlib import Path


def write_text_atomic(path: str | Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
