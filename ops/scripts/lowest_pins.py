"""Print pip constraints pinning celery, kombu and redis-py to the lowest versions pyproject.toml
allows (each range's ``>=`` bound), for .venv-lowest (ops/scripts/setup.sh lowest). The ranges
have one home, pyproject.toml; this reads them, so CI's lower end moves with them.

Usage: python ops/scripts/lowest_pins.py pyproject.toml > pins.txt
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

PINNED = ("celery", "kombu", "redis")
# a requirement as pyproject.toml writes them: name[extras]>=low,... (no markers). Parsed by hand,
# not with packaging: this runs before any virtualenv exists, on a Python that may lack it.
REQUIREMENT = re.compile(r"^(?P<name>[A-Za-z0-9_.-]+)(\[[^\]]*\])?(?P<specifiers>[^;]*)$")


def lowest_pins(pyproject: Path) -> list[str]:
    dependencies = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["dependencies"]
    pins = {}
    for requirement in dependencies:
        match = REQUIREMENT.match(requirement.replace(" ", ""))
        if match and match["name"] in PINNED:
            lower = [spec[2:] for spec in match["specifiers"].split(",") if spec.startswith(">=")]
            if len(lower) != 1:
                raise SystemExit(f"{requirement!r}: give it one '>=' lower bound (the version CI installs)")
            pins[match["name"]] = f"{match['name']}=={lower[0]}"
    if missing := [name for name in PINNED if name not in pins]:
        raise SystemExit(f"pyproject.toml declares no range for {', '.join(missing)}")
    return [pins[name] for name in PINNED]


if __name__ == "__main__":
    print("\n".join(lowest_pins(Path(sys.argv[1]))))
