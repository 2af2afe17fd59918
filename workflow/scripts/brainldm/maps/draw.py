"""Drawing cortical maps on fsaverage5 with nilearn (drawing only; the data come from
:mod:`brainldm.maps.surface`).

Every map is a ``{"lh": values, "rh": values}`` pair on fsaverage5 (10,242 vertices per
hemisphere; fsaverage arrays are cut to their first 10,242 vertices), NaN where there is no
value. One figure shows a map as the paper does: both hemispheres flattened side by side with
the occipital poles meeting in the centre, and the inflated left and right hemispheres from the
side and from the midline. The meshes and the sulcal depth shipped inside nilearn are used, so
nothing is downloaded. nilearn draws the panels once per process (:func:`face_index_raster`);
each figure paints its face colours through that drawing (:func:`plot_surface_map`).

Public functions return figures (or nilearn's HTML document); the rule scripts save them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Mapping, Sequence

import numpy as np

from brainldm.maps.surface import FSAVERAGE5_VERTICES

HEMIS = ("lh", "rh")
NILEARN_HEMI = {"lh": "left", "rh": "right"}
#: Gap between the two flattened hemispheres, in flat-map millimetres.
FLAT_GAP_MM = 12.0
#: Camera of the flat maps: from above, rotated so that the hemispheres lie side by side.
FLAT_VIEW = (90, 270)
INFLATED_PANELS = (("lh", "lateral"), ("lh", "medial"), ("rh", "medial"), ("rh", "lateral"))
#: A map figure: flat maps above (figure fraction FLAT_RECT), the inflated views below.
FIGURE_SIZE = (11.0, 7.5)
FLAT_RECT = (0.0, 0.36, 0.86, 0.6)


class MapInputError(ValueError):
    """A surface map whose shape or hemispheres do not fit fsaverage5."""


# --------------------------------------------------------------------------- inputs


def check_map_inputs(values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``{"lh", "rh"}`` -> float64 fsaverage5 arrays (fsaverage arrays are cut to 10,242)."""
    missing = [hemi for hemi in HEMIS if hemi not in values]
    if missing:
        raise MapInputError(f"surface map without hemisphere {missing[0]!r}; expected keys 'lh' and 'rh'")
    checked = {}
    for hemi in HEMIS:
        array = np.asarray(values[hemi], dtype=np.float64)
        if array.ndim != 1 or array.shape[0] < FSAVERAGE5_VERTICES:
            raise MapInputError(
                f"{hemi} map of shape {array.shape}; expected fsaverage5 ({FSAVERAGE5_VERTICES},) "
                "or fsaverage (163842,) vertices"
            )
        checked[hemi] = array[:FSAVERAGE5_VERTICES]
    return checked


@lru_cache(maxsize=1)
def fsaverage5() -> dict:
    """nilearn's fsaverage5: ``inflated`` (PolyMesh), ``flat_both`` (one mesh, both hemispheres)
    and ``sulcal`` (``{hemi: (10242,)}`` on the inflated mesh)."""
    from nilearn import datasets
    from nilearn.surface import InMemoryMesh

    meshes = datasets.load_fsaverage("fsaverage5")
    sulcal = datasets.load_fsaverage_data(mesh="fsaverage5", mesh_type="inflated", data_type="sulcal")
    flat = {hemi: meshes["flat"].parts[NILEARN_HEMI[hemi]] for hemi in HEMIS}
    # nilearn's flat patches put the left occipital pole at the largest x and the right one at
    # the smallest: shift them apart so that the two poles face each other across the gap.
    left = np.asarray(flat["lh"].coordinates, dtype=np.float64)[:, :2].copy()
    right = np.asarray(flat["rh"].coordinates, dtype=np.float64)[:, :2].copy()
    left[:, 0] -= left[:, 0].max() + FLAT_GAP_MM / 2
    right[:, 0] -= right[:, 0].min() - FLAT_GAP_MM / 2
    coordinates = np.vstack([left, right])
    coordinates = np.column_stack([coordinates, np.zeros(coordinates.shape[0])])
    faces = np.vstack([flat["lh"].faces, np.asarray(flat["rh"].faces) + left.shape[0]])
    return {
        "inflated": meshes["inflated"],
        "flat_both": InMemoryMesh(coordinates, faces),
        "sulcal": {
            hemi: np.asarray(sulcal.data.parts[NILEARN_HEMI[hemi]], dtype=np.float64) for hemi in HEMIS
        },
    }


