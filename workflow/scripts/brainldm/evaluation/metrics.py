"""Arithmetic of the field's reconstruction metrics (Brain-Diffuser, MindEye, MindEye2).

Per-image metrics, each returning one value per image pair (original ``i``, reconstruction ``i``):

- :func:`pixcorr`: Pearson r between the flattened RGB pixels (PixCorr, higher is better);
- :func:`ssim_gray`: true 2-D SSIM of the grayscale images (``skimage.color.rgb2gray``, then
  ``skimage.metrics.structural_similarity`` with gaussian weights, sigma 1.5, population
  covariance, data range 1; SSIM, higher is better);
- :func:`correlation_distance`: 1 - Pearson r between feature vectors (EffNet-B and SwAV, lower
  is better), as ``scipy.spatial.distance.correlation``.

The two-way identification of the feature metrics (AlexNet(2), AlexNet(5), Inception, CLIP) is
:func:`brainldm.evaluation.identification.two_way_identification`, re-exported here.
"""

from __future__ import annotations

import numpy as np

from brainldm.evaluation.identification import two_way_identification
from brainldm.linear.stats import rowwise_pearson

__all__ = ["correlation_distance", "pixcorr", "ssim_gray", "two_way_identification"]


def pixcorr(originals: np.ndarray, reconstructions: np.ndarray) -> np.ndarray:
    """PixCorr per image: Pearson r between all pixels of original and reconstruction.

    Parameters
    ----------
    originals, reconstructions : (n, 3, H, W) float
        Images at the metric's resolution (425 px in the field's protocols).

    Returns
    -------
    r : (n,) float64
    """
    return rowwise_pearson(originals, reconstructions)


def correlation_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1 - Pearson r between paired feature rows (``scipy.spatial.distance.correlation``).

    Parameters
    ----------
    a, b : (n, d) float
        Features of the originals and of their reconstructions.

    Returns
    -------
    distance : (n,) float64
        0 for identical rows, 1 for uncorrelated ones, 2 for anti-correlated ones.
    """
    return 1.0 - rowwise_pearson(a, b)


def ssim_gray(originals: np.ndarray, reconstructions: np.ndarray) -> np.ndarray:
    """SSIM per image on grayscale versions, as true 2-D SSIM.

    Parameters
    ----------
    originals, reconstructions : (n, 3, H, W) float in [0, 1]
        Images at the metric's resolution (425 px in the field's protocols).

    Returns
    -------
    ssim : (n,) float64

    Notes
    -----
    Both images go through ``skimage.color.rgb2gray`` and then
    ``structural_similarity(rec, orig, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1.0)`` on the 2-D arrays. The field's published
    code passed ``multichannel=True`` on these 2-D arrays, which scikit-image <= 0.19 read as a
    stack of 1-D columns; from 0.20 on (pinned here) the call is true 2-D SSIM.
    """
    from skimage.color import rgb2gray
    from skimage.metrics import structural_similarity

    originals = np.asarray(originals, dtype=np.float64)
    reconstructions = np.asarray(reconstructions, dtype=np.float64)
    if originals.shape != reconstructions.shape or originals.ndim != 4 or originals.shape[1] != 3:
        raise ValueError(
            f"SSIM needs paired (n, 3, H, W) images of one shape, got {originals.shape} and "
            f"{reconstructions.shape}"
        )
    values = np.empty(len(originals))
    for index, (original, reconstruction) in enumerate(zip(originals, reconstructions)):
        values[index] = structural_similarity(
            rgb2gray(reconstruction.transpose(1, 2, 0)),
            rgb2gray(original.transpose(1, 2, 0)),
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1.0,
        )
    return values
