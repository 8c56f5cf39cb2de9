# rerankq: `make demo` runs the demo, `make test` runs the tests; each sets itself up.
export HF_HUB_OFFLINE ?= 0
VENV := .venv/bin

.PHONY: setup demo test test-fast bench lint clean

setup:
	ops/scripts/setup.sh
	ops/scripts/ensure-redis-server.sh
	ops/scripts/ensure-docker-compose.sh

demo: setup
	$(VENV)/rerankq demo

test: setup
	HF_HUB_OFFLINE=1 $(VENV)/pytest -q

test-fast: setup
	HF_HUB_OFFLINE=1 $(VENV)/pytest -q -m "not slow"

# the full benchmark suite on this machine; writes docs/BENCHMARKS.md (ARGS e.g. --shape tiny-bert --jobs 300)
bench: setup
	HF_HUB_OFFLINE=1 $(VENV)/rerankq bench all $(ARGS)

lint: setup
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .
	$(VENV)/mypy

clean:
	rm -rf .venv .mypy_cache .ruff_cache .pytest_cache
