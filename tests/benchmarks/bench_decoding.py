"""Benchmark: the paper's decoders at NSD's shapes, ours vs himalaya's plain RidgeCV.

Random data with NSD's design: 24,980 training trials of 8,859 images (each seen ~3 times, in
random order), 982 test images; ``z``: 6,400 targets from 5,000 voxels, ``c``: 59,136 targets
from 7,000 voxels. Voxels and targets share a 64-dimensional latent per image plus noise, so the
decoders have something to find. Both solvers get the same standardised float32 X and the
paper's settings (alphas 1e-6 ... 1, 5-fold unshuffled KFold, alpha per target, no intercept).

Each fit runs in its own process, which reports its wall time and peak resident memory.

The baseline (``himalaya.ridge.RidgeCV``, solver svd, numpy backend unless ``--himalaya-backend``)
is too slow to run on all targets of ``c`` on a small machine, so it runs on ``--baseline-targets``
of them and its time is extrapolated to all targets: himalaya's cost is a fixed part (six SVDs and
the resolution matrices) plus a part linear in the targets (per fold, ``(n_alphas, n_val, n_train) @
(n_train, t)`` and the loss; at refit, ``(n_alphas, n_voxels, n_trials) @ (n_trials, t)``). That
linear part is timed on exactly these kernels at these shapes and scaled to the missing targets.
Predictions are compared on the targets both ran (a target's fit does not depend on the others).

Usage::

    python tests/benchmarks/bench_decoding.py                # quick: NSD shapes scaled by 0.25
    python tests/benchmarks/bench_decoding.py --scale 1      # NSD's shapes (about 1.5 h on 2 cores)
    python tests/benchmarks/bench_decoding.py --scale 1 --feature z --baseline-targets 6400
    python tests/benchmarks/bench_decoding.py --scale 1 --backend torch_cuda --himalaya-backend torch_cuda \
        --baseline-targets 59136                            # on a GPU: both on torch_cuda, all targets

Prints one line per feature: our time and peak memory on all targets, the baseline's measured
and extrapolated time and peak memory, the speed-up, and the largest relative difference of the
predictions (max |ours - himalaya| / max |himalaya|).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "workflow" / "scripts"))

NSD = {"n_trials": 24980, "n_images": 8859, "n_test": 982, "z": (5000, 6400), "c": (7000, 59136)}
ALPHAS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
N_FOLDS = 5
LATENT = 64


def shapes(feature: str, scale: float) -> dict:
    n_voxels, n_targets = NSD[feature]
    return {
        "n_trials": int(round(NSD["n_trials"] * scale)),
        "n_images": int(round(NSD["n_images"] * scale)),
        "n_test": int(round(NSD["n_test"] * scale)),
        "n_voxels": int(round(n_voxels * scale)),
        "n_targets": n_targets,
    }


def make_data(s: dict, n_targets: int, seed: int = 0):
    """Standardised X (n_trials, n_voxels) float32, X_test, target table F (n_images, n_targets)
    float32 and rows (n_trials,) mapping trials to images."""
    rng = np.random.default_rng(seed)
    n, n_img, p = s["n_trials"], s["n_images"], s["n_voxels"]
    rows = np.concatenate([np.arange(n_img), rng.integers(0, n_img, n - n_img)])
    rng.shuffle(rows)
    latent = rng.standard_normal((n_img + s["n_test"], LATENT)).astype(np.float32)
    mixing = (rng.standard_normal((LATENT, p)) / np.sqrt(LATENT)).astype(np.float32)
    X = latent[rows] @ mixing + 2.0 * rng.standard_normal((n, p), dtype=np.float32)
    X_test = latent[n_img:] @ mixing + 1.2 * rng.standard_normal((s["n_test"], p), dtype=np.float32)
    # targets in blocks of 256 columns, each from its own generator, so that the first t
    # columns are the same whatever n_targets is
    F = np.empty((n_img, n_targets), dtype=np.float32)
    step = 256
    for block, start in enumerate(range(0, n_targets, step)):
        cols = min(step, n_targets - start)
        trng = np.random.default_rng([seed + 1, block])
        loading = (trng.standard_normal((LATENT, step)) / np.sqrt(LATENT)).astype(np.float32)
        noise = trng.standard_normal((n_img, step), dtype=np.float32)
        F[:, start : start + cols] = (latent[:n_img] @ loading + noise)[:, :cols]
    mean, std = X.mean(0), X.std(0)
    f32 = np.float32
    return ((X - mean) / std).astype(f32), ((X_test - mean) / std).astype(f32), F.astype(f32), rows


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child_ours(s, n_targets, batch, backend, out, queue):
    from brainldm.linear.ridge import ridge_cv_predict

    if backend == "torch_cuda":  # the CUDA context before the clock, as himalaya's gets it
        import torch

        torch.zeros(1, device="cuda")
    X, X_test, F, rows = make_data(s, n_targets)
    data_mb = _peak_mb()
    t0, c0 = time.perf_counter(), _cpu_seconds()
    result = ridge_cv_predict(
        X, F, X_test, alphas=ALPHAS, n_folds=N_FOLDS, rows=rows, backend=backend, n_targets_batch=batch
    )
    seconds, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    np.save(out, result.predictions)
    queue.put(
        {
            "seconds": seconds,
            "cpu": cpu,
            "peak_mb": _peak_mb(),
            "data_mb": data_mb,
            "filter_rank": result.filter_rank,
            "load": os.getloadavg()[0],
        }
    )


def child_himalaya(s, n_targets, out, backend, queue):
    from himalaya.backend import set_backend
    from himalaya.ridge import RidgeCV
    from sklearn.model_selection import KFold

    backend_obj = set_backend(backend, on_error="raise")
    if backend == "torch_cuda":  # the CUDA context before the clock, as ours gets it
        backend_obj.zeros(1)
    X, X_test, F, rows = make_data(s, n_targets)
    Y = F[rows]
    del F
    data_mb = _peak_mb()
    t0, c0 = time.perf_counter(), _cpu_seconds()
    model = RidgeCV(
        alphas=np.asarray(ALPHAS, dtype=np.float32),
        cv=KFold(N_FOLDS, shuffle=False),
        fit_intercept=False,
        solver="svd",
    )
    model.fit(X, Y)
    pred = np.asarray(backend_obj.to_numpy(model.predict(X_test)))
    seconds, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    np.save(out, pred)
    queue.put(
        {
            "seconds": seconds,
            "cpu": cpu,
            "peak_mb": _peak_mb(),
            "data_mb": data_mb,
            "load": os.getloadavg()[0],
        }
    )


def child_himalaya_per_target(s, n_targets, queue):
    """Seconds per target of himalaya's target-linear kernels at these shapes (float32)."""
    from himalaya.scoring import l2_neg_loss

    rng = np.random.default_rng(0)
    n, p, k = s["n_trials"], s["n_voxels"], len(ALPHAS)
    n_val = n // N_FOLDS
    n_train = n - n_val
    t = n_targets
    cv_matrix = rng.standard_normal((k, n_val, n_train), dtype=np.float32)
    y_train = rng.standard_normal((n_train, t), dtype=np.float32)
    y_val = rng.standard_normal((n_val, t), dtype=np.float32)
    t0, c0 = time.perf_counter(), _cpu_seconds()
    l2_neg_loss(y_val, np.matmul(cv_matrix, y_train))
    cv_seconds, cv_cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    del cv_matrix, y_train, y_val
    refit_matrix = rng.standard_normal((k, p, n), dtype=np.float32)
    y = rng.standard_normal((n, t), dtype=np.float32)
    t0, c0 = time.perf_counter(), _cpu_seconds()
    np.matmul(refit_matrix, y)
    refit_seconds, refit_cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    queue.put(
        {
            "per_target": (N_FOLDS * cv_seconds + refit_seconds) / t,
            "per_target_cpu": (N_FOLDS * cv_cpu + refit_cpu) / t,
        }
    )


