"""Drawing: figures, the flat layout, the density plot, the viewer, and the toy's pictures."""

from __future__ import annotations

import numpy as np
import pytest
from encoding_volumes import ENCODING, write_encoding_volumes

from brainldm.core import names
from brainldm.maps import draw as maps
from brainldm.maps import figures as map_specs
from brainldm.maps import surface
from brainldm.nsd import layout as nsd

N5 = surface.FSAVERAGE5_VERTICES


@pytest.fixture(autouse=True)
def close_figures():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.close("all")
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def toy_surface_maps(toy_world, tmp_path_factory):
    """Subject 1's stand-in encoding volumes projected through the toy's transforms."""
    root = toy_world["nsd_root"]
    folder = tmp_path_factory.mktemp("maps")
    volumes = write_encoding_volumes(root, 1, folder / "encoding")
    volume_names = names.surface_volume_names(ENCODING)
    outputs = {name: folder / "surface" / f"{name}.npz" for name in volume_names}
    grid = np.load(folder / "encoding" / "voxels.npz")["shape"]
    surface.project_volumes(
        {name: volumes[name] for name in volume_names},
        outputs,
        surface.transform_paths(root, 1),
        grid,
        label_maps=names.label_volume_names(volume_names),
    )
    return {
        "folder": folder,
        "volumes": volumes,
        "outputs": outputs,
        "surface": {name: surface.load_surface_map(path) for name, path in outputs.items()},
    }


def test_check_map_inputs_cuts_fsaverage_and_names_a_wrong_shape():
    full = {hemi: np.arange(surface.FSAVERAGE_VERTICES, dtype=np.float32) for hemi in nsd.HEMISPHERES}
    checked = maps.check_map_inputs(full)
    assert checked["lh"].shape == (N5,) and checked["rh"][-1] == N5 - 1
    with pytest.raises(maps.MapInputError, match="hemisphere 'rh'"):
        maps.check_map_inputs({"lh": full["lh"]})
    with pytest.raises(maps.MapInputError, match=r"rh map of shape \(100,\)"):
        maps.check_map_inputs({"lh": full["lh"], "rh": np.zeros(100)})


def test_flat_layout_puts_the_left_hemisphere_left_and_both_occipital_poles_central():
    from nilearn import datasets

    flat = maps.fsaverage5()["flat_both"]
    x = np.asarray(flat.coordinates)[:, 0]
    pial = datasets.load_fsaverage("fsaverage5")["pial"]
    assert x[:N5].max() < 0 < x[N5:].min()
    width = x.max() - x.min()
    for offset, part in ((0, "left"), (N5, "right")):
        pole = np.argmin(pial.parts[part].coordinates[:, 1])  # most posterior vertex
        frontal = np.argmax(pial.parts[part].coordinates[:, 1])
        assert abs(x[offset + pole]) < 0.1 * width
        assert abs(x[offset + frontal]) > 0.3 * width


def test_plot_surface_map_draws_the_surfaces_as_one_image_four_labels_a_colour_bar_and_the_title():
    values = {hemi: np.linspace(0, 1, N5) for hemi in nsd.HEMISPHERES}
    values["lh"][:50] = np.nan
    figure = maps.plot_surface_map(
        values, maps.MapStyle(vmin=0, vmax=1, threshold=0.2, label="r"), title="a map", dpi=60
    )
    assert len(figure.images) == 1 and figure.images[0].get_array().shape == (450, 660, 4)
    assert [t.get_text() for t in figure.texts] == [
        "lh lateral",
        "lh medial",
        "rh medial",
        "rh lateral",
        "a map",
    ]
    assert len(figure.axes) == 1 and figure.axes[0].get_ylabel() == "r"
    figure.canvas.draw()  # the colour bar is drawn above the surfaces' image, not hidden by it
    pixels = np.asarray(figure.canvas.buffer_rgba())[..., :3]
    left, bottom, right, top = figure.axes[0].get_window_extent().extents.astype(int)
    bar = pixels[pixels.shape[0] - top + 2 : pixels.shape[0] - bottom - 2, left + 2 : right - 2].reshape(
        -1, 3
    )
    assert len(np.unique(bar, axis=0)) > 20


def test_categorical_map_gets_a_legend_of_the_block_names():
    values = {hemi: np.arange(N5) % 3.0 for hemi in nsd.HEMISPHERES}
    figure = maps.plot_surface_map(
        values, maps.MapStyle(categories=("down_2", "mid", "up_1"), label="block"), dpi=60
    )
    legend = figure.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == ["down_2", "mid", "up_1"]
    assert len(figure.axes) == 0


