#!/usr/bin/env bash
# The deployment-file tests check docker-compose.yml with `docker-compose config` (no Docker
# engine needed) and the Prometheus rules and config with `promtool`: install Debian's
# docker-compose and prometheus (for its promtool; no daemon is started) where they are missing
# (we are root on CI). Without them those tests are skipped, saying so.
set -euo pipefail
missing=()
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
[ ${#missing[@]} -eq 0 ] && exit 0
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    echo "${missing[*]} missing: the tests that use them will be skipped" >&2
fi
