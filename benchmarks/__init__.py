"""Benchmarks, run from the repository root: ``python -m benchmarks.NAME``.

Figures are medians over repeats, reported with the machine, and compared as ratios
against a baseline measured in the same run.
"""