def test_face_index_raster_puts_each_panel_s_faces_inside_its_panel():
    raster = maps.face_index_raster(60)
    height, width = raster.shape
    assert (height, width) == (450, 660)
    first = 0
    for label, mesh, _, _, (left, bottom, panel_width, panel_height), _ in maps._panels():
        last = first + len(mesh.faces)
        rows, columns = np.nonzero((raster >= first) & (raster < last))
        assert len(rows) > 0.02 * raster.size, label  # every panel is drawn ...
        # ... inside its own axes (image rows count from the top)
        assert columns.min() >= left * width - 1 and columns.max() <= (left + panel_width) * width + 1, label
        assert (
            rows.max() <= (1 - bottom) * height + 1 and rows.min() >= (1 - bottom - panel_height) * height - 1
        )
        # thousands of faces each (at 60 dpi many are smaller than a pixel; the back is hidden)
        assert 0.2 * len(mesh.faces) < len(np.unique(raster[rows, columns])) < 0.6 * len(mesh.faces), label
        first = last
    assert raster.min() == -1 and raster.max() < first


@pytest.mark.parametrize("kind", ["continuous", "categorical"])
def test_plot_surface_map_paints_nilearns_own_picture_pixel_for_pixel(kind):
    """Our figure image against nilearn's plot_surf_stat_map drawing of the same map and style."""
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(3)
    if kind == "continuous":  # NaN, values under the threshold, below vmin and beyond vmax
        values = {hemi: rng.uniform(-0.3, 0.9, N5) for hemi in nsd.HEMISPHERES}
        values["rh"][rng.random(N5) < 0.3] = np.nan
        style = maps.MapStyle(cmap="RdBu_r", vmin=-0.2, vmax=0.6, threshold=0.1, label="r")
    else:
        values = {hemi: rng.integers(0, 3, N5).astype(np.float64) for hemi in nsd.HEMISPHERES}
        values["lh"][:3000] = np.nan
        style = maps.MapStyle(categories=("down_2", "mid", "up_1"), label="block")
    ours = maps.plot_surface_map(values, style, dpi=60)
    for artist in [*ours.texts, *ours.legends, *ours.axes]:
        artist.set_visible(False)
    ours.canvas.draw()
    nilearn = plt.figure(figsize=maps.FIGURE_SIZE, dpi=60)
    maps.draw_with_nilearn(values, style, nilearn)
    nilearn.canvas.draw()
    mine, theirs = (np.asarray(f.canvas.buffer_rgba())[..., :3].astype(int) for f in (ours, nilearn))
    assert len(np.unique(theirs.reshape(-1, 3), axis=0)) > 50  # a coloured map, not a blank page
    difference = np.abs(mine - theirs).max(axis=-1)
    assert np.mean(difference == 0) > 0.9999 and difference.max() <= 1


def test_accuracy_density_leaves_out_nan_voxels_and_counts_the_share_above_the_diagonal():
    r_z = np.array([0.5, 0.4, 0.1, np.nan, 0.2, 0.3])
    r_c = np.array([0.1, 0.2, 0.3, 0.9, np.nan, 0.35])
    figure = maps.plot_accuracy_density(r_z, r_c, x_label="z", y_label="c", bins=10)
    title = figure.axes[0].get_title()
    assert "4 voxels" in title and "50 % above the diagonal" in title
    assert figure.axes[0].get_xlabel() == "z" and figure.axes[0].get_ylabel() == "c"
    with pytest.raises(maps.MapInputError, match="no voxel has both"):
        maps.plot_accuracy_density(np.array([np.nan]), np.array([1.0]), x_label="z", y_label="c")


def test_figure_maps_threshold_by_the_fdr_mask_and_compare_unique_variance():
    ones, zeros = np.ones(N5), np.zeros(N5)
    r = {hemi: np.linspace(0, 0.5, N5) for hemi in nsd.HEMISPHERES}
    sig = {hemi: (np.arange(N5) % 2).astype(np.float64) for hemi in nsd.HEMISPHERES}
    surface_maps = {}
    for model in names.accuracy_models(ENCODING):
        surface_maps[f"{model}_r"], surface_maps[f"{model}_significant"] = r, sig
    for joint, a, b in names.joint_pairs(ENCODING):
        surface_maps[f"{joint}_unique_{a}"] = {h: 0.3 * ones for h in nsd.HEMISPHERES}
        surface_maps[f"{joint}_unique_{b}"] = {h: 0.1 * ones + zeros for h in nsd.HEMISPHERES}
    surface_maps["unet_best_block"] = {h: zeros for h in nsd.HEMISPHERES}
    figures = map_specs.figure_maps(surface_maps, ENCODING, ENCODING["unet_blocks"], subject="01")
    assert (
        [f.name for f in figures]
        == names.figure_names(ENCODING)
        == [
            "r_z",
            "r_c",
            "r_zc0.25",
            "r_zc0.75",
            "unique_z_vs_c",
            "unique_z_vs_zc0.25",
            "unique_z_vs_zc0.75",
            "unet_best_block",
        ]
    )
    r_z = figures[0].values["lh"]
    assert np.isnan(r_z[0::2]).all() and np.array_equal(r_z[1::2], r["lh"][1::2])
    pooled = np.tile(r["lh"][1::2], 2 * len(names.accuracy_models(ENCODING)))  # every model, both hemispheres
    assert (
        figures[0].style.vmax == figures[1].style.vmax == pytest.approx(np.percentile(pooled, 99), rel=1e-12)
    )
    unique = figures[4].values["rh"]
    np.testing.assert_allclose(unique[1::2], 0.2)
    assert np.isnan(unique[0::2]).all() and figures[4].style.vmin == -figures[4].style.vmax
    assert figures[-1].style.categories == ("down_2", "mid", "up_1")


