# The two commands of the README: `make demo` and `make test`. Each one creates or updates the
# project-local virtual environment first, so a fresh clone needs nothing else.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint format bench clean

# jsdom, for the tests that drive the review on `qmix show`'s page in a DOM (tests/reporting/test_review_page.py).
# Best effort: without node and npm, or offline, those tests are skipped and the rest run.
JSDOM  := $(VENV)/jsdom/node_modules/jsdom/package.json

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/qmix demo

$(JSDOM):
	-command -v npm >/dev/null && timeout 300 npm install -s --no-audit --no-fund --fetch-retries=1 \
		--prefix $(VENV)/jsdom jsdom@24

test: $(STAMP) $(JSDOM)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_corrupt.py
	$(BIN)/python benchmarks/bench_methods.py
	$(BIN)/python benchmarks/bench_datapath.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