# --------------------------------------------------------------------------- one map


@dataclass(frozen=True)
class MapStyle:
    """How to colour one map.

    ``categories`` makes it categorical: values are indices into it, one colour each.
    ``threshold`` hides values whose magnitude is below it (NaN is always hidden).
    """

    cmap: str = "inferno"
    vmin: float = 0.0
    vmax: float = 1.0
    threshold: float | None = None
    label: str = ""
    categories: Sequence[str] = field(default_factory=tuple)


def _colormap(style: MapStyle):
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap

    if style.categories:
        base = colormaps["tab10" if len(style.categories) <= 10 else "tab20"]
        return ListedColormap([base(i) for i in range(len(style.categories))])
    return colormaps[style.cmap]


def _limits(style: MapStyle) -> tuple[float, float]:
    if style.categories:
        return -0.5, len(style.categories) - 0.5
    return style.vmin, style.vmax


def _panels():
    """The five surface panels in drawing order: ``(label, mesh, sulcal, nilearn view kwargs, rect,
    zoom)``; ``label`` is ``flat`` or ``"<hemi> <view>"``."""
    meshes = fsaverage5()
    yield (
        "flat",
        meshes["flat_both"],
        np.concatenate([meshes["sulcal"]["lh"], meshes["sulcal"]["rh"]]),
        {"view": FLAT_VIEW},
        FLAT_RECT,
        1.6,
    )
    for column, (hemi, view) in enumerate(INFLATED_PANELS):
        yield (
            f"{hemi} {view}",
            meshes["inflated"].parts[NILEARN_HEMI[hemi]],
            meshes["sulcal"][hemi],
            {"hemi": NILEARN_HEMI[hemi], "view": view},
            (column * 0.215, 0.0, 0.215, 0.38),
            1.45,
        )


def _panel_values(values: Mapping[str, np.ndarray], label: str) -> np.ndarray:
    return np.concatenate([values["lh"], values["rh"]]) if label == "flat" else values[label.split()[0]]


def draw_with_nilearn(values: Mapping[str, np.ndarray], style: MapStyle, figure) -> list:
    """The five surface panels of a map figure drawn by nilearn's ``plot_surf_stat_map``.

    Parameters
    ----------
    values : {"lh", "rh"} fsaverage5 or fsaverage arrays, NaN where there is no value
    style : MapStyle
    figure : matplotlib Figure of size ``FIGURE_SIZE``

    Returns
    -------
    list of mpl_toolkits.mplot3d.Axes3D
        The panels in the order of :func:`face_index_raster` (flat, then ``INFLATED_PANELS``),
        each holding one face collection; no labels, colour bar or title.
    """
    from nilearn import plotting

    values = check_map_inputs(values)
    vmin, vmax = _limits(style)
    common = dict(
        cmap=_colormap(style),
        vmin=vmin,
        vmax=vmax,
        colorbar=False,
        symmetric_cbar=False,
        bg_on_data=False,
        threshold=None if style.categories else style.threshold,
    )
    panels = []
    for label, mesh, sulcal, view, rect, zoom in _panels():
        axes = figure.add_axes(rect, projection="3d")
        plotting.plot_surf_stat_map(
            mesh, _panel_values(values, label), bg_map=sulcal, axes=axes, figure=figure, **view, **common
        )
        axes.set_box_aspect(None, zoom=zoom)
        panels.append(axes)
    return panels


def face_index_raster(dpi: int) -> np.ndarray:
    """Which mesh face nilearn draws at each pixel of a map figure: (height, width) int32.

    The five panels are drawn once by :func:`draw_with_nilearn`, every face in a colour that
    encodes its index (counted across the panels in order, flat first); the rendering has no
    antialiasing, so each pixel holds exactly one face's colour. -1 where no surface is drawn.
    The geometry, camera and depth order are nilearn's, so that painting a map's face colours
    through this raster gives nilearn's own picture of it (``tests/test_maps.py`` checks it
    pixel by pixel) at a fraction of the cost: nilearn's matplotlib engine rebuilds and sorts
    ~120,000 polygons for every figure.
    """
    return _drawn_panels(dpi)[0]


