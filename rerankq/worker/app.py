"""The worker-side Celery app: the producer's configuration plus the rerank task."""

from __future__ import annotations

from rerankq.producer.settings import get_settings
from rerankq.producer.transport import make_celery
from rerankq.worker.safe_transport import transport_for

app = make_celery(get_settings(), main="rerankq-worker")
app.conf.imports = ("rerankq.worker.tasks",)
# survive and record messages that are not jobs (see rerankq.worker.rejections, rerankq.worker.safe_transport)
app.conf.broker_transport = transport_for(get_settings().redis_url)
app.conf.worker_consumer = "rerankq.worker.rejections:RejectingConsumer"
