"""Stored features: which images a run needs, shard slices, merging shards, reading rows.

numpy only, so the merge jobs and the encoding fits that read features never import torch.
Arrays are rows by ascending nsdId: ``{feature}.npy``, ``{feature}_nsd_ids.npy`` (int64) and
``{feature}.json``, as :mod:`brainldm.features.extract` and :mod:`brainldm.features.ldm_parts` write them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from brainldm.core.atomic import atomic_path, save_npy, write_text
from brainldm.nsd.layout import ExpDesign, session_of_trial

#: Rows written or copied at once (shard chunks, merges).
CHUNK_SIZE = 256


def needed_nsd_ids(
    design: ExpDesign,
    subjects: Sequence[int],
    sessions: Sequence[int],
    trials_per_session: int = 750,
) -> np.ndarray:
    """nsdIds seen by ``subjects`` in ``sessions``: (n_images,) int64 ascending, unique.

    Parameters
    ----------
    design : ExpDesign
    subjects : sequence of int (1-based)
    sessions : sequence of int (1-based)
    trials_per_session : int
        750 in NSD.
    """
    sessions = np.asarray(list(sessions), dtype=np.int64)
    seen = []
    for subject in subjects:
        ids = design.trial_nsd_ids(int(subject))
        session = session_of_trial(np.arange(len(ids)), trials_per_session)
        seen.append(ids[np.isin(session, sessions)])
    if not seen:
        raise ValueError("needed_nsd_ids: no subjects given")
    return np.unique(np.concatenate(seen)).astype(np.int64)


def shard_nsd_ids(nsd_ids: np.ndarray, shard: int, n_shards: int) -> np.ndarray:
    """Contiguous slice ``shard`` (0-based) of ``n_shards`` of the ascending ``nsd_ids``."""
    if not 0 <= shard < n_shards:
        raise ValueError(f"shard {shard} is out of range 0..{n_shards - 1} (features.n_shards = {n_shards})")
    return np.array_split(np.asarray(nsd_ids, dtype=np.int64), n_shards)[shard]


def record_path(array_path: str | os.PathLike) -> Path:
    """``x.json`` beside ``x.npy``."""
    return Path(array_path).with_suffix(".json")


def ids_path(array_path: str | os.PathLike) -> Path:
    """``x_nsd_ids.npy`` beside ``x.npy``."""
    array_path = Path(array_path)
    return array_path.with_name(array_path.name.removesuffix(".npy") + "_nsd_ids.npy")


def merge_shards(
    feature: str,
    shard_paths: Sequence[str | os.PathLike],
    features_dir: str | os.PathLike,
    expected_nsd_ids: np.ndarray | None = None,
    record: dict | None = None,
) -> Path:
    """Merge shard arrays into ``{features_dir}/{feature}.npy`` (rows by ascending nsdId).

    Writes ``{feature}.npy``, ``{feature}_nsd_ids.npy`` (int64) and ``{feature}.json`` (``record``
    plus shape, dtype and count). The array is filled through a memory map, so ``c`` for NSD
    (~4.4 GB in float16) never needs twice its size in memory.

    Raises
    ------
    ValueError
        Shards overlap, disagree in shape or dtype, or do not cover ``expected_nsd_ids`` exactly.
    """
    features_dir = Path(features_dir)
    records = [json.loads(record_path(p).read_text()) if record_path(p).exists() else {} for p in shard_paths]
    for path, r in zip(shard_paths, records):
        for key in ("value_settings",):
            if r.get(key) != records[0].get(key):
                raise ValueError(
                    f"{path}: {key} {r.get(key)} differ from {shard_paths[0]}'s {records[0].get(key)}"
                )
        model, first = r.get("model", {}), records[0].get("model", {})
        if (model.get("model_id"), model.get("revision")) != (first.get("model_id"), first.get("revision")):
            raise ValueError(
                f"{path}: made with model {model.get('model_id')!r}, {shard_paths[0]} with "
                f"{first.get('model_id')!r}"
            )
    ids = [np.load(ids_path(p)) for p in shard_paths]
    arrays = [np.load(p, mmap_mode="r") for p in shard_paths]
    for path, a, i in zip(shard_paths, arrays, ids):
        if len(a) != len(i):
            raise ValueError(f"{path}: {len(a)} rows but {len(i)} nsdIds in {ids_path(path)}")
    # empty shards (more shards than images) carry no row shape
    kept = [(p, a, i) for p, a, i in zip(shard_paths, arrays, ids) if len(i)]
    for path, a, _ in kept:
        if a.shape[1:] != kept[0][1].shape[1:] or a.dtype != kept[0][1].dtype:
            raise ValueError(
                f"{path}: rows {a.shape[1:]} {a.dtype} differ from {kept[0][0]}'s "
                f"{kept[0][1].shape[1:]} {kept[0][1].dtype}; were the shards made with other settings?"
            )
    shard_paths_all = list(shard_paths)
    shard_paths, arrays, ids = [p for p, _, _ in kept], [a for _, a, _ in kept], [i for _, _, i in kept]
    all_ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    order = np.argsort(all_ids, kind="stable")
    sorted_ids = all_ids[order]
    if len(np.unique(sorted_ids)) != len(sorted_ids):
        raise ValueError(f"{feature}: shards overlap (an nsdId appears twice)")
    if expected_nsd_ids is not None:
        expected = np.unique(np.asarray(expected_nsd_ids, dtype=np.int64))
        if not np.array_equal(expected, sorted_ids):
            missing = np.setdiff1d(expected, sorted_ids)
            extra = np.setdiff1d(sorted_ids, expected)
            raise ValueError(
                f"{feature}: shards hold {len(sorted_ids)} images, expected {len(expected)}; "
                f"missing nsdIds {missing[:10].tolist()}, unexpected {extra[:10].tolist()}"
            )
    shape = (len(sorted_ids), *arrays[0].shape[1:]) if arrays else (0,)
    dtype = arrays[0].dtype if arrays else np.float32
    out = features_dir / f"{feature}.npy"
    with atomic_path(out) as tmp:
        merged = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
        offsets = np.cumsum([0] + [len(i) for i in ids])
        position = np.empty(len(all_ids), dtype=np.int64)
        position[order] = np.arange(len(all_ids))
        for k, a in enumerate(arrays):
            rows = position[offsets[k] : offsets[k + 1]]
            for s in range(0, len(a), CHUNK_SIZE):
                merged[rows[s : s + CHUNK_SIZE]] = a[s : s + CHUNK_SIZE]
        merged.flush()
        del merged
    save_npy(ids_path(out), sorted_ids.astype(np.int64))
    info = dict(records[0]) if records else {}
    if records:
        info["devices"] = sorted({str(r.get("model", {}).get("device")) for r in records})
    info.update(record or {})
    info.update(
        {
            "feature": feature,
            "n_images": int(len(sorted_ids)),
            "shape": list(shape[1:]),
            "dtype": str(np.dtype(dtype)),
            "n_shards": len(shard_paths_all),
        }
    )
    write_text(features_dir / f"{feature}.json", json.dumps(info, indent=2) + "\n")
    return out


def load_features(
    features_dir: str | os.PathLike,
    feature: str,
    nsd_ids: Sequence[int] | None = None,
    dtype: str | np.dtype | None = None,
) -> np.ndarray:
    """Rows of ``{features_dir}/{feature}.npy`` for ``nsd_ids``, in the order asked.

    Parameters
    ----------
    features_dir : path
        ``results/{dataset}/features``.
    feature : {"z", "c"}
    nsd_ids : sequence of int, optional
        May repeat (one row per training trial); all rows when omitted.
    dtype : optional
        Cast the result (e.g. float32 for c stored as float16).

    Returns
    -------
    (len(nsd_ids), ...) array

    Raises
    ------
    KeyError
        Some ``nsd_ids`` have no features (names up to ten of them and the file).
    """
    features_dir = Path(features_dir)
    path = features_dir / f"{feature}.npy"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no {feature} features; run the merge_features rule first")
    array = np.load(path, mmap_mode="r")
    stored = np.load(ids_path(path))
    if nsd_ids is None:
        out = np.asarray(array)
    else:
        asked = np.asarray(nsd_ids, dtype=np.int64)
        rows = np.searchsorted(stored, asked)
        rows = np.clip(rows, 0, max(len(stored) - 1, 0))
        bad = (len(stored) == 0) | (stored[rows] != asked) if len(asked) else np.zeros(0, bool)
        if np.any(bad):
            missing = np.unique(asked[bad])
            raise KeyError(
                f"{path}: no {feature} features for {len(missing)} nsdIds, e.g. {missing[:10].tolist()}; "
                "were the features extracted for other subjects or sessions?"
            )
        out = array[rows] if len(asked) else np.zeros((0, *array.shape[1:]), array.dtype)
    return out.astype(dtype, copy=False) if dtype is not None else np.asarray(out)
