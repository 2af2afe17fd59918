"""From a subject's func1pt8mm volume to the cortical surface, with NSD's own transforms.

Data only (no drawing): arrays in, arrays out. The conventions are NSD's (``nsdcode``), read
with nibabel:

- ``?h.func1pt8-to-layerB{1,2,3}.mgz`` hold, for every vertex of the subject's native surface,
  1-based (X, Y, Z) voxel coordinates into the func1pt8mm array as nibabel loads it; ``9999``
  marks an invalid vertex. A volume is sampled at each depth (cubic B-spline by default, as
  ``scipy.ndimage.map_coordinates(order=3, mode="nearest")`` on the volume with NaN set to 0,
  which is what NSD's code does) and the three depths are averaged.
- A vertex is NaN at a depth when its coordinate is 9999 or not finite, lies outside the volume
  (a 0-based coordinate below 0 or above ``n - 1`` on any axis), or its nearest voxel is NaN
  (outside the mapped mask); the depth mean is taken over the depths that are not NaN.
- ``?h.white-to-fsaverage.mgz`` holds, for every fsaverage vertex (163,842 per hemisphere), the
  1-based index of a native vertex: always nearest neighbour.
- fsaverage5 is the first 10,242 vertices of fsaverage (icosahedral nesting), the mesh nilearn
  ships and the maps are drawn on.

Label volumes (a best-block index, a 0/1 significance mask) must not be blended: they are
sampled winner-take-all (NSD's ``wta``): each label's indicator is interpolated linearly, summed
over the depths, and the label with the largest weight wins; NaN voxels count as a label of
their own, and a vertex they win is NaN.

HDF5 betas are stored (Z, Y, X); a map made from them must be transposed before it is sampled.
:func:`as_xyz` refuses such an array unless ``axis_order="zyx"`` says so (then it transposes).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from brainldm.core.atomic import atomic_path
from brainldm.nsd import layout as nsd

log = logging.getLogger(__name__)

INVALID_COORDINATE = 9999
FSAVERAGE_VERTICES = 163_842
FSAVERAGE5_VERTICES = 10_242
INTERPOLATION_ORDER = {"nearest": 0, "linear": 1, "cubic": 3}
#: Edge padding scipy's map_coordinates puts around a volume before its spline prefilter when
#: mode="nearest" (scipy.ndimage._interpolation); the same padding gives the same samples.
SPLINE_PAD = 12


class SurfaceTransformError(ValueError):
    """A transform file, or a volume handed to it, that does not follow NSD's conventions."""


# --------------------------------------------------------------------------- reading


def _read_mgz(path: str | Path) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise SurfaceTransformError(f"{path}: transform file missing")
    try:
        data, _ = nsd.load_image(path, "one of NSD's surface transforms (.mgz)", dtype=np.float64)
    except nsd.NSDFormatError as error:
        raise SurfaceTransformError(str(error)) from error
    # Surface .mgz files are (V, 1, 1, frames) or (V, frames, 1, 1): one row per vertex.
    return data.reshape(data.shape[0], -1, order="F")


def read_layer_coordinates(path: str | Path) -> np.ndarray:
    """Read ``?h.func1pt8-to-layerB?.mgz``: (n_vertices, 3) float64, 1-based, 9999 kept as stored."""
    coordinates = _read_mgz(path)
    if coordinates.shape[1] != 3:
        raise SurfaceTransformError(
            f"{path}: {coordinates.shape[1]} values per vertex; expected 3 voxel coordinates (X, Y, Z)"
        )
    return coordinates


def read_fsaverage_indices(path: str | Path) -> np.ndarray:
    """Read ``?h.white-to-fsaverage.mgz``: (163842,) int64, 1-based native vertex per fsaverage vertex."""
    values = _read_mgz(path)
    if values.shape != (FSAVERAGE_VERTICES, 1):
        raise SurfaceTransformError(
            f"{path}: shape {values.shape}; expected ({FSAVERAGE_VERTICES}, 1) native vertex indices"
        )
    indices = values[:, 0]
    if not np.all(np.isfinite(indices)) or np.any(indices != np.rint(indices)) or indices.min() < 1:
        raise SurfaceTransformError(f"{path}: values must be 1-based integer vertex indices (>= 1)")
    return indices.astype(np.int64)


