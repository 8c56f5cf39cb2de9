"""The worker-side Celery app: the producer's configuration plus the rerank task."""

from __future__ import annotations

from producer.settings import get_settings
from producer.transport import make_celery

app = make_celery(get_settings(), main="rerankq-worker")
app.conf.imports = ("worker.tasks",)
