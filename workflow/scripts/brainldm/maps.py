"""Drawing cortical maps on fsaverage5 with nilearn (drawing only; the data come from
:mod:`brainldm.surface`).

Every map is a ``{"lh": values, "rh": values}`` pair on fsaverage5 (10,242 vertices per
hemisphere; fsaverage arrays are cut to their first 10,242 vertices), NaN where there is no
value. One figure shows a map as the paper does: both hemispheres flattened side by side with
the occipital poles meeting in the centre, and the inflated left and right hemispheres from the
side and from the midline. The meshes and the sulcal depth shipped inside nilearn are used, so
nothing is downloaded.

Public functions return figures (or nilearn's HTML document); the rule scripts save them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Mapping, Sequence

import numpy as np

from .surface import FSAVERAGE5_VERTICES

HEMIS = ("lh", "rh")
NILEARN_HEMI = {"lh": "left", "rh": "right"}
#: Gap between the two flattened hemispheres, in flat-map millimetres.
FLAT_GAP_MM = 12.0
#: Camera of the flat maps: from above, rotated so that the hemispheres lie side by side.
FLAT_VIEW = (90, 270)
INFLATED_PANELS = (("lh", "lateral"), ("lh", "medial"), ("rh", "medial"), ("rh", "lateral"))


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
                "or fsaverage (163842,) vertices")
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
        "sulcal": {hemi: np.asarray(sulcal.data.parts[NILEARN_HEMI[hemi]], dtype=np.float64) for hemi in HEMIS},
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


def plot_surface_map(values: Mapping[str, np.ndarray], style: MapStyle, *, title: str = "",
                     figure=None):
    """Flat (both hemispheres, occipital poles central) and inflated lateral/medial views.

    Parameters
    ----------
    values : {"lh", "rh"} fsaverage5 or fsaverage arrays, NaN where there is no value
    style : MapStyle
    title : figure title
    figure : a matplotlib Figure to draw into (a new one otherwise)

    Returns
    -------
    matplotlib.figure.Figure
        Five surface axes (flat, then lh lateral, lh medial, rh medial, rh lateral) and one
        colour bar (or legend, for categories).
    """
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.patches import Patch
    from nilearn import plotting

    values = check_map_inputs(values)
    meshes = fsaverage5()
    cmap = _colormap(style)
    vmin, vmax = _limits(style)
    threshold = None if style.categories else style.threshold
    common = dict(cmap=cmap, vmin=vmin, vmax=vmax, threshold=threshold, colorbar=False,
                  symmetric_cbar=False, bg_on_data=False)
    figure = figure or plt.figure(figsize=(11, 7.5))
    flat_axes = figure.add_axes((0.0, 0.36, 0.86, 0.6), projection="3d")
    plotting.plot_surf_stat_map(
        meshes["flat_both"], np.concatenate([values["lh"], values["rh"]]), view=FLAT_VIEW,
        bg_map=np.concatenate([meshes["sulcal"]["lh"], meshes["sulcal"]["rh"]]),
        axes=flat_axes, figure=figure, **common)
    flat_axes.set_box_aspect(None, zoom=1.6)
    for column, (hemi, view) in enumerate(INFLATED_PANELS):
        axes = figure.add_axes((column * 0.215, 0.0, 0.215, 0.38), projection="3d")
        plotting.plot_surf_stat_map(
            meshes["inflated"].parts[NILEARN_HEMI[hemi]], values[hemi], hemi=NILEARN_HEMI[hemi], view=view,
            bg_map=meshes["sulcal"][hemi], axes=axes, figure=figure, **common)
        axes.set_box_aspect(None, zoom=1.45)
        axes.text2D(0.5, 0.02, f"{hemi} {view}", transform=axes.transAxes, ha="center", fontsize=9)
    if style.categories:
        handles = [Patch(color=cmap(i), label=name) for i, name in enumerate(style.categories)]
        figure.legend(handles=handles, loc="center right", title=style.label, fontsize=9, frameon=False)
    else:
        bar_axes = figure.add_axes((0.89, 0.25, 0.02, 0.5))
        mappable = ScalarMappable(norm=Normalize(vmin, vmax), cmap=cmap)
        figure.colorbar(mappable, cax=bar_axes, label=style.label)
    if title:
        figure.suptitle(title, fontsize=13)
    return figure


# --------------------------------------------------------------------------- accuracy density


def plot_accuracy_density(r_x: np.ndarray, r_y: np.ndarray, *, x_label: str, y_label: str,
                          bins: int = 60, title: str = "", axes=None):
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
        raise MapInputError(f"accuracies of shapes {r_x.shape} and {r_y.shape}; expected two equal (n_voxels,)")
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
    axes.set_title(f"{title}\n{both.sum()} voxels, {100 * above:.0f} % above the diagonal".strip(), fontsize=10)
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
        meshes["inflated"], SurfaceImage(meshes["inflated"], shown),
        bg_map=SurfaceImage(meshes["inflated"], {NILEARN_HEMI[h]: v for h, v in meshes["sulcal"].items()}),
        hemi="both", threshold=threshold, cmap=_colormap(style), vmin=vmin, vmax=vmax,
        symmetric_cmap=vmin == -vmax, title=title, title_fontsize=16, colorbar_fontsize=12)
