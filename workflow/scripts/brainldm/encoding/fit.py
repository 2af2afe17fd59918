"""Voxelwise encoding models: predict every voxel of a mask from the LDM's parts.

Models (names as in the config and in every output):

- single-space: ``z``, ``c``, ``zc{strength}`` and ``unet_{block}_{step}``: kernel ridge with a
  linear kernel (features centred on the training rows), one alpha per voxel by K-fold CV;
- joint (banded): ``z+c`` and ``z+zc{strength}``: one linear kernel per space, kernel weights and
  alpha per voxel by himalaya's random search (:mod:`brainldm.linear.banded`).

Targets are the voxels of the prepared ``encoding.mask`` ROI, z-scored with the training rows'
mean and std (so zero-mean, as a no-intercept fit needs). Training rows are the training images
with their betas averaged over repeats (``train_on: images``, the default) or the single trials
with each image's features repeated (``trials``). Test = the shared images' averaged betas.

Per voxel: test Pearson r, its one-sided p (t, N - 2 dof), BH-FDR q, significance at
``q < fdr_q``, test R2; for joint models himalaya's split correlation and, from the single-space
R2s, each space's unique variance ``R2(A+B) - R2(other)``.
"""

from __future__ import annotations

import collections
import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from brainldm.core.atomic import atomic_path, write_text
from brainldm.core.names import BASE_SPACES, model_names, unet_names
from brainldm.encoding import scoring
from brainldm.features.rows import load_feature_rows
from brainldm.features.spaces import load_encoding_space
from brainldm.fmri.load import load_roi_betas, standardize
from brainldm.linear.banded import banded_ridge_cv_predict, himalaya_banded_predict, linear_kernels
from brainldm.linear.ops import resolve_backend

LOGGER = logging.getLogger("brainldm.encoding.fit")


@dataclass(frozen=True)
class EncodingSettings:
    """Config section ``encoding`` (model fitting part)."""

    mask: str = "nsdgeneral"
    train_on: str = "images"
    alphas: tuple[float, ...] = tuple(np.logspace(1, 20, 20).tolist())
    n_iter: int = 20
    n_folds: int = 5
    seed: int = 42
    backend: str = "auto"
    n_targets_batch: int = 4096
    solver: str = "banded"
    fdr_q: float = 0.05

    @classmethod
    def from_config(cls, encoding: dict) -> "EncodingSettings":
        values = {key: encoding[key] for key in cls.__dataclass_fields__ if key in encoding}
        if "alphas" in values:
            values["alphas"] = tuple(float(a) for a in values["alphas"])
        return cls(**values)


def model_spaces(model: str) -> list[str]:
    """Feature spaces of a model: ``z+c`` -> ``[z, c]``, ``zc0.5`` -> ``[zc0.5]``."""
    return model.split("+")


def load_space(features_dir, encoding_features_dir, space: str, nsd_ids: np.ndarray) -> np.ndarray:
    """One space's rows for ``nsd_ids``: (n, dims) float32."""
    if space in BASE_SPACES:
        return np.asarray(load_feature_rows(features_dir, space, nsd_ids), dtype=np.float32)
    return load_encoding_space(encoding_features_dir, space, nsd_ids)


