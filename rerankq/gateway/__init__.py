"""rerankq's HTTP gateway: Cohere/Jina/TEI-compatible rerank and an async jobs API over the queue."""

from rerankq.gateway.app import create_app

__all__ = ["create_app"]
