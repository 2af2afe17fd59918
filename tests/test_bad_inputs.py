"""Wrong or damaged input files, made from copies of the session's toy world: each stops its stage
before work starts, with one line naming the file, what was found and what was expected, and
leaves nothing at an output path."""

from __future__ import annotations

import csv
import json
import shutil

import h5py
import nibabel as nib
import numpy as np
import pytest
from toy_sd import toy_sd

from brainldm.features import extract as F
from brainldm.features.sd_model import load_stable_diffusion
from brainldm.maps import surface
from brainldm.nsd import layout as nsd

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def truncate(path, keep: float = 0.5) -> None:
    """Cut ``path`` to its first ``keep`` share of bytes (a copy, never a link into the toy world)."""
    data = path.read_bytes()
    path.unlink()
    path.write_bytes(data[: int(len(data) * keep)])


def copy_key(toy_world, root, key):
    target = root / key
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(toy_world["nsd_root"] / key, target)
    return target


def write_brick(path, images) -> None:
    with h5py.File(path, "w") as handle:
        handle.create_dataset("imgBrick", data=images)


# --------------------------------------------------------------------------- the stimulus brick


@pytest.fixture(scope="module")
def components(tmp_path_factory, toy_world):
    built = toy_sd(tmp_path_factory, toy_world)
    return load_stable_diffusion(str(built["model_dir"]), device="cpu", dtype="float32")


@pytest.mark.parametrize("change", ["half the size", "float32"])
def test_a_stimulus_brick_of_another_size_or_dtype_stops_z_before_anything_is_written(
    tmp_path, toy_world, components, change
):
    """``imgBrick[:, ::2, ::2]`` in a copy of the toy's nsd_stimuli.hdf5 was resized silently."""
    size = toy_world["params"].image_size
    with h5py.File(toy_world["nsd_root"] / nsd.stimuli_key(), "r") as handle:
        images = handle["imgBrick"][()]
    if change == "half the size":
        images, found = images[:, ::2, ::2], f"({len(images)}, {size // 2}, {size // 2}, 3) uint8"
    else:
        images, found = images.astype(np.float32), f"({len(images)}, {size}, {size}, 3) float32"
    brick = tmp_path / "nsd_stimuli.hdf5"
    write_brick(brick, images)
    out = tmp_path / "features" / "shards" / "z_0of1.npy"
    with pytest.raises(nsd.NSDFormatError) as error:
        F.extract_feature_shard(
            "z",
            components,
            np.arange(8, dtype=np.int64),
            out,
            F.FeatureSettings(z_image_size=64, batch_size=4, n_shards=1),
            read_images=lambda batch: nsd.read_stimuli(brick, batch, image_size=size),
            progress=False,
        )
    assert str(error.value) == (
        f"{brick}: 'imgBrick' is {found}; expected (n, {size}, {size}, 3) uint8 "
        f"(the dataset's images, {size} x {size} RGB)"
    )
    assert not (tmp_path / "features").exists()


def test_a_truncated_stimulus_brick_is_named(tmp_path, toy_world):
    brick = copy_key(toy_world, tmp_path, nsd.stimuli_key())
    truncate(brick)
    with pytest.raises(nsd.NSDFormatError) as error:
        nsd.read_stimuli(brick, [0], image_size=toy_world["params"].image_size)
    message = str(error.value)
    assert message.startswith(
        f"{brick}: not a readable HDF5 file (Unable to synchronously open file (truncated"
    )
    assert message.endswith("expected NSD's stimulus brick (HDF5 with dataset 'imgBrick')")
    assert "\n" not in message


# --------------------------------------------------------------------------- surface transforms


