"""``rerankq flower``: Flower with rerankq's own Celery configuration and basic auth from settings.

Workers already send task events (Flower's job view) and name their queues
``rerankq.<model>.<lane>``; this starts Flower on the same broker with the same JSON-only
configuration. The credentials go to Flower through its environment (``FLOWER_BASIC_AUTH``),
never on a command line that ``ps`` would show.
"""

from __future__ import annotations

import os

from rerankq.core.celery_app import make_celery
from rerankq.core.listen import is_loopback
from rerankq.core.settings import get_settings


class UnsafeFlower(Exception):
    pass


def run_flower(port: int, host: str, insecure: bool) -> None:
    settings = get_settings()
    auth = settings.flower_basic_auth.get_secret_value() if settings.flower_basic_auth else ""
    if not auth and not insecure and not is_loopback(host):
        raise UnsafeFlower(
            f"refusing to serve Flower on {host} without basic auth: set RERANKQ_FLOWER_BASIC_AUTH "
            "to user:password, bind to 127.0.0.1, or pass --insecure"
        )
    if auth:
        os.environ["FLOWER_BASIC_AUTH"] = auth
    app = make_celery(settings, main="rerankq-flower")
    app.start(["flower", f"--port={port}", f"--address={host}"])  # Flower names it --address
