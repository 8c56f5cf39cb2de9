#!/usr/bin/env bash
# rerankq GPU kit: measures the whole GPU path in one run and writes $OUT/gpu-report.json and
# $OUT/gpu-report.md. Built by `make gpu-kit` (docs/BENCHMARKS.md, "GPU kit").
#
#   dist/gpu-kit/run.sh            on a GPU machine: full sizes, ends inside 8 minutes
#   dist/gpu-kit/run.sh --dry-run  anywhere: every step at tiny sizes on the CPU
#
# Needs python3 with torch, transformers and sentence-transformers (what a GPU image has); the
# rest (rerankq, Celery, redis-py, FastAPI, ...) is installed from the kit's wheels into a
# temporary folder, with no network. Nothing outside that folder and $OUT is written.
set -euo pipefail
KIT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MODE=()
[[ "${1:-}" == "--dry-run" ]] && MODE=(--dry-run)
OUT="${OUT:-$PWD/gpu-report}"
PYTHON="${PYTHON:-python3}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/rerankq-kit.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT"

timeout 120 "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --target "$WORK/site" "$KIT"/wheels/*.whl

# The kit's redis-server (from Debian's package) with the libraries it brings; where this
# system lacks one of the others, a redis-server already on PATH serves instead.
export LD_LIBRARY_PATH="$KIT/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if ldd "$KIT/bin/redis-server" | grep -q "not found"; then
    echo "the kit's redis-server lacks: $(ldd "$KIT/bin/redis-server" | grep "not found" | tr -s ' \n' ' ')" >&2
    command -v redis-server >/dev/null || { echo "and no redis-server is on PATH" >&2; exit 2; }
else
    export PATH="$KIT/bin:$PATH"
fi

export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export RERANKQ_SHAPES_TOKENIZER="$KIT/tokenizer" RERANKQ_SHAPES_DIR="$WORK/shapes"
unset RERANKQ_REDIS_URL  # the kit starts its own Redis
cd "$WORK"
# 450 s of steps, each time-boxed by the runner; this outer limit is the last resort
timeout -k 5 465 "$PYTHON" -m rerankq.bench.kit --out "$OUT" --budget-s 450 "${MODE[@]}"
