"""Benchmark: the joint z + c encoding model at NSD's shapes, ours vs himalaya's tutorial recipe.

Random data of NSD's shapes (scaled by ``--scale``): 8,859 training images (``--trials`` for
24,980 single trials of them), 982 test images, 15,724 nsdgeneral voxels; ``z`` 6,400 and ``c``
59,136 features. Voxels respond to both spaces (each voxel its own mix) plus noise, so the search
has something to find. Both solvers fit the same float32 data with the same grid (alphas
``logspace(1, 20, 20)``, 20 random-search candidates, 5-fold ``KFold``, seed 0):

- ``himalaya``: the gallantlab recipe, ``ColumnKernelizer`` (StandardScaler(with_std=False) +
  linear Kernelizer per space) and ``MultipleKernelRidgeCV(kernels="precomputed",
  solver="random_search")``, ``predict`` and ``predict(split=True)``;
- ``ours``: :func:`brainldm.linear.banded.linear_kernels` +
  :func:`brainldm.linear.banded.banded_ridge_cv_predict`.

Each runs in its own process with one BLAS thread, which reports wall and CPU time (CPU time is
the fair measure on a shared machine) and peak resident memory (ru_maxrss);
scores are compared voxel by voxel (test r of each fit).

Whole brain: ``--whole-brain-voxels N`` (e.g. 100,000) fits each solver a second time on
``--fit-voxels`` targets (default 15,724, unscaled: many voxels, so the part linear in the targets
is well above the timing noise) and, from the two fits, splits its CPU time and peak memory into
a fixed part and a part linear in the targets; it prints both, extrapolated to N targets.

Fewer candidates: ``--n-iter K --extrapolate-candidates 20`` fits K candidates and also prints
each solver's CPU time at 20, the kernels' time plus the rest times ``20 / K`` (an upper bound:
later candidates refit fewer targets; at scale 0.1 it overstated himalaya by 26 % and ours by
16 % from K = 1). ``--backend torch_cuda`` runs both solvers on a GPU (wall time is then the
measure; the GPU's peak allocation is printed too). ``--himalaya-backend torch`` runs himalaya on
torch's CPU backend while ours keeps ``--backend``: on the CPU himalaya is fastest there (torch's
MKL ``syevd`` where its numpy backend calls scipy's default ``evr`` driver), while ours is fastest
on numpy, so that pairing compares each at its best.

Usage::

    python tests/benchmarks/bench_encoding.py --scale 0.2      # what this project's 2-core machine allows
    # each solver at its best on a CPU:
    python tests/benchmarks/bench_encoding.py --scale 0.2 --himalaya-backend torch
    python tests/benchmarks/bench_encoding.py --scale 1 --n-iter 2 --extrapolate-candidates 20  # ~1.5 h
    python tests/benchmarks/bench_encoding.py --scale 1        # NSD's shapes (~13 h of one CPU core)
    python tests/benchmarks/bench_encoding.py --scale 1 --backend torch_cuda --threads 16  # on a GPU
"""

from __future__ import annotations

import argparse
import importlib
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
            w = rng.standard_normal((space.shape[1], part.stop - start), dtype=np.float32) / np.sqrt(
                space.shape[1]
            )
            signal = space @ w
            y += signal / signal.std(0) * np.sqrt(weight)
        y -= y[:n_train].mean(0)
        y /= y[:n_train].std(0)
        Y[:, part] = y
    return [s[:n_train] for s in spaces], [s[n_train:] for s in spaces], Y[:n_train], Y[n_train:]


