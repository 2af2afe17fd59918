"""The field's metric arithmetic against hand-computed cases and the libraries it stands on."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import correlation as scipy_correlation
from skimage.color import rgb2gray
from skimage.metrics import structural_similarity

from brainldm.evaluation.metrics import correlation_distance, pixcorr, ssim_gray, two_way_identification
from brainldm.linear.stats import rowwise_pearson


def gray_image(values) -> np.ndarray:
    """(1, 3, H, W): the same 2-D array in all three channels."""
    values = np.asarray(values, dtype=float)
    return np.repeat(values[None, None], 3, axis=1)


def test_pixcorr_hand_computed():
    a = gray_image([[1, 2], [3, 4]])
    b = gray_image([[2, 1], [4, 3]])
    # deviations (-1.5, -0.5, 0.5, 1.5) and (-0.5, -1.5, 1.5, 0.5): products sum to 3, squares
    # to 5 each, so r = 3 / 5 (repeating the pairs in three channels changes neither ratio)
    assert pixcorr(a, b)[0] == pytest.approx(0.6, abs=1e-12)
    assert pixcorr(a, 2 * a + 1)[0] == pytest.approx(1.0, abs=1e-12)
    assert pixcorr(a, 5 - a)[0] == pytest.approx(-1.0, abs=1e-12)
    both = pixcorr(np.concatenate([a, a]), np.concatenate([b, a]))
    np.testing.assert_allclose(both, [0.6, 1.0], atol=1e-12)


def test_rowwise_pearson_equals_numpy_and_rejects_unpaired_shapes():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 5, 3, 4, 4))
    expected = [np.corrcoef(x.ravel(), y.ravel())[0, 1] for x, y in zip(a, b)]
    np.testing.assert_allclose(rowwise_pearson(a, b), expected, atol=1e-12)
    with pytest.raises(ValueError, match="same shape"):
        rowwise_pearson(a, b[:, :, :3])


def test_correlation_distance_hand_computed_and_equal_to_scipy():
    a = np.array([[1.0, 2.0, 3.0], [1.0, 0.0, -1.0], [1.0, 2.0, 3.0]])
    b = np.array([[7.0, 9.0, 11.0], [1.0, -2.0, 1.0], [3.0, 2.0, 1.0]])
    # identical up to scale and shift -> 0; zero-mean orthogonal (1 - 0 + -1 = 0) -> 1; reversed -> 2
    np.testing.assert_allclose(correlation_distance(a, b), [0.0, 1.0, 2.0], atol=1e-12)
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((2, 6, 50))
    np.testing.assert_allclose(
        correlation_distance(x, y), [scipy_correlation(u, v) for u, v in zip(x, y)], atol=1e-12
    )


def test_ssim_of_constant_images_is_the_luminance_term():
    # constant images: no variance, no covariance, so SSIM = (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1),
    # C1 = (0.01 * data_range)^2; rgb2gray's weights sum to 1, so gray = the constant
    a = gray_image(np.full((24, 24), 0.5))
    b = gray_image(np.full((24, 24), 0.25))
    c1 = 1e-4
    expected = (2 * 0.5 * 0.25 + c1) / (0.5**2 + 0.25**2 + c1)
    assert ssim_gray(a, b)[0] == pytest.approx(expected, abs=1e-6)
    assert ssim_gray(a, a)[0] == pytest.approx(1.0, abs=1e-12)


def test_ssim_equals_scikit_image_true_2d_call_and_not_the_old_column_average():
    rng = np.random.default_rng(2)
    smooth = np.cumsum(np.cumsum(rng.random((2, 3, 40, 40)), axis=2), axis=3)
    originals = smooth / smooth.max()
    reconstructions = np.clip(originals + rng.normal(0, 0.08, originals.shape), 0, 1)
    ours = ssim_gray(originals, reconstructions)
    for index in range(2):
        gray_o = rgb2gray(originals[index].transpose(1, 2, 0))
        gray_r = rgb2gray(reconstructions[index].transpose(1, 2, 0))
        direct = structural_similarity(
            gray_r, gray_o, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0
        )
        assert ours[index] == pytest.approx(direct, abs=1e-12)
        # scikit-image <= 0.19 with multichannel=True read the gray image's columns as channels:
        # 1-D SSIMs along each column, averaged. That is a different number.
        columns = structural_similarity(
            gray_r,
            gray_o,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1.0,
            channel_axis=1,
        )
        assert abs(ours[index] - columns) > 1e-3
    assert ssim_gray(originals, originals) == pytest.approx([1.0, 1.0], abs=1e-12)
    with pytest.raises(ValueError, match=r"\(n, 3, H, W\)"):
        ssim_gray(originals, reconstructions[:, :, :30])


def test_two_way_identification_hand_computed_with_a_tie():
    g, h = [1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]
    originals = np.array([g, g, h])  # images 0 and 1 are the same picture: their rows tie exactly
    reconstructions = np.array([[1.0, 2.0, 3.0, 5.0], g, h])
    accuracy, per_image = two_way_identification(originals, reconstructions)
    # j0: original 1 ties original 0 (fails), original 2 (r < 0) loses -> 1/2;
    # j1: original 0 ties (fails), original 2 (r = -1) loses -> 1/2; j2: both others at r = -1 -> 1
    np.testing.assert_allclose(per_image, [0.5, 0.5, 1.0])
    assert accuracy == pytest.approx(2 / 3)


def test_two_way_identification_n2_identical_and_shuffled():
    rng = np.random.default_rng(4)
    two = rng.standard_normal((2, 30))
    assert two_way_identification(two, two)[0] == 1.0
    assert two_way_identification(two, two[::-1])[0] == 0.0
    originals = rng.standard_normal((400, 64))
    reconstructions = originals + rng.standard_normal((400, 64))
    assert two_way_identification(originals, reconstructions)[0] > 0.99
    shuffled = reconstructions[rng.permutation(400)]
    # chance: each score is a fraction of 399 comparisons; the mean of 400 such sits near 0.5
    assert abs(two_way_identification(originals, shuffled)[0] - 0.5) < 0.05
