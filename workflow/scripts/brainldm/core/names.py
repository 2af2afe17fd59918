"""Every name derived from the configuration, built in one place.

Encoding spaces and models, the volumes that the encoding stage writes, the surface maps and
figures drawn from them, and the report's summary tables: the rules (output paths), the encoding
stage, the maps and the report all take their names from here, so they cannot disagree (a
strength written ``1`` in the config is ``zc1.0`` everywhere). ``encoding`` below is the config's
``encoding`` section (a mapping with ``zc_strengths``, ``unet_blocks`` and ``unet_steps``).
"""

from __future__ import annotations

from typing import Mapping, Sequence

#: The decoded feature spaces of the paper: ``z`` (VAE latents) and ``c`` (caption embeddings).
BASE_SPACES = ("z", "c")
#: Summary tables (``results/<dataset>/summary/<name>.tsv``) that the report shows as pages.
REPORT_TABLES = ("fmri_qc", "decoding", "identification", "metrics", "metrics_comparison", "encoding")
#: Volumes sampled winner-take-all (labels and masks), by name suffix.
LABEL_SUFFIXES = ("_significant", "unet_best_block", "unet_best_step")
#: The U-Net summary volumes: best block and best step per voxel.
UNET_BEST_VOLUMES = ("unet_best_block", "unet_best_step")


def zc_name(strength: float) -> str:
    """``zc{strength}`` with Python's ``str`` of the float: ``0.5`` -> ``zc0.5``, ``1`` -> ``zc1.0``."""
    return f"zc{float(strength)}"


def zc_names(strengths: Sequence[float]) -> list[str]:
    """:func:`zc_name` of each strength, in config order."""
    return [zc_name(strength) for strength in strengths]


def unet_names(blocks: Sequence[str], steps: Sequence[str]) -> list[str]:
    """``unet_{block}_{step}`` for every block, then every step within it."""
    return [f"unet_{block}_{step}" for block in blocks for step in steps]


def encoding_spaces(encoding: Mapping) -> list[str]:
    """Spaces that extract_encoding_features stores: the zc spaces, then the U-Net's."""
    return zc_names(encoding["zc_strengths"]) + unet_names(encoding["unet_blocks"], encoding["unet_steps"])


def accuracy_models(encoding: Mapping) -> list[str]:
    """Models whose accuracy is mapped: ``z``, ``c``, then each zc space in config order."""
    return [*BASE_SPACES, *zc_names(encoding["zc_strengths"])]


def joint_pairs(encoding: Mapping) -> list[tuple[str, str, str]]:
    """``(joint, space_a, space_b)``: ``("z+c", "z", "c")``, then ``("z+zc0.5", "z", "zc0.5")`` ..."""
    return [("z+c", "z", "c"), *((f"z+{zc}", "z", zc) for zc in zc_names(encoding["zc_strengths"]))]


def model_names(encoding: Mapping) -> tuple[list[str], list[str]]:
    """``(single-space models, joint models)``: z, c, the zc and U-Net spaces; then the joints."""
    singles = [*accuracy_models(encoding), *unet_names(encoding["unet_blocks"], encoding["unet_steps"])]
    return singles, [joint for joint, _, _ in joint_pairs(encoding)]


def unique_volume_names(encoding: Mapping) -> list[str]:
    """``{joint}_unique_{space}`` for each space of each joint model."""
    return [f"{joint}_unique_{space}" for joint, a, b in joint_pairs(encoding) for space in (a, b)]


def encoding_volume_names(encoding: Mapping) -> list[str]:
    """File stems of the NIfTI volumes of map_encoding (``<stem>.nii.gz``), in the order written:
    ``{model}_r`` and ``{model}_significant`` of every model, the unique variances, the U-Net's best
    block and step (each with a ``.json`` of its labels)."""
    singles, joints = model_names(encoding)
    names = [f"{model}_{kind}" for model in singles + joints for kind in ("r", "significant")]
    return names + unique_volume_names(encoding) + list(UNET_BEST_VOLUMES)


def surface_volume_names(encoding: Mapping) -> list[str]:
    """Encoding volumes that project_to_surface maps to fsaverage: r and FDR mask of each mapped
    model, the unique variances, the U-Net's best block and step."""
    names = [f"{model}_{kind}" for model in accuracy_models(encoding) for kind in ("r", "significant")]
    return names + unique_volume_names(encoding) + list(UNET_BEST_VOLUMES)


def label_volume_names(names: Sequence[str]) -> list[str]:
    """The names among ``names`` that hold labels or masks (sampled winner-take-all)."""
    return [name for name in names if name.endswith(LABEL_SUFFIXES)]


def figure_names(encoding: Mapping) -> list[str]:
    """Stems of one subject's map figures: ``r_{model}``, ``unique_{a}_vs_{b}``, ``unet_best_block``."""
    names = [f"r_{model}" for model in accuracy_models(encoding)]
    names += [f"unique_{a}_vs_{b}" for _, a, b in joint_pairs(encoding)]
    return names + ["unet_best_block"]


def viewer_volume_names(viewer_map: str, encoding: Mapping) -> list[str]:
    """Surface maps that the interactive viewer reads: r and FDR mask of each model it shows.

    Raises
    ------
    ValueError
        ``viewer_map`` is neither a mapped model nor two joined by ``-`` (names the key).
    """
    models = viewer_map.split("-", 1)
    known = accuracy_models(encoding)
    if any(model not in known for model in models):
        raise ValueError(
            f"config key 'maps.viewer_map': value {viewer_map!r} is invalid; "
            f"expected a model of {known} or two joined by '-' (e.g. 'z-c')"
        )
    return [f"{model}_{kind}" for model in models for kind in ("r", "significant")]