def write_layer_coordinates(path: str | Path, coordinates: np.ndarray) -> None:
    """Write (n_vertices, 3) 1-based voxel coordinates as NSD does: a (V, 1, 1, 3) float32 .mgz."""
    import nibabel as nib

    coordinates = np.asarray(coordinates, dtype=np.float32)
    with atomic_path(path) as tmp:
        nib.save(nib.MGHImage(coordinates.reshape(-1, 1, 1, 3), np.eye(4)), str(tmp))


def write_fsaverage_indices(path: str | Path, indices: np.ndarray) -> None:
    """Write (163842,) 1-based native vertex indices as a (V, 1, 1) int32 .mgz."""
    import nibabel as nib

    indices = np.asarray(indices, dtype=np.int32)
    with atomic_path(path) as tmp:
        nib.save(nib.MGHImage(indices.reshape(-1, 1, 1), np.eye(4)), str(tmp))


@dataclass(frozen=True)
class HemisphereTransform:
    """One hemisphere's transforms.

    Attributes
    ----------
    layers : (n_depths, n_vertices, 3) float64
        1-based voxel coordinates per depth, as stored (9999 = invalid).
    fsaverage : (163842,) int64
        1-based native vertex of each fsaverage vertex.
    """

    layers: np.ndarray
    fsaverage: np.ndarray

    @property
    def n_vertices(self) -> int:
        return int(self.layers.shape[1])


def transform_paths(nsd_root: str | Path, subject: int) -> dict[str, dict[str, Path]]:
    """``{hemi: {depth or "fsaverage": path}}`` of one subject's transforms under ``nsd_root``."""
    root = Path(nsd_root)
    return {
        hemi: {
            **{depth: root / nsd.layer_transform_key(subject, hemi, depth) for depth in nsd.CORTICAL_DEPTHS},
            "fsaverage": root / nsd.fsaverage_transform_key(subject, hemi),
        }
        for hemi in nsd.HEMISPHERES
    }


def missing_transform_message(path: str | Path, key: str | None = None) -> str:
    """One line: which transform is missing and how to get it."""
    key = key or "/".join(Path(path).parts[-5:])
    return (
        f"{path}: NSD surface transform missing. Get it from NSD's bucket "
        f"(aws s3 cp s3://natural-scenes-dataset/{key} . --no-sign-request, or "
        f"https://natural-scenes-dataset.s3.amazonaws.com/{key}) into your NSD copy, or set "
        "nsd.root: null (with nsd.accept_terms: true) to download it, or maps.enabled: false"
    )


def check_transform_files(paths: Mapping[str, Mapping[str, str | Path]]) -> None:
    """Raise :class:`SurfaceTransformError` naming the first missing file and how to get it."""
    for by_kind in paths.values():
        for path in by_kind.values():
            if not Path(path).is_file():
                raise SurfaceTransformError(missing_transform_message(path))


def load_transforms(paths: Mapping[str, Mapping[str, str | Path]]) -> dict[str, HemisphereTransform]:
    """Read every hemisphere's transforms (``paths`` as :func:`transform_paths` gives).

    Checks first that every file exists (one message naming the missing file and how to get
    it), then that the depths of a hemisphere have the same vertex count and that the fsaverage
    indices point at existing native vertices.
    """
    check_transform_files(paths)
    transforms = {}
    for hemi in nsd.HEMISPHERES:
        by_depth = {depth: read_layer_coordinates(paths[hemi][depth]) for depth in nsd.CORTICAL_DEPTHS}
        counts = {depth: len(coordinates) for depth, coordinates in by_depth.items()}
        first = nsd.CORTICAL_DEPTHS[0]
        for depth, count in counts.items():
            if count != counts[first]:
                raise SurfaceTransformError(
                    f"{paths[hemi][depth]}: {count} vertices; expected {counts[first]} as in "
                    f"{paths[hemi][first]} (the depths of a hemisphere share its native vertices)"
                )
        layers = np.stack(list(by_depth.values()))
        fsaverage = read_fsaverage_indices(paths[hemi]["fsaverage"])
        if fsaverage.max() > layers.shape[1]:
            raise SurfaceTransformError(
                f"{paths[hemi]['fsaverage']}: points at native vertex {fsaverage.max()} but the "
                f"{hemi} layer transforms have {layers.shape[1]} vertices"
            )
        transforms[hemi] = HemisphereTransform(layers, fsaverage)
    return transforms


