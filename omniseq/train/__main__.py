"""python -m omniseq.train --config configs/stages/X.yaml [key=value ...]  (see omniseq/train/trainer.py)"""

from __future__ import annotations

import argparse

from omniseq.cli import run as run_cli
from omniseq.config import load_config
from omniseq.train.config import STOPPED_EXIT, StageConfig


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m omniseq.train", description="Train one stage of the recipe.")
    ap.add_argument("--config", required=True, help="stage YAML (configs/stages/*.yaml)")
    ap.add_argument("--dry-run", action="store_true", help="check the config, paths and vocab hashes, then stop")
    ap.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # the deepspeed launcher's
    ap.add_argument("overrides", nargs="*", help="key=value overrides of the stage config")
    args = ap.parse_args(argv)
    cfg = load_config(StageConfig, args.config, args.overrides)
    from omniseq.train.trainer import check_inputs, run  # heavy imports after the config is known to be sane

    if args.dry_run:
        layout = check_inputs(cfg)
        print(f"{cfg.name}: config, {len(cfg.data.sources)} shard set(s) and vocab {layout.hash[:12]} check out")
        return
    result = run(cfg)
    if "stopped_at" in result:  # SIGTERM: checkpointed, not finished; `make stage1 && make stage2` must stop here
        print(f"{cfg.name}: stopped by SIGTERM at step {result['stopped_at']} (checkpointed); rerun to resume")
        raise SystemExit(STOPPED_EXIT)


if __name__ == "__main__":
    run_cli(main)
