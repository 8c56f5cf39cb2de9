#!/usr/bin/env bash
# Make .venv ready on a fresh machine: CPU torch first where there is no GPU (a plain `torch`
# requirement would pull several GB of CUDA packages), then rerankq with the extras a profile needs.
#   setup.sh demo   what `make demo` runs: the worker extra, nothing for development
#   setup.sh dev    tests, linters, the gateway, bulk and Flower extras (`make test`, `make lint`)
set -euo pipefail
cd "$(dirname "$0")/../.."
PROFILE=${1:-dev}
PYTHON=${PYTHON:-python3}
case "$PROFILE" in
    demo) EXTRAS=worker ;;
    dev) EXTRAS=dev ;;
    *) echo "usage: $0 demo|dev" >&2; exit 2 ;;
esac
STAMP=.venv/.rerankq-$PROFILE

if [ -f "$STAMP" ] && [ "$STAMP" -nt pyproject.toml ]; then
    exit 0
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1; then
        .venv/bin/pip install --quiet "torch>=2.4,<2.14"
    else
        .venv/bin/pip install --quiet torch==2.13.0
    fi
fi
# editable: a checkout is for working on rerankq (the wheel is what users install, see .ci/run)
.venv/bin/pip install --quiet -e ".[$EXTRAS]"
touch "$STAMP"
[ "$PROFILE" = dev ] && touch .venv/.rerankq-demo  # dev holds everything the demo needs
exit 0
