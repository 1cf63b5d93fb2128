PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DOCS := README.md docs/DISCUSSION.md docs/CLI.md docs/SCALE.md docs/BENCHMARKS.md docs/guide/train.md
EXPERIMENTS := configs/experiments/q1_freeze.yaml configs/experiments/q1_trap.yaml \
               configs/experiments/q2_shared.yaml configs/experiments/q3_imbalance.yaml \
               configs/experiments/q4_heads.yaml

.PHONY: setup test test-fast lint docs docs-site heads validate experiments bench clean

setup: $(BIN)/sentmtl configs/default.onnx/export.json

$(BIN)/sentmtl: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned, so nothing later resolves a CUDA build
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,ray]'
	touch $@

# the fast path: the shipped backbone exported to ONNX (fp32 and int8); made again when the
# exporter changes (an export from an older sentmtl is not used)
configs/default.onnx/export.json: $(BIN)/sentmtl sentmtl_cli/export/onnx.py sentmtl_cli/export/quantize.py sentmtl_cli/backbone/onnx_backbone.py
	$(BIN)/sentmtl export --int8

test: setup lint
	$(BIN)/python -m pytest -q

# the quick loop while editing: everything but the tests that train or run whole commands (marked slow)
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

# ruff (lint and format), mypy (with the pydantic plugin), and the docs' generated parts up to date
lint: setup
	$(BIN)/ruff check sentmtl_cli tests bench
	$(BIN)/ruff format --check sentmtl_cli tests bench
	$(BIN)/mypy
	$(BIN)/cog --check -I docs $(DOCS)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

# regenerate the docs' tables, pictures and CLI reference from the last results files and `--help`
docs: setup
	$(BIN)/cog -r -I docs $(DOCS)
	$(BIN)/python docs/docgen.py pictures

# the documentation site, offline, from README's pages under docs/ (mkdocs, material theme)
docs-site: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict
	@echo "the site is in build/site/ (open build/site/index.html)"

# Reproduce the shipped head weights from ../shared/data (under 30 minutes on 2 cores), then score
# them on data unlike their training data (configs/heads/heldout.json; the README quotes both).
heads: setup
	$(BIN)/sentmtl train configs/train_default.yaml --force
	mkdir -p configs/heads
	cp build/heads/heads/cls.safetensors build/heads/heads/sent.safetensors build/heads/heads/ner.safetensors configs/heads/
	cp build/heads/val_report.json configs/heads/val_report.json
	$(MAKE) validate

validate: setup
	$(BIN)/python bench/validate.py

# The tables quoted in docs/DISCUSSION.md (each under about 10 minutes on 2 cores).
experiments: setup
	$(BIN)/sentmtl experiment $(EXPERIMENTS)

# sentmtl against sentence-transformers (and sentmtl fit against SetFit), same model and inputs, ratios from one run
bench: setup
	$(BIN)/python bench/bench.py
	$(BIN)/python bench/batch_bench.py
	$(BIN)/python bench/serve_bench.py
	$(BIN)/python bench/fewshot_features.py
	$(BIN)/python bench/fewshot.py --seeds 3 --json build/fewshot.json --markdown docs/experiments/fewshot.md
	$(BIN)/python bench/setfit_bench.py --k 8 --seeds 3
	$(BIN)/python bench/index_bench.py --json docs/experiments/index_1m.json
	$(BIN)/python bench/windows_bench.py

clean:
	rm -rf $(VENV) build *.egg-info
