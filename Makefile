# Mailroom: `make demo` runs a real campaign locally; `make test` runs every test.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP_PY := $(VENV)/.installed
STAMP_NODE := node_modules/.installed

.PHONY: setup demo serve test test-fast lint bench clean browser screenshots

setup: $(STAMP_PY) $(STAMP_NODE)

$(STAMP_PY): requirements.txt requirements-dev.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH (or PYTHON=...)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .  # the `mailroom` CLI
	touch $@

$(STAMP_NODE): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

demo: setup  ## Start Azurite, the host and the SendGrid simulator; send a real campaign; print results
	$(PY) -m devhost.demo

serve: setup  ## Keep the local stack up (API at http://127.0.0.1:7071/api) until Ctrl-C
	$(PY) -m devhost.stack

test: setup browser  ## Unit, function, integration and end-to-end tests (starts its own Azurite)
	$(PY) -m pytest -q

browser:  ## Debian's chromium for the console's browser test (Playwright's own download is not used)
	@test -x /usr/bin/chromium || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } \
	  || echo "chromium could not be installed: the console's browser test will be skipped"

screenshots: setup browser  ## Regenerate docs/screenshots/*.png (campaign, job and operator pages) from the console's browser tests
	MAILROOM_SCREENSHOTS=docs/screenshots $(PY) -m pytest -q tests/e2e/test_console.py -k "chart_and_status_bars or replays_a_poison"

test-fast: setup  ## Everything but the end-to-end runs
	$(PY) -m pytest -q -m "not e2e"

bench: setup  ## Azurite ceiling, Mailroom end to end (10k, 100k), seed-design baseline, scale-out; table + bench/results/*.json
	$(PY) -m bench $(BENCH_ARGS)

lint: $(STAMP_PY)  ## ruff, mypy over the product packages ([tool.mypy]), the layer contracts ([tool.importlinter])
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) node_modules .azurite .devhost .pytest_cache
