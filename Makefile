# Two entry points for a fresh machine: `make test` and `make demo`. Both create .venv first.
PYTHON ?= python3
VENV ?= .venv
# torch is a test-only reference. On CPU-only machines pin a CPU build here so that the test extra
# does not pull several GB of CUDA wheels (BUILD.md explains); override with TORCH_SPEC=... elsewhere.
TORCH_SPEC ?= torch==2.13.0
JAX_EXTRA ?= cpu

VPY := $(VENV)/bin/python

OUT ?= out/demo

.PHONY: setup setup-test test test-gpu lint demo clean espeak

# The demo set is synthesised with espeak-ng (a system package). Install it when we can (root with
# apt-get), otherwise say how.
espeak:
	@command -v espeak-ng >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get install -y -qq espeak-ng >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq espeak-ng)); \
	  else echo "espeak-ng is needed for the demo set: sudo apt-get install espeak-ng (or brew install espeak-ng)"; fi; }

# pip byte-compiles every module it installs: 29,000 files for the test extra, 152 s of CPU on a 2-core machine (2.5 of
# the 4 CPU minutes of `make setup-test`), of which the tests import a fraction. --no-compile leaves it to Python,
# which compiles (and caches) a module at its first import; nothing else changes.
PIP_INSTALL := $(VPY) -m pip install -q --no-compile

# ... and Python caches a module's bytecode only where PYTHONDONTWRITEBYTECODE is empty. Where it is set (some CI and
# container images set it), nothing installed --no-compile, and none of babelgrid's own modules, was ever cached:
# every process compiled every module it imported from source, every time. The test suite starts some 300 job
# processes, 2 test workers and their fork servers: 1.5-1.8 s of CPU a job process went to compiling source (cProfile
# of an encode job). Six process-heavy test files (workers, studies, remote, scaleout, series, recipes; 2 AVX-512
# cores, 2026-11-28, both from no cache): 466 s of CPU and 308 s of wall with it set, 278 s and 203 s without.
# The recipes here (tests, demo) write the cache; it changes no result.
export PYTHONDONTWRITEBYTECODE :=

