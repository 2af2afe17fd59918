"""Reliability of single-trial betas: split-half (test-retest) correlation and noise ceiling.

For each voxel, the Pearson correlation across test images between the betas of two
presentations of the same image, for each pair of presentations (1st-2nd, 1st-3rd, 2nd-3rd) over
the images shown at least that often, averaged with weights = number of images. This split-half
reliability ``r`` of single trials estimates the fraction of a trial's variance that is signal,
so NSD's noise-ceiling SNR is ``ncsnr**2 = r / (1 - r)`` and the noise ceiling of the averaged
test betas, in percent of variance explainable, is

    NC = 100 * ncsnr**2 / (ncsnr**2 + mean_i(1 / n_i))   (r <= 0 gives 0)

where ``n_i`` is the number of repeats averaged for test image ``i`` (all images with 3 repeats:
``NC = 100 * 3r / (1 + 2r)``, the Spearman-Brown formula).
"""

from __future__ import annotations

import numpy as np


def split_half_reliability(
    repeats: np.ndarray, n_repeats: np.ndarray, min_images: int = 3, block: int = 1024
) -> tuple[np.ndarray, int]:
    """Per-voxel test-retest reliability of single trials across test images.

    Parameters
    ----------
    repeats : (n_images, max_repeats, n_voxels) float32
        Betas of each presentation of each test image (unused slots ignored).
    n_repeats : (n_images,) int
        Presentations of each image.
    min_images : int
        Fewest images a pair of presentations needs to count.

    Returns
    -------
    r : (n_voxels,) float64
        Weighted mean over presentation pairs of the Pearson correlation across images; NaN where
        no pair has ``min_images`` images or the voxel is constant.
    n_images : int
        Images with at least two presentations.
    """
    n_images, max_repeats, n_voxels = repeats.shape
    r = np.full(n_voxels, np.nan)
    pairs = [(a, b) for a in range(max_repeats) for b in range(a + 1, max_repeats)]
    for start in range(0, n_voxels, block):
        cols = slice(start, min(start + block, n_voxels))
        total = np.zeros(cols.stop - start)
        weight = np.zeros(cols.stop - start)
        for a, b in pairs:
            rows = n_repeats > b
            n = int(rows.sum())
            if n < min_images:
                continue
            x = repeats[rows, a, cols].astype(np.float64)
            y = repeats[rows, b, cols].astype(np.float64)
            x -= x.mean(axis=0)
            y -= y.mean(axis=0)
            denominator = np.sqrt((x * x).sum(axis=0) * (y * y).sum(axis=0))
            valid = denominator > 0
            corr = np.divide((x * y).sum(axis=0), denominator, out=np.zeros_like(denominator), where=valid)
            total += np.where(valid, n * corr, 0.0)
            weight += np.where(valid, n, 0.0)
        r[cols] = np.divide(total, weight, out=np.full_like(total, np.nan), where=weight > 0)
    return r, int((n_repeats >= 2).sum())


def noise_ceiling(r: np.ndarray, n_repeats: np.ndarray) -> np.ndarray:
    """Noise ceiling (percent of variance explainable) of repeat-averaged betas.

    ``NC = 100 * s / (s + mean(1 / n_repeats))`` with ``s = r / (1 - r)`` (NSD's ncsnr squared);
    ``r <= 0`` gives 0, ``r >= 1`` gives 100, NaN stays NaN.

    Parameters
    ----------
    r : (n_voxels,) float64 split-half reliability of single trials
    n_repeats : (n_images,) int, repeats averaged per test image
    """
    counts = np.asarray(n_repeats, dtype=np.float64)
    mean_inverse = float(np.mean(1.0 / counts[counts > 0])) if (counts > 0).any() else np.nan
    r = np.asarray(r, dtype=np.float64)
    clipped = np.clip(r, 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        snr2 = clipped / (1.0 - clipped)
        nc = np.where(clipped >= 1.0, 100.0, 100.0 * snr2 / (snr2 + mean_inverse))
    return np.where(np.isnan(r), np.nan, nc)
