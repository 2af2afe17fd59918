"""Per-subject fMRI preparation: NSD betas to ROI matrices for the paper's split, streamed.

One subject's sessions are read one at a time, each streamed by :mod:`brainldm.fmri.betas`; of each
session only the voxels of the union of the requested ROIs are kept, so memory does not grow with
the number of sessions.

Train rows are appended to their ``.npy`` files as each session is read (their number is known
from the design beforehand). Test repeats are kept (``(n_test_images, n_repeats, n_voxels)``
float32, ~240 MB for 1,000 images x 20,000 voxels) and averaged at the end.

Outputs in ``out_dir`` (``results/<dataset>/subjNN/fmri``) for each ROI:

- ``{roi}_train.npy``: (n_train_trials, n_voxels) float32, rows in trial order;
- ``{roi}_test.npy``: (n_test_images, n_voxels) float32, the mean over each image's repeats,
  rows by ascending nsdId;
- ``{roi}_voxels.npz``: ``ijk`` (n_voxels, 3) int32 voxel indices into the volume (C order, the
  order of ``volume[mask]``), ``shape`` (3,) and ``affine`` (4, 4) of the grid, ``atlas`` and
  ``label`` of the ROI, and per voxel ``split_half_r`` and ``noise_ceiling``;

and for the subject: ``train_trials.tsv`` (row, nsdId, trial, session; trial = 1-based global
trial number as in NSD's stim-info ``subjectS_repR``), ``test_images.tsv`` (row, nsdId,
n_repeats, trials = the 1-based trial numbers of its repeats) and ``qc.tsv`` (one row per ROI).

Value scaling is :func:`brainldm.fmri.betas.scale_session`; ROIs come from :mod:`brainldm.fmri.rois`; the
QC's reliability and noise ceiling (:mod:`brainldm.fmri.reliability`) use the values after
``value_scaling``.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np

from brainldm.core.atomic import atomic_path
from brainldm.core.tables import read_rows, write_rows
from brainldm.fmri.betas import (
    VALUE_SCALINGS,
    BetasHeader,
    FMRIDataError,
    inspect_betas,
    read_session_voxels,
    scale_session,
)
from brainldm.fmri.reliability import noise_ceiling, split_half_reliability
from brainldm.fmri.rois import check_same_grid, load_rois
from brainldm.fmri.split import make_split
from brainldm.nsd import layout as nsd

log = logging.getLogger("brainldm.fmri.prepare")

QC_COLUMNS = (
    "subject",
    "roi",
    "atlas",
    "label",
    "sessions",
    "n_sessions",
    "value_scaling",
    "n_train_trials",
    "n_train_images",
    "n_test_trials",
    "n_test_images",
    "test_repeats_min",
    "test_repeats_mean",
    "test_repeats_max",
    "test_images_by_repeats",
    "n_voxels",
    "n_voxels_all_zero",
    "n_voxels_outside_brainmask",
    "n_reliability_images",
    "split_half_r_median",
    "split_half_r_mean",
    "noise_ceiling_median",
    "noise_ceiling_mean",
)


def output_names(rois: Sequence[str]) -> list[str]:
    """File names :func:`prepare_subject` writes into its output folder."""
    names = [f"{roi}_{kind}" for roi in rois for kind in ("train.npy", "test.npy", "voxels.npz")]
    return names + ["train_trials.tsv", "test_images.tsv", "qc.tsv"]


# --------------------------------------------------------------------------- repeats


def mean_over_repeats(
    repeats: np.ndarray, n_repeats: np.ndarray, columns: np.ndarray, block: int = 2048
) -> np.ndarray:
    """Average each test image's presentations (float64 sums, in column blocks).

    Parameters
    ----------
    repeats : (n_images, max_repeats, n_voxels) float32, unused slots zero
    n_repeats : (n_images,) int
    columns : (n_selected,) int, voxels to average

    Returns
    -------
    (n_images, n_selected) float32
    """
    out = np.empty((repeats.shape[0], columns.size), dtype=np.float32)
    divisor = np.maximum(n_repeats, 1)[:, None]
    for start in range(0, columns.size, block):
        cols = columns[start : start + block]
        out[:, start : start + cols.size] = repeats[:, :, cols].sum(axis=1, dtype=np.float64) / divisor
    return out


# --------------------------------------------------------------------------- preparation


class _NpyAppender:
    """A float32 ``.npy`` of known shape whose rows are appended as they arrive."""

    def __init__(self, path: Path, n_rows: int, n_columns: int):
        self.path, self.n_rows, self.n_columns, self.rows = path, n_rows, n_columns, 0
        self._file = open(path, "wb")
        np.lib.format.write_array_header_1_0(
            self._file, {"descr": "<f4", "fortran_order": False, "shape": (n_rows, n_columns)}
        )

    def append(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype="<f4")
        assert rows.ndim == 2 and rows.shape[1] == self.n_columns, (rows.shape, self.n_columns)
        self._file.write(rows.data)
        self.rows += rows.shape[0]

    def close(self) -> None:
        self._file.close()
        if self.rows != self.n_rows:
            raise RuntimeError(f"{self.path}: wrote {self.rows} rows; expected {self.n_rows}")


def _read_sessions(
    headers: Sequence[BetasHeader], flat_index: np.ndarray, workers: int
) -> Iterator[tuple[BetasHeader, np.ndarray]]:
    """Yield ``(header, raw voxels)`` per session in order, reading up to ``workers`` ahead."""
    if workers <= 1:
        for header in headers:
            yield header, read_session_voxels(header, flat_index)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending = deque()
        upcoming = iter(headers)
        for header in upcoming:
            pending.append((header, pool.submit(read_session_voxels, header, flat_index)))
            if len(pending) == workers:
                break
        while pending:
            header, future = pending.popleft()
            next_header = next(upcoming, None)
            if next_header is not None:
                pending.append((next_header, pool.submit(read_session_voxels, next_header, flat_index)))
            try:
                block = future.result()
            except BaseException:
                for _, other in pending:
                    other.cancel()
                raise
            yield header, block


def _format_sessions(sessions: Sequence[int]) -> str:
    """``1-37`` for a contiguous range, else a comma list."""
    sessions = sorted(sessions)
    if sessions == list(range(sessions[0], sessions[-1] + 1)) and len(sessions) > 1:
        return f"{sessions[0]}-{sessions[-1]}"
    return ",".join(map(str, sessions))


def _stat(values: np.ndarray, fn) -> str:
    values = values[np.isfinite(values)]
    return f"{fn(values):.4f}" if values.size else "nan"


def prepare_subject(
    out_dir: str | Path,
    *,
    subject: int,
    sessions: Sequence[int],
    betas_paths: Sequence[str | Path],
    expdesign_path: str | Path,
    atlas_paths: Mapping[str, str | Path],
    label_table_paths: Mapping[str, str | Path],
    brainmask_path: str | Path,
    rois: Sequence[str],
    value_scaling: str = "raw",
    trials_per_session: int = nsd.TRIALS_PER_SESSION,
    workers: int = 1,
    progress: bool = True,
) -> list[dict]:
    """Prepare one subject's fMRI: ROI matrices of the paper's split, streamed by session.

    Everything is checked before any betas are read (files present, headers, dtypes, grids,
    ROIs non-empty); NaN/inf values stop the run when met. All outputs are written to temporary
    siblings and renamed only when every one is complete.

    Parameters
    ----------
    out_dir : folder for the outputs (see the module docstring)
    subject : 1-based NSD subject
    sessions : 1-based sessions; ``betas_paths`` holds one file per session, same order
    expdesign_path : ``nsd_expdesign.mat``
    atlas_paths, label_table_paths, brainmask_path : ROI volumes, label tables, brain mask
    rois : ROI names (``streams``/``prf-visualrois`` labels or ``nsdgeneral``)
    value_scaling : ``raw`` (paper), ``percent`` or ``zscore_session``
    trials_per_session : 750 in NSD; each betas file must hold exactly this many trials
    workers : sessions read concurrently (inflating releases the GIL); memory grows by one
        session of ROI voxels (int16) per worker
    progress : show a tqdm bar over sessions

    Returns
    -------
    qc : list of dict, one per ROI, keys :data:`QC_COLUMNS`
    """
    from tqdm import tqdm

    rois = list(dict.fromkeys(rois))
    if value_scaling not in VALUE_SCALINGS:
        raise ValueError(f"value_scaling {value_scaling!r}: expected one of {VALUE_SCALINGS}")
    nsd.atlases_for(rois)  # unknown ROI names fail here
    sessions = [int(s) for s in sessions]
    if len(betas_paths) != len(sessions):
        raise ValueError(f"{len(betas_paths)} betas files for {len(sessions)} sessions; expected one each")
    order = np.argsort(sessions, kind="stable")
    sessions = [sessions[i] for i in order]
    betas_paths = [Path(betas_paths[i]) for i in order]
    out_dir = Path(out_dir)

    missing = [f"{path} (session {s})" for s, path in zip(sessions, betas_paths) if not path.is_file()]
    if missing:
        raise FMRIDataError(f"betas of {len(missing)} session(s) missing: " + "; ".join(missing))
    headers = [inspect_betas(path, s) for s, path in zip(sessions, betas_paths)]
    first = headers[0]
    for header in headers:
        if header.n_trials != trials_per_session:
            raise FMRIDataError(
                f"{header.path}: {header.n_trials} trials; expected {trials_per_session} per session"
            )
        check_same_grid(header.path, header.grid, header.affine, first.path, first.grid, first.affine)

    design_path = Path(expdesign_path)
    if not design_path.is_file():
        raise FMRIDataError(f"{design_path}: experiment design missing")
    split = make_split(nsd.read_expdesign(design_path), subject, sessions, trials_per_session)
    roiset = load_rois(
        rois,
        atlas_paths,
        label_table_paths,
        brainmask_path,
        first.grid,
        next((h.affine for h in headers if h.affine is not None), None),
        first.path,
    )
    flat_index = roiset.flat_index
    n_union = flat_index.size
    log.info(
        "subject %02d: %d sessions, %d train trials, %d test images (%d trials); ROI voxels %s "
        "(union %d); values %s",
        subject,
        len(sessions),
        split.n_train_trials,
        split.n_test_images,
        split.n_test_trials,
        {roi: int(c.size) for roi, c in roiset.columns.items()},
        n_union,
        value_scaling,
    )

    repeats = np.zeros((split.n_test_images, max(split.max_repeats, 1), n_union), dtype=np.float32)
    any_nonzero = np.zeros(n_union, dtype=bool)
    with contextlib.ExitStack() as stack:
        tmp = {name: stack.enter_context(atomic_path(out_dir / name)) for name in output_names(rois)}
        appenders = {
            roi: _NpyAppender(tmp[f"{roi}_train.npy"], split.n_train_trials, cols.size)
            for roi, cols in roiset.columns.items()
        }
        try:
            bar = tqdm(
                total=len(headers), desc=f"subj{subject:02d} sessions", unit="session", disable=not progress
            )
            sessions_read = stack.enter_context(
                contextlib.closing(_read_sessions(headers, flat_index, workers))
            )
            for header, raw in sessions_read:
                positions = split.session_trials(header.session)
                any_nonzero |= (raw != 0).any(axis=0)
                values = scale_session(raw, header, value_scaling)
                del raw
                is_test = split.is_test[positions]
                train_rows = np.flatnonzero(~is_test)
                for roi, cols in roiset.columns.items():
                    appenders[roi].append(values[np.ix_(train_rows, cols)])
                test_positions = positions[is_test]
                repeats[split.test_row[test_positions], split.repeat[test_positions]] = values[is_test]
                del values
                log.info(
                    "session %d: %d train trials, %d test trials from %s",
                    header.session,
                    train_rows.size,
                    test_positions.size,
                    header.path,
                )
                bar.update()
            bar.close()
        finally:
            for appender in appenders.values():
                appender._file.close()
        for appender in appenders.values():
            appender.close()

        n_repeats = split.test_repeats
        reliability, n_reliability_images = split_half_reliability(repeats, n_repeats)
        ceiling = noise_ceiling(reliability, n_repeats)

        qc = []
        repeat_histogram = np.bincount(n_repeats, minlength=split.max_repeats + 1)
        for roi, cols in roiset.columns.items():
            np.save(tmp[f"{roi}_test.npy"], mean_over_repeats(repeats, n_repeats, cols))
            np.savez(
                tmp[f"{roi}_voxels.npz"],
                ijk=roiset.ijk[cols],
                shape=np.asarray(roiset.grid),
                affine=roiset.affine,
                atlas=np.asarray(roiset.atlas[roi]),
                label=np.asarray(roiset.label[roi]),
                split_half_r=reliability[cols],
                noise_ceiling=ceiling[cols],
            )
            qc.append(
                {
                    "subject": f"{subject:02d}",
                    "roi": roi,
                    "atlas": roiset.atlas[roi],
                    "label": roiset.label[roi],
                    "sessions": _format_sessions(sessions),
                    "n_sessions": len(sessions),
                    "value_scaling": value_scaling,
                    "n_train_trials": split.n_train_trials,
                    "n_train_images": split.n_train_images,
                    "n_test_trials": split.n_test_trials,
                    "n_test_images": split.n_test_images,
                    "test_repeats_min": int(n_repeats.min()) if n_repeats.size else 0,
                    "test_repeats_mean": f"{n_repeats.mean():.4f}" if n_repeats.size else "nan",
                    "test_repeats_max": int(n_repeats.max(initial=0)),
                    "test_images_by_repeats": ",".join(
                        f"{k}:{int(c)}" for k, c in enumerate(repeat_histogram) if k > 0
                    ),
                    "n_voxels": int(cols.size),
                    "n_voxels_all_zero": int((~any_nonzero[cols]).sum()),
                    "n_voxels_outside_brainmask": int((~roiset.in_brain[cols]).sum()),
                    "n_reliability_images": n_reliability_images,
                    "split_half_r_median": _stat(reliability[cols], np.median),
                    "split_half_r_mean": _stat(reliability[cols], np.mean),
                    "noise_ceiling_median": _stat(ceiling[cols], np.median),
                    "noise_ceiling_mean": _stat(ceiling[cols], np.mean),
                }
            )
        train_positions = split.train_trials
        write_rows(
            tmp["train_trials.tsv"],
            ("row", "nsdId", "trial", "session"),
            zip(
                range(train_positions.size),
                split.nsd_id[train_positions],
                split.trial_index[train_positions] + 1,
                split.session[train_positions],
            ),
        )
        trials_of = [[] for _ in range(split.n_test_images)]
        for position in np.flatnonzero(split.is_test):
            trials_of[split.test_row[position]].append(str(split.trial_index[position] + 1))
        write_rows(
            tmp["test_images.tsv"],
            ("row", "nsdId", "n_repeats", "trials"),
            (
                (row, nsd_id, n, ",".join(trials))
                for row, (nsd_id, n, trials) in enumerate(zip(split.test_nsd_ids, n_repeats, trials_of))
            ),
        )
        write_rows(tmp["qc.tsv"], QC_COLUMNS, ([row[c] for c in QC_COLUMNS] for row in qc))
    for row in qc:
        log.info(
            "QC %s: %d voxels, split-half r median %s, noise ceiling median %s%%",
            row["roi"],
            row["n_voxels"],
            row["split_half_r_median"],
            row["noise_ceiling_median"],
        )
    return qc


def prepare_subject_from_root(
    nsd_root: str | Path,
    out_dir: str | Path,
    *,
    subject: int,
    sessions: Sequence[int],
    rois: Sequence[str],
    beta_format: str = "nifti",
    **options,
) -> list[dict]:
    """:func:`prepare_subject` with every input at its NSD key under ``nsd_root``."""
    root = Path(nsd_root)
    atlases = nsd.atlases_for(rois)
    return prepare_subject(
        out_dir,
        subject=subject,
        sessions=sessions,
        betas_paths=[root / nsd.betas_key(subject, s, beta_format) for s in sessions],
        expdesign_path=root / nsd.expdesign_key(),
        atlas_paths={a: root / nsd.roi_key(subject, a) for a in atlases},
        label_table_paths={
            a: root / nsd.label_table_key(a) for a in atlases if a not in nsd.WHOLE_VOLUME_ATLASES
        },
        brainmask_path=root / nsd.brainmask_key(subject),
        rois=rois,
        **options,
    )


# --------------------------------------------------------------------------- outputs


def load_prepared(fmri_dir: str | Path, roi: str) -> dict[str, np.ndarray]:
    """Read one ROI's prepared data back.

    Returns
    -------
    dict with ``train`` (n_train_trials, n_voxels) float32, ``test`` (n_test_images, n_voxels)
    float32, ``train_nsd_ids`` (n_train_trials,) int64, ``train_trials`` (1-based trial numbers),
    ``train_sessions``, ``test_nsd_ids`` (n_test_images,) int64, ``test_repeats``, ``ijk``,
    ``shape``, ``affine``.
    """
    fmri_dir = Path(fmri_dir)
    train_rows = read_rows(fmri_dir / "train_trials.tsv")
    test_rows = read_rows(fmri_dir / "test_images.tsv")
    voxels = np.load(fmri_dir / f"{roi}_voxels.npz")
    return {
        "train": np.load(fmri_dir / f"{roi}_train.npy"),
        "test": np.load(fmri_dir / f"{roi}_test.npy"),
        "train_nsd_ids": np.array([int(r["nsdId"]) for r in train_rows], dtype=np.int64),
        "train_trials": np.array([int(r["trial"]) for r in train_rows], dtype=np.int64),
        "train_sessions": np.array([int(r["session"]) for r in train_rows], dtype=np.int64),
        "test_nsd_ids": np.array([int(r["nsdId"]) for r in test_rows], dtype=np.int64),
        "test_repeats": np.array([int(r["n_repeats"]) for r in test_rows], dtype=np.int64),
        "ijk": voxels["ijk"],
        "shape": voxels["shape"],
        "affine": voxels["affine"],
    }


def summarize_qc(qc_paths: Sequence[str | Path], out_path: str | Path) -> list[dict[str, str]]:
    """Concatenate per-subject ``qc.tsv`` tables into one summary (rows by subject, then ROI).

    Raises
    ------
    FMRIDataError
        A table whose columns are not :data:`QC_COLUMNS`.
    """
    rows: list[dict[str, str]] = []
    for path in qc_paths:
        table = read_rows(path)
        with open(path) as handle:
            header = handle.readline().rstrip("\n").split("\t")
        if tuple(header) != QC_COLUMNS:
            raise FMRIDataError(f"{path}: columns {header}; expected {list(QC_COLUMNS)}")
        rows += table
    rows.sort(key=lambda row: row["subject"])  # stable: ROI order kept within a subject
    with atomic_path(out_path) as tmp:
        write_rows(tmp, QC_COLUMNS, ([row[c] for c in QC_COLUMNS] for row in rows))
    return rows
