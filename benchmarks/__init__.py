"""asv suites for decomp (see README.md). The grid is ``decomp.experiments.catalog``; the shared setup is in
``common.py``. ``benchmarks/pytest/`` (no ``__init__.py``) is the pytest-benchmark suite, which
asv's discovery does not import."""
