"""NSD-format surface transforms for the toy world, under fsaverage's real geometry.

The toy subject's "native surface" is fsaverage5 itself (the meshes nilearn ships, offline):
10,242 vertices per hemisphere. Its transforms follow NSD's conventions exactly
(:mod:`brainldm.maps.surface`), so the real mapping code runs on the toy:

- ``?h.func1pt8-to-layerB{1,2,3}.mgz``: each vertex's point at 25, 50 and 75 % of the way from
  the white to the pial surface, warped from fsaverage's (MNI-like) millimetres into the toy
  grid, as 1-based voxel coordinates; the medial wall (zero cortical thickness in fsaverage5's
  thickness map) is 9999. The warp is piecewise linear per axis (:data:`WARP_KNOTS`), chosen so
  that the occipital lobe lands in the toy's ``early`` slab (posterior ``y``) and inferior
  temporal/occipito-temporal cortex in its ``ventral`` region (middle ``y``, low ``z``), then
  pulled towards the centre so that the whole cortex lies inside the toy's ellipsoidal brain.
- ``?h.white-to-fsaverage.mgz``: 163,842 1-based native indices. fsaverage's vertices are
  fsaverage5's followed by those added by two rounds of icosahedral subdivision, so the first
  10,242 point at themselves. Beyond them we subdivide fsaverage5's sphere ourselves (edge
  midpoints, our own order, not FreeSurfer's) and point each added vertex at its nearest
  fsaverage5 vertex: on the toy, fsaverage vertices past 10,242 are ours, not FreeSurfer's;
  the maps are drawn on fsaverage5 and never read them.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from brainldm.maps import surface
from brainldm.nsd import layout as nsd

#: Depths of NSD's layerB1..3 as fractions of the way from white to pial.
DEPTH_FRACTIONS = {"layerB1": 0.25, "layerB2": 0.5, "layerB3": 0.75}
#: Per axis (x, y, z): fsaverage millimetres -> fraction of the toy grid (0 = first voxel).
#: The toy's early slab is y < 0.3 (here y < -72 mm, occipital); its ventral region is
#: 0.3 <= y < 0.6 and z < 0.4 (here -72 <= y < -15 mm and z < -8 mm, inferior temporal).
WARP_KNOTS = (
    ((-75.0, 75.0), (0.03, 0.97)),
    ((-110.0, -72.0, -15.0, 75.0), (0.02, 0.3, 0.6, 0.98)),
    ((-50.0, -8.0, 80.0), (0.05, 0.4, 0.96)),
)
#: Largest normalised ellipsoid radius a vertex may reach (the toy brain's surface is 1).
MAX_BRAIN_RADIUS = 0.9
NILEARN_HEMI = {"lh": "left", "rh": "right"}


@lru_cache(maxsize=1)
def fsaverage5_geometry() -> dict[str, dict[str, np.ndarray]]:
    """fsaverage5 meshes from nilearn: per hemi ``white``, ``pial``, ``sphere`` (V, 3) float64,
    ``faces`` (F, 3) int64 and ``medial_wall`` (V,) bool (zero thickness)."""
    from nilearn import datasets

    meshes = datasets.load_fsaverage("fsaverage5")
    thickness = datasets.load_fsaverage_data(mesh="fsaverage5", mesh_type="pial", data_type="thickness")
    geometry = {}
    for hemi, part in NILEARN_HEMI.items():
        geometry[hemi] = {
            "white": np.asarray(meshes["white_matter"].parts[part].coordinates, dtype=np.float64),
            "pial": np.asarray(meshes["pial"].parts[part].coordinates, dtype=np.float64),
            "sphere": np.asarray(meshes["sphere"].parts[part].coordinates, dtype=np.float64),
            "faces": np.asarray(meshes["sphere"].parts[part].faces, dtype=np.int64),
            "medial_wall": np.asarray(thickness.data.parts[part]) < 0.01,
        }
    return geometry


def warp_to_grid(points_mm: np.ndarray, grid: tuple[int, int, int]) -> np.ndarray:
    """fsaverage millimetres (n, 3) -> 1-based toy voxel coordinates (n, 3) float64."""
    fractions = np.stack([np.interp(points_mm[:, axis], *WARP_KNOTS[axis]) for axis in range(3)], axis=1)
    # The toy brain is the ellipsoid of toy_world.make_atlases; keep every point inside it.
    radii = np.array([0.48, 0.48, 0.46])
    offset = fractions - 0.5
    radius = np.sqrt(((offset / radii) ** 2).sum(axis=1))
    shrink = np.minimum(1.0, MAX_BRAIN_RADIUS / np.maximum(radius, 1e-12))
    fractions = 0.5 + offset * shrink[:, None]
    return fractions * (np.asarray(grid, dtype=np.float64) - 1) + 1.0


def subdivide(vertices: np.ndarray, faces: np.ndarray, rounds: int) -> np.ndarray:
    """Vertices of ``rounds`` icosahedral subdivisions of a sphere mesh (old vertices first)."""
    radius = np.linalg.norm(vertices, axis=1).mean()
    for _ in range(rounds):
        edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
        unique, inverse = np.unique(edges, axis=0, return_inverse=True)
        midpoints = vertices[unique].mean(axis=1)
        midpoints *= radius / np.linalg.norm(midpoints, axis=1, keepdims=True)
        n_old, n_faces = vertices.shape[0], faces.shape[0]
        middle = inverse.reshape(3, n_faces).T + n_old  # per face: mid(01), mid(12), mid(20)
        faces = np.concatenate(
            [
                np.stack([faces[:, 0], middle[:, 0], middle[:, 2]], axis=1),
                np.stack([faces[:, 1], middle[:, 1], middle[:, 0]], axis=1),
                np.stack([faces[:, 2], middle[:, 2], middle[:, 1]], axis=1),
                middle,
            ]
        )
        vertices = np.concatenate([vertices, midpoints])
    return vertices


def toy_layer_coordinates(hemi: str, grid: tuple[int, int, int]) -> dict[str, np.ndarray]:
    """``{depth: (10242, 3) 1-based voxel coordinates}``; 9999 on the medial wall."""
    geometry = fsaverage5_geometry()[hemi]
    layers = {}
    for depth, fraction in DEPTH_FRACTIONS.items():
        points = geometry["white"] + fraction * (geometry["pial"] - geometry["white"])
        coordinates = warp_to_grid(points, grid)
        coordinates[geometry["medial_wall"]] = surface.INVALID_COORDINATE
        layers[depth] = coordinates
    return layers


@lru_cache(maxsize=2)
def toy_fsaverage_indices(hemi: str) -> np.ndarray:
    """(163842,) 1-based fsaverage5 (= toy native) vertex of every fsaverage vertex."""
    from scipy.spatial import cKDTree

    geometry = fsaverage5_geometry()[hemi]
    sphere = geometry["sphere"]
    dense = subdivide(sphere, geometry["faces"], rounds=2)
    if dense.shape[0] != surface.FSAVERAGE_VERTICES:
        raise ValueError(
            f"subdividing fsaverage5 gave {dense.shape[0]} vertices, not {surface.FSAVERAGE_VERTICES}"
        )
    _, nearest = cKDTree(sphere).query(dense)
    nearest[: sphere.shape[0]] = np.arange(sphere.shape[0])  # fsaverage5's own vertices: themselves
    return nearest.astype(np.int64) + 1


def write_toy_transforms(nsd_root: str | Path, subject: int, grid: tuple[int, int, int]) -> None:
    """Write one toy subject's 8 transform files under ``nsd_root`` in NSD's layout."""
    root = Path(nsd_root)
    for hemi in nsd.HEMISPHERES:
        for depth, coordinates in toy_layer_coordinates(hemi, grid).items():
            surface.write_layer_coordinates(root / nsd.layer_transform_key(subject, hemi, depth), coordinates)
        surface.write_fsaverage_indices(
            root / nsd.fsaverage_transform_key(subject, hemi), toy_fsaverage_indices(hemi)
        )
