"""One reconstruction job: a shard of a subject's test images, every method and sample, from the
decoded features to the PNGs and the shard's manifest (:mod:`brainldm.reconstruction.sampler`
makes the images, :mod:`brainldm.reconstruction.outputs` writes them)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from brainldm.core.atomic import atomic_path
from brainldm.reconstruction.outputs import PngWriter, image_path, write_manifest
from brainldm.reconstruction.sampler import ReconstructionSettings, Reconstructor

LOGGER = logging.getLogger(__name__)


def shard_rows(n_images: int, shard: int, n_shards: int) -> np.ndarray:
    """Rows (of the test set) of shard ``shard`` of ``n_shards``: every ``n_shards``-th row."""
    if not 0 <= shard < n_shards:
        raise ValueError(f"shard {shard} is outside 0..{n_shards - 1}")
    return np.arange(shard, n_images, n_shards)


def reconstruct(
    reconstructor: Reconstructor,
    z: np.ndarray,
    c: np.ndarray,
    nsd_ids: Sequence[int],
    out_dir: str | Path,
    *,
    progress: bool = True,
) -> list[tuple[int, str, int, str]]:
    """Reconstruct ``nsd_ids`` with every configured method and write the PNGs.

    Parameters
    ----------
    z : (n, 4, h, w) float — decoded latents of these images
    c : (n, L, d) float — decoded text embeddings of these images
    nsd_ids : (n,) int
    out_dir : folder receiving ``<method>/nsd<id>_s<k>.png`` and ``manifest.tsv``

    Returns
    -------
    manifest : list of (nsdId, method, sample, relative file)
    """
    s = reconstructor.settings
    nsd_ids = [int(n) for n in nsd_ids]
    if not (len(z) == len(c) == len(nsd_ids)):
        raise ValueError(f"z ({len(z)}), c ({len(c)}) and nsd_ids ({len(nsd_ids)}) differ in length")
    out_dir = Path(out_dir)
    manifest: list[tuple[int, str, int, str]] = []
    timings = reconstructor.cpu_seconds
    writer = PngWriter(s.background_writer)

    def record(nid, method, sample, image):
        path = image_path(out_dir, method, nid, sample)
        start = time.perf_counter()
        writer.write(path, image)
        timings["png"] += time.perf_counter() - start
        manifest.append((nid, method, sample, str(path.relative_to(out_dir))))

    try:
        _run_methods(reconstructor, z, c, nsd_ids, record, progress)
    finally:
        start = time.perf_counter()
        writer.close()
        timings["png"] += time.perf_counter() - start
    write_manifest(out_dir / "manifest.tsv", manifest)
    return manifest


def _run_methods(reconstructor: Reconstructor, z, c, nsd_ids: list[int], record, progress: bool) -> None:
    """Every configured method on every image, each output handed to ``record(nid, method, k, image)``."""
    from tqdm import tqdm

    s = reconstructor.settings

    need_xz = "z" in s.methods or "zc" in s.methods
    xz: dict[int, np.ndarray] = {}
    bar = tqdm(
        total=len(nsd_ids) * sum(s.samples_of(m) for m in s.methods),
        desc="reconstructions",
        disable=not progress,
    )
    if need_xz:
        for batch in reconstructor.batches([(row, 0) for row in range(len(nsd_ids))]):
            rows = [row for row, _ in batch]
            images = reconstructor.decode_z(np.asarray(z)[rows])
            for row, image in zip(rows, images):
                xz[row] = image
                if "z" in s.methods:
                    record(nsd_ids[row], "z", 0, image)
                    bar.update(1)
    for method in ("c", "zc"):
        if method not in s.methods:
            continue
        jobs = [(row, k) for row in range(len(nsd_ids)) for k in range(s.samples_of(method))]
        for chunk in reconstructor.batches(jobs):
            rows = [row for row, _ in chunk]
            seeds = [(nsd_ids[row], k) for row, k in chunk]
            c_rows = np.asarray(c)[rows]
            if method == "c":
                images = reconstructor.generate_c(c_rows, seeds)
            else:
                images = reconstructor.img2img_zc([xz[row] for row in rows], c_rows, seeds)
            for (nid, k), image in zip(seeds, images):
                record(nid, method, k, image)
                bar.update(1)
    bar.close()


def load_decoded(decoding_dir: str | Path, feature: str) -> tuple[np.ndarray, np.ndarray]:
    """A subject's decoded feature ``(pred (n_test, ...) float32, nsd_ids (n_test,) int64)``."""
    decoding_dir = Path(decoding_dir)
    pred_path, ids_path = decoding_dir / f"{feature}_pred.npy", decoding_dir / f"{feature}_nsd_ids.npy"
    for path in (pred_path, ids_path):
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing (an output of rule fit_decoder)")
    return np.load(pred_path), np.load(ids_path)


def reconstruct_shard(
    components,
    settings: ReconstructionSettings,
    decoding_dir: str | Path,
    out_dir: str | Path,
    shard: int,
    n_shards: int,
    *,
    progress: bool = True,
) -> list[tuple[int, str, int, str]]:
    """Reconstruct the test images of one shard of one subject into the folder ``out_dir``.

    The folder is filled as a temporary sibling and renamed when every image and the manifest
    are written, so ``out_dir`` never holds part of a shard (a killed job leaves nothing there).
    """
    z, z_ids = load_decoded(decoding_dir, "z")
    c, c_ids = load_decoded(decoding_dir, "c")
    if not np.array_equal(z_ids, c_ids):
        raise ValueError(f"{decoding_dir}: z and c predictions are for different test images")
    rows = shard_rows(len(z_ids), shard, n_shards)
    LOGGER.info(
        "shard %d/%d: %d of %d test images, methods %s",
        shard,
        n_shards,
        len(rows),
        len(z_ids),
        ",".join(settings.methods),
    )
    with atomic_path(out_dir) as tmp:
        return reconstruct(
            Reconstructor(components, settings), z[rows], c[rows], z_ids[rows], tmp, progress=progress
        )
