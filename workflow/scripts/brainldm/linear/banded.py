"""Banded (multiple-kernel) ridge regression with random search, as himalaya computes it, faster.

The model is ``himalaya.kernel_ridge.MultipleKernelRidgeCV(kernels="precomputed",
solver="random_search", cv=KFold(n_folds), random_state=...)`` with one linear kernel per feature
space (features centred on the training rows): for every candidate of kernel weights ``gamma``
(Dirichlet samples, the first forced to uniform; :func:`candidate_gammas`) and ridge penalty
``alpha``, the combined kernel ``K = sum_i gamma_i K_i`` is fitted in each fold, scored on the
held-out fold by the negative mean squared error (``l2_neg_loss``), averaged over folds; each
target keeps the best candidate (ties toward larger alphas, an update only when the score beats
the current best by float eps). The test predictions are those of the model refit on all training
rows with each target's best ``(gamma, alpha)``; the per-space split predictions are
``gamma_i K_i,test (K + alpha I)^-1 Y`` (``predict(..., split=True)``). With one kernel and one
candidate it is ``KernelRidgeCV(kernel="precomputed", solver="eigenvalues")``.

What is computed differently (the same model to float precision, checked in tests against
himalaya itself):

- per fold, himalaya forms one ``(n_val, n_train)`` operator per alpha and multiplies each by the
  targets; here the alphas' spectral filters ``1 / (lambda + alpha)`` are factorised into a few
  basis filters (:func:`brainldm.linear.ops.filter_factors`, error below float32 rounding), so a
  handful of products give every alpha's held-out predictions;
- the refit is done once at the end, per distinct best ``gamma``, and only for test predictions
  (himalaya refits dual weights for every improving candidate, one ``n x n`` operator per alpha);
- every alpha's held-out loss of a target batch comes from two large products per fold
  (``U.T Y``, the stacked basis operators) and the alpha coefficients applied a few held-out rows
  at a time, not one product per alpha; with more targets than ``q n_val`` the ``q`` basis
  operators are formed once per fold instead, and each target costs ``q n_val n_train`` flops
  (himalaya's ``20 n_val n_train``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from brainldm.linear.ops import filter_factors, get_ops, kfold_splits

LOGGER = logging.getLogger("brainldm.linear.banded")

#: The gallantlab tutorial's random-search grid of ridge penalties.
TUTORIAL_ALPHAS = tuple(np.logspace(1, 20, 20).tolist())
#: himalaya's default Dirichlet concentrations (cycled over candidates).
CONCENTRATIONS = (0.1, 1.0)


@dataclass
class BandedFit:
    """Output of :func:`banded_ridge_cv_predict`.

    Attributes
    ----------
    predictions : (n_test, n_targets) float32
        Test predictions of the refit model (the sum of ``split_predictions``).
    split_predictions : (n_spaces, n_test, n_targets) float32
        Each space's part of the predictions.
    best_gammas : (n_spaces, n_targets) float64
        Kernel weights chosen per target (sum to 1).
    best_alphas : (n_targets,) float64
    deltas : (n_spaces, n_targets) float64
        ``log(gamma / alpha)``: himalaya's ``deltas_``.
    cv_scores : (n_candidates, n_targets) float64
        Mean validation score (negative MSE) of each candidate at its best alpha.
    """

    predictions: np.ndarray
    split_predictions: np.ndarray
    best_gammas: np.ndarray
    best_alphas: np.ndarray
    deltas: np.ndarray
    cv_scores: np.ndarray


def candidate_gammas(
    n_spaces: int, n_iter: int, random_state: int | None, concentration: Sequence[float] = CONCENTRATIONS
) -> np.ndarray:
    """Kernel-weight candidates of himalaya's random search: (n_iter, n_spaces) float64.

    The samples of ``himalaya.kernel_ridge.generate_dirichlet_samples`` (the test suite checks
    they are equal), with the first set to uniform weights; one candidate ``[1]`` for a single
    space. Drawn here because importing himalaya (and scikit-learn with it) costs seconds per
    job, more than a toy-sized fit.
    """
    if n_spaces == 1:
        return np.ones((1, 1))
    random = np.random.RandomState(random_state)
    per_concentration = int(np.ceil(n_iter / len(concentration)))
    draws = [
        np.full((per_concentration, n_spaces), 1.0 / n_spaces)
        if np.isinf(value)
        else random.dirichlet([value] * n_spaces, per_concentration)
        for value in concentration
    ]
    # himalaya interleaves the concentrations: a0, b0, a1, b1, ...
    gammas = np.stack(draws, axis=1).reshape(-1, n_spaces)[:n_iter].astype(np.float64)
    gammas[0] = 1.0 / n_spaces
    return gammas


def center_columns(train: np.ndarray, test: np.ndarray, dtype="float32"):
    """Subtract the training rows' column mean (float64) from both: ``(train, test)`` in ``dtype``."""
    mean = np.asarray(train).mean(axis=0, dtype=np.float64)
    return (np.asarray(train, dtype=np.float64) - mean).astype(dtype), (
        np.asarray(test, dtype=np.float64) - mean
    ).astype(dtype)


