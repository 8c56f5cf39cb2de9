"""What every side of rerankq shares: settings, constants (queue, task and key names), the contract
and wire formats, model registry, catalog and aliases, which workers are alive, Redis clients and
the Celery app both sides build. Imports no other rerankq package (import-linter keeps it so)."""
