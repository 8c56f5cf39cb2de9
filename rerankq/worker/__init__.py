"""rerankq's worker side: Celery app, rerank task, batcher, model backends. Imports torch."""
