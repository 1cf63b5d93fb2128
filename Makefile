PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
EXPERIMENTS := configs/experiments/q1_freeze.yaml configs/experiments/q1_trap.yaml \
               configs/experiments/q2_shared.yaml configs/experiments/q3_imbalance.yaml

.PHONY: setup test heads experiments bench clean

setup: $(BIN)/sentmtl configs/default.onnx/export.json

$(BIN)/sentmtl: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned, so nothing later resolves a CUDA build
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# the fast path: the shipped backbone exported to ONNX (fp32 and int8); made again when the
# exporter changes (an export from an older sentmtl is not used)
configs/default.onnx/export.json: $(BIN)/sentmtl sentmtl_cli/export/onnx.py sentmtl_cli/export/quantize.py sentmtl_cli/backbone/onnx_backbone.py
	$(BIN)/sentmtl export --int8

test: setup
	$(BIN)/python -m pytest -q

# Reproduce the shipped head weights from ../shared/data (about 10 minutes on 2 cores).
heads: setup
	$(BIN)/sentmtl train configs/train_default.yaml --force
	mkdir -p configs/heads
	cp build/heads/heads/cls.safetensors build/heads/heads/sent.safetensors build/heads/heads/ner.safetensors configs/heads/
	cp build/heads/val_report.json configs/heads/val_report.json

# The tables quoted in docs/DISCUSSION.md (each under about 10 minutes on 2 cores).
experiments: setup
	$(BIN)/sentmtl experiment $(EXPERIMENTS)

# sentmtl against sentence-transformers, same model and inputs, ratios from one run
bench: setup
	$(BIN)/python bench/bench.py

clean:
	rm -rf $(VENV) build *.egg-info
