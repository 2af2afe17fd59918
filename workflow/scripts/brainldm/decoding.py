"""Linear decoders from fMRI to Stable Diffusion features (the paper's ridge regression).

The paper fits ``himalaya.ridge.RidgeCV`` (solver ``svd``, alphas 1e-6 ... 1, 5-fold ``KFold``
without shuffling over the training trials, one alpha per target, ``fit_intercept=False``) on
voxels standardised with the training trials' mean and std, targets left raw. The solver is
:func:`brainldm.linear.ridge.ridge_cv_predict` (or himalaya itself with ``decoding.solver: himalaya``);
this module prepares its inputs from the prepared fMRI and the features, and writes the decoded
features and their scores.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from brainldm.core.atomic import save_npy, write_text
from brainldm.features.rows import feature_shape, load_feature_rows
from brainldm.fmri.load import load_roi_betas, standardize
from brainldm.linear.ops import resolve_backend
from brainldm.linear.ridge import PAPER_ALPHAS, PAPER_N_FOLDS, himalaya_ridge_cv_predict, ridge_cv_predict
from brainldm.linear.stats import rowwise_pearson

LOGGER = logging.getLogger("brainldm.decoding")


# --------------------------------------------------------------------------------------------
# paper-level decoder
# --------------------------------------------------------------------------------------------
@dataclass
class DecoderFit:
    """A fitted decoder's outputs.

    Attributes
    ----------
    predictions : (n_test, n_targets) float32
    best_alphas : (n_targets,) float64
    cv_scores : (n_targets,) float64
    x_mean, x_std : (n_voxels,) float64
        Standardisation fitted on the training trials (std of constant voxels set to 1).
    y_mean : (n_targets,) float64 or None
        Training-trial mean of the targets when ``center_targets``.
    """

    predictions: np.ndarray
    best_alphas: np.ndarray
    cv_scores: np.ndarray
    x_mean: np.ndarray
    x_std: np.ndarray
    y_mean: np.ndarray | None = None
    filter_rank: list = field(default_factory=list)


def fit_decoder(
    X_train: np.ndarray,
    Y: np.ndarray,
    X_test: np.ndarray,
    *,
    rows: np.ndarray | None = None,
    alphas: Sequence[float] = PAPER_ALPHAS,
    n_folds: int = PAPER_N_FOLDS,
    center_targets: bool = False,
    backend: str = "numpy",
    n_targets_batch: int | None = 8192,
    dtype: str = "float32",
    solver: str = "eigen",
    progress: bool = False,
) -> DecoderFit:
    """The paper's decoder: standardise X on the train trials, RidgeCV, predict the test rows.

    Parameters
    ----------
    X_train : (n_train_trials, n_voxels) float
        Single-trial betas in trial (session) order.
    Y : (n_train_trials, n_targets) or (n_images, n_targets) float
        Targets per trial, or a per-image table indexed by ``rows``.
    X_test : (n_test, n_voxels) float
        Test betas (averaged over repeats).
    rows : (n_train_trials,) int, optional
        Row of ``Y`` for each training trial.
    alphas, n_folds : see :func:`ridge_cv_predict`.
    center_targets : bool
        Departure from the paper (default off): subtract the training-trial mean of each target
        before fitting and add it back to the predictions. The paper leaves Y raw, so with no
        intercept its predictions are shrunk toward zero.
    backend, n_targets_batch, dtype, progress : see :func:`ridge_cv_predict`.
    solver : {"eigen", "himalaya"}
        ``eigen`` = :func:`ridge_cv_predict` (default); ``himalaya`` = the paper's own call,
        :func:`himalaya_ridge_cv_predict` (same model, slower).
    """
    if solver not in {"eigen", "himalaya"}:
        raise ValueError(f"decoding solver {solver!r} is unknown; expected 'eigen' or 'himalaya'")
    xs, xt, mean, std = standardize(X_train, X_test, dtype=dtype)
    y_mean = target_mean(Y, np.arange(xs.shape[0]) if rows is None else rows) if center_targets else None
    if solver == "himalaya":
        Y_fit = Y if y_mean is None else (np.asarray(Y, dtype=np.float64) - y_mean).astype(dtype)
        result = himalaya_ridge_cv_predict(
            xs,
            Y_fit,
            xt,
            alphas=alphas,
            n_folds=n_folds,
            rows=rows,
            backend=backend,
            n_targets_batch=n_targets_batch,
        )
    else:
        result = ridge_cv_predict(
            xs,
            Y,
            xt,
            alphas=alphas,
            n_folds=n_folds,
            rows=rows,
            backend=backend,
            n_targets_batch=n_targets_batch,
            dtype=dtype,
            target_offset=y_mean,
            progress=progress,
        )
    predictions = result.predictions
    if y_mean is not None:
        predictions = (predictions + y_mean).astype(np.float32)
    return DecoderFit(
        predictions, result.best_alphas, result.cv_scores, mean, std, y_mean, result.filter_rank
    )


def target_mean(Y: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Mean over training trials of the targets: (n_targets,) float64.

    ``Y`` is (n_rows, n_targets) and ``rows`` (n_trials,) the row of each trial (an image seen
    three times counts three times). Computed in column blocks, in float64.
    """
    rows = np.asarray(rows)
    weights = np.bincount(rows, minlength=Y.shape[0]).astype(np.float64) / len(rows)
    mean = np.zeros(Y.shape[1])
    step = 4096
    for start in range(0, Y.shape[1], step):
        mean[start : start + step] = weights @ np.asarray(Y[:, start : start + step], dtype=np.float64)
    return mean


