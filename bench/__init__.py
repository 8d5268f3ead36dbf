"""Benchmarks of the generation flow (issue 9): ``make bench`` runs :mod:`bench.run`."""
