# omniseq: `make demo` runs the whole loop on built-in demo data; `make test` sets up and runs the tests.
# Every target that runs something takes ARGS="key=value ..." (config overrides) and RUN=<folder>.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.omniseq-installed
RUN ?= runs/demo
ARGS ?=
NGPU ?= 1
HOSTFILE ?=
CKPT ?= $(RUN)/sft/export
# Never let pip (or a package's isolated build) resolve an unpinned torch: it pulls 2+ GB of CUDA wheels.
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
# DeepSpeed ships as source: build it without compiling ops (they JIT on a GPU machine when used).
export DS_BUILD_OPS := 0
export PIP_DISABLE_PIP_VERSION_CHECK := 1
# On the 2-core CPU machines, OpenMP threads fighting each other make torch 10-100x slower.
export OMP_NUM_THREADS ?= 1

# One process: python -m; several GPUs on one node: torchrun; a hostfile: the deepspeed launcher.
LAUNCH = $(if $(HOSTFILE),$(VENV)/bin/deepspeed --hostfile $(HOSTFILE) --module,$(if $(filter 1,$(NGPU)),$(PY) -m,$(VENV)/bin/torchrun --nproc_per_node $(NGPU) -m))
# demo-h200 and demo-micro write to their recipe's own folder (runs/demo-h200, runs/demo-micro) unless RUN= is given
OUT_IF_GIVEN = $(if $(filter command line environment,$(origin RUN)),--out $(RUN))
TOKS = sample.text_tokenizer=$(RUN)/tokenizers/text sample.media_tokenizers.image=$(RUN)/tokenizers/image \
       sample.media_tokenizers.audio=$(RUN)/tokenizers/audio sample.media_tokenizers.video=$(RUN)/tokenizers/video

.PHONY: help setup system-deps test test-fast lint format demo demo-h200 demo-micro corpus tokenizers shards stage1 stage2 stage3 sft \
        sample eval real real-cpu eval-real bench clean test-gpu

help:  ## list the targets
	@grep -E '^[a-z0-9_ -]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

setup: $(STAMP)  ## create .venv and install omniseq with its test dependencies (quick when done)

system-deps:  ## as root with apt-get: install espeak-ng (demo speech) when it is missing; otherwise a no-op
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && ! command -v espeak-ng >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null; fi
	@command -v espeak-ng >/dev/null || echo "espeak-ng not installed: the demo runs without speech directions"

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	@touch $(STAMP)

lint: setup  ## ruff check and format check
	$(VENV)/bin/ruff check omniseq tests bench sample.py
	$(VENV)/bin/ruff format --check omniseq tests bench sample.py

format: setup  ## apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix omniseq tests bench sample.py
	$(VENV)/bin/ruff format omniseq tests bench sample.py

test: setup lint  ## lint, then the whole CPU test suite (slow tests included)
	CUDA_VISIBLE_DEVICES= $(PY) -m pytest -q -n 2 --dist loadfile tests

test-fast: setup  ## the CPU tests without the slow ones
	CUDA_VISIBLE_DEVICES= $(PY) -m pytest -q -n 2 --dist loadfile -m "not slow" tests

# The workplace's GPU machine has no package index and its own python3 with a CUDA torch: GPU_PY=python3 there
# (with the wheels of docs/recipes.md on PYTHONPATH) runs without the .venv setup.
GPU_PY ?=
test-gpu: $(if $(GPU_PY),,setup)  ## on a GPU machine: the tests that need CUDA (GPU_PY=python3: without the .venv)
	$(or $(GPU_PY),$(PY)) -m pytest -q -m gpu tests

demo: system-deps setup  ## the whole loop on the built-in demo world: corpus -> tokenizers -> shards -> 4 stages -> samples -> eval
	$(PY) -m omniseq.recipe --out $(RUN) $(ARGS)

demo-h200: system-deps setup  ## the demo world sized for one H200 (<= 10 min goal; not yet measured): configs/recipes/demo_h200.yaml
	$(PY) -m omniseq.recipe --config configs/recipes/demo_h200.yaml $(OUT_IF_GIVEN) $(ARGS)

demo-micro: setup  ## the same loop at smoke-test size (a few minutes)
	$(PY) -m omniseq.recipe --scale micro $(OUT_IF_GIVEN) $(ARGS)

