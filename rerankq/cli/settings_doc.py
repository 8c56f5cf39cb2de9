"""docs/configuration.md, generated from the settings class, so the page and the code are one.

Regenerate after changing a setting::

    python -m rerankq.cli.settings_doc > docs/configuration.md

tests/test_docs.py fails when the file and ``render()`` differ.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic.fields import FieldInfo

from rerankq.core.settings import Settings

HEADER = """\
# Configuration

<!-- Generated from rerankq.core.settings.Settings by
     `python -m rerankq.cli.settings_doc > docs/configuration.md`; edit the descriptions there. -->

One settings class (`rerankq.Settings`, pydantic-settings); every field is read from the
environment variable `RERANKQ_<FIELD>`. Workers, producers, the gateway and the tools read the
same variables. Booleans are `true` or `false`; "unset" means the variable is absent.

| variable | default | meaning |
|---|---|---|
"""

FOOTER = """
`HF_HUB_OFFLINE=1` makes model loading use only the local Hugging Face cache and folders.
"""


def render() -> str:
    """The whole of docs/configuration.md."""
    rows = [_row(name, field) for name, field in Settings.model_fields.items()]
    return HEADER + "\n".join(rows) + "\n" + FOOTER


def _row(name: str, field: FieldInfo) -> str:
    variable = f"RERANKQ_{name.upper()}"
    description = _cell(field.description or "")
    return f"| `{variable}` | {_default(field.get_default(call_default_factory=True))} | {description} |"


def _default(value: object) -> str:
    """The default as one would write it in the environment."""
    if value is None or value == []:
        return "unset"
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float):
        text = f"{value:g}"
    elif isinstance(value, dict):
        text = json.dumps(value)
    elif isinstance(value, Path):
        text = _home_as_tilde(value)
    else:
        text = str(value)
    return f"`{text}`"


def _home_as_tilde(path: Path) -> str:
    """``~/...`` for a path under the home folder: the page must not depend on who generated it."""
    try:
        return str(Path("~") / path.relative_to(Path.home()))
    except ValueError:
        return str(path)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


if __name__ == "__main__":
    print(render(), end="")