def linear_kernels(
    spaces_train: Sequence[np.ndarray],
    spaces_test: Sequence[np.ndarray],
    dtype="float32",
    backend: str = "numpy",
    block: int = 8192,
):
    """Linear kernels of feature spaces centred on the training rows.

    Parameters
    ----------
    spaces_train : list of (n_train, n_features_i) arrays
    spaces_test : list of (n_test, n_features_i) arrays

    Returns
    -------
    Ks : (n_spaces, n_train, n_train) ``dtype`` numpy array
    Ks_test : (n_spaces, n_test, n_train) ``dtype`` numpy array
        Computed in column blocks of ``block`` features (wide spaces such as c never need a
        float64 copy).
    """
    ops = get_ops(backend)
    n, n_test = spaces_train[0].shape[0], spaces_test[0].shape[0]
    Ks = np.zeros((len(spaces_train), n, n), dtype=dtype)
    Ks_test = np.zeros((len(spaces_train), n_test, n), dtype=dtype)
    for i, (train, test) in enumerate(zip(spaces_train, spaces_test)):
        if train.shape[1] != test.shape[1] or train.shape[0] != n or test.shape[0] != n_test:
            raise ValueError(
                f"feature space {i}: train {train.shape} and test {test.shape} do not match "
                f"the first space's ({n}, ...) and ({n_test}, ...)"
            )
        k_train, k_test = None, None
        for start in range(0, train.shape[1], block):
            a, b = center_columns(train[:, start : start + block], test[:, start : start + block], dtype)
            a, b = ops.asarray(a, dtype), ops.asarray(b, dtype)
            k_train = a @ a.T if k_train is None else k_train + a @ a.T
            k_test = b @ a.T if k_test is None else k_test + b @ a.T
        Ks[i], Ks_test[i] = ops.to_numpy(k_train), ops.to_numpy(k_test)
    return Ks, Ks_test


