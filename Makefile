# Two commands for a newcomer: `make demo` and `make test` (both set up .venv first).
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: install demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test,jwst,cluster,bench,cloud]"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/image3-dask demo --out demo_output

test: $(VENV)/.installed
	$(BIN)/ruff check image3_dask tests benchmarks examples
	$(BIN)/python -m pytest -q

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf demo_output .pytest_cache