# --------------------------------------------------------------------------- volume checks


def as_xyz(volume: np.ndarray, grid_shape: Sequence[int], axis_order: str = "xyz") -> np.ndarray:
    """The volume in NIfTI order (X, Y, Z), checked against the subject's func grid.

    Parameters
    ----------
    volume : (X, Y, Z) or, with ``axis_order="zyx"``, (Z, Y, X) array
    grid_shape : (3,) ints
        The func1pt8mm grid (X, Y, Z) as nibabel loads it (e.g. ``voxels.npz``'s ``shape``).
    axis_order : "xyz" or "zyx"
        "zyx" for arrays taken from NSD's HDF5 files; they are transposed here.

    Raises
    ------
    SurfaceTransformError
        The shape does not fit ``grid_shape`` in the stated order; an (X, Y, Z) grid handed
        reversed is named as HDF5-ordered rather than silently mis-mapped.
    """
    grid_shape = tuple(int(n) for n in grid_shape)
    volume = np.asarray(volume)
    if axis_order not in ("xyz", "zyx"):
        raise ValueError(f"axis_order {axis_order!r}: expected 'xyz' (NIfTI) or 'zyx' (NSD's HDF5)")
    if volume.ndim != 3:
        raise SurfaceTransformError(f"volume of shape {volume.shape}; expected a 3-D volume {grid_shape}")
    if axis_order == "zyx":
        if volume.shape != grid_shape[::-1]:
            raise SurfaceTransformError(
                f"volume of shape {volume.shape} with axis_order 'zyx'; expected {grid_shape[::-1]}"
            )
        return volume.transpose(2, 1, 0)
    if volume.shape == grid_shape:
        return volume
    if volume.shape == grid_shape[::-1]:
        raise SurfaceTransformError(
            f"volume of shape {volume.shape} is the func grid {grid_shape} reversed: it looks "
            "HDF5-ordered (Z, Y, X); transpose it to (X, Y, Z) or pass axis_order='zyx'"
        )
    raise SurfaceTransformError(f"volume of shape {volume.shape}; expected the func grid {grid_shape}")


# --------------------------------------------------------------------------- sampling


def invalid_vertices(coordinates: np.ndarray, grid_shape: Sequence[int]) -> np.ndarray:
    """Vertices that cannot be sampled: 9999, not finite, or outside the volume.

    ``coordinates``: (..., 3) 1-based. Returns a bool array of shape ``coordinates.shape[:-1]``.
    """
    zero_based = coordinates - 1.0
    upper = np.asarray(grid_shape, dtype=np.float64) - 1.0
    with np.errstate(invalid="ignore"):
        outside = (zero_based < 0) | (zero_based > upper)
    return (
        np.any(coordinates == INVALID_COORDINATE, axis=-1)
        | ~np.all(np.isfinite(coordinates), axis=-1)
        | np.any(outside, axis=-1)
    )


def _safe_coordinates(coordinates: np.ndarray, invalid: np.ndarray) -> np.ndarray:
    """0-based coordinates as (3, n) for map_coordinates, invalid rows parked at voxel 0."""
    zero_based = np.where(invalid[:, None], 0.0, coordinates - 1.0)
    return np.ascontiguousarray(zero_based.T)


