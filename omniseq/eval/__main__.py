"""python -m omniseq.eval [--config eval.yaml] [key=value ...]: the any-to-any table (omniseq/eval/harness.py)."""

from __future__ import annotations

import argparse

from omniseq.cli import run
from omniseq.config import load_config


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m omniseq.eval", description=__doc__)
    ap.add_argument("--config", help="YAML of EvalConfig keys")
    ap.add_argument("--checkpoint", help="a stage export folder (sets sample.checkpoint)")
    ap.add_argument("overrides", nargs="*", help="key=value overrides of EvalConfig")
    args = ap.parse_intermixed_args(argv)
    from omniseq.eval.harness import EvalConfig, evaluate, format_table

    overrides = list(args.overrides) + ([f"sample.checkpoint={args.checkpoint}"] if args.checkpoint else [])
    cfg = load_config(EvalConfig, args.config, overrides)
    results = evaluate(cfg)
    print(format_table(results))
    if results["gallery"]["sheets"]:
        print(f"generated media and a contact sheet per direction: {cfg.out}/generated")
    for error in results["gallery"]["errors"]:
        print(f"  not written: {error}")
    print(f"({results['seconds']:.0f} s) wrote {cfg.out}/results.json")


if __name__ == "__main__":
    run(main)
