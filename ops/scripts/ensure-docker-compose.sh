#!/usr/bin/env bash
# The compose tests validate docker-compose.yml with `docker-compose config`, which needs no
# Docker engine: install Debian's docker-compose where it is missing (we are root on CI).
set -euo pipefail
command -v docker-compose >/dev/null 2>&1 && exit 0
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq docker-compose >/dev/null
else
    echo "docker-compose is missing: the compose tests will be skipped" >&2
fi
