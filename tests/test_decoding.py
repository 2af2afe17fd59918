"""Decoders: the fast solver equals himalaya's RidgeCV with the paper's settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from brainldm import decoding
from brainldm.decoding import fit_decoder, per_image_correlation
from brainldm.features.rows import load_feature_rows
from brainldm.fmri.load import standardize
from brainldm.linear import ops as ridge_ops
from brainldm.linear.ops import kfold_splits
from brainldm.linear.ridge import PAPER_ALPHAS, ridge_cv_predict

WIDE_ALPHAS = [1e-2, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5]

SCRIPTS = Path(__file__).resolve().parents[1] / "workflow" / "scripts"


def make_data(n=240, p=30, t=24, n_images=80, n_test=12, seed=0, dtype="float64", offset=0.0):
    """Trials of images with a linear brain response; ``offset`` added to every target."""
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, n_images, n)
    F = rng.standard_normal((n_images + n_test, t)) + offset
    W = rng.standard_normal((t, p)) / np.sqrt(t)
    X = (F[rows] - offset) @ W + 1.5 * rng.standard_normal((n, p)) + 3.0
    X_test = (F[n_images:] - offset) @ W + 0.5 * rng.standard_normal((n_test, p)) + 3.0
    return X.astype(dtype), F[:n_images].astype(dtype), rows, X_test.astype(dtype), F[n_images:]


def himalaya_paper(X, Y, X_test, alphas=PAPER_ALPHAS, center=False):
    """The paper's call, written out directly: StandardScaler-like X, RidgeCV svd, KFold(5)."""
    from himalaya.backend import set_backend
    from himalaya.ridge import RidgeCV
    from sklearn.model_selection import KFold

    set_backend("numpy")
    mean, std = X.mean(0), X.std(0)
    xs, xt = (X - mean) / std, (X_test - mean) / std
    y_mean = Y.mean(0) if center else 0.0
    model = RidgeCV(
        alphas=np.asarray(alphas, dtype=X.dtype),
        cv=KFold(5, shuffle=False),
        fit_intercept=False,
        solver="svd",
    )
    model.fit(xs, Y - y_mean)
    return (
        np.asarray(model.predict(xt)) + y_mean,
        np.asarray(model.best_alphas_),
        np.asarray(model.cv_scores_),
    )


def rel_diff(a, b):
    return float(
        np.abs(np.asarray(a, float) - np.asarray(b, float)).max() / np.abs(np.asarray(b, float)).max()
    )


@pytest.mark.parametrize("alphas", [PAPER_ALPHAS, WIDE_ALPHAS], ids=["paper_alphas", "wide_alphas"])
def test_predictions_equal_himalaya_ridgecv_float64(alphas):
    X, F, rows, X_test, _ = make_data()
    Y = F[rows]
    ours = fit_decoder(X, Y, X_test, alphas=alphas, dtype="float64")
    ref_pred, ref_alphas, ref_scores = himalaya_paper(X, Y, X_test, alphas)
    assert rel_diff(ours.predictions, ref_pred) < 1e-6
    np.testing.assert_allclose(ours.best_alphas, ref_alphas, rtol=1e-6)
    np.testing.assert_allclose(ours.cv_scores, ref_scores, rtol=1e-8)
    if alphas is WIDE_ALPHAS:  # the choice really varies over targets, so it is tested
        assert len(np.unique(ours.best_alphas)) >= 2


def test_predictions_equal_himalaya_float32_with_image_rows_and_batches():
    X, F, rows, X_test, _ = make_data(n=400, p=40, t=50, n_images=120, dtype="float32")
    ours = fit_decoder(X, F, X_test, rows=rows, n_targets_batch=16)  # Y as a per-image table
    ref_pred, ref_alphas, _ = himalaya_paper(X, F[rows], X_test)
    assert rel_diff(ours.predictions, ref_pred) < 1e-4
    assert np.mean(np.isclose(ours.best_alphas, ref_alphas, rtol=1e-5)) > 0.8


# himalaya's primal RidgeCV, the reference here, warns that the dual would be faster at this shape:
# the comparison is the point.
@pytest.mark.filterwarnings("ignore:Solving ridge is slower than solving kernel ridge")
def test_more_voxels_than_trials_uses_the_dual_and_still_matches():
    X, F, rows, X_test, _ = make_data(n=60, p=150, t=10, n_images=30)
    ours = fit_decoder(X, F, X_test, rows=rows, alphas=WIDE_ALPHAS, dtype="float64")
    ref_pred, ref_alphas, _ = himalaya_paper(X, F[rows], X_test, WIDE_ALPHAS)
    assert rel_diff(ours.predictions, ref_pred) < 1e-6
    np.testing.assert_allclose(ours.best_alphas, ref_alphas, rtol=1e-6)