corpus: setup  ## the demo corpus only (runs/demo/corpus)
	$(PY) -m omniseq.recipe --out $(RUN) --until corpus $(ARGS)

tokenizers: setup  ## the demo corpus, then the text/image/audio/video tokenizers and the vocabulary
	$(PY) -m omniseq.recipe --out $(RUN) --until vocab $(ARGS)

shards: setup  ## everything up to the demo shard sets (configs/data/demo_*.yaml)
	$(PY) -m omniseq.recipe --out $(RUN) --until shards $(ARGS)

stage1 stage2 stage3 sft: setup  ## train a stage (CONFIG=, NGPU=, HOSTFILE=, ARGS= override; demo scale by default)
	$(LAUNCH) omniseq.train --config $(or $(CONFIG),$(STAGE_$@)) root=$(RUN) $(ARGS)

STAGE_stage1 := configs/stages/stage1_alignment.yaml
STAGE_stage2 := configs/stages/stage2_interleaved.yaml
STAGE_stage3 := configs/stages/stage3_speech.yaml
STAGE_sft := configs/stages/sft.yaml

sample: setup  ## generate from CKPT (PROMPT="draw a red circle" FORCE=image, or ARGS="--prompts file.jsonl")
	$(PY) sample.py checkpoint=$(CKPT) out=$(RUN)/samples $(subst sample.,,$(TOKS)) \
	  $(if $(PROMPT),--prompt "$(PROMPT)") $(if $(FORCE),--force $(FORCE)) $(ARGS)

# The tables as the recipe's eval step makes them (its sample_overrides, eval_per_direction, eval_overrides; ARGS
# are recipe keys); CKPT= given: that checkpoint through the eval module, with the module's defaults.
CKPT_GIVEN = $(filter command line environment,$(origin CKPT))
eval: setup  ## the demo world's table of RUN as its recipe scores it (RECIPE=its config; CKPT=: another checkpoint)
	$(if $(CKPT_GIVEN),$(PY) -m omniseq.eval --checkpoint $(CKPT) corpus=$(RUN)/corpus out=$(RUN)/eval $(TOKS) $(ARGS),\
	  $(PY) -m omniseq.recipe $(if $(RECIPE),--config $(RECIPE)) --out $(RUN) --redo eval $(ARGS))

REAL_RUN ?= runs/real
real: setup  ## the real-media recipe on ../shared/data (one H200, <= 30 min goal): configs/recipes/real_small.yaml
	$(PY) -m omniseq.recipe --config configs/recipes/real_small.yaml --out $(REAL_RUN) $(ARGS)

real-cpu: setup  ## the same recipe sized for the 2-core CPU machine (<= 30 min): real_small_cpu.yaml
	$(PY) -m omniseq.recipe --config configs/recipes/real_small_cpu.yaml --out $(REAL_RUN)-cpu $(ARGS)

REAL_RECIPE = $(or $(RECIPE),$(if $(filter %-cpu,$(REAL_RUN)),configs/recipes/real_small_cpu.yaml,configs/recipes/real_small.yaml))
eval-real: setup  ## the real-media table of a real run as its recipe scores it (REAL_RUN=runs/real-cpu after make real-cpu)
	$(if $(CKPT_GIVEN),$(PY) -m omniseq.eval.real corpus=$(REAL_RUN)/corpus scorers=$(REAL_RUN)/scorers \
	  out=$(REAL_RUN)/eval sample.checkpoint=$(CKPT) $(subst $(RUN)/,$(REAL_RUN)/,$(TOKS)) $(ARGS),\
	  $(PY) -m omniseq.recipe --config $(REAL_RECIPE) --out $(REAL_RUN) --redo eval $(ARGS))

bench: setup  ## CPU-sized benchmarks, one JSON line each (GPU numbers: docs/benchmarks.md)
	$(PY) bench/train_step.py --size demo --vocab 4096 --seq-len 256 --batch 4
	$(PY) bench/decode.py --size demo --vocab 4096 --prompt-len 32 --new-tokens 128
	$(PY) bench/loader.py
	$(PY) bench/shards.py
	$(PY) bench/tokenizers.py image
	$(PY) bench/tokenizers.py audio
	TQDM_DISABLE=1 $(PY) bench/tokenizer_training.py --recipe configs/recipes/real_small.yaml

clean:  ## remove generated runs and caches (keeps .venv)
	rm -rf runs .pytest_cache .ruff_cache .hypothesis
