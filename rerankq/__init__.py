"""The ``rerankq`` command line. The SDK lives in ``producer``; the worker in ``worker``."""