def test_solver_himalaya_option_is_the_same_model():
    X, F, rows, X_test, _ = make_data(seed=3)
    a = fit_decoder(X, F, X_test, rows=rows, dtype="float64")
    b = fit_decoder(X, F, X_test, rows=rows, dtype="float64", solver="himalaya")
    assert rel_diff(a.predictions, b.predictions) < 1e-6
    with pytest.raises(ValueError, match="solver 'lstsq' is unknown"):
        fit_decoder(X, F, X_test, rows=rows, solver="lstsq")


def test_center_targets_equals_himalaya_on_centred_targets_plus_mean():
    X, F, rows, X_test, F_test = make_data(offset=5.0, seed=1)
    Y = F[rows]
    centred = fit_decoder(X, Y, X_test, center_targets=True, dtype="float64")
    ref_pred, _, _ = himalaya_paper(X, Y, X_test, center=True)
    assert rel_diff(centred.predictions, ref_pred) < 1e-6
    np.testing.assert_allclose(centred.y_mean, Y.mean(0), rtol=1e-12)
    # the paper's raw-Y fit has no intercept: with a large target offset its predictions miss
    # the mean, which centring restores
    raw = fit_decoder(X, Y, X_test, dtype="float64")
    err_raw = np.abs(raw.predictions.mean() - F_test.mean())
    err_centred = np.abs(centred.predictions.mean() - F_test.mean())
    assert err_centred < 0.2 < err_raw


def test_torch_backend_equals_numpy():
    X, F, rows, X_test, _ = make_data(seed=2)
    a = fit_decoder(X, F, X_test, rows=rows, dtype="float64", backend="numpy")
    b = fit_decoder(X, F, X_test, rows=rows, dtype="float64", backend="torch")
    assert rel_diff(b.predictions, a.predictions) < 1e-9
    np.testing.assert_array_equal(a.best_alphas, b.best_alphas)


def test_deterministic_and_independent_of_target_batch_size():
    X, F, rows, X_test, _ = make_data(dtype="float32", seed=4)
    a = fit_decoder(X, F, X_test, rows=rows, n_targets_batch=5)
    b = fit_decoder(X, F, X_test, rows=rows, n_targets_batch=5)
    c = fit_decoder(X, F, X_test, rows=rows, n_targets_batch=None)
    np.testing.assert_array_equal(a.predictions, b.predictions)
    np.testing.assert_array_equal(a.best_alphas, b.best_alphas)
    assert rel_diff(c.predictions, a.predictions) < 1e-5


def test_decoder_recovers_signal_and_standardises_on_train_only():
    X, F, rows, X_test, F_test = make_data(n=600, n_images=200, seed=5)
    fit = fit_decoder(X, F, X_test, rows=rows)
    r = per_image_correlation(fit.predictions, F_test)
    assert np.nanmean(r) > 0.5
    xs, xt, mean, std = standardize(X, X_test)
    np.testing.assert_allclose(xs.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(xs.std(0), 1, atol=1e-5)
    np.testing.assert_allclose(xt, ((X_test - X.mean(0)) / X.std(0)).astype(np.float32), rtol=1e-5, atol=1e-5)


def test_kfold_splits_are_sklearns_unshuffled_kfold():
    from sklearn.model_selection import KFold

    for n, k in [(10, 3), (23, 5), (5, 5)]:
        ours = kfold_splits(n, k)
        ref = list(KFold(k, shuffle=False).split(np.arange(n)))
        for (tr, va), (rtr, rva) in zip(ours, ref):
            np.testing.assert_array_equal(tr, rtr)
            np.testing.assert_array_equal(va, rva)
    with pytest.raises(ValueError, match="cannot be split"):
        kfold_splits(3, 5)


def test_per_image_correlation_hand_computed():
    pred = np.array([[1.0, 2.0, 3.0], [1.0, 0.0, 1.0], [2.0, 2.0, 2.0]])
    true = np.array([[2.0, 4.0, 6.5], [0.0, 1.0, 0.0], [1.0, 2.0, 3.0]])
    r = per_image_correlation(pred, true)
    expected0 = np.corrcoef(pred[0], true[0])[0, 1]
    assert r[0] == pytest.approx(expected0) and r[0] < 1
    assert r[1] == pytest.approx(-1.0)
    assert np.isnan(r[2])  # constant prediction


def test_bad_inputs_name_the_problem():
    X, F, rows, X_test, _ = make_data()
    with pytest.raises(ValueError, match="pass rows="):
        ridge_cv_predict(X, F, X_test)
    with pytest.raises(ValueError, match="alphas must be positive"):
        ridge_cv_predict(X, F[rows], X_test, alphas=[0.0, 1.0])
    with pytest.raises(ValueError, match="unknown"):
        ridge_ops.resolve_backend("jax")


def test_blas_threads_limits_numpy_and_scipy_blas_in_a_fresh_process():
    """Every BLAS that numpy and scipy.linalg load (pip's wheels: one each) runs one thread."""
    probe = (
        "import json, numpy; from threadpoolctl import threadpool_info; from brainldm.linear.ops import "
        "blas_threads\n"
        "with blas_threads(1):\n"
        "    limited = [i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas']\n"
        "import scipy.linalg\n"
        "print(json.dumps([limited, len([i for i in threadpool_info() if i['user_api'] == 'blas'])]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(SCRIPTS), "OPENBLAS_NUM_THREADS": "2"},
    )
    limited, n_libraries = json.loads(result.stdout)
    assert len(limited) == n_libraries >= 1 and set(limited) == {1}, (limited, n_libraries)


def test_auto_backend_without_a_gpu_driver_is_numpy_and_leaves_torch_unimported(tmp_path):
    probe = (
        "import sys; from brainldm import decoding; from brainldm.linear import ops as ridge_ops; "
        "ridge_ops.GPU_DRIVER_FILES = (%r,); "
        "print(ridge_ops.resolve_backend('auto'), 'torch' in sys.modules)" % str(tmp_path / "no_driver")
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(SCRIPTS)},
    )
    assert result.stdout.split() == ["numpy", "False"]


