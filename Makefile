# rerankq: `make demo` runs the demo, `make test` runs the tests; each sets itself up.
export HF_HUB_OFFLINE ?= 0
VENV := .venv/bin

.PHONY: setup demo test test-fast lint clean

setup:
	ops/scripts/setup.sh
	ops/scripts/ensure-redis-server.sh

demo: setup
	$(VENV)/rerankq demo

test: setup
	HF_HUB_OFFLINE=1 $(VENV)/pytest -q

test-fast: setup
	HF_HUB_OFFLINE=1 $(VENV)/pytest -q -m "not slow"

lint: setup
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .
	$(VENV)/mypy

clean:
	rm -rf .venv .mypy_cache .ruff_cache .pytest_cache