def run(target, *args):
    """Run ``target`` in a fresh process; its result dict, or an error if the process dies."""
    import queue as queue_module

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    while True:
        try:
            result = queue.get(timeout=5)
            break
        except queue_module.Empty:
            if not proc.is_alive():
                raise RuntimeError(
                    f"{target.__name__} died (exit code {proc.exitcode}; "
                    "-9 usually means the kernel's out-of-memory killer)"
                )
    proc.join()
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--feature", choices=["z", "c", "both"], default="both")
    parser.add_argument(
        "--scale",
        type=float,
        default=0.25,
        help="fraction of NSD's trials, images, test images and voxels (1 = NSD)",
    )
    parser.add_argument("--targets-c", type=int, default=NSD["c"][1], help="targets of c for our fit")
    parser.add_argument(
        "--baseline-targets",
        type=int,
        default=512,
        help="targets the himalaya baseline fits (its time is extrapolated to all)",
    )
    parser.add_argument("--batch", type=int, default=8192, help="our n_targets_batch")
    parser.add_argument("--backend", default="numpy", help="ours: numpy, torch or torch_cuda")
    parser.add_argument(
        "--himalaya-backend",
        default="numpy",
        help="the baseline's himalaya backend (numpy, torch, torch_cuda)",
    )
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument(
        "--ours-seconds",
        type=float,
        default=None,
        help="our wall time on all targets measured in an earlier run: fit ours "
        "only on the baseline's targets (for the comparison) and use this time",
    )
    args = parser.parse_args(argv)

    print(
        f"# cores {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}, scale {args.scale}, "
        f"backend {args.backend}, himalaya backend {args.himalaya_backend}",
        flush=True,
    )
    features = ["z", "c"] if args.feature == "both" else [args.feature]
    with tempfile.TemporaryDirectory() as tmp:
        for feature in features:
            s = shapes(feature, args.scale)
            n_targets = args.targets_c if feature == "c" else s["n_targets"]
            base_t = min(args.baseline_targets, n_targets)
            print(
                f"{feature}: {s['n_trials']} trials of {s['n_images']} images, {s['n_test']} test, "
                f"{s['n_voxels']} voxels, {n_targets} targets",
                flush=True,
            )
            ours = run(
                child_ours,
                s,
                base_t if args.ours_seconds else n_targets,
                args.batch,
                args.backend,
                f"{tmp}/ours_{feature}.npy",
            )
            if args.ours_seconds:
                print(
                    f"  (our fit below is on {base_t} targets; the speed-up uses --ours-seconds "
                    f"{args.ours_seconds:.1f} measured on all {n_targets})",
                    flush=True,
                )
            print(
                f"  ours      : {ours['seconds']:8.1f} s wall, {ours['cpu']:8.1f} s CPU, peak "
                f"{ours['peak_mb'] / 1024:5.2f} GB (data alone {ours['data_mb'] / 1024:.2f} GB), "
                f"filter rank {ours['filter_rank']}, load {ours['load']:.1f}",
                flush=True,
            )
            if args.skip_baseline:
                continue
            base = run(child_himalaya, s, base_t, f"{tmp}/himalaya_{feature}.npy", args.himalaya_backend)
            seconds, cpu = base["seconds"], base["cpu"]
            note = "measured"
            if base_t < n_targets:
                kernel = run(child_himalaya_per_target, s, min(base_t, 512))
                seconds += (n_targets - base_t) * kernel["per_target"]
                cpu += (n_targets - base_t) * kernel["per_target_cpu"]
                note = (
                    f"{base['seconds']:.1f} s wall / {base['cpu']:.1f} s CPU measured on {base_t} "
                    f"targets + {kernel['per_target'] * 1e3:.2f} ms / {kernel['per_target_cpu'] * 1e3:.2f} "
                    f"ms CPU x {n_targets - base_t} more targets"
                )
            ref = np.load(f"{tmp}/himalaya_{feature}.npy")
            mine = np.load(f"{tmp}/ours_{feature}.npy")[:, :base_t]
            rel = float(np.abs(mine - ref).max() / np.abs(ref).max())
            col = np.linalg.norm(mine - ref, axis=0) / np.linalg.norm(ref, axis=0)
            print(
                f"  himalaya  : {seconds:8.1f} s wall, {cpu:8.1f} s CPU ({note}); peak "
                f"{base['peak_mb'] / 1024:5.2f} GB on {base_t} targets (data alone "
                f"{base['data_mb'] / 1024:.2f} GB), load {base['load']:.1f}",
                flush=True,
            )
            ours_seconds = args.ours_seconds or ours["seconds"]
            cpu_ratio = "" if args.ours_seconds else f", {cpu / ours['cpu']:.1f}x CPU"
            print(
                f"  speed-up  : {seconds / ours_seconds:.1f}x wall{cpu_ratio}; "
                f"predictions on {base_t} targets: max |diff| / max |himalaya| = {rel:.2e}, worst "
                f"per-target relative L2 = {col.max():.2e}",
                flush=True,
            )


if __name__ == "__main__":
    main()
