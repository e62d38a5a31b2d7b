# The commands of the README: `make demo` runs the quickstart study on the embedded default
# (SQLite file, local Ray); `make test` passes the whole suite, as CI does; `make test-fast`
# runs the unit tests alone, for the edit-test loop. All build the virtual environment first
# if it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch first, pinned to the CPU build on the development machines' disk: an unpinned
# install would pull a multi-GB CUDA build.
TORCH_VERSION ?= 2.13.0

.PHONY: demo test test-fast lint venv

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

demo: venv
	$(BIN)/tuner run studies/quickstart.toml
	cd /tmp && $(CURDIR)/$(BIN)/python -c "import tuner; print(tuner.best_config('quickstart'))"
	@echo "tuner is installed in $(VENV)/bin: run 'source $(VENV)/bin/activate' to call it as tuner, or for example:"
	@echo "  $(BIN)/tuner best quickstart; $(BIN)/tuner report quickstart --out report; $(BIN)/tuner dashboard"

test: venv
	$(BIN)/ruff check tuner tests bench
	$(BIN)/ruff format --check tuner tests bench
	$(BIN)/python -m pytest -q

# Everything but the tests marked as integration (pyproject.toml's markers): no PostgreSQL,
# no Ray, no browser, no long training.
FAST := not postgres and not workers and not browser and not slow

test-fast: venv
	$(BIN)/python -m pytest -q -m "$(FAST)"

lint: venv
	$(BIN)/ruff check --fix tuner tests bench
	$(BIN)/ruff format tuner tests bench