def test_viewer_values_default_is_r_of_z_minus_c_and_unknown_models_are_named():
    r_z = {h: np.full(N5, 0.4) for h in nsd.HEMISPHERES}
    r_c = {h: np.full(N5, 0.1) for h in nsd.HEMISPHERES}
    sig = {h: np.r_[np.ones(N5 - 10), np.zeros(10)] for h in nsd.HEMISPHERES}
    maps_by_name = {"z_r": r_z, "c_r": r_c, "z_significant": sig, "c_significant": sig}
    values, style, title = map_specs.viewer_values(maps_by_name, "z-c")
    np.testing.assert_allclose(values["lh"][:-10], 0.3)
    assert np.isnan(values["lh"][-10:]).all() and style.cmap == "RdBu_r" and "minus" in title
    values, style, _ = map_specs.viewer_values(maps_by_name, "c")
    np.testing.assert_allclose(values["rh"][:-10], 0.1)
    with pytest.raises(KeyError, match="no model 'zc0.5'"):
        map_specs.viewer_values(maps_by_name, "zc0.5")


def test_toy_maps_light_z_at_the_occipital_pole_and_c_in_the_ventral_stream(toy_surface_maps):
    from brainldm.toy import surface as toy_surface

    maps_by_name = toy_surface_maps["surface"]
    for hemi in nsd.HEMISPHERES:
        pial = toy_surface.fsaverage5_geometry()[hemi]["pial"]
        occipital = pial[:, 1] < -85
        ventral = (pial[:, 1] > -65) & (pial[:, 1] < -30) & (pial[:, 2] < -15)
        r_z = maps_by_name["z_r"][hemi][:N5]
        r_c = maps_by_name["c_r"][hemi][:N5]
        assert np.nanmean(r_z[occipital]) > 0.4 > 0.1 > np.nanmean(r_z[ventral])
        assert np.nanmean(r_c[ventral]) > 0.3 > 0.1 > np.nanmean(r_c[occipital])
        assert np.isfinite(r_z[occipital]).mean() > 0.95
        block = maps_by_name["unet_best_block"][hemi][:N5]
        assert set(np.unique(block[np.isfinite(block)])) <= {0.0, 1.0, 2.0}
        assert np.mean(block[occipital] == 0) > 0.9


def test_rule_drivers_write_every_figure_the_density_and_an_offline_viewer(toy_surface_maps):
    folder = toy_surface_maps["folder"]
    outputs = toy_surface_maps["outputs"]
    volumes = toy_surface_maps["volumes"]
    figures = {name: folder / "maps" / f"{name}.png" for name in names.figure_names(ENCODING)}
    map_specs.draw_cortical_maps(
        {n: str(p) for n, p in outputs.items()},
        str(folder / "encoding/volumes/unet_best_block.json"),
        ENCODING,
        figures,
        subject="01",
        dpi=60,
    )
    from PIL import Image

    for path in figures.values():
        with Image.open(path) as image:
            assert image.size == (660, 450)
            assert len(np.unique(np.asarray(image.convert("L")))) > 20  # a drawn map, not a blank page
    density = folder / "maps" / "density_z_vs_c.png"
    map_specs.draw_accuracy_density(
        str(volumes["z_r"]), str(volumes["c_r"]), str(density), x_model="z", y_model="c", subject="01", dpi=60
    )
    assert density.stat().st_size > 5000
    viewer = folder / "maps" / "viewer.html"
    map_specs.write_viewer(
        {n: str(outputs[n]) for n in ("z_r", "c_r", "z_significant", "c_significant")},
        str(viewer),
        viewer_map="z-c",
        subject="01",
    )
    page = viewer.read_text()
    assert "<script" in page and "plotly" in page.lower()
    import re

    assert not re.findall(r"<script[^>]+src=", page)  # everything embedded: works offline
    assert not list((folder / "maps").glob("*.tmp-*"))