def test_auto_backend_asks_torch_when_a_driver_file_exists(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    driver = tmp_path / "version"
    driver.write_text("NVRM version: test\n")
    monkeypatch.setattr(ridge_ops, "GPU_DRIVER_FILES", (str(driver),))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert ridge_ops.resolve_backend("auto") == "torch_cuda"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert ridge_ops.resolve_backend("auto") == "numpy"


def write_contract_inputs(tmp_path, X, F, rows, X_test, F_test, nsd_offset=1000):
    """fMRI-prep and features files in the brief's contract formats."""
    fmri = tmp_path / "fmri"
    feats = tmp_path / "features"
    fmri.mkdir()
    feats.mkdir()
    p = X.shape[1]
    np.save(fmri / "early_train.npy", X[:, : p // 2].astype(np.float32))
    np.save(fmri / "early_test.npy", X_test[:, : p // 2].astype(np.float32))
    np.save(fmri / "ventral_train.npy", X[:, p // 2 :].astype(np.float32))
    np.save(fmri / "ventral_test.npy", X_test[:, p // 2 :].astype(np.float32))
    train_ids = rows * 3 + 7  # arbitrary, increasing with the image index
    test_ids = np.arange(len(F_test)) * 3 + nsd_offset
    (fmri / "train_trials.tsv").write_text(
        "row\tnsdId\ttrial\tsession\n"
        + "".join(f"{i}\t{n}\t{i}\t{1 + i // 50}\n" for i, n in enumerate(train_ids))
    )
    (fmri / "test_images.tsv").write_text(
        "row\tnsdId\tn_repeats\n" + "".join(f"{i}\t{n}\t3\n" for i, n in enumerate(test_ids))
    )
    all_ids = np.concatenate([np.arange(len(F)) * 3 + 7, test_ids])
    values = np.concatenate([F, F_test]).reshape(len(all_ids), 2, -1).astype(np.float16)
    order = np.argsort(all_ids)
    np.save(feats / "z.npy", values[order])
    np.save(feats / "z_nsd_ids.npy", all_ids[order].astype(np.int64))
    return fmri, feats, test_ids


def test_decode_feature_writes_the_contract_outputs_and_control(tmp_path):
    X, F, rows, X_test, F_test = make_data(n=600, n_images=200, seed=6, t=24)
    fmri, feats, test_ids = write_contract_inputs(tmp_path, X, F, rows, X_test, F_test)
    out = tmp_path / "out"
    summary = decoding.decode_feature(
        fmri,
        feats,
        "z",
        ["early", "ventral"],
        out,
        backend="numpy",
        shuffle_control=True,
        progress=False,
    )
    pred = np.load(out / "z_pred.npy")
    assert pred.shape == (len(F_test), 2, 12) and pred.dtype == np.float32
    np.testing.assert_array_equal(np.load(out / "z_nsd_ids.npy"), test_ids)
    assert np.load(out / "z_alphas.npy").shape == (24,)
    info = json.loads((out / "z.json").read_text())
    assert info == summary
    assert (info["n_train"], info["n_test"], info["n_voxels"]) == (600, len(F_test), X.shape[1])
    assert info["mean_test_r"] > 0.5 > info["mean_test_r_shuffled"] + 0.3
    assert info["mean_test_r_centered"] > 0.5 > info["mean_test_r_centered_shuffled"] + 0.3
    r = np.loadtxt(out / "z_test_r.tsv", skiprows=1)
    assert r.shape == (len(F_test), 3) and np.mean(r[:, 2]) == pytest.approx(info["mean_test_r"], abs=1e-5)
    # the same fit through the library call
    direct = fit_decoder(X.astype(np.float32), F.astype(np.float16), X_test.astype(np.float32), rows=rows)
    assert rel_diff(pred.reshape(len(F_test), -1), direct.predictions) < 1e-5

    decoding.summarize_decoding([out / "z.json"], [1], tmp_path / "decoding.tsv")
    header, line = (tmp_path / "decoding.tsv").read_text().splitlines()
    assert header.split("\t")[:8] == [
        "subject",
        "feature",
        "rois",
        "n_train",
        "n_test",
        "n_voxels",
        "mean_test_r",
        "median_alpha",
    ]
    assert line.split("\t")[:3] == ["1", "z", "early+ventral"]


def test_centred_score_sees_through_a_large_common_pattern(tmp_path):
    """Targets = a large pattern common to all images + image-specific signal: the paper's r
    of the raw fit is small, the centred r is high, and both fits give the same centred r
    (the raw fit predicts exactly the deviations from the training mean)."""
    X, F, rows, X_test, F_test = make_data(n=600, n_images=200, seed=8, t=24)
    common = 10 * np.sin(np.arange(24))
    fmri, feats, _ = write_contract_inputs(tmp_path, X, F + common, rows, X_test, F_test + common)
    raw = decoding.decode_feature(
        fmri, feats, "z", ["early", "ventral"], tmp_path / "raw", backend="numpy", progress=False
    )
    centred = decoding.decode_feature(
        fmri,
        feats,
        "z",
        ["early", "ventral"],
        tmp_path / "cen",
        backend="numpy",
        center_targets=True,
        progress=False,
    )
    assert raw["mean_test_r"] < 0.3 < 0.6 < raw["mean_test_r_centered"]
    assert centred["mean_test_r"] > 0.9
    assert centred["mean_test_r_centered"] == pytest.approx(raw["mean_test_r_centered"], abs=2e-3)


def test_missing_features_are_named(tmp_path):
    X, F, rows, X_test, F_test = make_data(seed=7)
    fmri, feats, _ = write_contract_inputs(tmp_path, X, F, rows, X_test, F_test)
    with pytest.raises(FileNotFoundError, match="c.npy is missing"):
        decoding.decode_feature(fmri, feats, "c", ["early"], tmp_path / "o", backend="numpy")
    with pytest.raises(KeyError, match="requested nsdIds have no features"):
        load_feature_rows(feats, "z", np.array([7, 8]))


def test_backend_errors_name_the_config_key(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    from brainldm.encoding.fit import EncodingSettings, fit_model

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    X, F, rows, X_test, F_test = make_data(seed=8)
    fmri, feats, _ = write_contract_inputs(tmp_path, X, F, rows, X_test, F_test)
    with pytest.raises(RuntimeError, match=r"^decoding\.backend is 'torch_cuda' but torch sees no CUDA"):
        decoding.decode_feature(
            fmri, feats, "z", ["early"], tmp_path / "o", backend="torch_cuda", progress=False
        )
    with pytest.raises(ValueError, match=r"^decoding\.backend 'jax' is unknown"):
        decoding.decode_feature(fmri, feats, "z", ["early"], tmp_path / "o", backend="jax", progress=False)
    assert not (tmp_path / "o").exists()
    space, targets = np.zeros((6, 2), np.float32), np.zeros((6, 3), np.float32)
    with pytest.raises(RuntimeError, match=r"^encoding\.backend is 'torch_cuda' but torch sees no CUDA"):
        fit_model([space], targets, [space], EncodingSettings(backend="torch_cuda"))


def test_target_mean_weights_images_by_their_trials():
    Y = np.array([[0.0, 1.0], [10.0, 3.0]])
    np.testing.assert_allclose(decoding.target_mean(Y, np.array([0, 0, 0, 1])), [2.5, 1.5])
