"""Tokenizers: text (sentencepiece), image (VQ), audio (RVQ codec, EnCodec), video (frame VQ).

Every media tokenizer implements `MediaTokenizer` (base.py) and registers itself by kind, so that
`load_tokenizer(dir)` can rebuild any saved tokenizer from its `tokenizer.json`.
"""

from omniseq.tokenizers.base import (
    MediaError,
    MediaTokenizer,
    load_tokenizer,
    register_tokenizer,
    registered_kinds,
)
from omniseq.tokenizers.text import TextTokenizer

__all__ = [
    "MediaError",
    "MediaTokenizer",
    "TextTokenizer",
    "load_tokenizer",
    "register_tokenizer",
    "registered_kinds",
]
