PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup test bench heads experiments clean

setup: $(BIN)/sentmtl

$(BIN)/sentmtl: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned, so nothing later resolves a CUDA build
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info
