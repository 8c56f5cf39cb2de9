"""The docs cannot drift from the code: docs/configuration.md is the settings class rendered, the
gateway's error table is the gateway's own, every JSON and TOML block parses, and every Python
example in README.md and docs/*.md runs against this session's Redis, workers and gateway.

A Python block fenced ```python no-test is skipped (a sentence beside it must say why). In a
block that talks to the gateway, ``http://localhost:8080`` and ``my-secret-key`` stand for the
test gateway's address and key. A block fenced ```json NAME (e.g. ```json corpus.jsonl) is
written to the examples' working folder as NAME, so the examples can read it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path

import pytest

from rerankq.cli import settings_doc
from rerankq.core.registry import ModelManifest
from rerankq.core.settings import Settings
from rerankq.gateway.keys import KeysFile

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DOCS_GATEWAY_URL = "http://localhost:8080"
DOCS_API_KEY = "my-secret-key"
EXAMPLE_TIMEOUT_S = 120


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    info: list[str]  # the fence's words: language, then flags or a file name
    code: str

    @property
    def language(self) -> str:
        return self.info[0] if self.info else ""

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """Every fenced block of a markdown page (fences are not nested in these pages)."""
    found, opened, lines = [], None, []
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        fence = line.strip()
        if opened is None and fence.startswith("```"):
            opened, lines = (number, fence[3:].split()), []
        elif opened is not None and fence == "```":
            found.append(Block(page, opened[0], opened[1], "\n".join(lines) + "\n"))
            opened = None
        elif opened is not None:
            lines.append(line)
    assert opened is None, f"{page.name}: the block opened at line {opened[0]} is never closed"
    return found


ALL_BLOCKS = [block for page in PAGES for block in blocks(page)]
PYTHON = [block for block in ALL_BLOCKS if block.language == "python"]
DATA = [block for block in ALL_BLOCKS if block.language in ("json", "toml")]
FILES = {block.info[1]: block.code for block in ALL_BLOCKS if block.language == "json" and len(block.info) > 1}


def test_configuration_doc_is_generated_from_the_settings() -> None:
    page = ROOT / "docs" / "configuration.md"
    assert page.read_text(encoding="utf-8") == settings_doc.render(), (
        "docs/configuration.md differs from the settings class; regenerate it with "
        "`python -m rerankq.cli.settings_doc > docs/configuration.md` (edit the descriptions in "
        "rerankq/core/settings.py, never the page)"
    )


def test_every_setting_is_described() -> None:
    undescribed = [name for name, field in Settings.model_fields.items() if not field.description]
    assert not undescribed, f"give these settings a Field(description=...): {undescribed}"


@pytest.mark.parametrize(
    ("page", "name", "module"),
    [("gateway.md", "errors", "rerankq.gateway.errors"), ("reliability.md", "hooks", "rerankq.worker.private_hooks")],
)
def test_generated_tables_are_the_codes_own(page: str, name: str, module: str) -> None:
    """The gateway's error table (its RULES) and the worker's private hooks (its HOOKS)."""
    text = (ROOT / "docs" / page).read_text(encoding="utf-8")
    start = f"<!-- {name}: {module}.markdown_table() -->\n"
    table = text[text.index(start) + len(start) : text.index(f"\n<!-- /{name} -->")]
    assert table == import_module(module).markdown_table(), (
        f"the {name} table in docs/{page} differs from {module}; paste the output of "
        f"`python -c 'from {module} import markdown_table; print(markdown_table())'` between its markers"
    )


def test_the_layout_page_names_every_module() -> None:
    """docs/layout.md's tree holds each package's modules, no more and no fewer."""
    tree = blocks(ROOT / "docs" / "layout.md")[1].code.splitlines()
    listed: dict[str, set[str]] = {}
    for line in tree:
        if line.startswith("  ") and not line.startswith("    ") and line.split()[0].endswith("/"):
            package = listed.setdefault(line.split()[0].rstrip("/"), set())
        elif line.startswith("    ") and line.split()[0].endswith(".py"):
            package.add(line.split()[0])
    on_disk = {
        folder.name: {module.name for module in folder.glob("*.py") if module.name != "__init__.py"}
        for folder in (ROOT / "rerankq").iterdir()
        if (folder / "__init__.py").is_file()
    }
    assert {name: modules for name, modules in listed.items() if modules} == on_disk  # manifests/: data only


def test_the_readme_opens_with_what_rerankq_is_and_a_short_quickstart() -> None:
    """The front door: its first screen (to the end of the quickstart) says what rerankq is and
    serves a model with one command in ten lines at most; internals and layout live in docs/."""
    readme = (ROOT / "README.md").read_text()
    quickstart = blocks(ROOT / "README.md")[0]
    first_screen = readme[: readme.index(quickstart.code) + len(quickstart.code)].splitlines()
    assert len(first_screen) <= 25 and len(quickstart.code.splitlines()) <= 10
    assert "rerankq serve --model" in quickstart.code and "curl" in quickstart.code
    assert "┌" not in readme and "▼" not in readme and "## Layout" not in readme  # no diagram, no layout
    assert (ROOT / "docs" / "architecture.md").is_file() and (ROOT / "docs" / "contributing.md").is_file()


def test_the_pages_are_found() -> None:
    assert len(PAGES) > 5 and PYTHON and DATA, "README.md and docs/*.md should hold examples"


@pytest.mark.parametrize("block", DATA, ids=lambda block: block.name)
def test_data_blocks_parse(block: Block) -> None:
    """A JSON block is one document or JSON Lines; a TOML block is a model manifest, or a keys
    file where it lists ``[[keys]]``."""
    if block.language == "toml":
        parsed = tomllib.loads(block.code)
        (KeysFile if "keys" in parsed else ModelManifest).model_validate(parsed)
        return
    try:
        json.loads(block.code)
    except json.JSONDecodeError:
        for line in filter(str.strip, block.code.splitlines()):
            json.loads(line)


@pytest.mark.slow
@pytest.mark.parametrize("block", PYTHON, ids=lambda block: block.name)
def test_python_examples_run(block: Block, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    if "no-test" in block.info:
        pytest.skip("fenced `python no-test`: the page says why it cannot run here")
    redis_url = request.getfixturevalue("redis_server").url
    request.getfixturevalue("workers")
    code = block.code
    if DOCS_GATEWAY_URL in code:
        from gateway_support import PLAIN_KEY

        gateway = request.getfixturevalue("gateway")
        code = code.replace(DOCS_GATEWAY_URL, gateway.url).replace(DOCS_API_KEY, PLAIN_KEY)
    for name, content in FILES.items():
        (tmp_path / name).write_text(content, encoding="utf-8")
    env = os.environ | {
        "RERANKQ_REDIS_URL": redis_url,
        "RERANKQ_DEFAULT_MODEL": "all-minilm-l6-v2",
        "HF_HUB_OFFLINE": "1",
        "HAYSTACK_TELEMETRY_ENABLED": "False",
    }
    ran = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=EXAMPLE_TIMEOUT_S,
    )
    assert ran.returncode == 0, f"the example at {block.name} failed:\n{ran.stdout}\n{ran.stderr}"
