#!/usr/bin/env bash
# Make a virtualenv ready on a fresh machine: CPU torch first where there is no GPU (a plain
# `torch` requirement would pull several GB of CUDA packages), then rerankq with the extras a
# profile needs.
#   setup.sh demo     .venv: the worker extra, nothing for development (`make demo`)
#   setup.sh dev      .venv: tests, linters, the gateway, bulk and Flower extras (`make test`, `make lint`)
#   setup.sh lowest   .venv-lowest: the worker, gateway and test extras on the lowest celery, kombu
#                     and redis-py pyproject.toml allows (`make test-lowest`: the other end of the ranges)
set -euo pipefail
cd "$(dirname "$0")/../.."
PROFILE=${1:-dev}
PYTHON=${PYTHON:-python3}
VENV=.venv
CONSTRAINTS=()
case "$PROFILE" in
    demo) EXTRAS=worker ;;
    dev) EXTRAS=dev ;;
    lowest) EXTRAS=worker,gateway,test; VENV=.venv-lowest ;;
    *) echo "usage: $0 demo|dev|lowest" >&2; exit 2 ;;
esac
STAMP=$VENV/.rerankq-$PROFILE
# pip's own failure fails the script; the mirror's "Location ... is ignored" lines are dropped
filtered() { "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }; }

if [ -f "$STAMP" ] && [ "$STAMP" -nt pyproject.toml ]; then
    exit 0
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
filtered "$VENV/bin/pip" install --quiet --upgrade pip
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1; then
        filtered "$VENV/bin/pip" install --quiet "torch>=2.4,<2.14"
    else
        filtered "$VENV/bin/pip" install --quiet torch==2.13.0
    fi
fi
if [ "$PROFILE" = lowest ]; then
    "$PYTHON" ops/scripts/lowest_pins.py pyproject.toml > "$VENV/lowest-pins.txt"
    CONSTRAINTS=(--constraint "$VENV/lowest-pins.txt")
fi
# editable: a checkout is for working on rerankq (the wheel is what users install, see .ci/run)
filtered "$VENV/bin/pip" install --quiet "${CONSTRAINTS[@]}" -e ".[$EXTRAS]"
if [ "$PROFILE" = lowest ]; then  # say what this end of the ranges is
    "$VENV/bin/python" -c "from importlib.metadata import version as v; print('.venv-lowest:', *(f'{n} {v(n)}' for n in ('celery', 'kombu', 'redis')))"
fi
touch "$STAMP"
[ "$PROFILE" = dev ] && touch .venv/.rerankq-demo  # dev holds everything the demo needs
exit 0
