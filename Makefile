# The two commands: `make demo` and `make test`. Each builds .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Prefect: no telemetry on machines without network, and a quiet console.
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

.PHONY: demo test lint bench clean

# A strict editable install: a tree of links under build/ that tools such as mypy can read
# (the default mode maps the folders with an import hook only Python itself follows). A new
# module joins that tree on the next install, so the stamp depends on the module list.
MODULES := $(sort $(shell find src tasks flows deployments examples -name '*.py'))
$(STAMP): pyproject.toml $(MODULES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,dask]' --config-settings editable_mode=strict
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/studio-flows demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Serial on purpose: pytest -n 2 (pytest-xdist) gained under 10 % even on the unit folders on 2
# cores and would run the multi-process scenarios two at a time (bench/NOTES.md, item 24).
# The suite, then the docstring examples not marked +SKIP, in one pytest process: a second
# one paid pytest's start and every import again (about 30 s on a loaded machine).
test: lint
	$(BIN)/pytest tests --doctest-modules --pyargs studio_flows

bench: $(STAMP)
	$(BIN)/python -m bench.run
	$(BIN)/python -m bench.first_contact  # with the ad-hoc path (bench/ad_hoc.py)

clean:
	rm -rf $(VENV) build studio_flows.db .pytest_cache .mypy_cache .ruff_cache
