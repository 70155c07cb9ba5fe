"""Benchmarks (``python bench/<name>.py`` from the repository root) and their tools.

A package so that tests and scripts import the shared tools as ``bench.loadgen``; it is not
installed with loraplex (``pyproject.toml`` packages only ``shared`` and ``services``).
"""
