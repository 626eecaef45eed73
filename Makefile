# The ANI Book: `make book` builds the HTML book, `make test` runs the test suite.
# Both create (or reuse) a virtual environment in .venv and install everything into it.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.anibook-installed
# torch is pinned here, in the install step, never in pyproject.toml (Colab brings its own).
TORCH  ?= torch==2.13.0

.PHONY: install book book-quick test test-fast data clean help

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
	ANIBOOK_QUICK=1 $(BIN)/python -m pytest --nbval-lax --nbval-current-env -p no:cacheprovider tests book; \
	rc=$$?; if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests"; fi; exit $$rc

test-fast: $(STAMP)
	ANIBOOK_QUICK=1 $(BIN)/python -m pytest -p no:cacheprovider -m "not notebook and not slow" tests

clean:
	rm -rf _build .pytest_cache
