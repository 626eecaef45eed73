# The ANI Book: `make book` builds the HTML book, `make test` runs the test suite.
# Both create (or reuse) a virtual environment in .venv and install everything into it.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.anibook-installed
# torch is pinned here, in the install step, never in pyproject.toml (Colab brings its own).
TORCH  ?= torch==2.13.0

.PHONY: install book book-quick test test-fast data clean help gpu-check

help:
	@echo "make book   build the HTML book (full mode) into _build/html"
	@echo "make test   run the whole test suite (unit tests, notebooks, quick book build)"
	@echo "make data   download and verify the ANI-1 data (or set ANIBOOK_DATA_DIR)"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[test,docs,reference]"
	touch $@

install: $(STAMP)

data: $(STAMP)
	$(BIN)/python -m anibook_utils fetch-data

book: data
	$(BIN)/jupyter-book build . -W --keep-going
	@echo "The book is at file://$(abspath _build/html/index.html)"

book-quick: $(STAMP)
	ANIBOOK_QUICK=1 $(BIN)/jupyter-book build . --path-output _build/quick -W --keep-going
	@echo "The quick book is at file://$(abspath _build/quick/_build/html/index.html)"

# pytest exits 5 when it collected no tests: a suite that runs nothing is a failure here.
test: $(STAMP)
	ANIBOOK_QUICK=1 $(BIN)/python -m pytest -p no:cacheprovider --durations=30 tests; \
	rc=$$?; if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests"; fi; exit $$rc

test-fast: $(STAMP)
	ANIBOOK_QUICK=1 $(BIN)/python -m pytest -p no:cacheprovider -m "not notebook and not slow" tests

# The CUDA checks (tests marked cuda, chapters 4 and 7 in quick mode, the benchmarks on CUDA), about
# 5 minutes on a machine with a GPU; results under _build/gpu-check/ (see tools/gpu_check.py).
gpu-check:
	@if [ -x $(BIN)/python ]; then $(BIN)/python -c "import sys, torch; sys.exit(not torch.cuda.is_available())" 2>/dev/null; \
	else nvidia-smi -L >/dev/null 2>&1; fi || { echo "make gpu-check needs a CUDA GPU, and none is visible here."; exit 1; }
	@$(MAKE) --no-print-directory install
	$(BIN)/python tools/gpu_check.py

clean:
	rm -rf _build .pytest_cache
