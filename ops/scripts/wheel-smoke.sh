#!/usr/bin/env bash
# The wheel as users get it: build it, install it (not editable) with its extras into a fresh
# virtualenv outside the checkout, and run the checks of wheel_smoke.py from another folder.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PYTHON=${PYTHON:-python3}
WORK=$(mktemp -d /tmp/rerankq-wheel.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
started=$(date +%s)
# pip's own failure fails the script; the mirror's "Location ... is ignored" lines are dropped
filtered() { "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }; }

# built from a copy of what the images copy (ops/docker/Dockerfile.*), so a build running in the
# checkout at the same time (the GPU kit's test, an editable install) shares no build/ folder
mkdir "$WORK/src"
cp -r "$ROOT/pyproject.toml" "$ROOT/README.md" "$ROOT/rerankq" "$WORK/src/"
find "$WORK/src" -name __pycache__ -prune -exec rm -rf {} +
(cd "$WORK/src" && filtered "$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$WORK/dist" .)
wheel=$(ls "$WORK"/dist/rerankq-*.whl)
echo "wheel-smoke: built $(basename "$wheel") ($(du -k "$wheel" | cut -f1) KiB)"

"$PYTHON" -m venv "$WORK/venv"
pip="$WORK/venv/bin/pip"
filtered "$pip" install --quiet --upgrade pip
# the CPU build of torch first: the worker extra's range then pulls no CUDA packages
filtered "$pip" install --quiet torch==2.13.0
filtered "$pip" install --quiet "$wheel[worker,onnx,gateway,bulk,otel]"
echo "wheel-smoke: installed in $(( $(date +%s) - started )) s"

mkdir "$WORK/elsewhere"
cd "$WORK/elsewhere"
env -u PYTHONPATH -u RERANKQ_MODELS_DIR -u RERANKQ_REDIS_URL HF_HUB_OFFLINE=1 \
    "$WORK/venv/bin/python" "$ROOT/ops/scripts/wheel_smoke.py" "$wheel" "$ROOT"
echo "wheel-smoke: passed in $(( $(date +%s) - started )) s"