def run(which, shapes, n_iter, queue, threads=1, backend="numpy"):
    from threadpoolctl import threadpool_limits

    from brainldm.encoding.scoring import voxel_correlation
    from brainldm.linear.banded import banded_ridge_cv_predict, himalaya_banded_predict, linear_kernels

    importlib.import_module("himalaya.kernel_ridge")  # before the clock starts, for both

    # After the imports, so that scipy's own BLAS is limited too: the same threads for both.
    threadpool_limits(threads)
    cuda = backend == "torch_cuda"
    if backend != "numpy":
        import torch

        # Before the clock, for both: torch's own threads, its import and the CUDA context.
        torch.set_num_threads(threads)
        torch.zeros(1, device="cuda" if cuda else "cpu")

    train, test, Y, Y_test = make_data(*shapes)
    rows = SHAPES_TRIALS.get("rows")
    if rows is not None:
        train = [x[rows] for x in train]
        Y = Y[rows]
    data_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start, cpu_start = time.perf_counter(), time.process_time()
    if which == "himalaya":
        kernels = {}
        pred, _, _ = himalaya_banded_predict(
            train,
            Y,
            test,
            n_iter=n_iter,
            random_state=0,
            backend=backend,
            n_targets_batch=2048,
            n_alphas_batch=5,
            n_targets_batch_refit=1024,
            kernel_seconds=kernels,
        )
        kernel_cpu = kernels["cpu"]
    else:
        Ks, Ks_test = linear_kernels(train, test, backend=backend)
        kernel_cpu = time.process_time() - cpu_start
        pred = banded_ridge_cv_predict(
            Ks, Y, Ks_test, n_iter=n_iter, random_state=0, n_targets_batch=4096, backend=backend
        ).predictions
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    r = voxel_correlation(pred, Y_test)
    queue.put(
        {
            "seconds": seconds,
            "cpu": cpu,
            "kernel_cpu": kernel_cpu,
            "data_mb": data_mb,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "gpu_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
            "r": r,
        }
    )


SHAPES_TRIALS: dict = {}


def in_child(which, shapes, n_iter, threads=1, backend="numpy"):
    context = mp.get_context("fork")
    queue = context.Queue()
    process = context.Process(target=run, args=(which, shapes, n_iter, queue, threads, backend))
    process.start()
    result = queue.get()
    process.join()
    if process.exitcode:
        raise RuntimeError(f"{which} died with exit code {process.exitcode}")
    return result


def extrapolated_cpu(result, candidates, n_iter):
    """A fit's CPU time at ``candidates`` random-search candidates, from its ``n_iter``.

    Each candidate costs about the same work in both solvers (an eigendecomposition per fold and
    the alphas' held-out operators, then a refit), so the CPU time is the kernels' plus the rest
    scaled by ``candidates / n_iter``: an upper bound, as later candidates refit fewer targets.
    """
    return result["kernel_cpu"] + (result["cpu"] - result["kernel_cpu"]) * candidates / n_iter


