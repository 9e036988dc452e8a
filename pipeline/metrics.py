"""Arithmetic on accuracies shared by scoring (pipeline/evaluation.py) and aggregation (pipeline/results.py), kept
apart so the report stage does not import the fine-tuning methods."""

from __future__ import annotations

import math


def harmonic_mean(a: float, b: float) -> float:
    """H of two accuracies: 0 if either is 0, NaN if either is NaN."""
    if math.isnan(a) or math.isnan(b):
        return float("nan")
    if a <= 0.0 or b <= 0.0:
        return 0.0
    return 2.0 * a * b / (a + b)
