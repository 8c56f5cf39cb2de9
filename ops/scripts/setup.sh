#!/usr/bin/env bash
# Make .venv ready on a fresh machine: CPU torch first where there is no GPU (a plain `torch`
# requirement would pull several GB of CUDA packages), then rerankq with its extras.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
STAMP=.venv/.rerankq-installed

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
.venv/bin/pip install --quiet -e '.[dev]'
touch "$STAMP"