def sample_depths(volume: np.ndarray, layers: np.ndarray, interpolation: str = "cubic") -> np.ndarray:
    """Sample a volume at each depth's vertices: (n_depths, n_vertices) float64, NaN where invalid.

    Parameters
    ----------
    volume : (X, Y, Z) float, NaN outside the mapped voxels
    layers : (n_depths, n_vertices, 3) 1-based voxel coordinates
    interpolation : "cubic" (NSD's default), "linear" or "nearest"
    """
    from scipy import ndimage

    if interpolation not in INTERPOLATION_ORDER:
        raise ValueError(f"interpolation {interpolation!r}: expected one of {sorted(INTERPOLATION_ORDER)}")
    order = INTERPOLATION_ORDER[interpolation]
    volume = np.asarray(volume, dtype=np.float64)
    finite = np.isfinite(volume)
    filled = np.where(finite, volume, 0.0)
    # The B-spline prefilter is the costly part: run it once for all depths, exactly as
    # map_coordinates(order=3, mode="nearest") does inside (edge-padded by SPLINE_PAD voxels).
    pad = SPLINE_PAD if order > 1 else 0
    coefficients = (
        ndimage.spline_filter(np.pad(filled, pad, mode="edge"), order=order, mode="nearest")
        if order > 1
        else filled
    )
    samples = np.full(layers.shape[:2], np.nan)
    for depth, coordinates in enumerate(layers):
        invalid = invalid_vertices(coordinates, volume.shape)
        safe = _safe_coordinates(coordinates, invalid)
        values = ndimage.map_coordinates(
            coefficients, safe + pad, order=order, mode="nearest", prefilter=False
        )
        nearest_finite = ndimage.map_coordinates(finite.astype(np.uint8), safe, order=0, mode="nearest")
        keep = ~invalid & (nearest_finite == 1)
        samples[depth, keep] = values[keep]
    return samples


