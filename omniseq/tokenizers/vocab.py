"""Build the merged vocabulary from trained tokenizers and write its manifest.json.

python -m omniseq.tokenizers.vocab --text tok/text --image tok/image --audio tok/audio --video tok/video --out vocab/

The layout (docs/token_layout.md) takes each media tokenizer's `codebook_spec()`: its codebook size,
RVQ layers and flattening, grid, row ends, rate and fingerprint. A video tokenizer that reuses the image
tokenizer shares its id range. Once shards exist the layout must not change: the vocab hash guards it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from omniseq.tokenizers.base import MediaTokenizer, load_tokenizer
from omniseq.tokenizers.text import TextTokenizer
from omniseq.vocab import MEDIA, VocabLayout


def build_layout(text: TextTokenizer, media: dict[str, MediaTokenizer]) -> VocabLayout:
    for mod, tok in media.items():
        if tok.modality != mod:
            raise ValueError(f"the {mod} tokenizer given is a {tok.modality} tokenizer ({tok.kind})")
    return VocabLayout.build(text.spec(), [media[m].codebook_spec() for m in MEDIA if m in media])


def load_tokenizers(text_dir: str | Path, media_dirs: dict[str, str | Path]) -> tuple[TextTokenizer, dict]:
    return TextTokenizer(text_dir), {m: load_tokenizer(d) for m, d in media_dirs.items() if d}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m omniseq.tokenizers.vocab", description=__doc__.split("\n\n")[0])
    ap.add_argument("--text", required=True, help="folder with the sentencepiece tokenizer.model")
    for m in MEDIA:
        ap.add_argument(f"--{m}", default="", help=f"folder of the trained {m} tokenizer (optional)")
    ap.add_argument("--out", required=True, help="folder for manifest.json")
    args = ap.parse_args(argv)
    text, media = load_tokenizers(args.text, {m: getattr(args, m) for m in MEDIA})
    layout = build_layout(text, media)
    path = layout.save(args.out)
    ranges = ", ".join(f"{m} [{lo}, {hi})" for m in layout.codebooks for lo, hi in [layout.code_range(m)])
    print(f"vocabulary of {layout.size} ids (text {layout.text.size}; {ranges}); hash {layout.hash}")
    print(f"wrote {path}")


if __name__ == "__main__":
    from omniseq.cli import run

    run(main)
