"""The producer side stays light and its settings refuse unsafe combinations."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from rerankq import Settings


def test_importing_and_using_the_sdk_never_imports_torch(redis_server) -> None:
    script = (
        "import sys; import rerankq; from rerankq import RerankClient, AsyncRerankClient, RerankResult; "
        "RerankClient(sys.argv[1]).submit('q', ['d'], model='bge-reranker-v2-m3'); "
        "heavy = ('torch', 'transformers', 'sentence_transformers', 'rerankq.worker', 'rerankq.gateway', 'fastapi'); "
        "print([m for m in heavy if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", script, redis_server.url], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_visibility_timeout_must_outlast_the_job_time_limit() -> None:
    with pytest.raises(ValidationError, match="visibility_timeout_s"):
        Settings(job_time_limit_s=600, visibility_timeout_s=600)
    assert Settings(job_time_limit_s=600, visibility_timeout_s=601).visibility_timeout_s == 601


def test_settings_come_from_rerankq_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RERANKQ_MAX_DOCUMENTS", "7")
    monkeypatch.setenv("RERANKQ_DEFAULT_MODEL", "my-model")
    settings = Settings()
    assert (settings.max_documents, settings.default_model) == (7, "my-model")
