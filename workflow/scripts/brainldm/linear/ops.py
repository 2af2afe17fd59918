"""Pieces shared by the ridge decoders (:mod:`brainldm.decoding`) and the banded encoding models
(:mod:`brainldm.linear.banded`): array backends (numpy, torch on CPU or CUDA), scikit-learn's KFold
splits, and the low-rank factorisation of ridge spectral filters over a grid of alphas.
"""

from __future__ import annotations

import importlib
import os
import sys

import numpy as np

#: Files that exist when a CUDA (NVIDIA) or ROCm (AMD) kernel driver is loaded on Linux.
GPU_DRIVER_FILES = ("/proc/driver/nvidia/version", "/dev/kfd")


def gpu_driver_present() -> bool:
    """Whether torch could see a GPU at all; importing torch to ask costs seconds per CPU job.

    On Linux no GPU is usable without one of ``GPU_DRIVER_FILES``, or with ``CUDA_VISIBLE_DEVICES``
    set empty or ``-1``; elsewhere the answer is left to torch (True).
    """
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in {"", "-1"}:
        return False
    if not sys.platform.startswith("linux"):
        return True
    return any(os.path.exists(path) for path in GPU_DRIVER_FILES)


def resolve_backend(name: str, key: str = "backend") -> str:
    """Map a configured backend (``auto``, ``numpy``, ``torch``, ``torch_cuda``) to a concrete one.

    ``auto`` gives ``torch_cuda`` when torch sees a CUDA device, else ``numpy`` (without importing
    torch where :func:`gpu_driver_present` says no GPU can exist). Asking for
    ``torch_cuda`` without a GPU raises a ``RuntimeError`` naming the problem; errors name the
    setting as ``key`` (e.g. ``encoding.backend``).
    """
    if name not in {"auto", "numpy", "torch", "torch_cuda"}:
        raise ValueError(f"{key} {name!r} is unknown; expected one of auto, numpy, torch, torch_cuda")
    if name == "auto":
        if not gpu_driver_present():
            return "numpy"
        try:
            import torch

            return "torch_cuda" if torch.cuda.is_available() else "numpy"
        except ImportError:
            return "numpy"
    if name == "torch_cuda":
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError(
                f"{key} is 'torch_cuda' but torch sees no CUDA device; "
                "use 'auto' or 'numpy' on a machine without a GPU"
            )
    return name


class NumpyOps:
    """The few array operations the solver needs, on numpy arrays."""

    name = "numpy"

    def asarray(self, array, dtype):
        return np.ascontiguousarray(array, dtype=dtype)

    def index(self, idx):
        return np.asarray(idx, dtype=np.int64)

    def to_numpy(self, array):
        return np.asarray(array)

    def gram64(self, a, dual=False):
        a = np.asarray(a, dtype=np.float64)
        return a @ a.T if dual else a.T @ a

    def eigh(self, gram):
        """All eigenpairs of a symmetric ``gram`` (n, n), in its own dtype (float64 or float32)."""
        import scipy.linalg

        # "evd" (divide and conquer) is the fastest LAPACK driver for all eigenpairs.
        return scipy.linalg.eigh(gram, driver="evd", overwrite_a=True, check_finite=False)

    def cast(self, array, dtype):
        return np.asarray(array, dtype=dtype)

    def colsum64(self, a, b):
        """Per-column sum of ``a * b`` accumulated in float64: (n, t), (n, t) -> (t,)."""
        return np.einsum("ij,ij->j", a, b, dtype=np.float64)

    def sum_rows_by_group(self, x, starts):
        """Sum consecutive row blocks of ``x`` starting at ``starts``."""
        return np.add.reduceat(x, starts, axis=0)

    def zeros(self, shape, dtype):
        return np.zeros(shape, dtype=dtype)


