"""Prepared fMRI read back for the models: ROI betas of the paper's split, standardised.

Decoding and encoding both read the fMRI preparation stage's outputs through this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from brainldm.core.tables import read_columns

#: The stage that writes the files read here (named in errors).
FMRI_STAGE = "the fMRI preparation stage (rule prepare_fmri)"


def standardize(X_train: np.ndarray, X_test: np.ndarray, dtype="float32"):
    """Standardise voxels with the training rows' mean and std (ddof 0), as StandardScaler.

    Returns ``(X_train_std, X_test_std, mean, std)``; arrays (n, p) in ``dtype``, mean and std
    (p,) float64. Voxels with zero variance get std 1 (they become all zero).
    """
    X_train = np.asarray(X_train)
    mean = X_train.mean(axis=0, dtype=np.float64)
    std = X_train.std(axis=0, dtype=np.float64)
    std[std == 0] = 1.0

    def apply(X):  # float64 arithmetic in row blocks, so no full float64 copy is ever held
        X = np.asarray(X)
        out = np.empty(X.shape, dtype=dtype)
        for start in range(0, len(X), 4096):
            out[start : start + 4096] = (X[start : start + 4096] - mean) / std
        return out

    return apply(X_train), apply(X_test), mean, std


def load_roi_betas(fmri_dir: str | Path, rois: Sequence[str]):
    """Concatenate the train and test betas of several ROIs (voxel axis).

    Returns ``(train (n_train_trials, n_voxels) float32, test (n_test, n_voxels) float32,
    train_nsd_ids (n_train_trials,) int64, test_nsd_ids (n_test,) int64)``.
    """
    fmri_dir = Path(fmri_dir)
    trials = read_columns(fmri_dir / "train_trials.tsv", ["row", "nsdId"], made_by=FMRI_STAGE)
    tests = read_columns(fmri_dir / "test_images.tsv", ["row", "nsdId"], made_by=FMRI_STAGE)
    train_parts, test_parts = [], []
    for roi in rois:
        tr = np.load(fmri_dir / f"{roi}_train.npy", mmap_mode="r")
        te = np.load(fmri_dir / f"{roi}_test.npy", mmap_mode="r")
        if tr.ndim != 2 or te.ndim != 2 or tr.shape[1] != te.shape[1]:
            raise ValueError(
                f"{fmri_dir}/{roi}_train.npy {tr.shape} and {roi}_test.npy {te.shape}: expected "
                "2-D (rows, voxels) arrays with the same number of voxels"
            )
        if tr.shape[0] != len(trials["row"]) or te.shape[0] != len(tests["row"]):
            raise ValueError(
                f"{fmri_dir}/{roi}_*.npy have {tr.shape[0]} train / {te.shape[0]} test rows but "
                f"train_trials.tsv lists {len(trials['row'])} and test_images.tsv {len(tests['row'])}"
            )
        train_parts.append(np.asarray(tr, dtype=np.float32))
        test_parts.append(np.asarray(te, dtype=np.float32))
    train_rows = np.asarray(trials["row"], dtype=np.int64)
    test_rows = np.asarray(tests["row"], dtype=np.int64)
    n_trials, n_tests = len(train_rows), len(test_rows)
    if not (
        np.array_equal(train_rows, np.arange(n_trials)) and np.array_equal(test_rows, np.arange(n_tests))
    ):
        raise ValueError(f"{fmri_dir}: the 'row' columns of the TSVs must be 0..n-1 in order")
    return (
        np.concatenate(train_parts, axis=1),
        np.concatenate(test_parts, axis=1),
        np.asarray(trials["nsdId"], dtype=np.int64),
        np.asarray(tests["nsdId"], dtype=np.int64),
    )
