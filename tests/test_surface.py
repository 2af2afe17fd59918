"""Volume -> native surface -> fsaverage with NSD-format transforms made by hand."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from brainldm.maps import surface
from brainldm.nsd import layout as nsd

GRID = (6, 7, 5)


def ramp_volume(grid=GRID) -> np.ndarray:
    """A volume whose every voxel holds a distinct value: 100 x + 10 y + z (0-based)."""
    x, y, z = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in grid), indexing="ij")
    return 100 * x + 10 * y + z


def write_transforms(root, subject, layers, fsaverage):
    """``layers[hemi]``: (3, V, 3) 1-based; ``fsaverage[hemi]``: (163842,) 1-based; returns paths."""
    paths = surface.transform_paths(root, subject)
    for hemi in nsd.HEMISPHERES:
        for depth, coordinates in zip(nsd.CORTICAL_DEPTHS, layers[hemi]):
            surface.write_layer_coordinates(paths[hemi][depth], coordinates)
        surface.write_fsaverage_indices(paths[hemi]["fsaverage"], fsaverage[hemi])
    return paths


def identity_fsaverage(n_native):
    """fsaverage vertex v -> native vertex v mod n_native (1-based)."""
    return np.arange(surface.FSAVERAGE_VERTICES) % n_native + 1


def test_transform_files_round_trip_in_nsd_layout(tmp_path):
    coordinates = np.array([[1, 1, 1], [2.5, 3.25, 4], [9999, 9999, 9999]], dtype=np.float64)
    paths = write_transforms(
        tmp_path,
        3,
        {h: [coordinates] * 3 for h in nsd.HEMISPHERES},
        {h: identity_fsaverage(3) for h in nsd.HEMISPHERES},
    )
    assert paths["lh"]["layerB2"] == tmp_path / "nsddata/ppdata/subj03/transforms/lh.func1pt8-to-layerB2.mgz"
    assert paths["rh"]["fsaverage"].name == "rh.white-to-fsaverage.mgz"
    np.testing.assert_array_equal(surface.read_layer_coordinates(paths["lh"]["layerB1"]), coordinates)
    np.testing.assert_array_equal(
        surface.read_fsaverage_indices(paths["rh"]["fsaverage"]), identity_fsaverage(3)
    )
    assert set(nsd.surface_transform_keys(3)) == {
        str(path.relative_to(tmp_path)) for by_kind in paths.values() for path in by_kind.values()
    }


def test_nearest_and_cubic_reproduce_the_voxels_at_integer_coordinates():
    volume = ramp_volume() ** 1.5  # not linear, so cubic cannot be exact by accident
    ijk = np.array([[0, 0, 0], [5, 6, 4], [2, 3, 1], [4, 0, 3]])
    layers = (ijk + 1.0)[None]  # one depth, 1-based
    for interpolation in ("nearest", "cubic", "linear"):
        values = surface.sample_depths(volume, layers, interpolation)[0]
        # scipy's B-spline prefilter truncates its boundary sums: ~1e-9 of the volume's scale.
        np.testing.assert_allclose(values, volume[tuple(ijk.T)], rtol=0, atol=1e-8 * volume.max())
    # Off the grid points, nearest takes the closest voxel.
    nudged = layers[:, 2:] + np.array([0.3, 0.4, -0.2])
    np.testing.assert_array_equal(
        surface.sample_depths(volume, nudged, "nearest")[0], volume[tuple(ijk[2:].T)]
    )


def test_linear_and_cubic_between_voxels():
    volume = ramp_volume() ** 1.5
    # Halfway between voxels (1, 2, 3) and (2, 2, 3), 1-based (2.5, 3, 4).
    layers = np.array([[[2.5, 3.0, 4.0], [3.2, 4.7, 2.1]]])
    linear = surface.sample_depths(volume, layers, "linear")[0]
    assert linear[0] == pytest.approx((volume[1, 2, 3] + volume[2, 2, 3]) / 2, rel=1e-12)
    # Cubic is NSD's sampling: scipy's order-3 B-spline, boundary 'nearest', on 0-based coordinates.
    cubic = surface.sample_depths(volume, layers, "cubic")[0]
    expected = ndimage.map_coordinates(volume, (layers[0] - 1).T, order=3, mode="nearest")
    np.testing.assert_allclose(cubic, expected, rtol=1e-12)
    assert not np.allclose(cubic, linear)


def test_invalid_and_out_of_volume_vertices_are_nan():
    volume = ramp_volume()
    x, y, z = GRID
    layers = np.array(
        [
            [
                [1, 1, 1],
                [9999, 9999, 9999],
                [9999, 2, 2],
                [0.99, 1, 1],
                [x + 0.01, 1, 1],
                [1, y, z],
                [1, y + 1, 1],
                [np.nan, 1, 1],
                [x, y, z],
            ]
        ],
        dtype=np.float64,
    )
    for interpolation in ("nearest", "linear", "cubic"):
        values = surface.sample_depths(volume, layers, interpolation)[0]
        assert np.isnan(values[[1, 2, 3, 4, 6, 7]]).all(), interpolation
        np.testing.assert_allclose(
            values[[0, 5, 8]], [0, volume[0, y - 1, z - 1], volume[-1, -1, -1]], atol=1e-9
        )
    labels = surface.sample_labels(np.floor(volume / 100), layers)
    assert np.isnan(labels[[1, 2, 3, 4, 6, 7]]).all()


def test_nan_voxels_make_nan_vertices_and_are_zero_for_their_neighbours():
    volume = ramp_volume()
    volume[3, 3, 2] = np.nan
    layers = np.array([[[4, 4, 3], [4.3, 3.8, 3.1], [3, 4, 3]]], dtype=np.float64)
    values = surface.sample_depths(volume, layers, "cubic")[0]
    assert np.isnan(values[:2]).all()  # the NaN voxel is their nearest
    # NSD's code samples the volume with NaN set to 0.
    filled = np.nan_to_num(volume)
    assert values[2] == pytest.approx(filled[2, 3, 2], abs=1e-9)


def test_depths_are_averaged_over_the_valid_ones():
    volume = ramp_volume()
    vertex = np.array([[1, 1, 1], [2, 3, 4], [5, 5, 1]], dtype=np.float64)
    layers = np.stack([vertex, vertex + [1, 0, 0], vertex + [2, 0, 0]])  # three depths along x
    layers[2, 1] = 9999  # vertex 1's deepest layer is invalid
    layers[:, 2] = 9999  # vertex 2 is invalid at every depth
    native = surface.volume_to_native(volume, layers, "cubic")
    expected0 = np.mean([volume[0, 0, 0], volume[1, 0, 0], volume[2, 0, 0]])
    expected1 = np.mean([volume[1, 2, 3], volume[2, 2, 3]])
    np.testing.assert_allclose(native[:2], [expected0, expected1], rtol=1e-12)
    assert np.isnan(native[2])


def test_fsaverage_is_nearest_native_vertex_and_fsaverage5_its_first_vertices():
    native = np.array([10.0, 20.0, np.nan, 40.0])
    indices = np.array([4, 1, 1, 3, 2])  # 1-based
    np.testing.assert_array_equal(surface.native_to_fsaverage(native, indices), [40, 10, 10, np.nan, 20])
    with pytest.raises(surface.SurfaceTransformError, match="native surface has vertices 1..4"):
        surface.native_to_fsaverage(native, np.array([1, 5]))
    full = np.arange(surface.FSAVERAGE_VERTICES, dtype=np.float64)
    np.testing.assert_array_equal(surface.to_fsaverage5(full), np.arange(10_242))


def test_one_voxel_lands_on_the_vertices_that_point_at_it_in_each_hemisphere(tmp_path):
    rng = np.random.default_rng(0)
    n_native = 50
    target = np.array([2, 4, 3])  # 0-based voxel holding the value
    layers, fsaverage, hits = {}, {}, {}
    for hemi, n_hits in (("lh", 3), ("rh", 5)):
        coordinates = rng.integers(1, np.array(GRID) + 1, size=(n_native, 3)).astype(np.float64)
        others = np.all(coordinates == target + 1, axis=1)
        coordinates[others] = [1, 1, 1]
        hits[hemi] = rng.choice(n_native, n_hits, replace=False)
        coordinates[hits[hemi]] = target + 1
        layers[hemi] = [coordinates] * 3
        fsaverage[hemi] = rng.integers(1, n_native + 1, size=surface.FSAVERAGE_VERTICES)
    paths = write_transforms(tmp_path, 1, layers, fsaverage)
    transforms = surface.load_transforms(paths)
    volume = np.zeros(GRID)
    volume[tuple(target)] = 1.0
    for interpolation in ("nearest", "cubic"):
        projected = surface.project_volume(volume, transforms, GRID, interpolation=interpolation)
        for hemi in nsd.HEMISPHERES:
            lands = np.isin(fsaverage[hemi] - 1, hits[hemi])
            np.testing.assert_allclose(projected[hemi][lands], 1.0, rtol=1e-6)
            assert np.abs(projected[hemi][~lands]).max() < 0.5
            assert projected[hemi].dtype == np.float32 and projected[hemi].shape == (163_842,)
    # Outside its voxel the volume is NaN (masked): only the pointed-at vertices keep a value.
    masked = np.full(GRID, np.nan)
    masked[tuple(target)] = 1.0
    projected = surface.project_volume(masked, transforms, GRID)
    for hemi in nsd.HEMISPHERES:
        lands = np.isin(fsaverage[hemi] - 1, hits[hemi])
        np.testing.assert_array_equal(np.isfinite(projected[hemi]), lands)


def test_hemispheres_keep_their_own_transforms(tmp_path):
    volume = ramp_volume()
    lh = np.array([[1, 1, 1], [2, 1, 1]], dtype=np.float64)
    rh = np.array([[6, 7, 5], [6, 7, 4]], dtype=np.float64)
    paths = write_transforms(
        tmp_path, 1, {"lh": [lh] * 3, "rh": [rh] * 3}, {h: identity_fsaverage(2) for h in nsd.HEMISPHERES}
    )
    projected = surface.project_volume(volume, surface.load_transforms(paths), GRID, interpolation="nearest")
    np.testing.assert_array_equal(projected["lh"][:4], [0, 100, 0, 100])
    np.testing.assert_array_equal(projected["rh"][:4], [564, 563, 564, 563])


def test_hdf5_ordered_volume_is_refused_or_transposed():
    volume = ramp_volume()
    hdf5_ordered = volume.transpose(2, 1, 0)
    with pytest.raises(surface.SurfaceTransformError, match=r"HDF5-ordered \(Z, Y, X\)"):
        surface.as_xyz(hdf5_ordered, GRID)
    np.testing.assert_array_equal(surface.as_xyz(hdf5_ordered, GRID, axis_order="zyx"), volume)
    with pytest.raises(surface.SurfaceTransformError, match="expected the func grid"):
        surface.as_xyz(volume[:-1], GRID)
    with pytest.raises(surface.SurfaceTransformError, match="axis_order 'zyx'"):
        surface.as_xyz(volume, GRID, axis_order="zyx")


def test_labels_are_sampled_winner_take_all():
    labels = np.zeros(GRID)
    labels[3:] = 2.0
    labels[:, :, 4] = np.nan
    layers = np.array([[[3.4, 2, 2], [3.6, 2, 2], [2, 2, 5], [2, 2, 4.4]]] * 3, dtype=np.float64)
    layers[2, 0] = [5, 2, 2]  # the deepest layer of vertex 0 lies well inside label 2
    sampled = surface.sample_labels(labels, layers)
    np.testing.assert_array_equal(sampled[:2], [2.0, 2.0])  # 0 has 0.6 + 0.6 + 0 of label 0 vs 0.4 + 0.4 + 1
    assert np.isnan(sampled[2])  # NaN voxels win
    assert sampled[3] == 0.0
    assert set(np.unique(sampled[np.isfinite(sampled)])) <= {0.0, 2.0}


def test_missing_transform_names_the_file_and_how_to_get_it_and_writes_nothing(tmp_path):
    import nibabel as nib

    coordinates = np.array([[1, 1, 1], [2, 2, 2]], dtype=np.float64)
    paths = write_transforms(
        tmp_path / "nsd",
        5,
        {h: [coordinates] * 3 for h in nsd.HEMISPHERES},
        {h: identity_fsaverage(2) for h in nsd.HEMISPHERES},
    )
    paths["rh"]["layerB3"].unlink()
    volume_path = tmp_path / "z_r.nii.gz"
    nib.save(nib.Nifti1Image(ramp_volume().astype(np.float32), np.eye(4)), str(volume_path))
    outputs = {"z_r": tmp_path / "out" / "z_r.npz"}
    with pytest.raises(surface.SurfaceTransformError) as error:
        surface.project_volumes({"z_r": volume_path}, outputs, paths, GRID)
    message = str(error.value)
    assert "rh.func1pt8-to-layerB3.mgz" in message
    assert (
        "aws s3 cp s3://natural-scenes-dataset/nsddata/ppdata/subj05/transforms/rh.func1pt8-to-layerB3.mgz"
        in message
    )
    assert not outputs["z_r"].exists() and not (tmp_path / "out").exists()


def test_project_volumes_writes_every_map_or_none(tmp_path):
    import nibabel as nib

    coordinates = np.array([[1, 1, 1], [3, 4, 2]], dtype=np.float64)
    paths = write_transforms(
        tmp_path / "nsd",
        1,
        {h: [coordinates] * 3 for h in nsd.HEMISPHERES},
        {h: identity_fsaverage(2) for h in nsd.HEMISPHERES},
    )
    good = tmp_path / "good.nii.gz"
    nib.save(nib.Nifti1Image(ramp_volume().astype(np.float32), np.eye(4)), str(good))
    bad = tmp_path / "bad.nii.gz"
    nib.save(nib.Nifti1Image(ramp_volume().transpose(2, 1, 0).astype(np.float32), np.eye(4)), str(bad))
    outputs = {"good": tmp_path / "good.npz", "bad": tmp_path / "bad.npz"}
    with pytest.raises(surface.SurfaceTransformError, match="HDF5-ordered"):
        surface.project_volumes({"good": good, "bad": bad}, outputs, paths, GRID)
    assert not any(path.exists() for path in outputs.values())
    surface.project_volumes({"good": good}, outputs, paths, GRID, label_maps=["good"])
    written = surface.load_surface_map(outputs["good"])
    np.testing.assert_array_equal(written["lh"][:2], [0, 231])
    assert str(np.load(outputs["good"])["kind"]) == "wta"


# --------------------------------------------------------------------------- the toy world's transforms


def test_toy_transforms_put_early_under_the_occipital_pole_and_ventral_under_ventral_temporal(toy_world):
    from brainldm.toy import surface as toy_surface
    from brainldm.toy.world import STREAMS_LABELS

    root, grid = toy_world["nsd_root"], toy_world["params"].grid
    streams, _ = nsd.read_volume(root / nsd.roi_key(1, "streams"))
    transforms = surface.load_transforms(surface.transform_paths(root, 1))
    labels = surface.project_volume(streams.astype(np.float64), transforms, grid, interpolation="wta")
    for hemi in nsd.HEMISPHERES:
        geometry = toy_surface.fsaverage5_geometry()[hemi]
        y, z = geometry["pial"][:, 1], geometry["pial"][:, 2]
        on_fsaverage5 = surface.to_fsaverage5(labels[hemi])
        assert transforms[hemi].n_vertices == 10_242
        occipital = y < -85
        ventral_temporal = (y > -65) & (y < -30) & (z < -15)
        assert np.mean(on_fsaverage5[occipital] == STREAMS_LABELS["early"]) > 0.95
        assert np.mean(on_fsaverage5[ventral_temporal] == STREAMS_LABELS["ventral"]) > 0.9
        frontal = y > 20
        assert not np.any(
            np.isin(on_fsaverage5[frontal], [STREAMS_LABELS["early"], STREAMS_LABELS["ventral"]])
        )
        # NSD's conventions: 1-based coordinates inside the grid, 9999 on the medial wall only.
        layers = transforms[hemi].layers
        invalid = np.all(layers == surface.INVALID_COORDINATE, axis=2)
        np.testing.assert_array_equal(invalid[0], geometry["medial_wall"])
        assert 0 < invalid[0].sum() < 500
        inside = layers[~invalid]
        assert inside.min() >= 1 and np.all(inside.max(axis=0) <= np.asarray(grid))


def test_toy_fsaverage_indices_nest_fsaverage5(toy_world):
    indices = surface.read_fsaverage_indices(
        surface.transform_paths(toy_world["nsd_root"], 2)["rh"]["fsaverage"]
    )
    np.testing.assert_array_equal(indices[:10_242], np.arange(1, 10_243))
    assert indices.max() == 10_242 and np.unique(indices).size == 10_242


def test_subdividing_an_icosahedron_gives_the_icosahedral_vertex_counts():
    from brainldm.toy.surface import subdivide

    phi = (1 + 5**0.5) / 2
    vertices = np.array(
        [
            [-1, phi, 0],
            [1, phi, 0],
            [-1, -phi, 0],
            [1, -phi, 0],
            [0, -1, phi],
            [0, 1, phi],
            [0, -1, -phi],
            [0, 1, -phi],
            [phi, 0, -1],
            [phi, 0, 1],
            [-phi, 0, -1],
            [-phi, 0, 1],
        ],
        dtype=np.float64,
    )
    faces = np.array(
        [
            [0, 11, 5],
            [0, 5, 1],
            [0, 1, 7],
            [0, 7, 10],
            [0, 10, 11],
            [1, 5, 9],
            [5, 11, 4],
            [11, 10, 2],
            [10, 7, 6],
            [7, 1, 8],
            [3, 9, 4],
            [3, 4, 2],
            [3, 2, 6],
            [3, 6, 8],
            [3, 8, 9],
            [4, 9, 5],
            [2, 4, 11],
            [6, 2, 10],
            [8, 6, 7],
            [9, 8, 1],
        ]
    )
    for rounds, expected in ((1, 42), (2, 162), (3, 642)):  # 10 * 4**n + 2
        dense = subdivide(vertices, faces, rounds)
        assert dense.shape == (expected, 3)
        np.testing.assert_allclose(np.linalg.norm(dense, axis=1), np.linalg.norm(vertices[0]), rtol=1e-12)
        np.testing.assert_array_equal(dense[:12], vertices)
        assert np.unique(np.round(dense, 9), axis=0).shape[0] == expected