def describe(which, result, extrapolate_to, n_iter):
    """One line of a fit's figures; with ``extrapolate_to``, its CPU time at that many candidates."""
    line = (
        f"{which + ':':9} {result['seconds']:8.1f} s wall, {result['cpu']:8.1f} s CPU "
        f"(kernels {result['kernel_cpu']:.1f} s), peak {result['peak_mb']:8.0f} MB "
        f"({result['data_mb']:.0f} MB before the fit), mean r {np.nanmean(result['r']):.4f}"
    )
    if result["gpu_peak_mb"] is not None:
        line += f", GPU peak {result['gpu_peak_mb']:.0f} MB"
    if extrapolate_to:
        line += (
            f"; {extrapolated_cpu(result, extrapolate_to, n_iter):.1f} s CPU extrapolated to "
            f"{extrapolate_to} candidates"
        )
    return line


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scale", type=float, default=0.2, help="fraction of NSD's samples, voxels and features"
    )
    parser.add_argument("--n-iter", type=int, default=20)
    parser.add_argument(
        "--trials", action="store_true", help="single trials (24,980 x scale) instead of images"
    )
    parser.add_argument("--skip-himalaya", action="store_true")
    parser.add_argument(
        "--whole-brain-voxels",
        type=int,
        default=0,
        help="extrapolate each solver to this many targets (0: no whole-brain variant)",
    )
    parser.add_argument(
        "--fit-voxels",
        type=int,
        default=NSD["voxels"],
        help="targets of the whole-brain variant's second fit (default NSD's 15,724, unscaled)",
    )
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads of each fit")
    parser.add_argument(
        "--backend",
        default="numpy",
        choices=("numpy", "torch", "torch_cuda"),
        help="array backend of ours, and of himalaya unless --himalaya-backend (torch_cuda: on a GPU; "
        "time is then wall time)",
    )
    parser.add_argument(
        "--himalaya-backend",
        choices=("numpy", "torch", "torch_cuda"),
        help="himalaya's backend, if not --backend (e.g. torch: MKL's LAPACK on the CPU)",
    )
    parser.add_argument(
        "--extrapolate-candidates",
        type=int,
        default=0,
        help="also print each solver's CPU time at this many candidates (fitted with --n-iter)",
    )
    args = parser.parse_args()
    backend_of = {"ours": args.backend, "himalaya": args.himalaya_backend or args.backend}
    if args.extrapolate_candidates and "torch_cuda" in backend_of.values():
        parser.error("--extrapolate-candidates splits CPU time; on torch_cuda run --n-iter 20 itself")
    s = args.scale
    shapes = (
        int(NSD["n_train"] * s),
        int(NSD["n_test"] * s),
        int(NSD["voxels"] * s),
        int(NSD["z"] * s),
        int(NSD["c"] * s),
    )
    if args.trials:
        n_trials = int(NSD["n_trials"] * s)
        SHAPES_TRIALS["rows"] = np.sort(np.random.default_rng(1).integers(0, shapes[0], n_trials))
    rows = SHAPES_TRIALS.get("rows")
    print(
        f"load average {os.getloadavg()[0]:.1f}; backend {backend_of['ours']} (himalaya "
        f"{backend_of['himalaya']}), "
        f"{args.threads} BLAS thread(s); "
        f"shapes (scale {s}): {len(rows) if rows is not None else shapes[0]} training rows, {shapes[1]} "
        "test, "
        f"{shapes[2]} voxels, z {shapes[3]} + c {shapes[4]} features; "
        f"{args.n_iter} candidates x 20 alphas x 5 folds",
        flush=True,
    )
    ours = in_child("ours", shapes, args.n_iter, args.threads, backend_of["ours"])
    print(describe("ours", ours, args.extrapolate_candidates, args.n_iter), flush=True)
    if not args.skip_himalaya:
        ref = in_child("himalaya", shapes, args.n_iter, args.threads, backend_of["himalaya"])
        print(describe("himalaya", ref, args.extrapolate_candidates, args.n_iter))
        diff = np.nanmax(np.abs(ours["r"] - ref["r"]))
        close = np.mean(np.abs(ours["r"] - ref["r"]) <= 1e-3)
        print(
            f"speed-up {ref['seconds'] / ours['seconds']:.2f}x wall, {ref['cpu'] / ours['cpu']:.2f}x CPU; "
            f"max |r ours - r himalaya| over voxels {diff:.2e}; "
            f"{100 * close:.2f} % of voxels within 1e-3"
        )
        if args.extrapolate_candidates:
            to = args.extrapolate_candidates
            speed_up = extrapolated_cpu(ref, to, args.n_iter) / extrapolated_cpu(ours, to, args.n_iter)
            print(f"extrapolated to {to} candidates: speed-up {speed_up:.2f}x CPU")
    if args.whole_brain_voxels:
        more = (*shapes[:2], args.fit_voxels, *shapes[3:])
        fits = {"ours": ours} if args.skip_himalaya else {"ours": ours, "himalaya": ref}
        whole = {}
        for which, base in fits.items():
            wide = in_child(which, more, args.n_iter, args.threads, backend_of[which])
            per_voxel = {key: (wide[key] - base[key]) / (more[2] - shapes[2]) for key in ("cpu", "peak_mb")}
            fixed = {key: base[key] - per_voxel[key] * shapes[2] for key in ("cpu", "peak_mb")}
            whole[which] = {
                key: fixed[key] + per_voxel[key] * args.whole_brain_voxels for key in ("cpu", "peak_mb")
            }
            print(
                f"{which} with {more[2]} voxels: {wide['cpu']:.1f} s CPU, peak {wide['peak_mb']:.0f} MB -> "
                f"CPU {fixed['cpu']:.1f} s + {per_voxel['cpu'] * 1e3:.2f} ms per voxel, peak "
                f"{fixed['peak_mb']:.0f} MB + "
                f"{per_voxel['peak_mb'] * 1e3:.1f} MB per 1000 voxels; extrapolated to "
                f"{args.whole_brain_voxels} voxels: "
                f"{whole[which]['cpu']:.0f} s CPU, peak {whole[which]['peak_mb']:.0f} MB"
            )
        if "himalaya" in whole:
            print(
                f"whole brain ({args.whole_brain_voxels} voxels, extrapolated): speed-up "
                f"{whole['himalaya']['cpu'] / whole['ours']['cpu']:.2f}x CPU"
            )


if __name__ == "__main__":
    main()