def per_image_correlation(predicted: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Pearson r across feature dimensions, per image (the paper's printed score).

    Parameters
    ----------
    predicted, true : (n_images, ...) float
        Same shapes; everything after the first axis is flattened.

    Returns
    -------
    r : (n_images,) float64
        NaN where either row is constant.
    """
    return rowwise_pearson(predicted, true)


# --------------------------------------------------------------------------------------------
# files (the rule's inputs and outputs)
# --------------------------------------------------------------------------------------------
def shuffled_rows(rows: np.ndarray, seed: int) -> np.ndarray:
    """Control: reassign the training images at random (a permutation of the distinct images).

    Every trial of image ``u`` gets the features of image ``perm(u)``: the brain-feature pairing
    is destroyed while the design (repeats, feature statistics) is kept.
    """
    rows = np.asarray(rows)
    perm = np.random.default_rng(seed).permutation(rows.max() + 1)
    return perm[rows]


def decode_feature(
    fmri_dir: str | Path,
    features_dir: str | Path,
    feature: str,
    rois: Sequence[str],
    out_dir: str | Path,
    *,
    alphas: Sequence[float] = PAPER_ALPHAS,
    n_folds: int = PAPER_N_FOLDS,
    center_targets: bool = False,
    backend: str = "auto",
    n_targets_batch: int | None = 8192,
    shuffle_control: bool = False,
    solver: str = "eigen",
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Fit one subject's decoder for one feature and write its outputs into ``out_dir``.

    Writes ``{feature}_pred.npy`` (n_test, *feature_shape) float32 (rows = test_images.tsv),
    ``{feature}_nsd_ids.npy`` (n_test,) int64, ``{feature}_alphas.npy`` and
    ``{feature}_cv_scores.npy`` (n_targets,) float64, ``{feature}_test_r.tsv`` (row, nsdId, r)
    and ``{feature}.json`` (summary and settings). With ``shuffle_control`` a second fit on
    randomly reassigned training images gives ``mean_test_r_shuffled`` in the JSON.

    Returns the summary dict.
    """
    t0 = time.time()
    out_dir = Path(out_dir)
    x_train, x_test, train_ids, test_ids = load_roi_betas(fmri_dir, rois)
    images, rows = np.unique(train_ids, return_inverse=True)
    Y = load_feature_rows(features_dir, feature, images)
    Y_test = load_feature_rows(features_dir, feature, test_ids)
    shape = feature_shape(features_dir, feature)
    backend_used = resolve_backend(backend, key="decoding.backend")
    LOGGER.info(
        "decoding %s from %s: %d train trials (%d images), %d test images, %d voxels, %d targets, backend %s",
        feature,
        "+".join(rois),
        len(rows),
        len(images),
        len(test_ids),
        x_train.shape[1],
        Y.shape[1],
        backend_used,
    )
    fit = fit_decoder(
        x_train,
        Y,
        x_test,
        rows=rows,
        alphas=alphas,
        n_folds=n_folds,
        center_targets=center_targets,
        backend=backend_used,
        n_targets_batch=n_targets_batch,
        solver=solver,
        progress=progress,
    )
    r = per_image_correlation(fit.predictions, Y_test)
    # Deviations from the training mean. With X standardised and no intercept, the raw fit
    # predicts exactly the deviations (X.T 1 = 0, so X.T Y = X.T (Y - mean)); the centred fit
    # adds the mean back, which is removed again here.
    mean = target_mean(Y, rows)
    truth_dev = np.asarray(Y_test, dtype=np.float64) - mean

    def deviations(predictions):
        return predictions - mean if center_targets else predictions

    r_centered = per_image_correlation(deviations(fit.predictions), truth_dev)
    summary = {
        "feature": feature,
        "rois": list(rois),
        "n_train": int(len(rows)),
        "n_train_images": int(len(images)),
        "n_test": int(len(test_ids)),
        "n_voxels": int(x_train.shape[1]),
        "n_targets": int(Y.shape[1]),
        "mean_test_r": float(np.nanmean(r)),
        "mean_test_r_centered": float(np.nanmean(r_centered)),
        "median_alpha": float(np.median(fit.best_alphas)),
        "alphas": [float(a) for a in alphas],
        "n_folds": int(n_folds),
        "center_targets": bool(center_targets),
        "solver": solver,
        "backend": backend_used,
        "filter_rank": fit.filter_rank,
        "mean_test_r_shuffled": None,
        "mean_test_r_centered_shuffled": None,
    }
    if shuffle_control:
        ctrl = fit_decoder(
            x_train,
            Y,
            x_test,
            rows=shuffled_rows(rows, seed),
            alphas=alphas,
            n_folds=n_folds,
            center_targets=center_targets,
            backend=backend_used,
            n_targets_batch=n_targets_batch,
            solver=solver,
            progress=progress,
        )
        summary["mean_test_r_shuffled"] = float(np.nanmean(per_image_correlation(ctrl.predictions, Y_test)))
        summary["mean_test_r_centered_shuffled"] = float(
            np.nanmean(per_image_correlation(deviations(ctrl.predictions), truth_dev))
        )
    save_npy(out_dir / f"{feature}_pred.npy", fit.predictions.reshape((len(test_ids),) + shape))
    save_npy(out_dir / f"{feature}_nsd_ids.npy", test_ids)
    save_npy(out_dir / f"{feature}_alphas.npy", fit.best_alphas)
    save_npy(out_dir / f"{feature}_cv_scores.npy", fit.cv_scores)
    lines = ["row\tnsdId\tr"] + [f"{i}\t{nid}\t{val:.6f}" for i, (nid, val) in enumerate(zip(test_ids, r))]
    write_text(out_dir / f"{feature}_test_r.tsv", "\n".join(lines) + "\n")
    write_text(out_dir / f"{feature}.json", json.dumps(summary, indent=2) + "\n")
    LOGGER.info(
        "%s: mean test r %.4f (shuffled control %s), median alpha %g, %.1f s",
        feature,
        summary["mean_test_r"],
        summary["mean_test_r_shuffled"],
        summary["median_alpha"],
        time.time() - t0,
    )
    return summary


#: Columns of the summary table: the brief's eight, then diagnostics. ``mean_test_r`` is the
#: paper's score (per test image, Pearson r across feature dimensions; for c it is dominated by
#: the pattern common to all images, which the paper's no-intercept fit does not predict);
#: ``mean_test_r_centered`` is the same r between the predicted and true deviations from the
#: training-trial mean of the features (the raw fit predicts exactly these deviations);
#: ``*_shuffled`` are those of the control decoder (empty unless decoding.shuffle_control).
SUMMARY_COLUMNS = (
    "subject",
    "feature",
    "rois",
    "n_train",
    "n_test",
    "n_voxels",
    "mean_test_r",
    "median_alpha",
    "mean_test_r_centered",
    "mean_test_r_shuffled",
    "mean_test_r_centered_shuffled",
)


def summarize_decoding(
    json_paths: Sequence[str | Path], subjects: Sequence[int], out_path: str | Path
) -> None:
    """Collect per-(subject, feature) JSON summaries into one TSV (columns ``SUMMARY_COLUMNS``)."""
    if len(json_paths) != len(subjects):
        raise ValueError("summarize_decoding needs one subject per JSON file")
    lines = ["\t".join(SUMMARY_COLUMNS)]

    def number(value):
        return "" if value is None else f"{value:.6f}"

    for path, subject in zip(json_paths, subjects):
        info = json.loads(Path(path).read_text())
        lines.append(
            "\t".join(
                [
                    str(subject),
                    info["feature"],
                    "+".join(info["rois"]),
                    str(info["n_train"]),
                    str(info["n_test"]),
                    str(info["n_voxels"]),
                    number(info["mean_test_r"]),
                    f"{info['median_alpha']:g}",
                    number(info.get("mean_test_r_centered")),
                    number(info.get("mean_test_r_shuffled")),
                    number(info.get("mean_test_r_centered_shuffled")),
                ]
            )
        )
    write_text(out_path, "\n".join(lines) + "\n")
