# Two entry points for a fresh machine: `make test` and `make demo`. Both create .venv first.
PYTHON ?= python3
VENV ?= .venv
# torch is a test-only reference. On CPU-only machines pin a CPU build here so that the test extra
# does not pull several GB of CUDA wheels (BUILD.md explains); override with TORCH_SPEC=... elsewhere.
TORCH_SPEC ?= torch==2.13.0
JAX_EXTRA ?= cpu

VPY := $(VENV)/bin/python

OUT ?= out/demo

.PHONY: setup setup-test test lint demo clean

$(VPY):
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip

setup: $(VPY)
	$(VPY) -m pip install -q -e ".[$(JAX_EXTRA),default-model]"

setup-test: $(VPY)
	$(VPY) -m pip install -q "$(TORCH_SPEC)"
	$(VPY) -m pip install -q -e ".[$(JAX_EXTRA),default-model,test]"

test: setup-test
	$(VPY) -m ruff check engine kernels jobs tests bench
	$(VPY) -m pytest -q -ra

lint: setup-test
	$(VPY) -m ruff check engine kernels jobs tests bench
	$(VPY) -m ruff format --check engine kernels jobs tests bench

# The main job on the embedded default: the packaged whisper-base over the bundled demo set
# (synthesised with espeak-ng on first use).
demo: setup
	$(VPY) -m jobs.encode --out $(OUT)/store

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
