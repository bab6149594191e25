"""Do melodies keep their notes through an audio tokenizer ("hum it back")?  One JSON line.

python bench/audio_melody.py --tokenizer runs/demo/tokenizers/audio [--corpus runs/demo/corpus] [--split eval]

Reads `<corpus>/melody.<split>.jsonl` of the demo world (docs/demo_world.md; `meta.notes` is the ground
truth), and runs the FFT melody analyser (`omniseq.eval.analysers.analyse_melody`) on each original and on
its encode -> decode resynthesis. Reports the fraction of melodies whose whole note sequence is recovered
and the fraction of notes recovered at their position, for both; the goal is resynthesised close to original.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from tqdm import tqdm

from omniseq.data import demo_media as dm
from omniseq.eval.analysers import analyse_melody
from omniseq.tokenizers.audio_io import load_audio
from omniseq.tokenizers.base import load_tokenizer


def note_scores(found: list[str], truth: list[str]) -> tuple[bool, int]:
    """(whole sequence right, notes right at their position)."""
    return found == truth, sum(a == b for a, b in zip(found, truth))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", type=Path, required=True, help="a saved audio tokenizer directory")
    ap.add_argument("--corpus", type=Path, default=Path("runs/demo/corpus"), help="a demo corpus folder")
    ap.add_argument("--split", default="eval", help="melody.<split>.jsonl is read")
    ap.add_argument("--limit", type=int, default=0, help="first N melodies only (0 = all)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    manifest = args.corpus / f"melody.{args.split}.jsonl"
    if not manifest.is_file():
        raise FileNotFoundError(f"melody manifest not found: {manifest} (python -m omniseq.data.demo_corpus)")
    lines = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    lines = lines[: args.limit] if args.limit else lines
    tok = load_tokenizer(args.tokenizer)
    t0 = time.perf_counter()
    seq = {"original": 0, "resynthesised": 0}
    notes = {"original": 0, "resynthesised": 0}
    total_notes = 0
    for line in tqdm(lines, desc="melodies"):
        truth = line["meta"]["notes"]
        x = load_audio(manifest.parent / line["audio"], dm.SAMPLE_RATE).samples
        y = load_audio((tok.decode(tok.encode(x, sample_rate=dm.SAMPLE_RATE)), tok.sample_rate), dm.SAMPLE_RATE)
        for name, wave in (("original", x), ("resynthesised", y.samples)):
            whole, right = note_scores(analyse_melody(wave, dm.SAMPLE_RATE)["notes"], truth)
            seq[name] += whole
            notes[name] += right
        total_notes += len(truth)
    n = max(len(lines), 1)
    print(json.dumps({
        "bench": "audio_melody", "tokenizer": str(args.tokenizer), "kind": tok.kind, "layers": tok.num_layers,
        "melodies": len(lines), "notes": total_notes,
        "sequence_accuracy_original": round(seq["original"] / n, 4),
        "sequence_accuracy_resynthesised": round(seq["resynthesised"] / n, 4),
        "note_accuracy_original": round(notes["original"] / max(total_notes, 1), 4),
        "note_accuracy_resynthesised": round(notes["resynthesised"] / max(total_notes, 1), 4),
        "ratio": round(seq["resynthesised"] / max(seq["original"], 1), 4),
        "seconds": round(time.perf_counter() - t0, 1),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
