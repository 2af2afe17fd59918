"""The paper's ridge regression (``himalaya.ridge.RidgeCV``, solver ``svd``, one alpha per
target chosen by K-fold CV, no intercept), computed faster and in less memory than himalaya:

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

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from brainldm.linear.ops import filter_factors, get_ops, kfold_splits, resolve_backend

#: Paper settings (Takagi & Nishimoto 2023): alphas and folds of their RidgeCV.
PAPER_ALPHAS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
PAPER_N_FOLDS = 5


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
        s2, vecs = ops.eigh(gram)
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
