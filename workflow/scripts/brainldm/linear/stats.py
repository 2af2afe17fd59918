"""Pearson correlation, the one implementation of each form the stages use (numpy only).

Paired rows (decoding's per-image r, the pixel and feature metrics), every row against every row
(identification), and per column over rows (the encoding models' per-voxel r).
"""

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


def pearson_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r between every row of ``a`` and every row of ``b``.

    Parameters
    ----------
    a : (n_a, ...) float
    b : (n_b, ...) float
        Everything after the first axis is flattened; both must have the same size per row.

    Returns
    -------
    r : (n_a, n_b) float64
        NaN where a row is constant.
    """
    a = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    b = np.asarray(b, dtype=np.float64).reshape(len(b), -1)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sizes differ: {a.shape[1]} vs {b.shape[1]}")
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    na = np.sqrt((a * a).sum(1))
    nb = np.sqrt((b * b).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a @ b.T) / np.outer(na, nb)


def columnwise_pearson(predicted: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """Pearson r per column (voxel) over rows (images).

    Parameters
    ----------
    predicted, measured : (n_images, n_voxels) float

    Returns
    -------
    r : (n_voxels,) float64
        NaN where a column is constant.
    """
    a = np.asarray(predicted, dtype=np.float64)
    b = np.asarray(measured, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"predicted {a.shape} and measured {b.shape} must be the same (n_images, n_voxels)")
    a = a - a.mean(0)
    b = b - b.mean(0)
    denom = np.sqrt((a * a).sum(0) * (b * b).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (a * b).sum(0) / np.where(denom > 0, denom, 1.0), np.nan)
