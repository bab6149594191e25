#!/usr/bin/env bash
# Pack a real run's CPU-built steps for a GPU machine that has neither ../shared/data nor this machine's paths
# (docs/recipes.md, "Building on a CPU machine, training on a GPU machine"). On the CPU machine, first:
#   python -m omniseq.recipe --config configs/recipes/real_small.yaml --until shards
#   python -c "from omniseq.eval.real_scorers import load_or_train as f; [f(n, cache_dir='runs/real/scorers', seed=0)
#              for n in ('digit_image', 'spoken_digit', 'sound')]"      (seed: the recipe's)
# then  RUN=runs/real DEST=transfer PYTHON=.venv/bin/python bash scripts/real_gpu_pack.sh  (those are the defaults)
# It writes DEST/real.tar.gz (corpus files and held-out media, tokenizers, vocabulary, shards, scorers, step
# markers), DEST/evalmedia.tar.gz (the held-out clips that the corpus names by absolute path: FSDD, LJ Speech and
# ESC-10 under the data folder) and DEST/run.txt (the run's folder, relative, and the absolute path its files
# name). scripts/real_gpu_stages.sh runs the rest on the GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:-runs/real}
DEST=${DEST:-transfer}
PYTHON=${PYTHON:-.venv/bin/python}
case "$RUN" in /*) echo "real_gpu_pack: RUN must be relative to the checkout, got $RUN" >&2; exit 1 ;; esac
for need in .done/shards tokenizers/video vocab/manifest.json; do
  [ -e "$RUN/$need" ] || { echo "real_gpu_pack: $RUN/$need is missing: build the run up to its shards first" >&2; exit 1; }
done
# the GPU machine has no data folder: every scorer must load from its cache alone (MissingDataError otherwise),
# cached for the run's seed, which the eval trains them with
SEED=$("$PYTHON" -c "import json, sys; print(json.load(open(sys.argv[1]))['seed'])" "$RUN/.done/corpus.inputs.json")
"$PYTHON" -c "
import sys
from omniseq.eval.real_scorers import SCORERS, load_or_train
for name in SCORERS:
    load_or_train(name, '/nonexistent-data', sys.argv[1], seed=int(sys.argv[2]))
" "$RUN/scorers" "$SEED" || {
  echo "real_gpu_pack: cache the three scorers in $RUN/scorers first, with seed=$SEED (above)" >&2; exit 1; }
mkdir -p "$DEST"
# the markers of the CPU-built steps only: a later step's marker would have the GPU machine skip its training
markers=()
for step in corpus tokenizers vocab shards; do markers+=("$RUN/.done/$step" "$RUN/.done/$step.inputs.json"); done
tar czf "$DEST/real.tar.gz" "${markers[@]}" "$RUN"/corpus/*.jsonl "$RUN/corpus/index.json" "$RUN/corpus/text.txt" \
  "$RUN"/corpus/media/*/eval "$RUN"/tokenizers/{text,image,audio,video} "$RUN/vocab" "$RUN/shards" "$RUN/scorers"
# held-out media named by absolute path (none when the corpus has no FSDD, LJ Speech or ESC-10 clips)
{ grep -oh '"/[^"]*"' "$RUN"/corpus/*.eval.jsonl || true; } | tr -d '"' | sort -u > "$DEST/evalmedia.txt"
tar czPf "$DEST/evalmedia.tar.gz" -T "$DEST/evalmedia.txt"
printf '%s\n%s\n' "$RUN" "$(realpath "$RUN")" > "$DEST/run.txt"
du -sh "$DEST"/*.tar.gz