@lru_cache(maxsize=4)
def _drawn_panels(dpi: int):
    """:func:`face_index_raster` and where each panel's axes ended up (figure fraction
    ``(left, bottom, width, height)``; mplot3d shrinks a box to its aspect when it draws)."""
    import matplotlib.pyplot as plt

    figure = plt.figure(figsize=FIGURE_SIZE, dpi=dpi)
    offset = 0
    any_map = {hemi: np.zeros(FSAVERAGE5_VERTICES) for hemi in HEMIS}  # its colours are replaced
    panels = draw_with_nilearn(any_map, MapStyle(), figure)
    for axes, (_, mesh, *_) in zip(panels, _panels()):
        collection = axes.collections[0]
        n_faces = len(mesh.faces)
        if len(collection.get_facecolor()) != n_faces:
            raise RuntimeError(
                f"nilearn drew {len(collection.get_facecolor())} faces of a {n_faces}-face mesh"
            )
        codes = offset + 1 + np.arange(n_faces)  # 0 (black) and 0xFFFFFF (white) stay free
        colours = (
            np.column_stack([codes >> 16 & 255, codes >> 8 & 255, codes & 255, np.full(n_faces, 255)]) / 255
        )
        collection.set_facecolor(colours)
        collection.set_edgecolor(colours)
        offset += n_faces
    figure.canvas.draw()
    boxes = tuple(tuple(axes.get_position().bounds) for axes in panels)
    rgba = np.asarray(figure.canvas.buffer_rgba()).astype(np.int64)
    plt.close(figure)
    codes = rgba[..., 0] << 16 | rgba[..., 1] << 8 | rgba[..., 2]
    return np.where((codes >= 1) & (codes <= offset), codes - 1, -1).astype(np.int32), boxes


def face_colours(faces: np.ndarray, values: np.ndarray, sulcal: np.ndarray, style: MapStyle) -> np.ndarray:
    """The colour nilearn's matplotlib engine gives each face: (n_faces, 4) float RGBA.

    A face takes the mean of its vertices. Faces whose value is shown (not NaN and, for a
    continuous map, of magnitude at least ``style.threshold``) get the colour map; the others the
    sulcal depth in grey, scaled to the range of the mesh's faces.
    """
    from matplotlib import colormaps

    background = sulcal[faces].mean(axis=1)
    low, high = background.min(), background.max()
    if low < 0 or high > 1:
        background = (background - low) / (high - low)
    colours = colormaps["gray_r"](background)
    face_values = values[faces].mean(axis=1)
    vmin, vmax = _limits(style)
    with np.errstate(invalid="ignore"):
        if style.categories or style.threshold is None:
            shown = ~np.isnan(face_values)
        else:
            shown = np.abs(face_values) >= style.threshold
            if vmin > -style.threshold:
                shown &= face_values >= vmin
            if vmax < style.threshold:
                shown &= face_values <= vmax
    colours[shown] = _colormap(style)((face_values[shown] - vmin) / (vmax - vmin))
    return colours


def plot_surface_map(values: Mapping[str, np.ndarray], style: MapStyle, *, title: str = "", dpi: int = 100):
    """Flat (both hemispheres, occipital poles central) and inflated lateral/medial views.

    Parameters
    ----------
    values : {"lh", "rh"} fsaverage5 or fsaverage arrays, NaN where there is no value
    style : MapStyle
    title : figure title
    dpi : the figure's resolution; save it at this dpi (the surfaces are an image of its pixels)

    Returns
    -------
    matplotlib.figure.Figure
        ``FIGURE_SIZE`` at ``dpi``: nilearn's five surface panels (flat, then lh lateral, lh
        medial, rh medial, rh lateral) as one figure image painted through
        :func:`face_index_raster`, a label under each inflated panel, and one colour bar (or
        legend, for categories).
    """
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.patches import Patch

    values = check_map_inputs(values)
    raster, boxes = _drawn_panels(dpi)
    colours = np.concatenate(
        [
            face_colours(np.asarray(mesh.faces), _panel_values(values, label), sulcal, style)
            for label, mesh, sulcal, *_ in _panels()
        ]
    )
    image = np.zeros(raster.shape + (4,), dtype=np.uint8)  # transparent where no surface is drawn
    covered = raster >= 0
    image[covered] = np.round(colours[raster[covered]] * 255).astype(np.uint8)
    figure = plt.figure(figsize=FIGURE_SIZE, dpi=dpi)
    figure.figimage(image, origin="upper", zorder=-1)
    for (label, *_), (left, bottom, width, height) in zip(_panels(), boxes):
        if label != "flat":  # where nilearn's panels carried their labels
            figure.text(left + width / 2, bottom + 0.02 * height, label, ha="center", fontsize=9)
    cmap = _colormap(style)
    if style.categories:
        handles = [Patch(color=cmap(i), label=name) for i, name in enumerate(style.categories)]
        figure.legend(handles=handles, loc="center right", title=style.label, fontsize=9, frameon=False)
    else:
        bar_axes = figure.add_axes((0.89, 0.25, 0.02, 0.5))
        figure.colorbar(
            ScalarMappable(norm=Normalize(*_limits(style)), cmap=cmap), cax=bar_axes, label=style.label
        )
    if title:
        figure.suptitle(title, fontsize=13)
    return figure


