"""The figures of one subject's cortical maps, drawn from the encoding volumes on fsaverage.

Which volumes and figures there are, and their names, come from :mod:`brainldm.core.names`
(``{model}_r``, ``{model}_significant``, ``{joint}_unique_{space}``, ``unet_best_block`` with its
``.json`` of block names, ``unet_best_step``); this module computes their values and styles.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from brainldm.core.names import accuracy_models, joint_pairs
from brainldm.maps.draw import MapStyle
from brainldm.maps.surface import FSAVERAGE5_VERTICES

log = logging.getLogger(__name__)

#: Percentile of the drawn values that sets a colour scale's end (robust to a few outliers).
SCALE_PERCENTILE = 99.0


@dataclass(frozen=True)
class FigureMap:
    """One figure to draw: its file stem, title, fsaverage values and style."""

    name: str
    title: str
    values: dict[str, np.ndarray]
    style: MapStyle


def _robust_max(arrays: Sequence[np.ndarray], *, absolute: bool) -> float:
    values = np.concatenate([np.ravel(a) for a in arrays])
    values = values[np.isfinite(values)]
    if absolute:
        values = np.abs(values)
    if values.size == 0:
        return 1.0
    top = float(np.percentile(values, SCALE_PERCENTILE))
    return top if top > 0 else float(values.max()) or 1.0


def _where(mask: Mapping[str, np.ndarray], values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {hemi: np.where(mask[hemi], values[hemi], np.nan) for hemi in values}


def figure_maps(
    surface: Mapping[str, Mapping[str, np.ndarray]],
    encoding: Mapping,
    block_names: Sequence[str],
    *,
    subject: str,
) -> list[FigureMap]:
    """The figures of one subject, in :func:`figure_names` order.

    Parameters
    ----------
    surface : {volume name: {"lh", "rh"} fsaverage values}, every :func:`surface_volume_names`
    encoding : the ``encoding`` config block (model lists)
    block_names : U-Net block name of each ``unet_best_block`` index
    subject : shown in the titles

    Returns
    -------
    list of FigureMap
        r of each model where its FDR mask is 1 (one colour scale for all, 0 to the 99th
        percentile); unique variance of space a minus that of space b for each joint model,
        where either single model is significant (symmetric scale); the best U-Net block
        (categorical).
    """

    def significant(model):
        return {hemi: surface[f"{model}_significant"][hemi] == 1 for hemi in surface[f"{model}_r"]}

    models = accuracy_models(encoding)
    r_maps = {model: _where(significant(model), surface[f"{model}_r"]) for model in models}
    r_max = _robust_max([v for m in r_maps.values() for v in m.values()], absolute=False)
    figures = [
        FigureMap(
            f"r_{model}",
            f"subj{subject}: r of {model} (FDR-significant voxels)",
            r_maps[model],
            MapStyle(cmap="inferno", vmin=0.0, vmax=r_max, threshold=1e-9, label="test r"),
        )
        for model in models
    ]
    differences = {}
    for joint, space_a, space_b in joint_pairs(encoding):
        either = {hemi: significant(space_a)[hemi] | significant(space_b)[hemi] for hemi in surface["z_r"]}
        a, b = surface[f"{joint}_unique_{space_a}"], surface[f"{joint}_unique_{space_b}"]
        differences[(space_a, space_b)] = _where(either, {hemi: a[hemi] - b[hemi] for hemi in a})
    for (space_a, space_b), values in differences.items():
        limit = _robust_max(list(values.values()), absolute=True)
        figures.append(
            FigureMap(
                f"unique_{space_a}_vs_{space_b}",
                f"subj{subject}: unique variance in {space_a}+{space_b}, {space_a} (red) vs {space_b} (blue)",
                values,
                MapStyle(
                    cmap="RdBu_r",
                    vmin=-limit,
                    vmax=limit,
                    threshold=1e-12,
                    label=f"R² unique to {space_a} − unique to {space_b}",
                ),
            )
        )
    figures.append(
        FigureMap(
            "unet_best_block",
            f"subj{subject}: best U-Net block",
            dict(surface["unet_best_block"]),
            MapStyle(categories=tuple(block_names), label="block"),
        )
    )
    return figures


def viewer_values(
    surface: Mapping[str, Mapping[str, np.ndarray]], viewer_map: str
) -> tuple[dict, MapStyle, str]:
    """Values, style and title of the interactive viewer's map.

    ``viewer_map`` is a model name (its r where significant) or ``"a-b"`` (r of a minus r of b
    where either is significant), e.g. the default ``"z-c"``.
    """

    def masked_r(model):
        if f"{model}_r" not in surface:
            known = sorted(name[:-2] for name in surface if name.endswith("_r"))
            raise KeyError(
                f"maps.viewer_map {viewer_map!r}: no model {model!r}; expected one of {known} or 'a-b'"
            )
        return {
            hemi: np.where(surface[f"{model}_significant"][hemi] == 1, surface[f"{model}_r"][hemi], np.nan)
            for hemi in surface[f"{model}_r"]
        }

    if "-" in viewer_map and not viewer_map.startswith("-"):
        model_a, model_b = viewer_map.split("-", 1)
        a, b = masked_r(model_a), masked_r(model_b)
        values = {
            hemi: np.where(
                np.isfinite(a[hemi]) | np.isfinite(b[hemi]),
                np.nan_to_num(a[hemi]) - np.nan_to_num(b[hemi]),
                np.nan,
            )
            for hemi in a
        }
        limit = _robust_max(list(values.values()), absolute=True)
        return (
            values,
            MapStyle(cmap="RdBu_r", vmin=-limit, vmax=limit, threshold=1e-12),
            f"r of {model_a} (red) minus r of {model_b} (blue)",
        )
    values = masked_r(viewer_map)
    return (
        values,
        MapStyle(
            cmap="inferno", vmin=0.0, vmax=_robust_max(list(values.values()), absolute=False), threshold=1e-9
        ),
        f"r of {viewer_map}",
    )


# --------------------------------------------------------------------------- rule drivers


def _save_figure(figure, path, dpi: int) -> None:
    import matplotlib.pyplot as plt

    from brainldm.core.atomic import atomic_path

    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=dpi)
    plt.close(figure)


def read_block_names(path) -> list[str]:
    """``unet_best_block.json``: the list of block names, index -> name."""
    import json
    from pathlib import Path

    names = json.loads(Path(path).read_text())
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or not names:
        raise ValueError(f"{path}: expected a JSON list of U-Net block names (index -> name)")
    return names


def draw_cortical_maps(
    surface_paths: Mapping[str, str],
    block_names_path: str,
    encoding: Mapping,
    output_paths: Mapping[str, str],
    *,
    subject: str,
    dpi: int = 100,
) -> None:
    """Draw every figure of :func:`figure_names` from the projected maps, one PNG each."""
    import matplotlib

    matplotlib.use("Agg")
    from tqdm import tqdm

    from brainldm.maps.draw import plot_surface_map
    from brainldm.maps.surface import load_surface_map

    surface = {name: load_surface_map(path) for name, path in surface_paths.items()}
    figures = figure_maps(surface, encoding, read_block_names(block_names_path), subject=subject)
    for figure_map in tqdm(figures, desc="plot_cortical_maps", unit="figure"):
        figure = plot_surface_map(figure_map.values, figure_map.style, title=figure_map.title, dpi=dpi)
        _save_figure(figure, output_paths[figure_map.name], dpi)
        shown = sum(int(np.isfinite(v[:FSAVERAGE5_VERTICES]).sum()) for v in figure_map.values.values())
        log.info(
            "%s: %s (%d fsaverage5 vertices with a value)",
            figure_map.name,
            output_paths[figure_map.name],
            shown,
        )


def draw_accuracy_density(
    x_path: str, y_path: str, output_path: str, *, x_model: str, y_model: str, subject: str, dpi: int = 100
) -> None:
    """The 2-D density of the voxel r of two models, read from their NIfTI volumes."""
    import matplotlib

    matplotlib.use("Agg")
    from brainldm.maps.draw import plot_accuracy_density
    from brainldm.maps.surface import read_nifti_volume

    (x, _), (y, _) = read_nifti_volume(x_path), read_nifti_volume(y_path)
    if x.shape != y.shape:
        raise ValueError(f"{x_path} has shape {x.shape} but {y_path} {y.shape}; expected one func grid")
    figure = plot_accuracy_density(
        x.ravel(),
        y.ravel(),
        x_label=f"voxel r, {x_model}",
        y_label=f"voxel r, {y_model}",
        title=f"subj{subject}",
    )
    log.info("density of %s vs %s: %s", x_model, y_model, figure.axes[0].get_title().splitlines()[-1])
    _save_figure(figure, output_path, dpi)


def write_viewer(
    surface_paths: Mapping[str, str], output_path: str, *, viewer_map: str, subject: str
) -> None:
    """The interactive page of one subject (nilearn view_surf, JavaScript embedded)."""
    from brainldm.core.atomic import atomic_path
    from brainldm.maps.draw import view_surface_map
    from brainldm.maps.surface import load_surface_map

    surface = {name: load_surface_map(path) for name, path in surface_paths.items()}
    values, style, title = viewer_values(surface, viewer_map)
    document = view_surface_map(values, style, title=f"subj{subject}: {title}")
    with atomic_path(output_path) as tmp:
        document.save_as_html(tmp)
    log.info("viewer of %s: %s", viewer_map, output_path)
