"""The toy world: NSD's field names, shapes, dtypes and 1-based conventions, read two ways."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import scipy.io

from brainldm.nsd import layout as nsd
from brainldm.toy.world import (
    ATTRIBUTES_KEY,
    PRF_LABELS,
    STREAMS_LABELS,
    VOXEL_CLASS,
    ToyParams,
    planted_key,
    toy_nsd_keys,
    write_toy_world,
)


@pytest.fixture(scope="module")
def world(toy_world):
    return toy_world


def test_every_listed_file_exists_and_nothing_else(world):
    params = world["params"]
    written = {
        p.relative_to(world["nsd_root"]).as_posix() for p in world["nsd_root"].rglob("*") if p.is_file()
    }
    assert written == set(toy_nsd_keys(params))
    assert sorted(p.name for p in (world["coco_root"] / "annotations").iterdir()) == [
        "captions_train2017.json",
        "captions_val2017.json",
    ]


def test_expdesign_fields_and_one_based_semantics(world):
    params = world["params"]
    path = world["nsd_root"] / nsd.expdesign_key()
    mat = scipy.io.loadmat(path)
    # MATLAB stores NSD's ids as doubles; they must be whole numbers.
    for name in ("masterordering", "subjectim", "sharedix"):
        assert mat[name].dtype == np.float64 and (mat[name] == np.round(mat[name])).all()
        mat[name] = mat[name].astype(np.int64)
    n_per_subject = params.n_shared_images + params.n_own_images
    assert mat["masterordering"].shape == (1, params.n_sessions * params.trials_per_session)
    assert mat["subjectim"].shape == (params.n_subjects, n_per_subject)
    assert mat["sharedix"].shape == (1, params.n_shared_images)
    assert mat["masterordering"].min() == 1 and mat["masterordering"].max() == n_per_subject
    assert mat["subjectim"].min() >= 1 and mat["subjectim"].max() <= params.n_images
    # The first columns of subjectim are the shared images, identical for every subject.
    for s in range(params.n_subjects):
        np.testing.assert_array_equal(mat["subjectim"][s, : params.n_shared_images], mat["sharedix"][0])
    # Every image of a subject is shown exactly 3 times over the whole design.
    counts = np.bincount(mat["masterordering"][0], minlength=n_per_subject + 1)[1:]
    assert (counts == 3).all()

    design = nsd.read_expdesign(path)
    trial_ids = design.trial_nsd_ids(2)
    t = 17
    assert trial_ids[t] == mat["subjectim"][1, mat["masterordering"][0, t] - 1] - 1
    np.testing.assert_array_equal(design.shared_nsd_ids(), mat["sharedix"][0] - 1)
    np.testing.assert_array_equal(
        nsd.session_of_trial([0, params.trials_per_session], params.trials_per_session), [1, 2]
    )


def test_stim_info_agrees_with_the_design(world):
    params = world["params"]
    path = world["nsd_root"] / nsd.stim_info_key()
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == params.n_images
    assert {
        "nsdId",
        "cocoId",
        "cocoSplit",
        "cropBox",
        "shared1000",
        "subject1",
        "subject1_rep0",
        "subject2_rep2",
    } <= set(rows[0])
    assert [int(r["nsdId"]) for r in rows] == list(range(params.n_images))
    design = nsd.read_expdesign(world["nsd_root"] / nsd.expdesign_key())
    info = nsd.read_stim_info(path)
    assert info["shared1000"].dtype == bool and info["cocoId"].dtype == np.int64
    np.testing.assert_array_equal(np.flatnonzero(info["shared1000"]), np.sort(design.shared_nsd_ids()))
    for subject in range(1, params.n_subjects + 1):
        trial_ids = design.trial_nsd_ids(subject)
        for rep in range(3):
            trials = info[f"subject{subject}_rep{rep}"]
            shown = trials > 0
            # subjectS_repR is a 1-based global trial number whose trial shows that image.
            np.testing.assert_array_equal(trial_ids[trials[shown] - 1], info["nsdId"][shown])
        assert info[f"subject{subject}"].sum() == params.n_shared_images + params.n_own_images


def test_stimuli_brick_and_row_reader(world):
    params = world["params"]
    path = world["nsd_root"] / nsd.stimuli_key()
    with h5py.File(path, "r") as handle:
        brick = handle["imgBrick"]
        assert brick.shape == (params.n_images, params.image_size, params.image_size, 3)
        assert brick.dtype == np.uint8
        expected = brick[[3, 5, 40]]
    images = nsd.read_stimuli(path, [40, 3, 5, 3], image_size=params.image_size)
    np.testing.assert_array_equal(images, expected[[2, 0, 1, 0]])
    with pytest.raises(nsd.NSDFormatError, match="out of range"):
        nsd.read_stimuli(path, [params.n_images], image_size=params.image_size)


def test_captions_join_through_coco_ids_and_name_the_attributes(world):
    files = [world["coco_root"] / name for name in nsd.COCO_CAPTION_FILES]
    documents = [json.loads(f.read_text()) for f in files]
    for document in documents:
        assert {"images", "annotations"} <= set(document)
        assert {"image_id", "id", "caption"} <= set(document["annotations"][0])
    info = nsd.read_stim_info(world["nsd_root"] / nsd.stim_info_key())
    captions = nsd.read_coco_captions(files)
    attributes = json.loads((world["nsd_root"] / ATTRIBUTES_KEY).read_text())
    for nsd_id in (0, 7, 100):
        image_captions = nsd.captions_for(info, captions, [nsd_id])[0]
        assert len(image_captions) == 5 and len(set(image_captions)) > 1
        split = info["cocoSplit"][nsd_id]
        document = documents[0 if split == "train2017" else 1]
        assert int(info["cocoId"][nsd_id]) in {image["id"] for image in document["images"]}
        # The first template uses the attribute's own word or a synonym; the size word differs
        # per paraphrase, so check that the shape is named in every caption.
        from brainldm.toy.stimuli import SYNONYMS

        shape_words = SYNONYMS[attributes[nsd_id]["shape"]]
        assert all(any(w in c.lower() for w in shape_words) for c in image_captions)


def test_betas_nifti_and_hdf5_hold_the_same_int16_values(world):
    params = world["params"]
    nifti = world["nsd_root"] / nsd.betas_key(1, 2, "nifti")
    hdf5 = world["nsd_root"] / nsd.betas_key(1, 2, "hdf5")
    image = nib.load(nifti)
    assert image.shape == (*params.grid, params.trials_per_session)
    assert image.get_data_dtype() == np.int16
    raw = np.asarray(image.dataobj)
    with h5py.File(hdf5, "r") as handle:
        assert handle["betas"].shape == (params.trials_per_session, *params.grid[::-1])
        np.testing.assert_array_equal(handle["betas"][()], raw.transpose(3, 2, 1, 0))
    ours = nsd.read_betas_session(nifti)
    assert ours.shape == (params.trials_per_session, *params.grid) and ours.dtype == np.int16
    np.testing.assert_array_equal(ours, nsd.read_betas_session(hdf5))
    mask = np.asarray(nib.load(world["nsd_root"] / nsd.brainmask_key(1)).dataobj).astype(bool)
    assert (raw[~mask] == 0).all()
    assert (raw[mask] != 0).mean() > 0.9


def test_roi_volumes_labels_and_masks(world):
    params = world["params"]
    affine = nib.load(world["nsd_root"] / nsd.betas_key(1, 1)).affine
    volumes = {}
    for atlas in ("streams", "prf-visualrois", "nsdgeneral"):
        data, roi_affine = nsd.read_volume(world["nsd_root"] / nsd.roi_key(1, atlas))
        assert data.shape == params.grid
        np.testing.assert_allclose(roi_affine, affine)
        volumes[atlas] = data
    assert set(np.unique(volumes["nsdgeneral"])) == {-1, 0, 1}
    streams_table = nsd.read_label_table(world["nsd_root"] / nsd.label_table_key("streams"))
    prf_table = nsd.read_label_table(world["nsd_root"] / nsd.label_table_key("prf-visualrois"))
    assert streams_table == STREAMS_LABELS and prf_table == PRF_LABELS
    early = nsd.roi_mask("early", volumes["streams"], streams_table)
    ventral = nsd.roi_mask("ventral", volumes["streams"], streams_table)
    v1v = nsd.roi_mask("V1v", volumes["prf-visualrois"], prf_table)
    general = nsd.roi_mask("nsdgeneral", volumes["nsdgeneral"], None)
    assert early.sum() > 100 and ventral.sum() > 100 and v1v.sum() > 10
    assert not (early & ventral).any()
    assert (v1v <= early).all() and (early <= general).all() and (ventral <= general).all()
    with pytest.raises(nsd.NSDFormatError, match="'fusiform'"):
        nsd.roi_mask("fusiform", volumes["streams"], streams_table)


def test_planted_early_and_ventral_voxels_carry_signal_noise_voxels_do_not(world):
    """Repeats of the same image agree for planted voxels and not for noise voxels."""
    planted = np.load(world["nsd_root"] / planted_key(1))
    design = nsd.read_expdesign(world["nsd_root"] / nsd.expdesign_key())
    params = world["params"]
    trial_ids = design.trial_nsd_ids(1)
    sessions = [
        nsd.read_betas_session(world["nsd_root"] / nsd.betas_key(1, s))
        for s in range(1, params.n_sessions + 1)
    ]
    ijk = planted["brain_ijk"]
    betas = np.concatenate([b[:, ijk[:, 0], ijk[:, 1], ijk[:, 2]] for b in sessions]).astype(np.float64)
    first = np.array([np.flatnonzero(trial_ids == i)[0] for i in np.unique(trial_ids)])
    second = np.array([np.flatnonzero(trial_ids == i)[1] for i in np.unique(trial_ids)])
    a, b = betas[first], betas[second]
    a, b = a - a.mean(0), b - b.mean(0)
    reliability = (a * b).sum(0) / np.sqrt((a * a).sum(0) * (b * b).sum(0))
    classes = planted["voxel_class"]
    noise = reliability[classes == VOXEL_CLASS["noise"]].mean()
    assert abs(noise) < 0.1
    assert reliability[classes == VOXEL_CLASS["early"]].mean() > noise + 0.2
    assert reliability[classes == VOXEL_CLASS["ventral"]].mean() > noise + 0.2


def test_generation_is_deterministic_and_seed_dependent(tmp_path):
    small = ToyParams(
        n_subjects=2,
        n_sessions=1,
        trials_per_session=18,
        n_shared_images=2,
        n_own_images=4,
        image_size=16,
        grid=(8, 9, 8),
        seed=3,
    )
    for name, params in (("a", small), ("b", small), ("c", ToyParams(**{**small.__dict__, "seed": 4}))):
        write_toy_world(tmp_path / name / "nsd", tmp_path / name / "coco", params)

    def load(name):
        return (
            nsd.read_betas_session(tmp_path / name / "nsd" / nsd.betas_key(2, 1)),
            nsd.read_stimuli(
                tmp_path / name / "nsd" / nsd.stimuli_key(), range(10), image_size=small.image_size
            ),
        )

    for left, right in zip(load("a"), load("b")):
        np.testing.assert_array_equal(left, right)
    assert not np.array_equal(load("a")[0], load("c")[0])


def test_snr_zero_plants_no_signal(tmp_path):
    params = ToyParams(
        n_sessions=1,
        trials_per_session=18,
        n_shared_images=2,
        n_own_images=4,
        image_size=16,
        grid=(8, 9, 8),
        snr=0.0,
    )
    write_toy_world(tmp_path / "nsd", tmp_path / "coco", params)
    with_signal = ToyParams(**{**params.__dict__, "snr": 1.0})
    write_toy_world(tmp_path / "s" / "nsd", tmp_path / "s" / "coco", with_signal)
    # Same seed, same noise draws: the difference is exactly the planted signal, nil at snr 0.
    quiet = nsd.read_betas_session(tmp_path / "nsd" / nsd.betas_key(1, 1)).astype(int)
    loud = nsd.read_betas_session(tmp_path / "s" / "nsd" / nsd.betas_key(1, 1)).astype(int)
    planted = np.load(tmp_path / "nsd" / planted_key(1))
    ijk = planted["brain_ijk"][planted["voxel_class"] == VOXEL_CLASS["noise"]]
    np.testing.assert_array_equal(
        quiet[:, ijk[:, 0], ijk[:, 1], ijk[:, 2]], loud[:, ijk[:, 0], ijk[:, 1], ijk[:, 2]]
    )
    assert not np.array_equal(quiet, loud)
    assert float(planted["snr"]) == 0.0


def test_readers_name_the_file_on_bad_input(tmp_path):
    bad_mat = tmp_path / "design.mat"
    scipy.io.savemat(bad_mat, {"masterordering": np.array([[1, 2]]), "subjectim": np.array([[1, 2]])})
    with pytest.raises(nsd.NSDFormatError, match=r"design\.mat.*'sharedix'"):
        nsd.read_expdesign(bad_mat)
    zero_based = tmp_path / "zero.mat"
    scipy.io.savemat(
        zero_based,
        {"masterordering": np.array([[0, 1]]), "subjectim": np.array([[1, 2]]), "sharedix": np.array([[1]])},
    )
    with pytest.raises(nsd.NSDFormatError, match="1-based"):
        nsd.read_expdesign(zero_based)
    floats = tmp_path / "betas_session01.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2, 3), np.float32), np.eye(4)), floats)
    with pytest.raises(nsd.NSDFormatError, match=r"betas_session01.*int16"):
        nsd.read_betas_session(floats)
    assert nsd.root_of("a/b/" + nsd.expdesign_key(), nsd.expdesign_key()).as_posix() == "a/b"


def test_every_toy_world_file_is_byte_identical_across_writes(tmp_path):
    """Same parameters, same bytes in every file (no dates: scipy's savemat stamps one)."""
    small = ToyParams(
        n_subjects=2,
        n_sessions=1,
        trials_per_session=18,
        n_shared_images=2,
        n_own_images=4,
        image_size=16,
        grid=(8, 9, 8),
        seed=3,
    )
    write_toy_world(tmp_path / "a" / "nsd", tmp_path / "a" / "coco", small)
    time.sleep(1.1)  # the MATLAB header's date has one-second resolution
    write_toy_world(tmp_path / "b" / "nsd", tmp_path / "b" / "coco", small)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert Path("nsd") / nsd.expdesign_key() in files
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    # and the fixed header is still a MATLAB file scipy reads
    assert nsd.read_expdesign(tmp_path / "a" / "nsd" / nsd.expdesign_key()).sharedix.size == 2


@pytest.mark.parametrize(
    "content", [b"", b"not a MATLAB file at all" * 8, "truncated"], ids=["empty", "garbage", "truncated"]
)
def test_corrupt_expdesign_is_one_line_naming_the_file(tmp_path, content):
    path = tmp_path / "nsd_expdesign.mat"
    if content == "truncated":
        scipy.io.savemat(path, {"masterordering": np.arange(1, 500)[None, :]})
        content = path.read_bytes()[:300]
    path.write_bytes(content)
    with pytest.raises(nsd.NSDFormatError) as raised:
        nsd.read_expdesign(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: not a readable MATLAB file") and "nsd_expdesign.mat" in message
    assert "\n" not in message


def test_captions_that_are_not_json_name_the_file_and_place(tmp_path):
    path = tmp_path / "captions_train2017.json"
    path.write_text('{"annotations": [{"id": 1, "image_id": 2, "caption": "a cat"},\n oops]}')
    with pytest.raises(
        nsd.NSDFormatError, match=r"captions_train2017\.json: not valid JSON \(.* at line 2 column 2\)"
    ):
        nsd.read_coco_captions([path])
    path.write_bytes(b'{"annotations": "\xff"}')
    with pytest.raises(nsd.NSDFormatError, match=r"captions_train2017\.json: not UTF-8"):
        nsd.read_coco_captions([path])
    path.write_text("[]")
    with pytest.raises(nsd.NSDFormatError, match="key 'annotations' missing"):
        nsd.read_coco_captions([path])
