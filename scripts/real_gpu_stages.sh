#!/usr/bin/env bash
# The GPU half of the real recipe (docs/recipes.md, "Building on a CPU machine, training on a GPU machine"):
# unpack what scripts/real_gpu_pack.sh packed, then run the four stages, the samples and the real table.
#   MINUTES=3.8 EVAL_N=60 OUT=out bash scripts/real_gpu_stages.sh
# MINUTES: train_minutes of the four stages (default 3.8, the measured run); EVAL_N: held-out items per task;
# OUT: logs and results; LIMIT: seconds after which the run is stopped, so that its logs are still packed
# (default: the training minutes + 6 min of stage start-ups, samples and eval, at most 540 s: the device
# tool stops a command at 600 s, and one stopped there packs nothing); WHEELS: a folder of wheels
# to install first (a machine without a package index); DEST: where the packed files are (transfer);
# STAGE_EXTRA: more stage overrides (space-separated key=value, no commas); RECIPE_EXTRA: one more recipe
# argument. Stages save only at their end. The scorers come from their cache (no data folder there). A failed run (not one out of time) is
# retried once with SDPA attention instead of FlexAttention. Exits with the recipe's status (0: the table is in OUT).
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
OUT=${OUT:-runs/real-gpu-out}
DEST=${DEST:-transfer}
MINUTES=${MINUTES:-3.8}
LIMIT=${LIMIT:-$(python3 -c "print(min(int($MINUTES * 60 + 360), 540))")}
mkdir -p "$OUT"
T0=$(date +%s)
el() { echo $(( $(date +%s) - T0 )); }
[ -f "$DEST/run.txt" ] || { echo "real_gpu_stages: $DEST/run.txt missing: run scripts/real_gpu_pack.sh first" >&2; exit 1; }
{ read -r RUN; read -r packed_at; } < "$DEST/run.txt"
if [ -n "$WHEELS" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$OUT/env.txt"
python3 -c "import torch, deepspeed; print('torch', torch.__version__, 'deepspeed', deepspeed.__version__)" 2>&1 | tail -1 | tee -a "$OUT/env.txt"
tar xzPf "$DEST/evalmedia.tar.gz" && tar xzf "$DEST/real.tar.gz" || { echo "real_gpu_stages: unpacking failed" >&2; exit 1; }
echo "unpacked at $(el) s" | tee -a "$OUT/env.txt"
# the shard manifests and the video tokenizer name the run by its absolute path on the CPU machine
if [ "$packed_at" != "$(realpath "$RUN")" ] && [ ! -e "$packed_at" ]; then
  mkdir -p "$(dirname "$packed_at")" && ln -s "$(realpath "$RUN")" "$packed_at"
fi
CONFIG=configs/recipes/real_small.yaml
RECIPE=(python3 -m omniseq.recipe --config $CONFIG --out "$RUN" data=/nonexistent)
# the recipe's own stage overrides, then this script's (a list override replaces the whole list)
BASE_STAGE=$(python3 -c "from omniseq.config import load_config; from omniseq.recipe import RecipeConfig
print(' '.join(load_config(RecipeConfig(), '$CONFIG', []).stage_overrides))") || exit 1
join() { local IFS=,; echo "$*"; }
run_recipe() {  # $1: training minutes; $2...: extra stage overrides
  local minutes=$1; shift
  local left=$(( LIMIT - $(el) ))
  [ $left -gt 0 ] || { echo "=== no time left (LIMIT=$LIMIT s)" | tee -a "$OUT/recipe.log"; return 124; }
  timeout --signal=TERM $left "${RECIPE[@]}" "stage_overrides=[$(join $BASE_STAGE save_every=100000 $STAGE_EXTRA "$@")]" \
    train_minutes="$minutes" eval_per_direction="${EVAL_N:-60}" 'eval_overrides=["references=[]", "sample.batch_size=64"]' \
    ${RECIPE_EXTRA:+"$RECIPE_EXTRA"} $KEEP 2>&1 | tee -a "$OUT/recipe.log"
  return "${PIPESTATUS[0]}"
}
run_recipe "$MINUTES"
rc=$?
if [ $rc -ne 0 ] && [ $rc -ne 124 ]; then  # 124: out of time, nothing to retry
  left=$(( LIMIT - 30 - $(el) - 330 ))  # ~330 s: stage start-ups, exports, samples and the eval
  echo "=== recipe failed at $(el) s; retrying with model.attention=sdpa_masked, $left s of training" | tee -a "$OUT/recipe.log"
  # the stages done before the failure were trained with the first attention and budget: reuse them
  KEEP=--keep-done
  if [ $left -gt 30 ]; then
    run_recipe "$(python3 -c "print(round($left / 60, 2))")" model.attention=sdpa_masked
    rc=$?
  fi
fi
echo "=== done at $(el) s" | tee -a "$OUT/recipe.log"
cp "$RUN"/eval/results.md "$RUN"/eval/results.json "$OUT/" 2>/dev/null
tar czf "$OUT/stages.tar.gz" "$RUN"/stage*/metrics.jsonl "$RUN"/sft/metrics.jsonl "$RUN"/*/result.json \
  "$RUN"/*/loss_curves.png "$RUN"/samples 2>/dev/null
ls -la "$OUT"
exit "$rc"