class TorchOps:
    """The same operations on torch tensors (CPU or CUDA)."""

    def __init__(self, device: str):
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.name = "torch_cuda" if self.device.type == "cuda" else "torch"

    def _dtype(self, dtype):
        return {np.dtype("float32"): self.torch.float32, np.dtype("float64"): self.torch.float64}[
            np.dtype(dtype)
        ]

    def asarray(self, array, dtype):
        if isinstance(array, self.torch.Tensor):
            return array.to(device=self.device, dtype=self._dtype(dtype))
        return self.torch.as_tensor(np.ascontiguousarray(array, dtype=dtype), device=self.device)

    def index(self, idx):
        return self.torch.as_tensor(np.asarray(idx, dtype=np.int64), device=self.device)

    def to_numpy(self, array):
        return array.detach().cpu().numpy()

    def gram64(self, a, dual=False):
        a = a.to(self.torch.float64)
        return a @ a.T if dual else a.T @ a

    def eigh(self, gram):
        """All eigenpairs of a symmetric ``gram`` (n, n), in its own dtype (float64 or float32)."""
        return self.torch.linalg.eigh(gram)

    def cast(self, array, dtype):
        return array.to(self._dtype(dtype))

    def colsum64(self, a, b):
        return (a * b).sum(0, dtype=self.torch.float64)

    def sum_rows_by_group(self, x, starts):
        starts_np = np.asarray(starts)
        lengths = np.diff(np.append(starts_np, x.shape[0]))
        group = self.torch.as_tensor(np.repeat(np.arange(len(starts_np)), lengths), device=self.device)
        out = self.torch.zeros((len(starts_np), x.shape[1]), dtype=x.dtype, device=self.device)
        return out.index_add_(0, group, x)

    def zeros(self, shape, dtype):
        return self.torch.zeros(shape, dtype=self._dtype(dtype), device=self.device)


def blas_threads(threads: int):
    """Context manager limiting numpy's and scipy's BLAS to ``threads`` threads (a job's reservation).

    scipy's OpenBLAS is a library of its own, loaded with ``scipy.linalg``; it is loaded first,
    because threadpoolctl limits only the libraries already loaded.
    """
    importlib.import_module("scipy.linalg")
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=int(threads))


def get_ops(backend: str):
    backend = resolve_backend(backend)
    if backend == "numpy":
        return NumpyOps()
    return TorchOps("cuda" if backend == "torch_cuda" else "cpu")


def kfold_splits(n_samples: int, n_folds: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The splits of ``sklearn.model_selection.KFold(n_folds, shuffle=False)`` on ``range(n)``.

    Contiguous validation blocks in order; the first ``n_samples % n_folds`` blocks hold one row
    more. Returns a list of (train_indices, validation_indices), each (n,) int64.
    """
    if n_folds < 2 or n_samples < n_folds:
        raise ValueError(
            f"{n_samples} training rows cannot be split into n_folds={n_folds} folds "
            "(expected 2 <= n_folds <= rows)"
        )
    sizes = np.full(n_folds, n_samples // n_folds, dtype=np.int64)
    sizes[: n_samples % n_folds] += 1
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    everything = np.arange(n_samples, dtype=np.int64)
    return [
        (np.concatenate([everything[:lo], everything[hi:]]), everything[lo:hi])
        for lo, hi in zip(bounds[:-1], bounds[1:])
    ]


def filter_factors(s2: np.ndarray, alphas: np.ndarray, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """Low-rank factorisation of the ridge spectral filters ``1 / (s2 + a)`` over alphas.

    Returns ``coef`` (n_alphas, q) and ``basis`` (q, r) with
    ``1 / (s2[k] + a_i) ~= sum_m coef[i, m] * basis[m, k]``; per direction the error is below
    ``tol`` times the direction's largest filter value ``1 / (s2[k] + min(alphas))``.
    """
    scale = 1.0 / (s2[None, :] + alphas.min())  # (1, r)
    ratio = (s2[None, :] + alphas.min()) / (s2[None, :] + alphas[:, None])  # (n_alphas, r) in (0, 1]
    if ratio.shape[1] == 0:
        return np.zeros((len(alphas), 0)), np.zeros((0, 0))
    u, sv, vt = np.linalg.svd(ratio, full_matrices=False)
    q = int(np.sum(sv > tol)) or 1
    coef = u[:, :q] * sv[:q]
    basis = vt[:q] * scale
    return coef, basis