def training_rows(train_betas: np.ndarray, train_ids: np.ndarray, train_on: str):
    """Training targets and their images.

    Returns ``(Y (n_rows, n_voxels) float32, row_images (n_rows,) int64)``: the betas averaged per
    image, images in order of first presentation (``images``), or the trials as they are
    (``trials``).
    """
    if train_on == "trials":
        return np.asarray(train_betas, dtype=np.float32), np.asarray(train_ids, dtype=np.int64)
    if train_on != "images":
        raise ValueError(f"encoding.train_on {train_on!r}: expected 'images' or 'trials'")
    unique, first, inverse = np.unique(train_ids, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")  # first presentation: folds follow the sessions
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    sums = np.zeros((len(unique), train_betas.shape[1]), dtype=np.float64)
    np.add.at(sums, rank[inverse], np.asarray(train_betas, dtype=np.float64))
    counts = np.bincount(rank[inverse], minlength=len(unique)).astype(np.float64)
    return (sums / counts[:, None]).astype(np.float32), unique[order].astype(np.int64)


def fit_model(
    spaces_train: Sequence[np.ndarray],
    Y: np.ndarray,
    spaces_test: Sequence[np.ndarray],
    settings: EncodingSettings,
    rows: np.ndarray | None = None,
    progress: bool = False,
):
    """Fit one (single or banded) model; returns :class:`brainldm.linear.banded.BandedFit`-like fields.

    ``rows`` (n_train,) maps training rows to rows of ``spaces_train`` (trials -> images): the
    kernels are computed on the images and expanded.
    """
    backend = resolve_backend(settings.backend, key="encoding.backend")
    if settings.solver == "himalaya":
        train = [x if rows is None else x[rows] for x in spaces_train]
        pred, split, deltas = himalaya_banded_predict(
            train,
            Y,
            spaces_test,
            alphas=settings.alphas,
            n_iter=settings.n_iter,
            n_folds=settings.n_folds,
            random_state=settings.seed,
            n_targets_batch=settings.n_targets_batch,
            backend=backend,
        )
        return (
            pred,
            split,
            np.exp(deltas - np.log(np.exp(deltas).sum(0))),
            np.exp(-np.log(np.exp(deltas).sum(0))),
        )
    if settings.solver != "banded":
        raise ValueError(f"encoding.solver {settings.solver!r}: expected 'banded' or 'himalaya'")
    Ks, Ks_test = linear_kernels(spaces_train, spaces_test, backend=backend)
    if rows is not None:
        Ks, Ks_test = Ks[:, rows][:, :, rows], Ks_test[:, :, rows]
    fit = banded_ridge_cv_predict(
        Ks,
        Y,
        Ks_test,
        alphas=settings.alphas,
        n_iter=settings.n_iter,
        n_folds=settings.n_folds,
        random_state=settings.seed,
        backend=backend,
        n_targets_batch=settings.n_targets_batch,
        progress=progress,
    )
    return fit.predictions, fit.split_predictions, fit.best_gammas, fit.best_alphas


def score_model(predictions: np.ndarray, split: np.ndarray, Y_test: np.ndarray, fdr_q: float) -> dict:
    """Per-voxel scores of test predictions (all (n_voxels,) float64 unless named)."""
    r = scoring.voxel_correlation(predictions, Y_test)
    p = scoring.correlation_p_values(r, len(Y_test))
    q = scoring.fdr_q_values(p)
    out = {"r": r, "p": p, "q": q, "significant": q < fdr_q, "r2": scoring.voxel_r2(predictions, Y_test)}
    if len(split) > 1:
        out["split_r"] = scoring.split_correlation(split, Y_test)
    return out


def encode_model(
    fmri_dir,
    features_dir,
    encoding_features_dir,
    model: str,
    out_path,
    settings: EncodingSettings,
    progress: bool = True,
) -> dict:
    """Fit one subject's model ``model`` on the mask's voxels and write ``out_path`` (.npz).

    The npz holds ``r``, ``p``, ``q``, ``significant``, ``r2``, ``best_alphas`` (n_voxels,),
    ``gammas`` (n_spaces, n_voxels), ``spaces``, and ``split_r`` (n_spaces, n_voxels) for joint
    models. Returns a summary dict (also logged).
    """
    return encode_models(
        fmri_dir, features_dir, encoding_features_dir, [model], [out_path], settings, progress=progress
    )[0]


def encode_models(
    fmri_dir,
    features_dir,
    encoding_features_dir,
    models: Sequence[str],
    out_paths: Sequence,
    settings: EncodingSettings,
    progress: bool = True,
) -> list[dict]:
    """:func:`encode_model` for each of ``models`` in turn (``out_paths`` in the same order).

    The betas are read once, and a space shared by several models (``z``) once while a later model
    still needs it; the files are those of one call per model.
    """
    if len(models) != len(out_paths):
        raise ValueError(
            f"{len(models)} models but {len(out_paths)} output paths; expected one path per model"
        )
    train_betas, test_betas, train_ids, test_ids = load_roi_betas(fmri_dir, [settings.mask])
    Y, row_images = training_rows(train_betas, train_ids, settings.train_on)
    del train_betas
    Y, Y_test, _, _ = standardize(Y, test_betas)
    images, rows = (
        (row_images, None) if settings.train_on == "images" else np.unique(row_images, return_inverse=True)
    )
    uses = collections.Counter(space for model in models for space in model_spaces(model))
    loaded: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    summaries = []
    for model, out_path in zip(models, out_paths):
        spaces = model_spaces(model)
        for space in spaces:
            if space not in loaded:
                loaded[space] = (
                    load_space(features_dir, encoding_features_dir, space, images),
                    load_space(features_dir, encoding_features_dir, space, test_ids),
                )
        train, test = [loaded[space][0] for space in spaces], [loaded[space][1] for space in spaces]
        LOGGER.info(
            "model %s: %d training rows (%s), %d test images, %d voxels of %s, spaces %s",
            model,
            len(Y),
            settings.train_on,
            len(test_ids),
            Y.shape[1],
            settings.mask,
            {s: x.shape[1] for s, x in zip(spaces, train)},
        )
        predictions, split, gammas, alphas = fit_model(train, Y, test, settings, rows=rows, progress=progress)
        scores = score_model(predictions, split, Y_test, settings.fdr_q)
        with atomic_path(out_path) as tmp:
            np.savez(
                tmp,
                spaces=np.asarray(spaces),
                best_alphas=np.asarray(alphas, dtype=np.float64),
                gammas=np.asarray(gammas, dtype=np.float64),
                n_test=len(test_ids),
                n_train=len(Y),
                **{k: np.asarray(v) for k, v in scores.items()},
            )
        summary = {
            "model": model,
            "mean_r": float(np.nanmean(scores["r"])),
            "fraction_significant": float(np.mean(scores["significant"])),
        }
        LOGGER.info(
            "model %s: mean test r %.4f, %.1f%% of voxels significant (q < %g)",
            model,
            summary["mean_r"],
            100 * summary["fraction_significant"],
            settings.fdr_q,
        )
        summaries.append(summary)
        del train, test
        for space in spaces:
            uses[space] -= 1
            if not uses[space]:
                del loaded[space]  # no later model needs it: free its memory
    return summaries


# ------------------------------------------------------------------------------ per-subject maps


def load_model_scores(encoding_dir, model: str) -> dict:
    path = Path(encoding_dir) / f"{model}.npz"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing (an output of rule fit_encoding_model or fit_encoding_models)"
        )
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def variance_partition(scores: dict[str, dict], joints: Sequence[str]) -> dict[str, np.ndarray]:
    """Unique variance of each space of each joint model: ``{"{joint}_unique_{space}": (n_voxels,)}``
    plus ``{joint}_shared``."""
    out = {}
    for joint in joints:
        a, b = model_spaces(joint)
        r2 = scores[joint]["r2"]
        out[f"{joint}_unique_{a}"] = scoring.unique_variance(r2, scores[b]["r2"])
        out[f"{joint}_unique_{b}"] = scoring.unique_variance(r2, scores[a]["r2"])
        out[f"{joint}_shared"] = scoring.shared_variance(r2, scores[a]["r2"], scores[b]["r2"])
    return out


