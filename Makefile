# megatron-ixt developer commands. `make demo` and `make test` are the README's two commands.
# The interpreter of the environment: the first of python3.11 and python3.12 that runs here (PYTHON=...
# picks one). requirements-cpu.txt pins each one's stack: 3.11 -> torch 2.13.0 CPU + megatron-core 0.16.1,
# 3.12 -> torch 2.14.1 + megatron-core 0.19.2. Use another VENV for a second interpreter.
PYTHON ?= $(shell for p in python3.11 python3.12; do $$p -c "" 2>/dev/null && echo $$p && break; done)
VENV   ?= .venv
PY     := $(VENV)/bin/python
# Benchmarks run from the checkout: its packages (tools/ included), examples/data's make_corpus and
# examples/demo's run_demo (the demo model's shape).
BENCH  := PYTHONPATH=$(CURDIR):$(CURDIR)/examples/data:$(CURDIR)/examples/demo $(PY)
STAMP  := $(VENV)/.installed

.PHONY: install demo demo-ablations demo-robustness test test-quick lint smoke-mcore bench bench-preprocess bench-dataset bench-annotate bench-train bench-save bench-generate clean scaling-cpu scaling-downstream

$(STAMP): requirements-cpu.txt setup.py
	@test -n "$(PYTHON)" || { echo "no python3.11 or python3.12 found: install one, or give PYTHON=..." >&2; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-cpu.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

## The main job: an end-to-end run on the bundled example corpus.
demo: $(STAMP)
	$(PY) examples/demo/run_demo.py --output demo_out

## The demo's IXT recipes side by side (run_demo.py --ablations): the baseline and `ixt` (cooldown 0.1) of
## `make demo` (reused when demo_out holds them) plus no cooldown and dropout 0.1, on the same tokens.
demo-ablations: $(STAMP)
	$(PY) examples/demo/run_demo.py --output demo_out --ablations

## The demo's headline across seeds and thread counts (examples/demo/robustness.py; ~6 demo runs).
demo-robustness: $(STAMP)
	$(PY) examples/demo/robustness.py --output demo_robustness

## The CPU scaling sweep (examples/scaling/cpu_tiny.yaml) and its fit into examples/scaling/results/.
scaling-cpu: $(STAMP)
	$(PY) examples/scaling/run_cpu_tiny.py

## The CPU downstream sweep (examples/scaling/cpu_downstream.yaml: + the carry task's accuracy under
## steering, lm-eval on every run) and its fit into examples/scaling/results_downstream/ (~45 min on 2 cores).
scaling-downstream: $(STAMP)
	$(PY) examples/scaling/run_cpu_tiny.py --spec examples/scaling/cpu_downstream.yaml \
	    --results examples/scaling/results_downstream

## The default test suite (what CI runs). Slow multi-process tests are included unless -m says otherwise.
test: $(STAMP)
	@$(PY) -c "import sys, megatron.core as m; print(f'stack: Python {sys.version.split()[0]}, megatron-core {m.__version__}')"
	$(PY) -m pytest -q tests $(PYTEST_ARGS)

## The lint configured in pyproject.toml (what CI runs after stack 1's tests).
lint: $(STAMP)
	$(PY) -m ruff check .

## The default suite without the tests marked slow (multi-process training, demo-sized runs).
test-quick: $(STAMP)
	$(PY) -m pytest -q tests -m "not slow" $(PYTEST_ARGS)

## A smoke run on another megatron-core release (e.g. `make smoke-mcore MCORE=0.17.1` on Python 3.12):
## imports, the dataset and one training run, with that release installed beside this venv's packages.
MCORE ?= 0.17.1
smoke-mcore: $(STAMP)
	test -d .mcore-$(MCORE) || $(PY) -m pip install -q --no-deps --target .mcore-$(MCORE) megatron-core==$(MCORE)
	@# 0.18+'s package_info appends "+<git sha>" when it sits inside a git checkout (as .mcore-* here does).
	PYTHONPATH=$(CURDIR)/.mcore-$(MCORE) $(PY) -c "import megatron.core as m; v = m.__version__.split('+')[0]; \
		assert v == '$(MCORE)', (m.__version__, m.__file__); print('smoke: megatron-core', v)"
	PYTHONPATH=$(CURDIR)/.mcore-$(MCORE) $(PY) -m pytest -q tests/dataset/test_mcore_private.py \
		tests/dataset/test_ixt_dataset.py tests/training/test_train.py::test_trains_on_preprocessed_shards

bench: bench-preprocess bench-dataset bench-annotate bench-train bench-save bench-generate

bench-preprocess: $(STAMP)
	$(BENCH) benchmarks/bench_preprocess.py --repeat 3

bench-dataset: $(STAMP)
	$(BENCH) benchmarks/bench_dataset.py

bench-annotate: $(STAMP)
	$(BENCH) benchmarks/bench_annotate.py

bench-train: $(STAMP)
	$(BENCH) benchmarks/bench_train.py

bench-save: $(STAMP)
	$(BENCH) benchmarks/bench_save.py

bench-generate: $(STAMP)
	$(BENCH) benchmarks/bench_generate.py

clean:
	rm -rf $(VENV) .venv-py312 .mcore-* demo_out demo_robustness bench_out scaling_out build *.egg-info
