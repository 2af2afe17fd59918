"""fMRI preparation: the paper's split, streamed ROI matrices, values, QC and bad data.

Expected values are derived independently of brainldm (scipy.io, nibabel, h5py, the label
tables parsed here) from the toy world's design and raw betas.
"""

from __future__ import annotations

import csv
import gzip
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import scipy.io

from brainldm.core.tables import read_rows
from brainldm.fmri.betas import FMRIDataError
from brainldm.fmri.prepare import (
    QC_COLUMNS,
    load_prepared,
    output_names,
    prepare_subject_from_root,
    summarize_qc,
)
from brainldm.fmri.reliability import noise_ceiling, split_half_reliability
from brainldm.fmri.split import split_counts
from brainldm.nsd import layout as nsd
from brainldm.toy.world import VOXEL_CLASS, planted_key

ROIS = ["early", "ventral", "lateral", "nsdgeneral", "V1v", "hV4", "brainmask"]
SESSIONS = [1, 2, 3, 4]


# --------------------------------------------------------------------------- independent readers


def raw_design(nsd_root: Path) -> dict[str, np.ndarray]:
    mat = scipy.io.loadmat(nsd_root / nsd.expdesign_key())
    return {name: mat[name].astype(np.int64) for name in ("masterordering", "subjectim", "sharedix")}


def expected_trials(nsd_root: Path, subject: int, sessions, tps: int):
    """(0-based global trial, nsdId, is_test) of every trial of ``sessions``, from the .mat."""
    mat = raw_design(nsd_root)
    trials = np.concatenate([np.arange((s - 1) * tps, s * tps) for s in sorted(sessions)])
    nsd_ids = mat["subjectim"][subject - 1, mat["masterordering"][0, trials] - 1] - 1
    is_test = np.isin(nsd_ids, mat["sharedix"][0] - 1)
    return trials, nsd_ids, is_test


def label_value(nsd_root: Path, atlas: str, name: str) -> int:
    for line in (nsd_root / nsd.label_table_key(atlas)).read_text().splitlines():
        value, label = line.split()[:2]
        if label == name:
            return int(value)
    raise KeyError(name)


def expected_mask(nsd_root: Path, subject: int, roi: str) -> np.ndarray:
    if roi == "brainmask":
        return np.asarray(nib.load(nsd_root / nsd.brainmask_key(subject)).dataobj) > 0
    atlas = nsd.ROI_ATLAS[roi]
    volume = np.asarray(nib.load(nsd_root / nsd.roi_key(subject, atlas)).dataobj)
    if roi == "nsdgeneral":
        return volume > 0
    return volume == label_value(nsd_root, atlas, roi)


def raw_session(nsd_root: Path, subject: int, session: int) -> np.ndarray:
    """(X, Y, Z, n_trials) int16 straight from nibabel."""
    return np.asarray(nib.load(nsd_root / nsd.betas_key(subject, session, "nifti")).dataobj)


# --------------------------------------------------------------------------- fixtures


def prepare(world, out_dir, subject=1, sessions=SESSIONS, rois=ROIS, nsd_root=None, **options):
    options.setdefault("trials_per_session", world["params"].trials_per_session)
    options.setdefault("progress", False)
    return prepare_subject_from_root(
        nsd_root or world["nsd_root"], out_dir, subject=subject, sessions=sessions, rois=rois, **options
    )


@pytest.fixture(scope="module")
def prepared(toy_world, tmp_path_factory):
    """Both toy subjects prepared with raw values: {subject: out_dir}."""
    out = {}
    for subject in (1, 2):
        out[subject] = tmp_path_factory.mktemp(f"fmri{subject}")
        prepare(toy_world, out[subject], subject=subject)
    return out