def mean_over_depths(samples: np.ndarray) -> np.ndarray:
    """Mean over the depths that are not NaN: (n_depths, n) -> (n,) float64 (NaN if none is)."""
    valid = np.isfinite(samples)
    count = valid.sum(axis=0)
    total = np.where(valid, samples, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def sample_labels(volume: np.ndarray, layers: np.ndarray) -> np.ndarray:
    """Winner-take-all sampling of a label volume over all depths: (n_vertices,) float64.

    Each label's indicator (and one for NaN voxels) is interpolated linearly at every depth and
    summed over the depths; the label with the largest weight wins (ties: the smaller label),
    NaN when the NaN indicator wins or no depth of the vertex is valid.
    """
    from scipy import ndimage

    volume = np.asarray(volume, dtype=np.float64)
    finite = np.isfinite(volume)
    labels = np.unique(volume[finite])
    n_vertices = layers.shape[1]
    weights = np.zeros((labels.size + 1, n_vertices))  # last row: NaN voxels
    any_valid = np.zeros(n_vertices, dtype=bool)
    indicators = [(volume == label).astype(np.float64) for label in labels] + [(~finite).astype(np.float64)]
    for coordinates in layers:
        invalid = invalid_vertices(coordinates, volume.shape)
        safe = _safe_coordinates(coordinates, invalid)
        any_valid |= ~invalid
        for row, indicator in enumerate(indicators):
            sampled = ndimage.map_coordinates(indicator, safe, order=1, mode="nearest")
            weights[row] += np.where(invalid, 0.0, sampled)
    winner = np.argmax(weights, axis=0)
    result = np.full(n_vertices, np.nan)
    labelled = any_valid & (winner < labels.size)
    result[labelled] = labels[winner[labelled]]
    return result


def volume_to_native(volume: np.ndarray, layers: np.ndarray, interpolation: str = "cubic") -> np.ndarray:
    """One hemisphere's native-surface values: (n_vertices,) float64.

    ``interpolation`` "cubic", "linear" or "nearest" samples each depth and averages
    (:func:`sample_depths`, :func:`mean_over_depths`); "wta" samples labels
    (:func:`sample_labels`).
    """
    if interpolation == "wta":
        return sample_labels(volume, layers)
    return mean_over_depths(sample_depths(volume, layers, interpolation))


def native_to_fsaverage(native: np.ndarray, fsaverage_indices: np.ndarray) -> np.ndarray:
    """Nearest-neighbour map to fsaverage: (n_native,) -> (163842,) through 1-based indices."""
    native = np.asarray(native)
    if fsaverage_indices.min() < 1 or fsaverage_indices.max() > native.shape[0]:
        raise SurfaceTransformError(
            f"fsaverage indices span {fsaverage_indices.min()}..{fsaverage_indices.max()}; the "
            f"native surface has vertices 1..{native.shape[0]}"
        )
    return native[fsaverage_indices - 1]


def to_fsaverage5(fsaverage: np.ndarray) -> np.ndarray:
    """fsaverage5's values: the first 10,242 fsaverage vertices (icosahedral nesting)."""
    if fsaverage.shape[0] < FSAVERAGE5_VERTICES:
        raise SurfaceTransformError(
            f"{fsaverage.shape[0]} vertices; expected fsaverage's {FSAVERAGE_VERTICES}"
        )
    return fsaverage[:FSAVERAGE5_VERTICES]


def project_volume(
    volume: np.ndarray,
    transforms: Mapping[str, HemisphereTransform],
    grid_shape: Sequence[int],
    *,
    interpolation: str = "cubic",
    axis_order: str = "xyz",
) -> dict[str, np.ndarray]:
    """A func1pt8mm volume on fsaverage: ``{"lh": (163842,), "rh": (163842,)}`` float32.

    ``interpolation``: "cubic", "linear", "nearest" (continuous maps) or "wta" (labels, masks).
    See :func:`as_xyz` for ``grid_shape`` and ``axis_order``.
    """
    volume = as_xyz(volume, grid_shape, axis_order)
    return {
        hemi: native_to_fsaverage(
            volume_to_native(volume, transforms[hemi].layers, interpolation), transforms[hemi].fsaverage
        ).astype(np.float32)
        for hemi in nsd.HEMISPHERES
    }


# --------------------------------------------------------------------------- rule driver


def read_nifti_volume(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """A 3-D NIfTI map as float64 (X, Y, Z) and its affine."""
    try:
        data, image = nsd.load_image(path, "a 3-D NIfTI map on the func1pt8mm grid", dtype=np.float64)
    except nsd.NSDFormatError as error:
        raise SurfaceTransformError(str(error)) from error
    if data.ndim != 3:
        raise SurfaceTransformError(f"{path}: shape {data.shape}; expected a 3-D volume")
    return data, image.affine


def save_surface_map(path: str | Path, values: Mapping[str, np.ndarray], *, kind: str) -> None:
    """Write one map's ``lh``/``rh`` fsaverage arrays (float32) and its ``kind`` to an ``.npz``."""
    with atomic_path(path) as tmp:
        np.savez(tmp, lh=values["lh"], rh=values["rh"], kind=np.array(kind))


def load_surface_map(path: str | Path) -> dict[str, np.ndarray]:
    """``{"lh", "rh"}`` fsaverage arrays of a map written by :func:`save_surface_map`."""
    with np.load(path) as data:
        return {hemi: data[hemi] for hemi in nsd.HEMISPHERES}


def project_volumes(
    volume_paths: Mapping[str, str | Path],
    output_paths: Mapping[str, str | Path],
    transform_files: Mapping[str, Mapping[str, str | Path]],
    grid_shape: Sequence[int],
    *,
    interpolation: str = "cubic",
    label_maps: Sequence[str] = (),
) -> None:
    """Project every named NIfTI map to fsaverage and write one ``.npz`` per map.

    Every transform is checked and read before any output is written, and each output is
    written through a temporary sibling, so a failure leaves no map behind (earlier maps of the
    same call are removed too).

    Parameters
    ----------
    volume_paths, output_paths : {name: path}
    transform_files : {hemi: {depth or "fsaverage": path}}, as :func:`transform_paths`
    grid_shape : the subject's func grid (X, Y, Z); every volume must have it
    label_maps : names sampled winner-take-all (labels, masks) instead of ``interpolation``
    """
    from tqdm import tqdm

    transforms = load_transforms(transform_files)
    log.info(
        "transforms: %s", ", ".join(f"{h} {t.n_vertices} native vertices" for h, t in transforms.items())
    )
    written: list[Path] = []
    try:
        for name in tqdm(list(volume_paths), desc="project_to_surface", unit="map"):
            volume, _ = read_nifti_volume(volume_paths[name])
            kind = "wta" if name in label_maps else interpolation
            values = project_volume(volume, transforms, grid_shape, interpolation=kind)
            save_surface_map(output_paths[name], values, kind=kind)
            written.append(Path(output_paths[name]))
            finite = {h: int(np.isfinite(v[:FSAVERAGE5_VERTICES]).sum()) for h, v in values.items()}
            log.info(
                "%s (%s): fsaverage5 vertices with a value: lh %d, rh %d",
                name,
                kind,
                finite["lh"],
                finite["rh"],
            )
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
