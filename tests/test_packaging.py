"""The package as users import it: one namespace with a curated public API, the version from the
package metadata (pyproject.toml's `version`, written nowhere else), and a command whose extra is
missing saying which extra to install. (The built wheel itself is checked outside the checkout by
`make wheel-smoke`.)"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from email.parser import Parser
from importlib import metadata
from pathlib import Path

import pytest
from typer.testing import CliRunner

import rerankq
import rerankq.errors
from rerankq.cli.app import app
from rerankq.producer.client import RerankClient
from rerankq.producer.job_status import JobStatus

ROOT = Path(__file__).resolve().parent.parent
# where a second copy of the version would be read at run or build time; docs/ and CHANGELOG.md
# name past versions on purpose
NO_VERSION_INSIDE = ("rerankq", "ops", ".ci", "Makefile", "docker-compose.yml", "docker-compose.rabbitmq.yml")


@pytest.fixture(scope="module")
def built_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel as the images build it (`pip wheel --no-deps` of pyproject.toml, README.md and
    rerankq/), from a copy: no build/ folder shared with another build in the checkout."""
    work = tmp_path_factory.mktemp("wheel")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, work / name)
    shutil.copytree(ROOT / "rerankq", work / "rerankq", ignore=shutil.ignore_patterns("__pycache__"))
    command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(work / "dist"), "."]
    done = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (wheel,) = (work / "dist").glob("rerankq-*.whl")
    return wheel


def test_the_public_api_is_reexported_from_the_package() -> None:
    for name in rerankq.__all__:
        assert getattr(rerankq, name) is not None, name
    assert rerankq.RerankClient is RerankClient and rerankq.JobStatus is JobStatus
    for name in ("RerankError", "InvalidRequest", "JobFailed", "JobTimeout", "IncompatibleFormat"):
        assert getattr(rerankq, name) is getattr(rerankq.errors, name)
    assert issubclass(rerankq.JobTimeout, rerankq.RerankError)
    with pytest.raises(AttributeError, match="no attribute 'RerankClinet'"):
        rerankq.RerankClinet  # noqa: B018  (a typo is an AttributeError, not a silent None)


def test_the_version_comes_from_the_package_metadata() -> None:
    assert rerankq.__version__ == metadata.version("rerankq")
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"rerankq {rerankq.__version__}"


def test_the_version_is_written_once_in_pyproject(built_wheel: Path) -> None:
    """pyproject.toml's `version` is the one copy: the wheel's metadata, the installed package,
    `rerankq --version` and `rerankq.__version__` all say it (a stale editable install is caught
    here: `make setup` reinstalls when pyproject.toml changes), and no file the code, the images or
    the scripts are built from repeats it."""
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    with zipfile.ZipFile(built_wheel) as wheel:
        (name,) = (name for name in wheel.namelist() if name.endswith(".dist-info/METADATA"))
        wheel_metadata = Parser().parsestr(wheel.read(name).decode())
    assert wheel_metadata["Version"] == version and built_wheel.name.startswith(f"rerankq-{version}-")
    assert metadata.version("rerankq") == version and rerankq.__version__ == version
    done = subprocess.run([sys.executable, "-m", "rerankq", "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == f"rerankq {version}", done.stdout + done.stderr

    literal = re.compile(rb"(?<![\d.])" + re.escape(version.encode()) + rb"(?!\.?\d)")
    files = [ROOT / name for name in NO_VERSION_INSIDE if (ROOT / name).is_file()]
    files += [path for name in NO_VERSION_INSIDE for path in (ROOT / name).rglob("*") if path.is_file()]
    copies = [str(path.relative_to(ROOT)) for path in files if "__pycache__" not in path.parts]
    copies = [name for name in copies if literal.search((ROOT / name).read_bytes())]
    assert copies == [], f"version {version} written outside pyproject.toml: {copies}"


@pytest.mark.parametrize(
    ("command", "missing", "extra"),
    [
        (["worker", "--model", "x"], "torch", "worker"),
        (["gateway"], "fastapi", "gateway"),
        (["flower"], "flower", "flower"),
    ],
)
def test_a_command_without_its_extra_says_which_extra_in_one_line(command: list[str], missing: str, extra: str) -> None:
    # a fresh interpreter where `missing` cannot be imported, as in an install without that extra
    script = f"import sys; sys.modules[{missing!r}] = None; from rerankq.cli import main; main()"
    done = subprocess.run(
        [sys.executable, "-c", script, *command], capture_output=True, text=True, timeout=60, env={"PATH": ""}
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert f'pip install "rerankq[{extra}]"' in done.stderr and missing in done.stderr