def banded_ridge_cv_predict(
    Ks: np.ndarray,
    Y: np.ndarray,
    Ks_test: np.ndarray,
    *,
    alphas: Sequence[float] = TUTORIAL_ALPHAS,
    n_iter: int = 20,
    n_folds: int = 5,
    random_state: int | None = 0,
    concentration: Sequence[float] = CONCENTRATIONS,
    backend: str = "numpy",
    n_targets_batch: int | None = 4096,
    filter_tol: float = 1e-8,
    validation_operators: bool | None = None,
    progress: bool = False,
) -> BandedFit:
    """Banded ridge with random search over kernel weights and alphas; predict the test rows.

    Parameters
    ----------
    Ks : (n_spaces, n_train, n_train) float32
        Training kernels (:func:`linear_kernels`).
    Y : (n_train, n_targets) float
        Targets, zero-mean over the training rows (no intercept is fitted, as himalaya's
        ``fit_intercept=False``).
    Ks_test : (n_spaces, n_test, n_train) float32
    alphas : sequence of float
        Ridge penalties searched (per target).
    n_iter : int
        Kernel-weight candidates (ignored with one space: one candidate).
    n_folds : int
        Contiguous unshuffled folds (sklearn ``KFold``).
    random_state : int or None
        Seed of the Dirichlet candidates (himalaya's ``random_state``).
    backend : {"numpy", "torch", "torch_cuda", "auto"}
    n_targets_batch : int or None
        Targets per batch (memory knob).
    filter_tol : float
        Tolerance of the low-rank factorisation of the alpha filters.
    validation_operators : bool, optional
        How each fold's held-out predictions are formed from the ``q`` basis filters:
        ``False`` projects every target on the fold's eigenvectors (``n_train**2`` flops per
        target, plus ``q n_val n_train``); ``True`` forms the ``q`` ``(n_val, n_train)`` operators
        once (``q n_val n_train**2`` flops) and applies them (``q n_val n_train`` per target).
        ``None`` (default) takes the cheaper: operators when ``n_targets > q n_val`` (NSD's
        nsdgeneral voxels, a whole brain, the toy's voxels; not a few hundred targets).
    progress : bool
        tqdm bar over candidates.

    Returns
    -------
    BandedFit
    """
    from tqdm import tqdm

    Ks, Ks_test = np.asarray(Ks), np.asarray(Ks_test)
    if Ks.ndim != 3 or Ks.shape[1] != Ks.shape[2] or Ks_test.shape[::2] != Ks.shape[::2]:
        raise ValueError(
            f"Ks {Ks.shape} must be (n_spaces, n, n) and Ks_test {Ks_test.shape} (n_spaces, n_test, n)"
        )
    n_spaces, n = Ks.shape[:2]
    if Y.ndim != 2 or Y.shape[0] != n:
        raise ValueError(f"Y {Y.shape} must be ({n}, n_targets)")
    alphas = np.asarray(alphas, dtype=np.float64).ravel()
    if alphas.size == 0 or np.any(alphas <= 0):
        raise ValueError(f"alphas must be positive numbers, got {alphas.tolist()}")
    dtype = Ks.dtype
    ops = get_ops(backend)
    n_targets = Y.shape[1]
    batch = n_targets if not n_targets_batch else min(int(n_targets_batch), n_targets)
    gammas = candidate_gammas(n_spaces, n_iter, random_state, concentration)
    folds = kfold_splits(n, n_folds)
    Kd = ops.asarray(Ks, dtype)
    Yd = ops.asarray(Y, dtype)
    eps = float(np.finfo(dtype).eps)
    tie_break = np.log(alphas) * 1e-10  # himalaya: toward larger alphas when scores are equal

    best_scores = np.full(n_targets, -np.inf)
    best_candidate = np.zeros(n_targets, dtype=np.int64)
    best_alpha_index = np.zeros(n_targets, dtype=np.int64)
    cv_scores = np.zeros((len(gammas), n_targets))
    for ii, gamma in enumerate(tqdm(gammas, desc="banded ridge candidates", disable=not progress)):
        K = _combine(Kd, gamma)
        score_sum = np.zeros((len(alphas), n_targets))
        for train, val in folds:
            tr, va = ops.index(train), ops.index(val)
            eigenvalues, U = ops.eigh(K[tr][:, tr])
            lam = ops.to_numpy(eigenvalues).astype(np.float64)
            # himalaya: alphas below twice a negative (float32) eigenvalue cannot be selected
            usable = alphas >= -2 * min(lam.min(initial=0.0), 0.0)
            coef, basis = filter_factors(lam, alphas[usable], filter_tol)
            # held-out predictions of all alphas: sum_m coef[a, m] (A diag(basis_m) U.T) Y_train
            A = K[va][:, tr] @ U  # (n_val, n_train)
            A_stack = A[None] * ops.asarray(basis, dtype)[:, None, :]  # (q, n_val, n_train)
            coef_d = ops.asarray(coef, dtype)  # (n_usable, q)
            operators = None
            if _use_operators(validation_operators, n_targets, len(basis), len(val)):
                operators = A_stack @ U.T  # (q, n_val, n_train): the basis filters' held-out operators
                del A_stack
            for start in range(0, n_targets, batch):
                cols = slice(start, min(start + batch, n_targets))
                y_train, y_val = Yd[tr, cols], Yd[va, cols]
                parts = (
                    A_stack @ (U.T @ y_train) if operators is None else operators @ y_train
                )  # (q, n_val, tb)
                score_sum[usable, cols] -= ops.to_numpy(_held_out_mse(coef_d, parts, y_val, ops)).astype(
                    np.float64
                )
                del parts
            del operators
            score_sum[~usable] -= 1e5
        scores = score_sum / len(folds) + tie_break[:, None]
        argmax = scores.argmax(axis=0)
        candidate_scores = scores[argmax, np.arange(n_targets)]
        cv_scores[ii] = candidate_scores
        improved = candidate_scores > best_scores + eps
        best_scores[improved] = candidate_scores[improved]
        best_candidate[improved] = ii
        best_alpha_index[improved] = argmax[improved]

    split = np.zeros((n_spaces, Ks_test.shape[1], n_targets), dtype=np.float32)
    Kt = ops.asarray(Ks_test, dtype)
    for ii in np.unique(best_candidate):
        targets = np.flatnonzero(best_candidate == ii)
        eigenvalues, U = ops.eigh(_combine(Kd, gammas[ii]))
        lam = ops.to_numpy(eigenvalues).astype(np.float64)
        filters = 1.0 / (lam[:, None] + alphas[None, :])  # (n, n_alphas)
        for start in range(0, len(targets), batch):
            chosen = targets[start : start + batch]
            idx = ops.index(chosen)
            weights = U @ (ops.asarray(filters[:, best_alpha_index[chosen]], dtype) * (U.T @ Yd[:, idx]))
            for s in range(n_spaces):
                split[s][:, chosen] = ops.to_numpy((Kt[s] @ weights) * float(gammas[ii][s]))
    best_gammas = gammas[best_candidate].T
    best_alphas = alphas[best_alpha_index]
    return BandedFit(
        predictions=split.sum(axis=0, dtype=np.float32),
        split_predictions=split,
        best_gammas=best_gammas,
        best_alphas=best_alphas,
        deltas=np.log(best_gammas / best_alphas[None, :]),
        cv_scores=cv_scores,
    )