def test_a_truncated_surface_transform_names_the_file_and_writes_no_map(tmp_path, toy_world):
    """A transform cut to half its bytes gave ``EOFError: Compressed file ended ...``, naming no file."""
    root = tmp_path / "nsd"
    for key in nsd.surface_transform_keys(1):
        copy_key(toy_world, root, key)
    paths = surface.transform_paths(root, 1)
    truncate(paths["lh"]["layerB1"])
    grid = tuple(toy_world["params"].grid)
    volume = tmp_path / "z_r.nii.gz"
    nib.save(nib.Nifti1Image(np.ones(grid, dtype=np.float32), np.eye(4)), str(volume))
    outputs = {"z_r": tmp_path / "maps" / "z_r.npz"}
    with pytest.raises(surface.SurfaceTransformError) as error:
        surface.project_volumes({"z_r": volume}, outputs, paths, grid)
    assert str(error.value) == (
        f"{paths['lh']['layerB1']}: cannot be read or decompressed to its end (EOFError: Compressed file "
        "ended before the end-of-stream marker was reached); expected one of NSD's surface transforms (.mgz)"
    )
    assert not (tmp_path / "maps").exists()

    # the maps themselves: a truncated one stops the call and no map of it is left
    copy_key(toy_world, root, nsd.layer_transform_key(1, "lh", "layerB1"))
    damaged = tmp_path / "c_r.nii.gz"
    shutil.copyfile(volume, damaged)
    truncate(damaged)
    outputs["c_r"] = tmp_path / "maps" / "c_r.npz"
    with pytest.raises(surface.SurfaceTransformError) as error:
        surface.project_volumes({"z_r": volume, "c_r": damaged}, outputs, paths, grid)
    message = str(error.value)
    assert message.startswith(f"{damaged}: cannot be read or decompressed to its end (EOFError")
    assert message.endswith("expected a 3-D NIfTI map on the func1pt8mm grid")
    assert not any(path.exists() for path in outputs.values())


def test_depths_with_different_vertex_counts_are_named(tmp_path, toy_world):
    root = tmp_path / "nsd"
    for key in nsd.surface_transform_keys(1):
        copy_key(toy_world, root, key)
    paths = surface.transform_paths(root, 1)
    coordinates = surface.read_layer_coordinates(paths["rh"]["layerB2"])
    paths["rh"]["layerB2"].unlink()
    surface.write_layer_coordinates(paths["rh"]["layerB2"], coordinates[:-1])
    with pytest.raises(surface.SurfaceTransformError) as error:
        surface.load_transforms(paths)
    assert str(error.value) == (
        f"{paths['rh']['layerB2']}: {len(coordinates) - 1} vertices; expected {len(coordinates)} as in "
        f"{paths['rh']['layerB1']} (the depths of a hemisphere share its native vertices)"
    )


# --------------------------------------------------------------------------- stim info and captions


def test_a_truncated_or_damaged_stim_info_csv_names_the_file_and_line(tmp_path, toy_world):
    """A stim-info CSV cut inside a line gave an IndexError naming no file."""
    path = copy_key(toy_world, tmp_path, nsd.stim_info_key())
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows(rows[:11])
        handle.write(",".join(rows[11][:2]))  # the file ends inside line 12
    with pytest.raises(nsd.NSDFormatError) as error:
        nsd.read_stim_info(path)
    assert str(error.value) == (
        f"{path}: line 12 has 2 fields; expected {len(rows[0])} as in the header (a truncated or "
        "damaged stim-info CSV)"
    )
    rows[5][rows[0].index("cocoId")] = "12x"
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    with pytest.raises(nsd.NSDFormatError) as error:
        nsd.read_stim_info(path)
    assert str(error.value) == f"{path}: column 'cocoId' holds '12x'; expected integer ids"


def test_a_missing_caption_names_the_caption_files_read(tmp_path, toy_world):
    """Every caption of nsdId 0's image removed from its COCO file: the message names the files."""
    stim_info = nsd.read_stim_info(toy_world["nsd_root"] / nsd.stim_info_key())
    coco_id = int(stim_info["cocoId"][list(stim_info["nsdId"]).index(0)])
    files = []
    for name in nsd.COCO_CAPTION_FILES:
        document = json.loads((toy_world["coco_root"] / name).read_text())
        document["annotations"] = [a for a in document["annotations"] if a["image_id"] != coco_id]
        files.append(tmp_path / name)
        files[-1].parent.mkdir(parents=True, exist_ok=True)
        files[-1].write_text(json.dumps(document))
    captions = nsd.read_coco_captions(files)
    with pytest.raises(nsd.NSDFormatError) as error:
        F.captions_by_nsd_id(stim_info, captions, [5, 0])
    assert str(error.value) == (
        f"nsdId 0: cocoId {coco_id} has no caption in the COCO caption files read: {files[0]}, {files[1]}; "
        f"expected at least one annotation with image_id {coco_id}"
    )
