# rerankq: `make demo` runs the demo, `make test` runs the tests; each sets itself up.
export HF_HUB_OFFLINE ?= 0
VENV := .venv/bin

.PHONY: setup setup-demo setup-lowest demo test test-fast test-faults test-lowest wheel-smoke release bench bench-backends gpu-kit lint audit lock clean

# everything for development: tests, linters, every extra (editable install)
setup:
	ops/scripts/setup.sh dev
	ops/scripts/ensure-redis-server.sh
	ops/scripts/ensure-rabbitmq.sh
	ops/scripts/ensure-ops-tools.sh

# .venv-lowest: the lowest celery, kombu and redis-py pyproject.toml allows (for test-lowest)
setup-lowest:
	ops/scripts/setup.sh lowest
	ops/scripts/ensure-redis-server.sh

# only what the demo needs: rerankq[worker] and a redis-server
setup-demo:
	ops/scripts/setup.sh demo
	ops/scripts/ensure-redis-server.sh

demo: setup-demo
	$(VENV)/rerankq demo

# two pytest processes, one test file each at a time: most tests wait on real workers and Redis;
# files in collection order, so the longest start first (tests/conftest.py, LONGEST_FIRST)
test: setup
	HF_HUB_OFFLINE=1 $(VENV)/pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=15

test-fast: setup
	HF_HUB_OFFLINE=1 $(VENV)/pytest -q -m "not slow"

# the fault drills alone (killed workers, a restarted Redis, foreign messages, a burst of clients)
test-faults: setup
	HF_HUB_OFFLINE=1 $(VENV)/pytest -q -n 2 --dist loadfile -m "fault or security"

# the delivery tests at the lower end of the declared ranges (`make test` runs them on the lock);
# only the files that hold some (the others may import what only the dev extra installs); on Redis
# alone: the range guards kombu's Redis internals, and RabbitMQ's path uses only public APIs
test-lowest: setup-lowest
	HF_HUB_OFFLINE=1 .venv-lowest/bin/pytest -q -n 2 --dist loadfile --no-loadscope-reorder -m delivery -k "not rabbitmq" \
		--durations=12 $$(grep -l "mark.delivery" tests/test_*.py)

# the wheel as users get it: built, installed into a fresh virtualenv, run from outside the checkout
wheel-smoke:
	ops/scripts/wheel-smoke.sh

# dist/: the sdist and the wheel built from this checkout (earlier ones removed), checked as PyPI renders them
release: setup
	rm -f dist/rerankq-*.tar.gz dist/rerankq-*.whl
	$(VENV)/python -m build --outdir dist .
	$(VENV)/twine check --strict dist/rerankq-*

# the full benchmark suite on this machine; writes docs/BENCHMARKS.md (ARGS e.g. --shape tiny-bert --jobs 300)
bench: setup
	HF_HUB_OFFLINE=1 $(VENV)/rerankq bench all $(ARGS)

# torch vs ONNX Runtime float32 and int8 on CPU (docs/backends.md): two shapes and the real MiniLM weights
bench-backends: setup
	HF_HUB_OFFLINE=1 $(VENV)/rerankq bench backends --device cpu --model all-minilm-l6-v2
	HF_HUB_OFFLINE=1 $(VENV)/rerankq bench backends --device cpu --shape minilm-l6
	HF_HUB_OFFLINE=1 $(VENV)/rerankq bench backends --device cpu --shape bge-reranker-base --jobs 24

# dist/gpu-kit/: one command that measures the GPU path on a lent GPU machine (docs/BENCHMARKS.md)
gpu-kit: setup
	$(VENV)/python ops/scripts/build_gpu_kit.py

lint: setup
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .
	$(VENV)/mypy
	$(VENV)/lint-imports

# known vulnerabilities in the locked dependency set (skipped, saying so, where the advisory API is unreachable)
audit: setup
	mkdir -p .run
	ops/scripts/audit.sh

# rewrite requirements.lock from the installed environment (after changing dependencies)
lock: setup
	$(VENV)/pip freeze --exclude-editable | grep -v '^-e ' > requirements.lock

clean:
	rm -rf .venv .venv-lowest .mypy_cache .ruff_cache .pytest_cache
