"""The package as users import it: one namespace with a curated public API, the version from the
package metadata, and a command whose extra is missing saying which extra to install.
(The built wheel itself is checked outside the checkout by `make wheel-smoke`.)"""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata

import pytest
from typer.testing import CliRunner

import rerankq
import rerankq.errors
from rerankq.cli.app import app
from rerankq.producer.client import RerankClient
from rerankq.producer.job_status import JobStatus


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