$(VPY):
	$(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --upgrade pip

# Each install runs once per change of what it installs: a stamp file in the venv, newer than pyproject.toml and
# this Makefile, says it is done (the package itself is installed editable, so code changes need no reinstall).
SETUP_STAMP := $(VENV)/.babelgrid-setup-$(JAX_EXTRA)
# setuptools advises, on every editable install of a flat layout, that folders named like the package may shadow
# it; here they are the package. Only that advisory is silenced.
EDITABLE := PYTHONWARNINGS="ignore:Editable installation:UserWarning" $(PIP_INSTALL) -e
TEST_STAMP := $(VENV)/.babelgrid-setup-test-$(JAX_EXTRA)

setup: $(SETUP_STAMP) espeak

$(SETUP_STAMP): pyproject.toml Makefile | $(VPY)
	@echo "make: installing babelgrid, JAX ($(JAX_EXTRA)) and the packaged whisper-base into $(VENV) (a few minutes, once)"
	$(EDITABLE) ".[$(JAX_EXTRA),default-model,interp]" --progress-bar on
	touch $@

setup-test: $(TEST_STAMP) espeak

$(TEST_STAMP): pyproject.toml Makefile | $(VPY)
	@echo "make: installing the test references into $(VENV): a CPU build of torch, transformers, CTranslate2, ESPnet's"
	@echo "      OWSM modules, Ray and the rest of the test extra (several minutes, once)"
	$(PIP_INSTALL) "$(TORCH_SPEC)" --progress-bar on
	$(EDITABLE) ".[$(JAX_EXTRA),default-model,fleurs,test]" --progress-bar on
	# OpenAI whisper: reference for DTW, tokenizer and mel filters. Without --no-deps it pulls triton.
	$(PIP_INSTALL) --no-deps openai-whisper==20250625
	# dictionary-learning: the sparse autoencoders' PyTorch reference (tests/kernels/test_sae.py). Its dependencies
	# (nnsight, a CUDA torch 2.14, wandb, datasets) are for collecting LM activations; the trainers need torch, einops.
	$(PIP_INSTALL) --no-deps dictionary-learning==0.1.0 einops
	# ESPnet: the OWSM reference (tests/models/owsm/owsm_reference.py). Its full install pulls lightning, torchaudio and
	# dozens more; --no-deps and only what espnet2.tasks.s2t and espnet2.bin.s2t_inference import (torchaudio has no
	# build for our torch: the reference stands in a placeholder for it, which OWSM never calls). ESPnet 202611 (the
	# first with OWSM v4, OWSM-CTC v4 and POWSM folded into one S2T) declares Python >= 3.12; the modules the tests
	# import compile and run on 3.11 (every .py of the wheel compiles under 3.11), hence --ignore-requires-python.
	$(PIP_INSTALL) --no-deps --ignore-requires-python espnet==202611 omniio typeguard humanfriendly \
	  configargparse sentencepiece==0.2.1 einops hydra-core omegaconf antlr4-python3-runtime==4.9.3 torch_complex \
	  h5py kaldiio g2p_en nltk inflect jamo espnet_tts_frontend unidecode jaconv
	# sae-lens: opens the sae job's SAEs as analysts do (tests/jobs/test_sae_saelens.py). Its full install pulls
	# transformer-lens's model tooling (accelerate, plotly, wandb with its service binary and OpenTelemetry); --no-deps
	# and only what `import sae_lens` needs beside the above (transformers, datasets, nltk, safetensors, jaxtyping,
	# einops, sentencepiece). wandb, for logging training runs, is a placeholder in the test: loading never logs.
	$(PIP_INSTALL) --no-deps sae-lens==6.54.12 transformer-lens==3.9.0 better-abc==0.0.3 \
	  simple-parsing==0.1.9 docstring-parser==0.18.0
	touch $@ $(SETUP_STAMP)

# pytest's junit report (git-ignored under build/); .ci/check_skips.py reads it to fail CI on an unexpected skip.
JUNIT ?= build/junit.xml

# Test files run on this many pytest-xdist workers, a file's tests together (module fixtures built once): most of the
# suite waits on one core at a time (XLA compiles, job subprocesses starting, torch references), so two workers use
# a 2-core machine's second core. Three (2026-11-26): the 1025 tests that need no FLEURS clips ran in 791 s of wall
# time against 893 s, but the whole suite in 30:26 against 30:31, every test 1.5x slower, and the three workers held
# 23.9 of the 24 GiB. TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= 2

# The skips are checked too (.ci/check_skips.py): a test that skipped without its reason allowed in
# .ci/allowed-skips.txt fails `make test` as it fails CI, so that the parity and real-data tests cannot quietly stop.
test: setup-test
	$(VPY) -m ruff check engine kernels jobs tests bench
	rm -f $(JUNIT)
	$(VPY) -m pytest -q -ra -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=25 \
	  -o junit_family=xunit1 --junitxml=$(JUNIT)
	$(VPY) .ci/check_skips.py $(JUNIT) .ci/allowed-skips.txt

# The kernel and model tests with JAX on an NVIDIA GPU (pip install -e ".[cuda,test]" first): four test processes
# share the card, so none may take most of its memory up front. float32 parity runs at "highest" (tests/conftest.py).
test-gpu:
	XLA_PYTHON_CLIENT_PREALLOCATE=false JAX_PLATFORMS=cuda,cpu $(VPY) -m pytest -q -ra -n 4 --dist loadfile \
		tests/kernels tests/models

lint: setup-test
	$(VPY) -m ruff check engine kernels jobs tests bench
	$(VPY) -m ruff format --check engine kernels jobs tests bench

# The main job on the embedded default: the packaged whisper-base over the bundled demo set
# (synthesised with espeak-ng on first use): every layer into a store, all-pairs similarity
# matrices, then retrieval metrics, a table and figures in $(OUT)/similarity: the study jobs/configs/demo.yaml.
# A second `make demo` skips the stages that completed.
demo: setup
	$(VENV)/bin/babelgrid run demo --set out=$(OUT)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