def clone_root(world, target: Path, subject: int = 1) -> Path:
    """An NSD root holding links to what preparing ``subject`` needs (files can then be replaced)."""
    keys = nsd.subject_keys(subject, range(1, world["params"].n_sessions + 1), "nifti", ROIS)
    for key in keys + [nsd.expdesign_key()]:
        (target / key).parent.mkdir(parents=True, exist_ok=True)
        (target / key).symlink_to(world["nsd_root"] / key)
    return target


def replace_volume(root: Path, key: str, data: np.ndarray, affine: np.ndarray, gz: bool = True) -> Path:
    path = root / key
    path.unlink()
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def assert_nothing_written(out_dir: Path) -> None:
    left = sorted(p.name for p in out_dir.rglob("*")) if out_dir.exists() else []
    assert left == [], f"files left behind after a failure: {left}"


# --------------------------------------------------------------------------- split and counts


@pytest.mark.parametrize("sessions", [[1, 2, 3, 4], [1, 2, 3, 4, 5], [2, 4], [5]])
@pytest.mark.parametrize("subject", [1, 2])
def test_split_counts_match_an_independent_count(toy_world, subject, sessions):
    tps = toy_world["params"].trials_per_session
    trials, nsd_ids, is_test = expected_trials(toy_world["nsd_root"], subject, sessions, tps)
    design = nsd.read_expdesign(toy_world["nsd_root"] / nsd.expdesign_key())
    assert split_counts(design, subject, sessions, tps) == {
        "n_sessions": len(sessions),
        "n_train_trials": int((~is_test).sum()),
        "n_train_images": np.unique(nsd_ids[~is_test]).size,
        "n_test_trials": int(is_test.sum()),
        "n_test_images": np.unique(nsd_ids[is_test]).size,
    }


def test_split_rejects_sessions_beyond_the_design(toy_world):
    design = nsd.read_expdesign(toy_world["nsd_root"] / nsd.expdesign_key())
    with pytest.raises(ValueError, match="1..5"):
        split_counts(design, 1, [4, 5, 6], toy_world["params"].trials_per_session)
    with pytest.raises(ValueError, match="repeated"):
        split_counts(design, 1, [2, 2], toy_world["params"].trials_per_session)


