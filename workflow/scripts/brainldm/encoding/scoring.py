"""Per-voxel scores of encoding models: Pearson r, its one-sided p and BH-FDR q, R2, unique variance.

- ``r``: Pearson correlation over the test images between predicted and measured responses.
- ``p``: one-sided p of ``r > 0`` under the null of two independent Gaussian vectors of the test
  length ``N``: ``t = r sqrt((N - 2) / (1 - r^2))`` from Student's t with ``N - 2`` dof.
- ``q``: Benjamini-Hochberg adjusted p over the voxels (``scipy.stats.false_discovery_control``).
- ``R2``: ``1 - sum((y - y_hat)^2) / sum((y - mean(y))^2)`` over test images (himalaya's
  ``r2_score``).
- unique variance of space A in the joint model A+B: ``R2(A+B) - R2(B)`` (variance partitioning);
  shared: ``R2(A+B) - unique_A - unique_B``.
"""

from __future__ import annotations

import numpy as np

# Per-voxel r over the test images; Pearson lives in one module for every stage.
from brainldm.linear.stats import columnwise_pearson as voxel_correlation

__all__ = [
    "voxel_correlation",
    "correlation_p_values",
    "fdr_q_values",
    "voxel_r2",
    "split_correlation",
    "unique_variance",
    "shared_variance",
]


def _columns64(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"predicted {a.shape} and measured {b.shape} must be the same (n_images, n_voxels)")
    return a, b


def correlation_p_values(r: np.ndarray, n_images: int) -> np.ndarray:
    """One-sided p of ``r > 0`` (t with ``n_images - 2`` dof): (n_voxels,) float64; NaN r gives 1."""
    from scipy import stats

    if n_images < 3:
        raise ValueError(f"p values of r need at least 3 test images, got {n_images}")
    r = np.asarray(r, dtype=np.float64)
    dof = n_images - 2
    clipped = np.clip(np.nan_to_num(r, nan=0.0), -1 + 1e-15, 1 - 1e-15)
    t = clipped * np.sqrt(dof / (1.0 - clipped**2))
    p = stats.t.sf(t, dof)
    return np.where(np.isnan(r), 1.0, p)


def fdr_q_values(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q values over voxels: (n_voxels,) float64."""
    from scipy import stats

    p = np.asarray(p, dtype=np.float64)
    if p.size == 0:
        return p.copy()
    return stats.false_discovery_control(p, method="bh")


def voxel_r2(predicted: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """Coefficient of determination per voxel: (n_voxels,) float64 (NaN where y is constant)."""
    a, b = _columns64(predicted, measured)
    total = ((b - b.mean(0)) ** 2).sum(0)
    residual = ((b - a) ** 2).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 1.0 - residual / np.where(total > 0, total, 1.0), np.nan)


def split_correlation(split_predictions: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """himalaya's ``correlation_score_split``: each space's share of r, (n_spaces, n_voxels) float64.

    The shares sum to the joint model's r.
    """
    from himalaya.backend import get_backend, set_backend
    from himalaya.scoring import correlation_score_split

    previous = get_backend().name
    backend = set_backend("numpy")
    try:
        scores = correlation_score_split(
            np.asarray(measured, dtype=np.float64), np.asarray(split_predictions, dtype=np.float64)
        )
        return np.asarray(backend.to_numpy(scores), dtype=np.float64)
    finally:
        set_backend(previous)


def unique_variance(r2_joint: np.ndarray, r2_without: np.ndarray) -> np.ndarray:
    """Unique variance of a space: ``R2(A+B) - R2(model without it)``, per voxel."""
    return np.asarray(r2_joint, dtype=np.float64) - np.asarray(r2_without, dtype=np.float64)


def shared_variance(r2_joint: np.ndarray, r2_a: np.ndarray, r2_b: np.ndarray) -> np.ndarray:
    """Shared variance ``R2(A+B) - unique_A - unique_B = R2(A) + R2(B) - R2(A+B)``."""
    return (
        np.asarray(r2_a, dtype=np.float64)
        + np.asarray(r2_b, dtype=np.float64)
        - np.asarray(r2_joint, dtype=np.float64)
    )
