#!/usr/bin/env bash
# Tests and the demo start their own redis-server; install it where it is missing (we are root on CI).
set -euo pipefail
command -v redis-server >/dev/null 2>&1 && exit 0
if [ -n "${RERANKQ_REDIS_URL:-}" ]; then
    echo "redis-server not installed; using RERANKQ_REDIS_URL=$RERANKQ_REDIS_URL" >&2
    exit 0
fi
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq redis-server >/dev/null
else
    echo "redis-server is missing: install it, or set RERANKQ_REDIS_URL to a running Redis" >&2
    exit 1
fi