# --------------------------------------------------------------------------- accuracy density


def plot_accuracy_density(
    r_x: np.ndarray,
    r_y: np.ndarray,
    *,
    x_label: str,
    y_label: str,
    bins: int = 60,
    title: str = "",
    axes=None,
):
    """2-D density of voxel accuracies of two models (e.g. r of z against r of c).

    Parameters
    ----------
    r_x, r_y : (n_voxels,) float; voxels where either is NaN are left out

    Returns
    -------
    matplotlib.figure.Figure
        One axes with a log-scaled 2-D histogram, the identity line, and the share of voxels
        above it in the title.
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    r_x, r_y = np.asarray(r_x, dtype=np.float64), np.asarray(r_y, dtype=np.float64)
    if r_x.shape != r_y.shape or r_x.ndim != 1:
        raise MapInputError(
            f"accuracies of shapes {r_x.shape} and {r_y.shape}; expected two equal (n_voxels,)"
        )
    both = np.isfinite(r_x) & np.isfinite(r_y)
    if not both.any():
        raise MapInputError("no voxel has both accuracies; expected finite r values")
    r_x, r_y = r_x[both], r_y[both]
    if axes is None:
        figure, axes = plt.subplots(figsize=(5.2, 4.6))
    else:
        figure = axes.figure
    low = min(r_x.min(), r_y.min())
    high = max(r_x.max(), r_y.max())
    edges = np.linspace(low, high, bins + 1) if high > low else np.linspace(low - 0.5, low + 0.5, bins + 1)
    *_, image = axes.hist2d(r_x, r_y, bins=[edges, edges], norm=LogNorm(), cmap="viridis", cmin=1)
    axes.plot([edges[0], edges[-1]], [edges[0], edges[-1]], color="0.4", linewidth=1, linestyle="--")
    axes.set_xlabel(x_label)
    axes.set_ylabel(y_label)
    axes.set_aspect("equal")
    figure.colorbar(image, ax=axes, label="voxels")
    above = float(np.mean(r_y > r_x))
    axes.set_title(
        f"{title}\n{both.sum()} voxels, {100 * above:.0f} % above the diagonal".strip(), fontsize=10
    )
    figure.tight_layout()
    return figure


# --------------------------------------------------------------------------- interactive viewer


def view_surface_map(values: Mapping[str, np.ndarray], style: MapStyle, *, title: str = ""):
    """nilearn's interactive viewer of a map on both inflated hemispheres (JavaScript embedded).

    Returns nilearn's HTML document; ``.save_as_html(path)`` writes a page that works offline.
    """
    from nilearn import plotting
    from nilearn.surface import SurfaceImage

    values = check_map_inputs(values)
    meshes = fsaverage5()
    vmin, vmax = _limits(style)
    # The page stores values as JSON, which has no NaN: hidden vertices become 0, below any threshold.
    shown = {NILEARN_HEMI[hemi]: np.nan_to_num(values[hemi], nan=0.0) for hemi in HEMIS}
    threshold = style.threshold if style.threshold is not None else 1e-12
    return plotting.view_surf(
        meshes["inflated"],
        SurfaceImage(meshes["inflated"], shown),
        bg_map=SurfaceImage(meshes["inflated"], {NILEARN_HEMI[h]: v for h, v in meshes["sulcal"].items()}),
        hemi="both",
        threshold=threshold,
        cmap=_colormap(style),
        vmin=vmin,
        vmax=vmax,
        symmetric_cmap=vmin == -vmax,
        title=title,
        title_fontsize=16,
        colorbar_fontsize=12,
    )
