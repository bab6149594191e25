"""Interleaved generation from a trained omniseq stage: a thin CLI over omniseq.sample.

    python sample.py --prompt "draw a red circle at the top left" --force image
    python sample.py --prompt "what melody is this?" --audio melody.wav
    python sample.py --prompts prompts.jsonl [--config my_sample.yaml] [key=value ...]

Writes PNG / WAV / MP4 files, manifest.json (every span: modality, tokens, file) and index.html into
`out` (runs/demo/samples by default). Keys: omniseq/sample/run.py (SampleConfig), docs/sampling.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from omniseq.cli import run as run_cli
from omniseq.config import ConfigError, load_config
from omniseq.document import Segment
from omniseq.vocab import MEDIA


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, help="YAML of SampleConfig keys")
    ap.add_argument("--prompts", type=Path, help="JSONL of prompts (see omniseq/sample/run.py)")
    ap.add_argument("--prompt", help="a text prompt")
    for m in MEDIA:
        ap.add_argument(f"--{m}", type=Path, help=f"an input {m} file, placed after the text")
    ap.add_argument("--force", choices=MEDIA, help="answer with this modality")
    ap.add_argument("--seed", type=int, help="sampling seed of the prompt")
    ap.add_argument("overrides", nargs="*", help="key=value overrides of SampleConfig")
    args = ap.parse_intermixed_args(argv)
    from omniseq.sample.run import Prompt, SampleConfig, SamplingSession, read_prompts

    cfg = load_config(SampleConfig, args.config, args.overrides)
    if args.prompts:
        # a prompts file gives each prompt its own force and seed: flags beside it would be silently unused
        given = [f"--{k}" for k in ("prompt", "force", "seed", *MEDIA) if getattr(args, k) is not None]
        if given:
            raise ConfigError(f"--prompts {args.prompts} sets every prompt; {', '.join(given)} cannot go with it")
        prompts = read_prompts(args.prompts)
    else:
        segs = [Segment("text", text=args.prompt)] if args.prompt else []
        segs += [Segment(m, media=getattr(args, m)) for m in MEDIA if getattr(args, m)]
        if not segs:
            raise ConfigError("nothing to prompt with: give --prompt, a media file, or --prompts FILE")
        for s in segs:
            if s.media is not None and not Path(s.media).is_file():
                raise FileNotFoundError(f"prompt {s.modality} file not found: {s.media}")
        prompts = [Prompt(segs, args.force, args.seed)]
    manifest = SamplingSession(cfg).run(prompts)
    for row in manifest["rows"]:
        made = [p for p in row["pieces"] if p["generated"]]
        desc = "; ".join((p.get("text") or "").strip() or p.get("file") or p["modality"] for p in made)
        print(f"[{row['row']}] {row['error'] or desc}")
    print(f"wrote {Path(cfg.out) / 'index.html'} and manifest.json")


if __name__ == "__main__":
    run_cli(main)
