"""The ``torch_cuda`` backend's code on the CPU: the ridge decoders and the banded encoding
models with ``backend="torch_cuda"``, its tensors placed on the CPU, against numpy.

No GPU is needed: torch is told a CUDA device exists and :class:`brainldm.linear.ops.TorchOps`
puts the ``cuda`` tensors on the CPU, keeping its name ``torch_cuda`` so that every branch the
GPU takes (``banded._held_out_mse`` in one block of validation rows) runs here.
"""

from __future__ import annotations

import numpy as np
import pytest

from brainldm.linear import banded, ops
from brainldm.linear.ridge import ridge_cv_predict


class CudaOnCpu(ops.TorchOps):
    """TorchOps for device ``cuda`` with its tensors on the CPU."""

    def __init__(self, device: str):
        super().__init__("cpu")
        if str(device).startswith("cuda"):
            self.name = "torch_cuda"


@pytest.fixture
def cuda_on_cpu(monkeypatch):
    """torch_cuda on the CPU; records each ``_held_out_mse`` call of the GPU branch after checking
    it against the CPU's row-blocked branch on the same tensors."""
    import torch

    cpu_torch_ops = ops.TorchOps("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(ops, "TorchOps", CudaOnCpu)
    calls = []
    held_out_mse = banded._held_out_mse

    def checked(coef, parts, y_val, backend_ops, *args, **kwargs):
        result = held_out_mse(coef, parts, y_val, backend_ops, *args, **kwargs)
        if backend_ops.name == "torch_cuda":
            blocked = held_out_mse(
                coef, parts, y_val, cpu_torch_ops, cache_floats=len(coef) * parts.shape[2] * 3
            )
            torch.testing.assert_close(result, blocked, rtol=1e-5, atol=1e-7)
            calls.append(parts.shape)
        return result

    monkeypatch.setattr(banded, "_held_out_mse", checked)
    return calls


def relative(a, b):
    return float(
        np.abs(np.asarray(a, float) - np.asarray(b, float)).max() / np.abs(np.asarray(b, float)).max()
    )


def test_stand_in_is_the_torch_cuda_backend(cuda_on_cpu):
    chosen = ops.get_ops("torch_cuda")
    assert chosen.name == "torch_cuda" and chosen.device.type == "cpu"
    assert ops.resolve_backend("torch_cuda") == "torch_cuda"


@pytest.mark.parametrize("dtype, tol", [("float64", 1e-9), ("float32", 1e-4)])
def test_ridge_decoder_on_torch_cuda_equals_numpy(cuda_on_cpu, dtype, tol):
    rng = np.random.default_rng(0)
    n_images, n, p, t = 60, 180, 40, 30
    rows = rng.integers(0, n_images, n)
    W = rng.standard_normal((p, t))
    F = rng.standard_normal((n_images, p)) @ W
    X = rng.standard_normal((n_images, p))[rows] + 0.5 * rng.standard_normal((n, p))
    X = (X - X.mean(0)) / X.std(0)
    X_test = rng.standard_normal((12, p))
    fits = {
        backend: ridge_cv_predict(
            X,
            F,
            X_test,
            rows=rows,
            alphas=np.logspace(-2, 4, 7),
            backend=backend,
            dtype=dtype,
            n_targets_batch=16,
        )
        for backend in ("numpy", "torch_cuda")
    }
    assert relative(fits["torch_cuda"].predictions, fits["numpy"].predictions) < tol
    np.testing.assert_array_equal(fits["torch_cuda"].best_alphas, fits["numpy"].best_alphas)
    assert len(np.unique(fits["numpy"].best_alphas)) > 1


@pytest.mark.parametrize("validation_operators", [False, True])
def test_banded_models_on_torch_cuda_equal_numpy(cuda_on_cpu, validation_operators):
    rng = np.random.default_rng(1)
    n_train, n_test, widths, n_targets = 150, 40, (15, 120), 200
    latent = rng.standard_normal((n_train + n_test, 10))
    spaces = [
        latent @ rng.standard_normal((10, w)) + rng.standard_normal((n_train + n_test, w)) for w in widths
    ]
    weights = rng.uniform(0, 1, (2, n_targets))
    Y = sum(s[:, :10] @ rng.standard_normal((10, n_targets)) * w for s, w in zip(spaces, weights))
    Y = Y + rng.standard_normal(Y.shape)
    Y = (Y[:n_train] - Y[:n_train].mean(0)).astype(np.float32)
    train, test = [s[:n_train] for s in spaces], [s[n_train:] for s in spaces]
    kernels = {
        backend: banded.linear_kernels(train, test, backend=backend) for backend in ("numpy", "torch_cuda")
    }
    for a, b in zip(kernels["torch_cuda"], kernels["numpy"]):
        assert relative(a, b) < 1e-5
    Ks, Ks_test = kernels["numpy"]
    fits = {
        backend: banded.banded_ridge_cv_predict(
            Ks,
            Y,
            Ks_test,
            alphas=np.logspace(-1, 5, 7),
            n_iter=4,
            backend=backend,
            n_targets_batch=64,
            validation_operators=validation_operators,
        )
        for backend in ("numpy", "torch_cuda")
    }
    same = (fits["torch_cuda"].best_alphas == fits["numpy"].best_alphas) & (
        fits["torch_cuda"].best_gammas == fits["numpy"].best_gammas
    ).all(axis=0)
    assert same.mean() > 0.95
    assert relative(fits["torch_cuda"].predictions[:, same], fits["numpy"].predictions[:, same]) < 1e-4
    # the GPU branch (every validation row at once) ran for each candidate, fold and target batch
    assert len(cuda_on_cpu) == 4 * 5 * 4
