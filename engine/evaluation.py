"""`engine.evaluation`, the public name of the evaluation statistics, which live in engine/theory/statistics.py
(see docs/methods/)."""

from engine.theory.statistics import *  # noqa: F401, F403
