"""Benchmark: the joint z + c encoding model at NSD's shapes, ours vs himalaya's tutorial recipe.

Random data of NSD's shapes (scaled by ``--scale``): 8,859 training images (``--trials`` for
24,980 single trials of them), 982 test images, 15,724 nsdgeneral voxels; ``z`` 6,400 and ``c``
59,136 features. Voxels respond to both spaces (each voxel its own mix) plus noise, so the search
has something to find. Both solvers fit the same float32 data with the same grid (alphas
``logspace(1, 20, 20)``, 20 random-search candidates, 5-fold ``KFold``, seed 0):

- ``himalaya``: the gallantlab recipe, ``ColumnKernelizer`` (StandardScaler(with_std=False) +
  linear Kernelizer per space) and ``MultipleKernelRidgeCV(kernels="precomputed",
  solver="random_search")``, ``predict`` and ``predict(split=True)``;
- ``ours``: :func:`brainldm.banded.linear_kernels` + :func:`brainldm.banded.banded_ridge_cv_predict`.

Each runs in its own process with one BLAS thread, which reports wall and CPU time (CPU time is
the fair measure on a shared machine) and peak resident memory (ru_maxrss);
scores are compared voxel by voxel (test r of each fit).

Whole brain: ``--whole-brain-voxels N`` (e.g. 100,000) fits each solver a second time on
``--fit-voxels`` targets (default 15,724, unscaled: many voxels, so the part linear in the targets
is well above the timing noise) and, from the two fits, splits its CPU time and peak memory into
a fixed part and a part linear in the targets; it prints both, extrapolated to N targets.

Usage::

    python tests/benchmarks/bench_encoding.py --scale 0.2      # what this project's 2-core machine allows
    python tests/benchmarks/bench_encoding.py --scale 1        # NSD's shapes (hours on 2 CPU cores)
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "workflow" / "scripts"))

NSD = {"n_train": 8859, "n_trials": 24980, "n_test": 982, "voxels": 15724, "z": 6400, "c": 59136}


def make_data(n_train, n_test, n_voxels, z_dims, c_dims, seed=0, chunk=1024):
    """Two feature spaces and voxels mixing them: float32 arrays.

    The voxels are drawn ``chunk`` at a time, so the data's own temporaries (the voxels' weights
    over ``c``'s features) stay small beside what the solvers hold at whole-brain sizes.
    """
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    latent = 32
    spaces = []
    for dims in (z_dims, c_dims):
        basis = rng.standard_normal((latent, dims), dtype=np.float32) / np.sqrt(latent)
        x = rng.standard_normal((n, latent), dtype=np.float32) @ basis
        x += rng.standard_normal((n, dims), dtype=np.float32)
        spaces.append(x)
    Y = np.empty((n, n_voxels), dtype=np.float32)
    for start in range(0, n_voxels, chunk):
        part = slice(start, min(start + chunk, n_voxels))
        share = rng.uniform(0, 1, part.stop - start).astype(np.float32)
        y = 2.0 * rng.standard_normal((n, part.stop - start), dtype=np.float32)
        for space, weight in zip(spaces, (share, 1 - share)):
            w = rng.standard_normal((space.shape[1], part.stop - start), dtype=np.float32) / np.sqrt(space.shape[1])
            signal = space @ w
            y += signal / signal.std(0) * np.sqrt(weight)
        y -= y[:n_train].mean(0)
        y /= y[:n_train].std(0)
        Y[:, part] = y
    return [s[:n_train] for s in spaces], [s[n_train:] for s in spaces], Y[:n_train], Y[n_train:]


def run(which, shapes, n_iter, queue, threads=1):
    from threadpoolctl import threadpool_limits

    from brainldm.banded import banded_ridge_cv_predict, himalaya_banded_predict, linear_kernels
    from brainldm.scoring import voxel_correlation

    import himalaya.kernel_ridge  # noqa: F401  (imported before the clock starts, for both)

    # After the imports, so that scipy's own BLAS is limited too: the same threads for both.
    threadpool_limits(threads)

    train, test, Y, Y_test = make_data(*shapes)
    rows = SHAPES_TRIALS.get("rows")
    if rows is not None:
        train = [x[rows] for x in train]
        Y = Y[rows]
    data_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start, cpu_start = time.perf_counter(), time.process_time()
    if which == "himalaya":
        pred, _, _ = himalaya_banded_predict(train, Y, test, n_iter=n_iter, random_state=0,
                                             n_targets_batch=2048, n_alphas_batch=5, n_targets_batch_refit=1024)
    else:
        Ks, Ks_test = linear_kernels(train, test)
        pred = banded_ridge_cv_predict(Ks, Y, Ks_test, n_iter=n_iter, random_state=0, n_targets_batch=4096).predictions
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    r = voxel_correlation(pred, Y_test)
    queue.put({"seconds": seconds, "cpu": cpu, "data_mb": data_mb,
               "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "r": r})


SHAPES_TRIALS: dict = {}


def in_child(which, shapes, n_iter, threads=1):
    context = mp.get_context("fork")
    queue = context.Queue()
    process = context.Process(target=run, args=(which, shapes, n_iter, queue, threads))
    process.start()
    result = queue.get()
    process.join()
    if process.exitcode:
        raise RuntimeError(f"{which} died with exit code {process.exitcode}")
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.2, help="fraction of NSD's samples, voxels and features")
    parser.add_argument("--n-iter", type=int, default=20)
    parser.add_argument("--trials", action="store_true", help="single trials (24,980 x scale) instead of images")
    parser.add_argument("--skip-himalaya", action="store_true")
    parser.add_argument("--whole-brain-voxels", type=int, default=0,
                        help="extrapolate each solver to this many targets (0: no whole-brain variant)")
    parser.add_argument("--fit-voxels", type=int, default=NSD["voxels"],
                        help="targets of the whole-brain variant's second fit (default NSD's 15,724, unscaled)")
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads of each fit")
    args = parser.parse_args()
    s = args.scale
    shapes = (int(NSD["n_train"] * s), int(NSD["n_test"] * s), int(NSD["voxels"] * s), int(NSD["z"] * s),
              int(NSD["c"] * s))
    if args.trials:
        n_trials = int(NSD["n_trials"] * s)
        SHAPES_TRIALS["rows"] = np.sort(np.random.default_rng(1).integers(0, shapes[0], n_trials))
    rows = SHAPES_TRIALS.get("rows")
    print(f"load average {os.getloadavg()[0]:.1f}; shapes (scale {s}): {len(rows) if rows is not None else shapes[0]} training rows, {shapes[1]} test, "
          f"{shapes[2]} voxels, z {shapes[3]} + c {shapes[4]} features; {args.n_iter} candidates x 20 alphas x 5 folds")
    ours = in_child("ours", shapes, args.n_iter, args.threads)
    print(f"ours:     {ours['seconds']:8.1f} s wall, {ours['cpu']:8.1f} s CPU, peak {ours['peak_mb']:8.0f} MB "
          f"({ours['data_mb']:.0f} MB before the fit), mean r {np.nanmean(ours['r']):.4f}")
    if not args.skip_himalaya:
        ref = in_child("himalaya", shapes, args.n_iter, args.threads)
        print(f"himalaya: {ref['seconds']:8.1f} s wall, {ref['cpu']:8.1f} s CPU, peak {ref['peak_mb']:8.0f} MB "
              f"({ref['data_mb']:.0f} MB before the fit), mean r {np.nanmean(ref['r']):.4f}")
        diff = np.nanmax(np.abs(ours["r"] - ref["r"]))
        close = np.mean(np.abs(ours["r"] - ref["r"]) <= 1e-3)
        print(f"speed-up {ref['seconds'] / ours['seconds']:.2f}x wall, {ref['cpu'] / ours['cpu']:.2f}x CPU; max |r ours - r himalaya| over voxels {diff:.2e}; "
              f"{100 * close:.2f} % of voxels within 1e-3")
    if args.whole_brain_voxels:
        more = (*shapes[:2], args.fit_voxels, *shapes[3:])
        fits = {"ours": ours} if args.skip_himalaya else {"ours": ours, "himalaya": ref}
        whole = {}
        for which, base in fits.items():
            wide = in_child(which, more, args.n_iter, args.threads)
            per_voxel = {key: (wide[key] - base[key]) / (more[2] - shapes[2]) for key in ("cpu", "peak_mb")}
            fixed = {key: base[key] - per_voxel[key] * shapes[2] for key in ("cpu", "peak_mb")}
            whole[which] = {key: fixed[key] + per_voxel[key] * args.whole_brain_voxels for key in ("cpu", "peak_mb")}
            print(f"{which} with {more[2]} voxels: {wide['cpu']:.1f} s CPU, peak {wide['peak_mb']:.0f} MB -> "
                  f"CPU {fixed['cpu']:.1f} s + {per_voxel['cpu'] * 1e3:.2f} ms per voxel, peak {fixed['peak_mb']:.0f} MB + "
                  f"{per_voxel['peak_mb'] * 1e3:.1f} MB per 1000 voxels; extrapolated to {args.whole_brain_voxels} voxels: "
                  f"{whole[which]['cpu']:.0f} s CPU, peak {whole[which]['peak_mb']:.0f} MB")
        if "himalaya" in whole:
            print(f"whole brain ({args.whole_brain_voxels} voxels, extrapolated): speed-up "
                  f"{whole['himalaya']['cpu'] / whole['ours']['cpu']:.2f}x CPU")

if __name__ == "__main__":
    main()
