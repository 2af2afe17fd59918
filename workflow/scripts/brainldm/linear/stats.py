"""Pearson correlation of paired rows (numpy only: shared by decoding and evaluation)."""

from __future__ import annotations

import numpy as np


def rowwise_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r between row ``i`` of ``a`` and row ``i`` of ``b``, for every ``i``.

    Parameters
    ----------
    a, b : (n, ...) float
        Everything after the first axis is flattened; both must have the same shape.

    Returns
    -------
    r : (n,) float64
        NaN where a row is constant.
    """
    a = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    b = np.asarray(b, dtype=np.float64).reshape(len(b), -1)
    if a.shape != b.shape:
        raise ValueError(f"paired rows must have the same shape: {a.shape} vs {b.shape}")
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))
