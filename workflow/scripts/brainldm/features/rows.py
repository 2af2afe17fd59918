"""Rows of the merged feature arrays (``{feature}.npy`` and ``{feature}_nsd_ids.npy``) for given
nsdIds, as the decoders and encoding models read them (numpy only: their envs need no more)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


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
            f"{values_path}: {len(absent)} requested nsdIds have no features (first: {absent[:5].tolist()})"
        )
    return np.asarray(values[where]).reshape(len(nsd_ids), -1)


def feature_shape(features_dir: str | Path, feature: str) -> tuple[int, ...]:
    """Per-image shape of a stored feature (e.g. (4, 40, 40) for z)."""
    arr = np.load(Path(features_dir) / f"{feature}.npy", mmap_mode="r")
    return tuple(arr.shape[1:])
