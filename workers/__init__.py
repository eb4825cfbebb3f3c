"""Celery workers: the three ETA stages as tasks over job ids, the per-process context (sessions, models), the sweeper.

A thin adapter over `eta`: stage arithmetic is `eta.safety.pipeline`, state and results are `eta.store`.
Importing this package is cheap (no torch); `workers.tasks` imports the models lazily.
"""