def best_unet(scores: dict[str, dict], blocks: Sequence[str], steps: Sequence[str]):
    """Per voxel, the block and step whose U-Net model has the highest test r.

    Returns ``(block_index (n_voxels,) float64, step_index (n_voxels,) float64)``, NaN where every
    U-Net r is NaN.
    """
    names = unet_names(blocks, steps)
    r = np.stack([scores[name]["r"] for name in names])  # (blocks * steps, v)
    valid = ~np.all(np.isnan(r), axis=0)
    best = np.argmax(np.where(np.isnan(r), -np.inf, r), axis=0)
    block = np.where(valid, best // len(steps), np.nan)
    step = np.where(valid, best % len(steps), np.nan)
    return block, step


def write_volume(path, values: np.ndarray, ijk: np.ndarray, shape, affine) -> None:
    """A NIfTI float32 volume: ``values`` at ``ijk``, NaN elsewhere."""
    import nibabel as nib

    volume = np.full(tuple(int(s) for s in shape), np.nan, dtype=np.float32)
    volume[tuple(np.asarray(ijk).T)] = np.asarray(values, dtype=np.float32)
    with atomic_path(path) as tmp:
        nib.save(nib.Nifti1Image(volume, np.asarray(affine, dtype=np.float64)), str(tmp))


def roi_labels(atlas_path, label_table_path, ijk: np.ndarray) -> tuple[np.ndarray, dict[int, str]]:
    """Atlas value of each voxel and the label names of the values (``Unknown``/0 dropped)."""
    from brainldm.nsd.layout import read_label_table, read_volume

    volume, _ = read_volume(atlas_path)
    values = np.rint(volume[tuple(np.asarray(ijk).T)]).astype(np.int64)
    names = {value: name for name, value in read_label_table(label_table_path).items() if value > 0}
    return values, names


SUMMARY_COLUMNS = (
    "subject",
    "model",
    "atlas",
    "roi",
    "n_voxels",
    "mean_r",
    "fraction_significant",
    "unique_space",
    "mean_unique",
)


def map_subject(
    encoding_dir,
    voxels_path,
    atlases: dict[str, tuple[str, str]],
    encoding: dict,
    subject: int,
    volumes_dir,
    table_path,
) -> list[dict]:
    """Write a subject's voxel table, NIfTI volumes and per-ROI summary from its model files.

    Parameters
    ----------
    encoding_dir : folder with ``{model}.npz`` (rule fit_encoding_model or fit_encoding_models)
    voxels_path : the mask ROI's ``{mask}_voxels.npz`` (fMRI stage): ``ijk``, ``shape``, ``affine``
    atlases : ``{atlas: (volume path, label table path)}`` for the summary's ROIs
    encoding : the ``encoding`` config section
    volumes_dir : receives ``{model}_r``, ``{model}_significant``, ``{joint}_unique_{space}``,
        ``unet_best_block``/``unet_best_step`` ``.nii.gz`` (+ ``.json`` name lists)
    table_path : the per-subject summary TSV (columns ``SUMMARY_COLUMNS``)
    """
    encoding_dir, volumes_dir = Path(encoding_dir), Path(volumes_dir)
    singles, joints = model_names(encoding)
    scores = {model: load_model_scores(encoding_dir, model) for model in singles + joints}
    with np.load(voxels_path) as voxels:
        ijk, shape, affine = voxels["ijk"], voxels["shape"], voxels["affine"]
    n_voxels = len(ijk)
    for model, values in scores.items():
        if values["r"].shape != (n_voxels,):
            raise ValueError(
                f"{encoding_dir}/{model}.npz has {values['r'].shape} voxels; {voxels_path} lists {n_voxels}"
            )
    partition = variance_partition(scores, joints)
    labels = {atlas: roi_labels(volume, table, ijk) for atlas, (volume, table) in atlases.items()}
    with atomic_path(encoding_dir / "voxels.npz") as tmp:
        np.savez(
            tmp,
            ijk=ijk.astype(np.int32),
            shape=shape,
            affine=affine,
            **{f"{atlas}_label": values for atlas, (values, _) in labels.items()},
            **partition,
        )
    for model, values in scores.items():
        write_volume(volumes_dir / f"{model}_r.nii.gz", values["r"], ijk, shape, affine)
        write_volume(
            volumes_dir / f"{model}_significant.nii.gz",
            values["significant"].astype(np.float32),
            ijk,
            shape,
            affine,
        )
    for name, values in partition.items():
        if "_unique_" in name:
            write_volume(volumes_dir / f"{name}.nii.gz", values, ijk, shape, affine)
    block, step = best_unet(scores, encoding["unet_blocks"], encoding["unet_steps"])
    for name, values, names in (
        ("unet_best_block", block, encoding["unet_blocks"]),
        ("unet_best_step", step, encoding["unet_steps"]),
    ):
        write_volume(volumes_dir / f"{name}.nii.gz", values, ijk, shape, affine)
        write_text(volumes_dir / f"{name}.json", json.dumps(list(names)) + "\n")
    rows = roi_summary(scores, partition, labels, joints, subject)
    write_summary(table_path, rows)
    return rows


def roi_summary(scores, partition, labels, joints, subject) -> list[dict]:
    """Mean r, fraction significant and mean unique variance per model and ROI."""
    rows = []
    for atlas, (values, names) in labels.items():
        for value, roi in sorted(names.items()):
            inside = values == value
            if not inside.any():
                continue
            for model, model_scores in scores.items():
                base = {
                    "subject": subject,
                    "model": model,
                    "atlas": atlas,
                    "roi": roi,
                    "n_voxels": int(inside.sum()),
                    "mean_r": float(np.nanmean(model_scores["r"][inside]))
                    if np.isfinite(model_scores["r"][inside]).any()
                    else float("nan"),
                    "fraction_significant": float(np.mean(model_scores["significant"][inside])),
                }
                if model in joints:
                    for space in model_spaces(model):
                        unique = partition[f"{model}_unique_{space}"][inside]
                        rows.append({**base, "unique_space": space, "mean_unique": float(np.nanmean(unique))})
                else:
                    rows.append({**base, "unique_space": "", "mean_unique": float("nan")})
    return rows


def write_summary(path, rows: Sequence[dict]) -> None:
    """TSV with ``SUMMARY_COLUMNS``; floats with 6 decimals, NaN as empty."""

    def cell(value):
        if isinstance(value, float):
            return "" if np.isnan(value) else f"{value:.6f}"
        return str(value)

    lines = ["\t".join(SUMMARY_COLUMNS)]
    lines += ["\t".join(cell(row[c]) for c in SUMMARY_COLUMNS) for row in rows]
    write_text(path, "\n".join(lines) + "\n")


def read_summary(path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def summarize_encoding(tables: Sequence, out_path) -> None:
    """Concatenate per-subject summary tables into one TSV (same columns)."""
    lines = []
    for k, table in enumerate(tables):
        text = Path(table).read_text().splitlines()
        if not text or text[0].split("\t") != list(SUMMARY_COLUMNS):
            raise ValueError(f"{table}: expected an encoding summary with columns {SUMMARY_COLUMNS}")
        lines += text if k == 0 else text[1:]
    write_text(out_path, "\n".join(lines) + "\n")
