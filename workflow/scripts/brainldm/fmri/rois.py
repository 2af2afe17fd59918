"""ROI volumes of one subject: the voxels of the requested ROIs on the betas' grid."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from brainldm.fmri.betas import FMRIDataError
from brainldm.nsd import layout as nsd

AFFINE_TOLERANCE_MM = 1e-3


@dataclass(frozen=True)
class RoiSet:
    """Voxels of the requested ROIs on one grid.

    Attributes
    ----------
    rois : list of str
    grid : (3,) tuple of int
    affine : (4, 4) float64
    ijk : (n_union, 3) int32
        Voxels of the union of the ROIs, C order.
    columns : dict roi -> (n_voxels_roi,) int64
        Columns of each ROI's voxels within the union (each ROI in C order too).
    atlas : dict roi -> str
    label : dict roi -> int (the atlas value; 0 stands for nsdgeneral's and brainmask's "> 0")
    in_brain : (n_union,) bool
        Whether each union voxel lies inside the brain mask.
    """

    rois: list[str]
    grid: tuple[int, int, int]
    affine: np.ndarray
    ijk: np.ndarray
    columns: dict[str, np.ndarray]
    atlas: dict[str, str]
    label: dict[str, int]
    in_brain: np.ndarray

    @property
    def flat_index(self) -> np.ndarray:
        """Fortran-order flat indices of the union voxels: (n_union,) int64."""
        return np.ravel_multi_index(tuple(self.ijk.T), self.grid, order="F").astype(np.int64)


def check_same_grid(path: Path, shape, affine, ref_path: Path, ref_shape, ref_affine) -> None:
    """Fail unless volume ``path`` lies on the grid of ``ref_path`` (betas, ROIs and brain mask).

    Parameters
    ----------
    shape, ref_shape : (3,) ints — volume shapes
    affine, ref_affine : (4, 4) float or None — voxel-to-world transforms; None (HDF5 betas,
        which store none) is not compared; otherwise equal within ``AFFINE_TOLERANCE_MM``

    Raises
    ------
    FMRIDataError
        Naming ``path`` and ``ref_path`` and what differs.
    """
    if tuple(shape) != tuple(ref_shape):
        raise FMRIDataError(
            f"{path}: grid {tuple(shape)} differs from {ref_path} {tuple(ref_shape)}; betas, ROI "
            f"and brain-mask volumes must share one grid"
        )
    if (
        affine is not None
        and ref_affine is not None
        and not np.allclose(affine, ref_affine, atol=AFFINE_TOLERANCE_MM)
    ):
        raise FMRIDataError(
            f"{path}: affine differs from {ref_path} (max difference "
            f"{np.abs(np.asarray(affine) - np.asarray(ref_affine)).max():.4g} mm); betas, ROI and "
            f"brain-mask volumes must share one grid"
        )


def _read_checked_volume(path: str | Path, what: str) -> tuple[np.ndarray, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise FMRIDataError(f"{path}: {what} missing")
    data, affine = nsd.read_volume(path)
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        bad = np.argwhere(~np.isfinite(data))
        raise FMRIDataError(
            f"{path}: {len(bad)} NaN/inf values in the {what} (first at voxel {tuple(bad[0])})"
        )
    return data, affine


def load_rois(
    rois: Sequence[str],
    atlas_paths: Mapping[str, str | Path],
    label_table_paths: Mapping[str, str | Path],
    brainmask_path: str | Path,
    grid: tuple[int, int, int],
    affine: np.ndarray | None,
    grid_source: str | Path,
) -> RoiSet:
    """Masks of ``rois`` from their atlases, checked against the betas grid.

    Parameters
    ----------
    atlas_paths : atlas name -> path of its volume (``streams``, ``prf-visualrois``, ``nsdgeneral``)
    label_table_paths : atlas name -> path of its ``.ctab`` (not needed for ``nsdgeneral``)
    grid, affine, grid_source : the betas grid and the file it comes from (affine None: HDF5)

    Raises
    ------
    FMRIDataError
        A missing file, a volume on another grid, NaN/inf in a volume, an ROI with no voxels.
    """
    rois = list(rois)
    atlases = nsd.atlases_for(rois)
    ref_path, ref_shape, ref_affine = Path(grid_source), grid, affine
    volumes: dict[str, np.ndarray] = {}
    for atlas in atlases:
        if atlas not in atlas_paths:
            raise FMRIDataError(f"atlas {atlas!r}: no file given; expected {nsd.roi_key(1, atlas)} and so on")
        data, atlas_affine = _read_checked_volume(atlas_paths[atlas], f"ROI atlas {atlas!r}")
        check_same_grid(Path(atlas_paths[atlas]), data.shape, atlas_affine, ref_path, ref_shape, ref_affine)
        if ref_affine is None:  # HDF5 betas: the first atlas sets the affine
            ref_path, ref_affine = Path(atlas_paths[atlas]), atlas_affine
        volumes[atlas] = data
    brainmask, mask_affine = _read_checked_volume(brainmask_path, "brain mask")
    check_same_grid(Path(brainmask_path), brainmask.shape, mask_affine, ref_path, ref_shape, ref_affine)
    if ref_affine is None:
        ref_affine = mask_affine
    volumes["brainmask"] = brainmask

    masks, atlas_of, label_of = {}, {}, {}
    for roi in rois:
        atlas = nsd.ROI_ATLAS[roi]
        table = None
        if atlas not in nsd.WHOLE_VOLUME_ATLASES:
            table_path = label_table_paths.get(atlas)
            if table_path is None or not Path(table_path).is_file():
                raise FMRIDataError(f"{table_path or atlas}: label table of atlas {atlas!r} missing")
            table = nsd.read_label_table(table_path)
            if roi not in table:
                raise FMRIDataError(f"{table_path}: ROI {roi!r} is not in the label table of {atlas!r}")
        masks[roi] = nsd.roi_mask(roi, volumes[atlas], table)
        atlas_of[roi] = atlas
        label_of[roi] = 0 if table is None else table[roi]
        if not masks[roi].any():
            what = "values > 0" if table is None else f"label {table[roi]}"
            raise FMRIDataError(
                f"{atlas_paths.get(atlas, brainmask_path)}: ROI {roi!r} ({what} of atlas {atlas!r}) has no "
                "voxels"
            )
    union = np.logical_or.reduce([masks[roi] for roi in rois])
    ijk = np.argwhere(union).astype(np.int32)
    union_c = np.ravel_multi_index(tuple(ijk.T), union.shape)
    columns = {roi: np.searchsorted(union_c, np.flatnonzero(masks[roi])) for roi in rois}
    in_brain = brainmask[tuple(ijk.T)] > 0
    return RoiSet(
        rois,
        tuple(int(n) for n in union.shape),
        np.asarray(ref_affine, dtype=np.float64),
        ijk,
        columns,
        atlas_of,
        label_of,
        in_brain,
    )
