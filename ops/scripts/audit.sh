#!/usr/bin/env bash
# Audit the locked dependency set for known vulnerabilities (pip-audit, PyPI's advisory API).
# --strict: a finding, or a package that cannot be looked up, fails the step. Where the advisory
# API cannot be reached (a registry mirror without it), say so and skip instead of passing
# silently on nothing checked.
set -euo pipefail
cd "$(dirname "$0")/../.."
# probe with the first pinned package: pip-audit asks https://pypi.org/pypi/<name>/<version>/json
probe=$(head -1 requirements.lock | sed 's|==|/|')
if ! .venv/bin/python - "$probe" <<'PY'
import sys, urllib.request
try:
    with urllib.request.urlopen(f"https://pypi.org/pypi/{sys.argv[1]}/json", timeout=10) as response:
        sys.exit(0 if response.status == 200 else 1)
except Exception:
    sys.exit(1)
PY
then
    echo "dependency audit SKIPPED: PyPI's advisory API does not answer for pinned versions here" \
         "(https://pypi.org/pypi/$probe/json); run make audit where it does"
    exit 0
fi
# the CPU build of torch carries a local version (+cpu); advisories are filed against the release
sed 's/+cpu$//' requirements.lock > .run/requirements.audit
.venv/bin/pip-audit --strict --no-deps --disable-pip --progress-spinner off -r .run/requirements.audit