def test_trial_and_image_tables_follow_the_design(toy_world, prepared):
    tps = toy_world["params"].trials_per_session
    for subject, out_dir in prepared.items():
        trials, nsd_ids, is_test = expected_trials(toy_world["nsd_root"], subject, SESSIONS, tps)
        train = read_rows(out_dir / "train_trials.tsv")
        assert [int(r["row"]) for r in train] == list(range(len(train)))
        np.testing.assert_array_equal([int(r["trial"]) for r in train], trials[~is_test] + 1)
        np.testing.assert_array_equal([int(r["nsdId"]) for r in train], nsd_ids[~is_test])
        np.testing.assert_array_equal([int(r["session"]) for r in train], trials[~is_test] // tps + 1)

        test = read_rows(out_dir / "test_images.tsv")
        ids, counts = np.unique(nsd_ids[is_test], return_counts=True)  # sorted by nsdId
        np.testing.assert_array_equal([int(r["nsdId"]) for r in test], ids)
        np.testing.assert_array_equal([int(r["n_repeats"]) for r in test], counts)
        for row in test:
            listed = [int(t) - 1 for t in row["trials"].split(",")]
            assert sorted(listed) == listed and len(listed) == int(row["n_repeats"])
            np.testing.assert_array_equal(nsd_ids[np.searchsorted(trials, listed)], int(row["nsdId"]))


# --------------------------------------------------------------------------- values


def test_train_rows_are_the_raw_betas_of_their_trials(toy_world, prepared):
    root, tps = toy_world["nsd_root"], toy_world["params"].trials_per_session
    for subject, out_dir in prepared.items():
        trials, _, is_test = expected_trials(root, subject, SESSIONS, tps)
        train_trials = trials[~is_test]
        for roi in ROIS:
            mask = expected_mask(root, subject, roi)
            train = np.load(out_dir / f"{roi}_train.npy")
            assert train.dtype == np.float32 and train.shape == (train_trials.size, mask.sum())
            expected = np.concatenate(
                [
                    raw_session(root, subject, s)[mask][:, train_trials[train_trials // tps == s - 1] % tps].T
                    for s in SESSIONS
                ]
            )
            np.testing.assert_array_equal(train, expected.astype(np.float32))


def test_test_rows_are_the_mean_over_repeats(toy_world, prepared):
    root, tps = toy_world["nsd_root"], toy_world["params"].trials_per_session
    subject, out_dir = 2, prepared[2]
    trials, nsd_ids, is_test = expected_trials(root, subject, SESSIONS, tps)
    sessions = {s: raw_session(root, subject, s) for s in SESSIONS}
    for roi in ("early", "nsdgeneral"):
        mask = expected_mask(root, subject, roi)
        test = np.load(out_dir / f"{roi}_test.npy")
        ids = np.unique(nsd_ids[is_test])
        assert test.dtype == np.float32 and test.shape == (ids.size, mask.sum())
        for row, image in enumerate(ids):
            repeats = [
                sessions[t // tps + 1][..., t % tps][mask].astype(np.float64)
                for t in trials[nsd_ids == image]
            ]
            np.testing.assert_allclose(test[row], np.mean(repeats, axis=0), rtol=1e-6, atol=1e-3)


def test_value_scaling_options(toy_world, prepared, tmp_path):
    root, tps = toy_world["nsd_root"], toy_world["params"].trials_per_session
    raw = {roi: load_prepared(prepared[1], roi) for roi in ("early", "ventral")}
    prepare(toy_world, tmp_path / "percent", rois=["early", "ventral"], value_scaling="percent")
    for roi in ("early", "ventral"):
        percent = load_prepared(tmp_path / "percent", roi)
        np.testing.assert_allclose(percent["train"], raw[roi]["train"] / 300.0, rtol=1e-6)
        np.testing.assert_allclose(percent["test"], raw[roi]["test"] / 300.0, rtol=1e-5, atol=1e-6)

    prepare(toy_world, tmp_path / "z", rois=["early"], value_scaling="zscore_session")
    z = load_prepared(tmp_path / "z", "early")
    mask = expected_mask(root, 1, "early")
    trials, _, is_test = expected_trials(root, 1, SESSIONS, tps)
    expected_rows = []
    for s in SESSIONS:
        values = raw_session(root, 1, s)[mask].T.astype(np.float64)  # (trials, voxels)
        standardised = (values - values.mean(axis=0)) / values.std(axis=0)
        in_session = trials[~is_test][trials[~is_test] // tps == s - 1] % tps
        expected_rows.append(standardised[in_session])
        # every trial of the session (train and test) enters the session's mean and std
        assert abs(standardised.mean()) < 1e-9
    np.testing.assert_allclose(z["train"], np.concatenate(expected_rows), rtol=1e-5, atol=1e-5)
    assert (read_rows(tmp_path / "z" / "qc.tsv")[0]["value_scaling"]) == "zscore_session"

    with pytest.raises(ValueError, match="value_scaling 'zscore'"):
        prepare(toy_world, tmp_path / "bad", rois=["early"], value_scaling="zscore")


def test_hdf5_betas_and_concurrent_reading_give_identical_outputs(toy_world, prepared, tmp_path):
    prepare(toy_world, tmp_path / "h5", rois=["early", "hV4"], beta_format="hdf5")
    prepare(toy_world, tmp_path / "w2", rois=["early", "hV4"], workers=2)
    for folder in ("h5", "w2"):
        for roi in ("early", "hV4"):
            for kind in ("train", "test"):
                np.testing.assert_array_equal(
                    np.load(tmp_path / folder / f"{roi}_{kind}.npy"),
                    np.load(prepared[1] / f"{roi}_{kind}.npy"),
                )
        assert (tmp_path / folder / "train_trials.tsv").read_text() == (
            prepared[1] / "train_trials.tsv"
        ).read_text()


# --------------------------------------------------------------------------- voxels


@pytest.mark.parametrize("roi", ROIS)
def test_voxel_indices_round_trip_into_the_volume(toy_world, prepared, roi):
    root = toy_world["nsd_root"]
    atlas = nsd.ROI_ATLAS[roi]
    atlas_image = nib.load(root / (nsd.brainmask_key(1) if atlas == "brainmask" else nsd.roi_key(1, atlas)))
    mask = expected_mask(root, 1, roi)
    voxels = np.load(prepared[1] / f"{roi}_voxels.npz")
    ijk = voxels["ijk"]
    assert ijk.dtype == np.int32 and ijk.shape == (mask.sum(), 3)
    np.testing.assert_array_equal(voxels["shape"], mask.shape)
    np.testing.assert_allclose(voxels["affine"], atlas_image.affine)
    assert mask[tuple(ijk.T)].all()
    # Per-voxel values written back through ijk land where volume[mask] reads them from.
    values = np.arange(1, ijk.shape[0] + 1)
    volume = np.zeros(mask.shape, dtype=np.int64)
    volume[tuple(ijk.T)] = values
    np.testing.assert_array_equal(volume[mask], values)
    assert (volume[~mask] == 0).all()
    # ... and a column of the train matrix is that voxel's betas across trials.
    session1 = raw_session(root, 1, 1)
    first_train = int(read_rows(prepared[1] / "train_trials.tsv")[0]["trial"]) - 1
    column = ijk.shape[0] // 2
    assert np.load(prepared[1] / f"{roi}_train.npy")[0, column] == session1[(*ijk[column], first_train)]


def test_roi_by_name_across_atlases(toy_world, prepared):
    root = toy_world["nsd_root"]
    prf = np.asarray(nib.load(root / nsd.roi_key(1, "prf-visualrois")).dataobj)
    general = np.asarray(nib.load(root / nsd.roi_key(1, "nsdgeneral")).dataobj)
    v1v = np.load(prepared[1] / "V1v_voxels.npz")
    assert str(v1v["atlas"]) == "prf-visualrois" and int(v1v["label"]) == label_value(
        root, "prf-visualrois", "V1v"
    )
    assert (prf[tuple(v1v["ijk"].T)] == label_value(root, "prf-visualrois", "V1v")).all()
    assert v1v["ijk"].shape[0] == (prf == label_value(root, "prf-visualrois", "V1v")).sum()
    general_ijk = np.load(prepared[1] / "nsdgeneral_voxels.npz")["ijk"]
    assert general_ijk.shape[0] == (general > 0).sum() and (general[tuple(general_ijk.T)] == 1).all()
    # The whole brain: every brain-mask voxel, nsdgeneral's among them, and more.
    brain = np.asarray(nib.load(root / nsd.brainmask_key(1)).dataobj) > 0
    whole = np.load(prepared[1] / "brainmask_voxels.npz")
    assert str(whole["atlas"]) == "brainmask" and int(whole["label"]) == 0
    assert whole["ijk"].shape[0] == brain.sum() > general_ijk.shape[0]
    assert brain[tuple(whole["ijk"].T)].all()
    whole_c = set(np.ravel_multi_index(tuple(whole["ijk"].T), brain.shape).tolist())
    assert set(np.ravel_multi_index(tuple(general_ijk.T), brain.shape).tolist()) <= whole_c


# --------------------------------------------------------------------------- QC


def test_qc_table_counts(toy_world, prepared):
    tps = toy_world["params"].trials_per_session
    for subject, out_dir in prepared.items():
        _, nsd_ids, is_test = expected_trials(toy_world["nsd_root"], subject, SESSIONS, tps)
        counts = np.unique(nsd_ids[is_test], return_counts=True)[1]
        rows = read_rows(out_dir / "qc.tsv")
        assert [r["roi"] for r in rows] == ROIS and tuple(rows[0]) == QC_COLUMNS
        for row in rows:
            assert row["sessions"] == "1-4" and int(row["n_sessions"]) == 4
            assert int(row["n_train_trials"]) == (~is_test).sum()
            assert int(row["n_test_trials"]) == is_test.sum() == counts.sum()
            assert int(row["n_test_images"]) == counts.size
            assert (
                int(row["test_repeats_min"]) == counts.min() and int(row["test_repeats_max"]) == counts.max()
            )
            assert float(row["test_repeats_mean"]) == pytest.approx(counts.mean(), abs=1e-4)
            assert int(row["n_reliability_images"]) == (counts >= 2).sum()
            assert int(row["n_voxels"]) == expected_mask(toy_world["nsd_root"], subject, row["roi"]).sum()
            assert int(row["n_voxels_outside_brainmask"]) == 0
            assert int(row["n_voxels_all_zero"]) == 0


def test_all_zero_voxels_are_counted_and_stay_finite(toy_world, tmp_path):
    """Voxels outside NSD's liberal brain mask hold 0 in every trial: z-scored they stay 0."""
    root = clone_root(toy_world, tmp_path / "nsd")
    early = np.argwhere(expected_mask(toy_world["nsd_root"], 1, "early"))
    dead = early[[0, 7, 30]]
    for session in SESSIONS:
        key = nsd.betas_key(1, session, "nifti")
        image = nib.load(toy_world["nsd_root"] / key)
        data = np.asarray(image.dataobj).copy()
        data[tuple(dead.T)] = 0
        replace_volume(root, key, data, image.affine)
    prepare(
        toy_world, tmp_path / "out", rois=["early", "lateral"], nsd_root=root, value_scaling="zscore_session"
    )
    qc = {row["roi"]: row for row in read_rows(tmp_path / "out" / "qc.tsv")}
    assert int(qc["early"]["n_voxels_all_zero"]) == 3 and int(qc["lateral"]["n_voxels_all_zero"]) == 0
    prepared = load_prepared(tmp_path / "out", "early")
    columns = [int(np.flatnonzero((prepared["ijk"] == voxel).all(axis=1))[0]) for voxel in dead]
    assert (prepared["train"][:, columns] == 0).all() and (prepared["test"][:, columns] == 0).all()
    assert np.isfinite(prepared["train"]).all()
    voxels = np.load(tmp_path / "out" / "early_voxels.npz")
    assert np.isnan(voxels["split_half_r"][columns]).all()
    assert np.isfinite(np.delete(voxels["split_half_r"], columns)).all()
    assert np.isfinite(float(qc["early"]["split_half_r_median"]))


def test_planted_voxels_are_more_reliable_than_noise_voxels(toy_world, prepared):
    for subject, out_dir in prepared.items():
        qc = {row["roi"]: row for row in read_rows(out_dir / "qc.tsv")}
        noise = float(qc["lateral"]["split_half_r_median"])  # toy lateral cortex is pure noise
        assert abs(noise) < 0.15
        for roi in ("early", "ventral"):
            assert float(qc[roi]["split_half_r_median"]) > noise + 0.25
            assert float(qc[roi]["noise_ceiling_median"]) > float(qc["lateral"]["noise_ceiling_median"]) + 25

        # Voxel by voxel, through the planted classes of the brain voxels.
        planted = np.load(toy_world["nsd_root"] / planted_key(subject))
        grid = toy_world["params"].grid
        voxel_class = np.full(grid, VOXEL_CLASS["outside"])
        voxel_class[tuple(planted["brain_ijk"].T)] = planted["voxel_class"]
        voxels = np.load(out_dir / "nsdgeneral_voxels.npz")
        classes = voxel_class[tuple(voxels["ijk"].T)]
        r = voxels["split_half_r"]
        median = {
            name: np.median(r[classes == value]) for name, value in VOXEL_CLASS.items() if name != "outside"
        }
        assert median["early"] > median["noise"] + 0.25 and median["ventral"] > median["noise"] + 0.25


def test_split_half_reliability_and_noise_ceiling_formula():
    rng = np.random.default_rng(3)
    n_images, n_voxels = 3000, 40
    signal = rng.normal(size=(n_images, 1, n_voxels))
    noise_sd = np.linspace(0.5, 2.0, n_voxels)  # r_true = 1 / (1 + sd^2)
    repeats = (signal + rng.normal(size=(n_images, 3, n_voxels)) * noise_sd).astype(np.float32)
    n_repeats = rng.choice([1, 2, 3], size=n_images, p=[0.1, 0.2, 0.7])
    r, n_used = split_half_reliability(repeats, n_repeats)
    r_true = 1.0 / (1.0 + noise_sd**2)
    assert n_used == (n_repeats >= 2).sum()
    np.testing.assert_allclose(r, r_true, atol=0.05)
    # NC = 100 * s / (s + mean(1/n)), s = r / (1 - r); all three repeats: Spearman-Brown.
    np.testing.assert_allclose(
        noise_ceiling(np.array([0.5, 0.2]), np.full(10, 3)), [100 * 1.5 / 2.0, 100 * 0.6 / 1.4]
    )
    mixed = noise_ceiling(np.array([0.5]), np.array([1, 2, 3]))
    assert mixed[0] == pytest.approx(100 * 1.0 / (1.0 + (1 + 1 / 2 + 1 / 3) / 3))
    np.testing.assert_array_equal(
        noise_ceiling(np.array([-0.2, 1.0, np.nan]), np.full(4, 3))[:2], [0.0, 100.0]
    )
    assert np.isnan(noise_ceiling(np.array([np.nan]), np.full(4, 3))[0])


def test_summary_concatenates_subjects(prepared, tmp_path):
    out = tmp_path / "summary" / "fmri_qc.tsv"
    rows = summarize_qc([prepared[2] / "qc.tsv", prepared[1] / "qc.tsv"], out)
    assert [(r["subject"], r["roi"]) for r in rows] == [(f"{s:02d}", roi) for s in (1, 2) for roi in ROIS]
    with open(out) as handle:
        assert tuple(next(csv.reader(handle, delimiter="\t"))) == QC_COLUMNS
    bad = tmp_path / "bad_qc.tsv"
    bad.write_text("subject\troi\n01\tearly\n")
    with pytest.raises(FMRIDataError, match="bad_qc.tsv: columns"):
        summarize_qc([bad], tmp_path / "other.tsv")


# --------------------------------------------------------------------------- bad data


def test_missing_session(toy_world, tmp_path):
    root = clone_root(toy_world, tmp_path / "nsd")
    path = root / nsd.betas_key(1, 3, "nifti")
    path.unlink()
    with pytest.raises(FMRIDataError, match=rf"{path}.*session 3"):
        prepare(toy_world, tmp_path / "out", nsd_root=root)
    assert_nothing_written(tmp_path / "out")


def test_roi_on_another_grid(toy_world, tmp_path):
    root = clone_root(toy_world, tmp_path / "nsd")
    key = nsd.roi_key(1, "streams")
    image = nib.load(toy_world["nsd_root"] / key)
    data = np.asarray(image.dataobj)
    path = replace_volume(root, key, data[:, :, :-1], image.affine)
    with pytest.raises(FMRIDataError, match=rf"{path}: grid .*differs"):
        prepare(toy_world, tmp_path / "out", nsd_root=root)
    shifted = image.affine.copy()
    shifted[0, 3] += 1.8
    replace_volume(root, key, data, shifted)
    with pytest.raises(FMRIDataError, match=rf"{path}: affine differs"):
        prepare(toy_world, tmp_path / "out", nsd_root=root)
    assert_nothing_written(tmp_path / "out")


def test_roi_without_voxels(toy_world, tmp_path):
    root = clone_root(toy_world, tmp_path / "nsd")
    key = nsd.roi_key(1, "streams")
    image = nib.load(toy_world["nsd_root"] / key)
    data = np.asarray(image.dataobj).copy()
    data[data == label_value(toy_world["nsd_root"], "streams", "ventral")] = 0
    path = replace_volume(root, key, data, image.affine)
    with pytest.raises(FMRIDataError, match=rf"{path}: ROI 'ventral' \(label 5 .*no voxels"):
        prepare(toy_world, tmp_path / "out", nsd_root=root)
    # An ROI the toy atlas never labels fails the same way.
    with pytest.raises(FMRIDataError, match="ROI 'midventral'.*no voxels"):
        prepare(toy_world, tmp_path / "out", rois=["early", "midventral"])
    assert_nothing_written(tmp_path / "out")


@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
def test_nan_or_inf_betas_stop_midway_and_leave_nothing(toy_world, tmp_path, bad_value):
    root = clone_root(toy_world, tmp_path / "nsd")
    key = nsd.betas_key(1, 3, "nifti")  # sessions 1 and 2 are streamed to disk before this
    image = nib.load(toy_world["nsd_root"] / key)
    data = np.asarray(image.dataobj).astype(np.float32)
    i, j, k = np.argwhere(expected_mask(toy_world["nsd_root"], 1, "early"))[5]
    data[i, j, k, 10] = bad_value
    path = replace_volume(root, key, data, image.affine)
    with pytest.raises(FMRIDataError, match=rf"{path}: 1 NaN/inf values .*session 3 .*trial 11"):
        prepare(toy_world, tmp_path / "out", nsd_root=root)
    assert_nothing_written(tmp_path / "out")
    # Float betas without NaN/inf are accepted and equal the int16 ones.
    data[i, j, k, 10] = 0.0
    replace_volume(root, key, np.asarray(image.dataobj).astype(np.float32), image.affine)
    prepare(toy_world, tmp_path / "ok", rois=["early"], nsd_root=root)
    assert sorted(p.name for p in (tmp_path / "ok").iterdir()) == sorted(output_names(["early"]))


def test_nan_in_an_roi_volume(toy_world, tmp_path):
    root = clone_root(toy_world, tmp_path / "nsd")
    key = nsd.roi_key(1, "nsdgeneral")
    image = nib.load(toy_world["nsd_root"] / key)
    data = np.asarray(image.dataobj).astype(np.float32)
    data[3, 4, 5] = np.nan
    path = replace_volume(root, key, data, image.affine)
    with pytest.raises(FMRIDataError, match=rf"{path}: 1 NaN/inf values in the ROI atlas 'nsdgeneral'"):
        prepare(toy_world, tmp_path / "out", nsd_root=root)
    assert_nothing_written(tmp_path / "out")


def test_wrong_dtype(toy_world, tmp_path):
    root = clone_root(toy_world, tmp_path / "nsd")
    key = nsd.betas_key(1, 2, "nifti")
    image = nib.load(toy_world["nsd_root"] / key)
    path = replace_volume(root, key, np.asarray(image.dataobj).astype(np.int32), image.affine)
    with pytest.raises(FMRIDataError, match=rf"{path}: dtype int32; expected int16"):
        prepare(toy_world, tmp_path / "out", nsd_root=root)
    assert_nothing_written(tmp_path / "out")


@pytest.mark.parametrize("workers", [1, 2])
def test_truncated_or_wrong_length_session(toy_world, tmp_path, workers):
    root = clone_root(toy_world, tmp_path / "nsd")
    key = nsd.betas_key(1, 4, "nifti")
    payload = gzip.decompress((toy_world["nsd_root"] / key).read_bytes())
    (root / key).unlink()
    (root / key).write_bytes(gzip.compress(payload[: len(payload) - 5000], compresslevel=1))
    with pytest.raises(FMRIDataError, match=rf"{root / key}: file ends after \d+ of 72 trials"):
        prepare(toy_world, tmp_path / "out", nsd_root=root, workers=workers)
    assert_nothing_written(tmp_path / "out")
    corrupt = bytearray((toy_world["nsd_root"] / key).read_bytes())
    corrupt[len(corrupt) // 2 : len(corrupt) // 2 + 64] = bytes(64)
    (root / key).write_bytes(bytes(corrupt))
    with pytest.raises(FMRIDataError, match=rf"{root / key}: (corrupt gzip data|file ends after)"):
        prepare(toy_world, tmp_path / "out", nsd_root=root, workers=workers)
    assert_nothing_written(tmp_path / "out")
    image = nib.load(toy_world["nsd_root"] / key)
    replace_volume(root, key, np.asarray(image.dataobj)[..., :70], image.affine)
    with pytest.raises(FMRIDataError, match=rf"{root / key}: 70 trials; expected 72"):
        prepare(toy_world, tmp_path / "out", nsd_root=root)


def test_a_truncated_roi_volume_or_hdf5_session_names_the_file(toy_world, tmp_path):
    """Cut to half their bytes: the ROI's .nii.gz gave ``EOFError``, the HDF5 betas h5py's
    ``OSError``, neither naming the file."""
    root = clone_root(toy_world, tmp_path / "nsd")
    key = nsd.roi_key(1, "streams")
    (root / key).unlink()
    data = (toy_world["nsd_root"] / key).read_bytes()
    (root / key).write_bytes(data[: len(data) // 2])
    with pytest.raises(nsd.NSDFormatError) as error:
        prepare(toy_world, tmp_path / "out", nsd_root=root)
    message = str(error.value)
    assert message.startswith(f"{root / key}: cannot be read or decompressed to its end (EOFError")
    assert message.endswith("expected a 3-D NIfTI volume (.nii.gz) on the subject's func1pt8mm grid")
    assert_nothing_written(tmp_path / "out")

    (root / key).unlink()
    (root / key).symlink_to(toy_world["nsd_root"] / key)
    for session in SESSIONS:
        hdf5 = nsd.betas_key(1, session, "hdf5")
        (root / hdf5).symlink_to(toy_world["nsd_root"] / hdf5)
    (root / hdf5).unlink()
    data = (toy_world["nsd_root"] / hdf5).read_bytes()
    (root / hdf5).write_bytes(data[: len(data) // 2])
    with pytest.raises(nsd.NSDFormatError) as error:
        prepare(toy_world, tmp_path / "out", nsd_root=root, beta_format="hdf5")
    message = str(error.value)
    assert message.startswith(f"{root / hdf5}: not a readable HDF5 file (Unable to synchronously open file")
    assert message.endswith("expected NSD's betas HDF5 (dataset 'betas', (n_trials, Z, Y, X))")
    assert_nothing_written(tmp_path / "out")


# --------------------------------------------------------------------------- the paper's counts on NSD

NSD_ROOT = os.environ.get("BRAINLDM_NSD_ROOT")


@pytest.mark.skipif(
    not NSD_ROOT or not (Path(NSD_ROOT) / nsd.expdesign_key()).is_file(),
    reason="no NSD copy configured (set BRAINLDM_NSD_ROOT to a root holding "
    "nsddata/experiments/nsd/nsd_expdesign.mat)",
)
@pytest.mark.parametrize("subject", [1, 2, 5, 7])
def test_paper_counts_on_nsd(subject):
    design = nsd.read_expdesign(Path(NSD_ROOT) / nsd.expdesign_key())
    assert split_counts(design, subject, range(1, 38)) == {
        "n_sessions": 37,
        "n_train_trials": 24_980,
        "n_train_images": 8_859,
        "n_test_trials": 2_770,
        "n_test_images": 982,
    }
    counts = split_counts(design, subject, range(1, 41))
    assert (counts["n_test_images"], counts["n_test_trials"]) == (1000, 3000)
