"""Linear decoders from fMRI to Stable Diffusion features (the paper's ridge regression).

The paper fits ``himalaya.ridge.RidgeCV`` (solver ``svd``, alphas 1e-6 ... 1, 5-fold ``KFold``
without shuffling over the training trials, one alpha per target, ``fit_intercept=False``) on
voxels standardised with the training trials' mean and std, targets left raw. This module computes
exactly that model, faster and in less memory than calling himalaya directly:

- **one spectral decomposition per fold, shared by every target and every alpha.** The ridge
  solution ``W_a = V diag(1 / (s**2 + a)) V.T X.T Y`` needs only the right singular vectors ``V``
  and singular values ``s`` of ``X`` (the same ones himalaya's SVD gives), obtained from the
  eigendecomposition of the Gram matrix ``X.T X`` (or of ``X X.T`` when voxels outnumber trials)
  in float64. The fold Gram matrices are the full one minus the held-out block's.
- **target-independent validation operators.** For each fold the map from ``X_train.T Y_train`` to
  the held-out predictions, ``H_a = X_val V diag(1 / (s**2 + a)) V.T``, does not depend on the
  targets; the alphas' spectral filters are, to float precision, a combination of very few
  filters (their matrix has a rapidly decaying spectrum), so a handful of ``H`` matrices give the
  held-out predictions of all alphas (error below ``filter_tol``, i.e. below float32 rounding by
  default). Validation losses are accumulated in float64 from inner products, so the choice
  between nearly equal alphas is not decided by float32 rounding noise.
- **images, not trials, on the target side.** Training targets are a trial's image features
  repeated; ``X.T Y`` is computed from voxel patterns summed per image, never materialising the
  (n_trials, n_targets) target matrix (5.9 GB for ``c`` in float32).
- **targets in batches** (``n_targets_batch``) so ``c`` (59,136 targets) fits in a few GB.

Backends: ``numpy`` (the paper's), ``torch`` (CPU) and ``torch_cuda``; ``auto`` picks
``torch_cuda`` when a GPU is visible, else ``numpy``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .atomic import save_npy, write_text
from .correlation import rowwise_pearson
from .ridge_ops import filter_factors, get_ops, kfold_splits, resolve_backend

LOGGER = logging.getLogger("brainldm.decoding")

#: Paper settings (Takagi & Nishimoto 2023): alphas and folds of their RidgeCV.
PAPER_ALPHAS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
PAPER_N_FOLDS = 5


# --------------------------------------------------------------------------------------------
# the solver
# --------------------------------------------------------------------------------------------
@dataclass
class RidgeCVResult:
    """Output of :func:`ridge_cv_predict`.

    Attributes
    ----------
    predictions : (n_test, n_targets) float32
        Test predictions of the model refit on all training rows with each target's alpha.
    best_alphas : (n_targets,) float64
        Alpha chosen per target.
    cv_scores : (n_targets,) float64
        Cross-validated score at the chosen alpha: negative mean squared error on the held-out
        folds, averaged over folds (himalaya's ``l2_neg_loss`` convention).
    filter_rank : list of int
        Number of spectral filters used per fold (at most ``len(alphas)``).
    """

    predictions: np.ndarray
    best_alphas: np.ndarray
    cv_scores: np.ndarray
    filter_rank: list = field(default_factory=list)


class _Spectrum:
    """Right singular vectors ``V`` (p, r) and squared singular values ``s2`` (r,) of ``X``.

    From the eigendecomposition of ``X.T X`` (primal, p <= n) or ``X X.T`` (dual) in float64.
    Directions with ``s2 <= max(s2) * max(n, p) * eps64 * 10`` are dropped (numerically null:
    they carry no signal and would only amplify rounding by ``1 / alpha``).
    """

    def __init__(self, ops, x, gram, dual, dtype):
        s2, vecs = ops.eigh64(gram)
        s2_np = ops.to_numpy(s2)
        n, p = x.shape
        threshold = max(float(s2_np.max(initial=0.0)), 0.0) * max(n, p) * np.finfo(np.float64).eps * 10
        keep = np.flatnonzero(s2_np > threshold)
        keep_idx = ops.index(keep)
        s2 = s2[keep_idx]
        vecs = vecs[:, keep_idx]
        if dual:
            # X = U S V.T  ->  V = X.T U / s
            x64 = ops.cast(x, np.float64)
            vecs = (x64.T @ vecs) / (s2**0.5)[None, :]
        self.s2 = s2_np[keep]  # (r,) float64 numpy
        self.V = ops.cast(vecs, dtype)  # (p, r) compute dtype
        self.rank = len(keep)


def ridge_cv_predict(
    X: np.ndarray,
    Y: np.ndarray,
    X_test: np.ndarray,
    *,
    alphas: Sequence[float] = PAPER_ALPHAS,
    n_folds: int = PAPER_N_FOLDS,
    rows: np.ndarray | None = None,
    backend: str = "numpy",
    n_targets_batch: int | None = 8192,
    dtype: str = "float32",
    filter_tol: float | None = None,
    target_offset: np.ndarray | None = None,
    progress: bool = False,
) -> RidgeCVResult:
    """Ridge regression with per-target alpha chosen by K-fold CV; predict ``X_test``.

    The same model as ``himalaya.ridge.RidgeCV(alphas, solver="svd", fit_intercept=False,
    cv=KFold(n_folds, shuffle=False))`` fitted on ``(X, Y[rows])`` with its default
    ``l2_neg_loss`` score and tie-break toward larger alphas; ``X`` is used as given (standardise
    it first, see :func:`fit_decoder`).

    Parameters
    ----------
    X : (n_train, n_features) float
        Training inputs (rows = trials, in the order the folds split them).
    Y : (n_train, n_targets) or (n_rows, n_targets) float
        Targets; when ``rows`` is given, a table whose row ``rows[i]`` is the target of training
        row ``i`` (e.g. one row per image, several trials per image).
    X_test : (n_test, n_features) float
        Inputs to predict.
    alphas : sequence of float
        Ridge penalties to choose from (per target).
    n_folds : int
        Number of contiguous, unshuffled folds.
    rows : (n_train,) int, optional
        Row of ``Y`` for each training row.
    backend : {"numpy", "torch", "torch_cuda", "auto"}
    n_targets_batch : int or None
        Targets processed at once (memory knob); ``None`` = all.
    dtype : {"float32", "float64"}
        Compute dtype of the large products (spectral decompositions are always float64).
    filter_tol : float, optional
        Tolerance of the low-rank alpha-filter factorisation; default 1e-8 for float32, 0 (exact)
        for float64.
    target_offset : (n_targets,) float, optional
        Subtracted from the targets before fitting (not added back).
    progress : bool
        Show a tqdm bar over target batches.

    Returns
    -------
    RidgeCVResult
    """
    from tqdm import tqdm

    dtype = np.dtype(dtype)
    if dtype not in (np.dtype("float32"), np.dtype("float64")):
        raise ValueError(f"dtype {dtype} is not supported; expected float32 or float64")
    alphas = np.asarray(alphas, dtype=np.float64).ravel()
    if alphas.size == 0 or np.any(alphas <= 0):
        raise ValueError(f"alphas must be positive numbers, got {alphas.tolist()}")
    if filter_tol is None:
        filter_tol = 1e-8 if dtype == np.dtype("float32") else 0.0
    X = np.asarray(X)
    X_test = np.asarray(X_test)
    if X.ndim != 2 or X_test.ndim != 2 or X.shape[1] != X_test.shape[1]:
        raise ValueError(
            f"X {X.shape} and X_test {X_test.shape} must be 2-D with the same number of features"
        )
    n, p = X.shape
    if Y.ndim != 2:
        raise ValueError(f"Y must be 2-D (rows, targets), got shape {Y.shape}")
    if rows is None:
        if Y.shape[0] != n:
            raise ValueError(f"Y has {Y.shape[0]} rows but X has {n}; pass rows= to map them")
        rows = np.arange(n)
    rows = np.asarray(rows, dtype=np.int64)
    if rows.shape != (n,) or rows.min(initial=0) < 0 or rows.max(initial=0) >= Y.shape[0]:
        raise ValueError(f"rows must be ({n},) indices into the {Y.shape[0]} rows of Y")
    n_targets = Y.shape[1]
    batch = n_targets if not n_targets_batch else min(int(n_targets_batch), n_targets)
    ops = get_ops(backend)
    folds = kfold_splits(n, n_folds)

    Xd = ops.asarray(X, dtype)
    Xt = ops.asarray(X_test, dtype)

    # --- per-fold spectra and validation operators (target independent) ---------------------
    # primal (p x p Gram) when voxels do not outnumber the training rows of any fold, else dual
    primal = all(p <= len(train) for train, _ in folds)
    val_grams, gram = [], None
    if primal:
        for _, val in folds:
            g = ops.gram64(Xd[ops.index(val)])
            val_grams.append(g)
            gram = g if gram is None else gram + g
    fold_ops = []  # per fold: (coef (n_alphas, q), list of H (n_val, p), aggregation info)
    ranks = []
    for k, (train, val) in enumerate(folds):
        if primal:
            spec = _Spectrum(ops, Xd, gram - val_grams[k], dual=False, dtype=dtype)
        else:
            x_tr = Xd[ops.index(train)]
            spec = _Spectrum(ops, x_tr, ops.gram64(x_tr, dual=True), dual=True, dtype=dtype)
        coef, basis = filter_factors(spec.s2, alphas, filter_tol)
        xv_v = Xd[ops.index(val)] @ spec.V  # (n_val, r)
        H = [(xv_v * ops.asarray(b, dtype)[None, :]) @ spec.V.T for b in basis]  # q x (n_val, p)
        ranks.append(len(H))
        fold_ops.append((coef, H))
        del spec, xv_v
    val_grams.clear()
    # refit operators on all training rows: one per alpha
    if primal:
        full = _Spectrum(ops, Xd, gram, dual=False, dtype=dtype)
    else:
        full = _Spectrum(ops, Xd, ops.gram64(Xd, dual=True), dual=True, dtype=dtype)
    del gram
    xt_v = Xt @ full.V
    H_test = [
        (xt_v * ops.asarray(1.0 / (full.s2 + a), dtype)[None, :]) @ full.V.T for a in alphas
    ]  # n_alphas x (n_test, p)
    del full, xt_v

    # --- voxel patterns summed per target row, per fold: X_k.T Y_k = A_k.T Y[u_k] -----------
    aggregates = []  # per fold: (unique target rows (u,), A (u, p))
    for _, val in folds:
        order = val[np.argsort(rows[val], kind="stable")]
        sorted_rows = rows[order]
        starts = np.flatnonzero(np.r_[True, sorted_rows[1:] != sorted_rows[:-1]])
        A = ops.sum_rows_by_group(Xd[ops.index(order)], starts)
        aggregates.append((sorted_rows[starts], A))

    log_alpha_slope = np.log(alphas) * 1e-10  # himalaya's tie-break toward larger alphas
    predictions = np.zeros((X_test.shape[0], n_targets), dtype=np.float32)
    best_alphas = np.zeros(n_targets, dtype=np.float64)
    cv_scores = np.zeros(n_targets, dtype=np.float64)
    starts_t = range(0, n_targets, batch)
    for start in tqdm(starts_t, desc="ridge target batches", disable=not progress):
        cols = slice(start, min(start + batch, n_targets))
        y_block = np.asarray(Y[:, cols], dtype=dtype)  # (n_rows, tb)
        if target_offset is not None:
            y_block = y_block - np.asarray(target_offset[cols], dtype=dtype)
        Yb = ops.asarray(y_block, dtype)
        del y_block
        contrib = [A.T @ Yb[ops.index(u)] for u, A in aggregates]  # per fold (p, tb)
        xty = contrib[0]
        for c in contrib[1:]:
            xty = xty + c
        scores = np.zeros((len(alphas), Yb.shape[1]), dtype=np.float64)
        for k, (_, val) in enumerate(folds):
            coef, H = fold_ops[k]
            xty_k = xty - contrib[k]
            y_val = Yb[ops.index(rows[val])]  # (n_val, tb)
            R = [h @ xty_k for h in H]
            yy = ops.to_numpy(ops.colsum64(y_val, y_val))
            yr = np.stack([ops.to_numpy(ops.colsum64(y_val, r)) for r in R])  # (q, tb)
            rr = np.zeros((len(R), len(R), Yb.shape[1]))
            for a in range(len(R)):
                for b in range(a, len(R)):
                    rr[a, b] = rr[b, a] = ops.to_numpy(ops.colsum64(R[a], R[b]))
            # ||y - sum_m c_im R_m||^2 for every alpha i
            sse = yy[None, :] - 2 * coef @ yr + np.einsum("im,mnt,in->it", coef, rr, coef)
            scores += -sse / len(val)
            del R, y_val, xty_k
        scores /= len(folds)
        choice = np.argmax(scores + log_alpha_slope[:, None], axis=0)
        best_alphas[cols] = alphas[choice]
        cv_scores[cols] = scores[choice, np.arange(scores.shape[1])]
        for i in np.unique(choice):
            sel = np.flatnonzero(choice == i)
            pred = H_test[i] @ xty[:, ops.index(sel)]
            predictions[:, start + sel] = ops.to_numpy(pred)
        del contrib, xty, Yb
    return RidgeCVResult(predictions, best_alphas, cv_scores, ranks)


def himalaya_ridge_cv_predict(
    X: np.ndarray,
    Y: np.ndarray,
    X_test: np.ndarray,
    *,
    alphas: Sequence[float] = PAPER_ALPHAS,
    n_folds: int = PAPER_N_FOLDS,
    rows: np.ndarray | None = None,
    backend: str = "numpy",
    n_targets_batch: int | None = None,
) -> RidgeCVResult:
    """The paper's call itself: ``himalaya.ridge.RidgeCV`` (solver svd), for reference.

    Same arguments and result as :func:`ridge_cv_predict` (``Y[rows]`` is materialised). Slower
    and far heavier in memory; used by the tests and the benchmark as the baseline, and by the
    rule when ``decoding.solver`` is ``himalaya``.
    """
    from himalaya.backend import get_backend, set_backend
    from himalaya.ridge import RidgeCV

    previous = get_backend().name
    backend_obj = set_backend(resolve_backend(backend), on_error="raise")
    try:
        dtype = np.asarray(X).dtype
        Y_full = np.asarray(Y if rows is None else np.asarray(Y)[np.asarray(rows)], dtype=dtype)
        params = {"n_targets_batch": n_targets_batch} if n_targets_batch else {}
        model = RidgeCV(
            alphas=np.asarray(alphas, dtype=dtype),
            fit_intercept=False,
            solver="svd",
            solver_params=params,
            cv=_SplitList(kfold_splits(len(X), n_folds)),
        )
        model.fit(X, Y_full)
        predictions = backend_obj.to_numpy(model.predict(np.asarray(X_test, dtype=dtype)))
        return RidgeCVResult(
            np.asarray(predictions, dtype=np.float32),
            np.asarray(backend_obj.to_numpy(model.best_alphas_), dtype=np.float64),
            np.asarray(backend_obj.to_numpy(model.cv_scores_), dtype=np.float64),
        )
    finally:
        set_backend(previous)


class _SplitList:
    """A fixed list of (train, validation) splits with scikit-learn's splitter interface."""

    def __init__(self, splits):
        self.splits = splits

    def split(self, *args, **kwargs):
        return iter(self.splits)

    def get_n_splits(self, *args, **kwargs):
        return len(self.splits)


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
            xs, Y_fit, xt, alphas=alphas, n_folds=n_folds, rows=rows, backend=backend,
            n_targets_batch=n_targets_batch,
        )
    else:
        result = ridge_cv_predict(
            xs, Y, xt, alphas=alphas, n_folds=n_folds, rows=rows, backend=backend,
            n_targets_batch=n_targets_batch, dtype=dtype, target_offset=y_mean, progress=progress,
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
def _read_tsv(path: Path, columns: Sequence[str]) -> dict[str, list[str]]:
    """Columns of a tab-separated file with a header, as lists of strings."""
    import csv

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing (an output of the fMRI preparation stage)")
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        header = reader.fieldnames or []
        missing = [c for c in columns if c not in header]
        if missing:
            raise ValueError(f"{path}: columns {missing} are missing; expected at least {list(columns)}")
        table = {name: [] for name in header}
        for record in reader:
            for name in header:
                table[name].append(record[name])
    return table


def load_roi_betas(fmri_dir: str | Path, rois: Sequence[str]):
    """Concatenate the train and test betas of several ROIs (voxel axis).

    Returns ``(train (n_train_trials, n_voxels) float32, test (n_test, n_voxels) float32,
    train_nsd_ids (n_train_trials,) int64, test_nsd_ids (n_test,) int64)``.
    """
    fmri_dir = Path(fmri_dir)
    trials = _read_tsv(fmri_dir / "train_trials.tsv", ["row", "nsdId"])
    tests = _read_tsv(fmri_dir / "test_images.tsv", ["row", "nsdId"])
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
    if not (np.array_equal(train_rows, np.arange(n_trials)) and np.array_equal(test_rows, np.arange(n_tests))):
        raise ValueError(f"{fmri_dir}: the 'row' columns of the TSVs must be 0..n-1 in order")
    return (
        np.concatenate(train_parts, axis=1),
        np.concatenate(test_parts, axis=1),
        np.asarray(trials["nsdId"], dtype=np.int64),
        np.asarray(tests["nsdId"], dtype=np.int64),
    )


def load_feature_rows(features_dir: str | Path, feature: str, nsd_ids: np.ndarray) -> np.ndarray:
    """Features of ``nsd_ids`` (in that order), flattened to (n, n_targets), dtype as stored.

    Reads the features stage's files ``{feature}.npy`` (n_images, ...) and
    ``{feature}_nsd_ids.npy`` (n_images,) int64 ascending, memory-mapped.
    """
    features_dir = Path(features_dir)
    values_path = features_dir / f"{feature}.npy"
    ids_path = features_dir / f"{feature}_nsd_ids.npy"
    for path in (values_path, ids_path):
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing (an output of the features stage)")
    values = np.load(values_path, mmap_mode="r")
    ids = np.load(ids_path)
    if ids.ndim != 1 or len(ids) != len(values):
        raise ValueError(f"{ids_path} has shape {ids.shape}; expected ({len(values)},) like {values_path}")
    nsd_ids = np.asarray(nsd_ids, dtype=np.int64)
    where = np.searchsorted(ids, nsd_ids)
    where = np.clip(where, 0, len(ids) - 1)
    absent = nsd_ids[ids[where] != nsd_ids] if len(ids) else nsd_ids
    if len(absent):
        raise KeyError(
            f"{values_path}: {len(absent)} requested nsdIds have no features "
            f"(first: {absent[:5].tolist()})"
        )
    return np.asarray(values[where]).reshape(len(nsd_ids), -1)


def feature_shape(features_dir: str | Path, feature: str) -> tuple[int, ...]:
    """Per-image shape of a stored feature (e.g. (4, 40, 40) for z)."""
    arr = np.load(Path(features_dir) / f"{feature}.npy", mmap_mode="r")
    return tuple(arr.shape[1:])


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
    backend_used = resolve_backend(backend)
    LOGGER.info(
        "decoding %s from %s: %d train trials (%d images), %d test images, %d voxels, %d targets, "
        "backend %s", feature, "+".join(rois), len(rows), len(images), len(test_ids),
        x_train.shape[1], Y.shape[1], backend_used,
    )
    fit = fit_decoder(
        x_train, Y, x_test, rows=rows, alphas=alphas, n_folds=n_folds,
        center_targets=center_targets, backend=backend_used, n_targets_batch=n_targets_batch,
        solver=solver, progress=progress,
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
            x_train, Y, x_test, rows=shuffled_rows(rows, seed), alphas=alphas, n_folds=n_folds,
            center_targets=center_targets, backend=backend_used, n_targets_batch=n_targets_batch,
            solver=solver, progress=progress,
        )
        summary["mean_test_r_shuffled"] = float(np.nanmean(per_image_correlation(ctrl.predictions, Y_test)))
        summary["mean_test_r_centered_shuffled"] = float(np.nanmean(
            per_image_correlation(deviations(ctrl.predictions), truth_dev)
        ))
    save_npy(out_dir / f"{feature}_pred.npy", fit.predictions.reshape((len(test_ids),) + shape))
    save_npy(out_dir / f"{feature}_nsd_ids.npy", test_ids)
    save_npy(out_dir / f"{feature}_alphas.npy", fit.best_alphas)
    save_npy(out_dir / f"{feature}_cv_scores.npy", fit.cv_scores)
    lines = ["row\tnsdId\tr"] + [f"{i}\t{nid}\t{val:.6f}" for i, (nid, val) in enumerate(zip(test_ids, r))]
    write_text(out_dir / f"{feature}_test_r.tsv", "\n".join(lines) + "\n")
    write_text(out_dir / f"{feature}.json", json.dumps(summary, indent=2) + "\n")
    LOGGER.info(
        "%s: mean test r %.4f (shuffled control %s), median alpha %g, %.1f s",
        feature, summary["mean_test_r"], summary["mean_test_r_shuffled"], summary["median_alpha"],
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
    "subject", "feature", "rois", "n_train", "n_test", "n_voxels", "mean_test_r", "median_alpha",
    "mean_test_r_centered", "mean_test_r_shuffled", "mean_test_r_centered_shuffled",
)


def summarize_decoding(json_paths: Sequence[str | Path], subjects: Sequence[int], out_path: str | Path) -> None:
    """Collect per-(subject, feature) JSON summaries into one TSV (columns ``SUMMARY_COLUMNS``)."""
    if len(json_paths) != len(subjects):
        raise ValueError("summarize_decoding needs one subject per JSON file")
    lines = ["\t".join(SUMMARY_COLUMNS)]
    def number(value):
        return "" if value is None else f"{value:.6f}"

    for path, subject in zip(json_paths, subjects):
        info = json.loads(Path(path).read_text())
        lines.append("\t".join([
            str(subject), info["feature"], "+".join(info["rois"]), str(info["n_train"]),
            str(info["n_test"]), str(info["n_voxels"]), number(info["mean_test_r"]),
            f"{info['median_alpha']:g}", number(info.get("mean_test_r_centered")),
            number(info.get("mean_test_r_shuffled")), number(info.get("mean_test_r_centered_shuffled")),
        ]))
    write_text(out_path, "\n".join(lines) + "\n")
