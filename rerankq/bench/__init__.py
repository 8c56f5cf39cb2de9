"""``rerankq bench``: rerankq measured against the raw model, the naive Celery recipe and the
deployment-guide recipe, side by side in one run, with real Redis and real worker processes.

workload.py   synthetic jobs with controlled lengths
inprocess.py  the model without the queue (the comparison side)
pipeline.py   jobs through SDK → Redis → worker processes started for the run
scenarios.py  one function per scenario
report.py     tables, JSON lines, docs/BENCHMARKS.md
runner.py     wiring: model or shape, Redis, scenarios, output
"""
