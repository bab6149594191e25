"""Tokenizer throughput: `python bench/tokenizers.py {image,video,audio} [options]`, one JSON line.

image and video live in bench/tokenizers_image.py, audio in bench/tokenizers_audio.py.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

MODULES = {"image": "tokenizers_image", "video": "tokenizers_image", "audio": "tokenizers_audio"}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in MODULES:
        raise SystemExit(f"usage: python bench/tokenizers.py {{{','.join(MODULES)}}} [options]")
    sys.path.insert(0, str(Path(__file__).parent))
    importlib.import_module(MODULES[sys.argv[1]]).main(sys.argv[1:])