def _held_out_mse(coef, parts, y_val, ops, cache_floats: int = 2**17):
    """Held-out mean squared error of every alpha: (n_alphas, tb) in the compute dtype.

    The predictions are ``sum_m coef[a, m] parts[m]`` (coef (n_alphas, q), parts (q, n_val, tb),
    y_val (n_val, tb)): l2_neg_loss as himalaya scores each fold, up to the sign. On CPU they
    are formed a few validation rows at a time, so that each (n_alphas, rows, tb) residual stays
    in cache: the whole one costs more in memory traffic than its products cost in flops.
    """
    q, n_val, tb = parts.shape
    rows = n_val if ops.name == "torch_cuda" else max(1, cache_floats // (len(coef) * tb))
    total = None
    for start in range(0, n_val, rows):
        block = slice(start, min(start + rows, n_val))
        residual = (coef @ parts[:, block].reshape(q, -1)).reshape(len(coef), -1, tb) - y_val[None, block]
        squares = (residual * residual).sum(1)
        total = squares if total is None else total + squares
    return total / n_val


def _use_operators(validation_operators: bool | None, n_targets: int, q: int, n_val: int) -> bool:
    """Whether to form the fold's held-out operators: asked for, or (``None``) the cheaper route."""
    if validation_operators is None:
        return n_targets > q * n_val
    return bool(validation_operators)


def _combine(Kd, gamma: np.ndarray):
    """``sum_i gamma_i K_i`` of backend kernels."""
    K = Kd[0] * float(gamma[0])
    for i in range(1, len(gamma)):
        K = K + Kd[i] * float(gamma[i])
    return K


def himalaya_banded_predict(
    spaces_train: Sequence[np.ndarray],
    Y: np.ndarray,
    spaces_test: Sequence[np.ndarray],
    *,
    alphas: Sequence[float] = TUTORIAL_ALPHAS,
    n_iter: int = 20,
    n_folds: int = 5,
    random_state: int | None = 0,
    n_targets_batch: int | None = None,
    n_alphas_batch: int | None = None,
    n_targets_batch_refit: int | None = None,
    backend: str = "numpy",
    kernel_seconds: dict | None = None,
):
    """The gallantlab tutorial recipe, for reference: ``(predictions, split_predictions, deltas)``.

    ``ColumnKernelizer`` of one ``StandardScaler(with_std=False) + Kernelizer("linear")`` per space
    and ``MultipleKernelRidgeCV(kernels="precomputed", solver="random_search")`` with the given
    grid, ``KFold(n_folds)`` and seed. ``kernel_seconds``, if a dict, receives the ``"wall"`` and
    ``"cpu"`` seconds of the kernelizer (the part of the cost that does not grow with ``n_iter``).
    """
    from himalaya.backend import set_backend
    from himalaya.kernel_ridge import ColumnKernelizer, Kernelizer, MultipleKernelRidgeCV
    from sklearn.model_selection import KFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    himalaya_backend = set_backend(backend if backend != "auto" else "numpy", on_error="raise")
    widths = [x.shape[1] for x in spaces_train]
    bounds = np.cumsum([0] + widths)
    X_train = np.concatenate([np.asarray(x, dtype=np.float32) for x in spaces_train], axis=1)
    X_test = np.concatenate([np.asarray(x, dtype=np.float32) for x in spaces_test], axis=1)
    kernelizer = ColumnKernelizer(
        [
            (
                f"space{i}",
                make_pipeline(StandardScaler(with_std=False), Kernelizer(kernel="linear")),
                slice(int(bounds[i]), int(bounds[i + 1])),
            )
            for i in range(len(widths))
        ]
    )
    model = MultipleKernelRidgeCV(
        kernels="precomputed",
        solver="random_search",
        cv=KFold(n_folds, shuffle=False),
        random_state=random_state,
        solver_params=dict(
            n_iter=n_iter,
            alphas=np.asarray(alphas, dtype=np.float64),
            n_targets_batch=n_targets_batch,
            n_alphas_batch=n_alphas_batch,
            n_targets_batch_refit=n_targets_batch_refit,
            progress_bar=False,
        ),
    )
    start, cpu_start = time.perf_counter(), time.process_time()
    K_train = kernelizer.fit_transform(X_train)
    K_test = kernelizer.transform(X_test)
    if kernel_seconds is not None:
        kernel_seconds.update(wall=time.perf_counter() - start, cpu=time.process_time() - cpu_start)
    model.fit(K_train, np.asarray(Y, dtype=np.float32))
    predictions = himalaya_backend.to_numpy(model.predict(K_test))
    split = himalaya_backend.to_numpy(model.predict(K_test, split=True))
    return predictions, split, himalaya_backend.to_numpy(model.deltas_)
