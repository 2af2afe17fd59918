"""Time of the maps stage: surface mapping at NSD's size, and mapping + drawing on the toy.

    python tests/benchmarks/bench_surface.py            # both parts
    python tests/benchmarks/bench_surface.py --nsd      # NSD size only
    python tests/benchmarks/bench_surface.py --toy      # toy only

NSD size: a random float32 map on subj01's 81 x 104 x 83 func grid (NaN outside an ellipsoidal
mask), random transforms for 227,021 (lh) and 226,601 (rh) native vertices at three depths
(1 % of them 9999) and random white-to-fsaverage indices, written as .mgz and read back like
NSD's. Toy: subject 1 of the toy world with the stand-in encoding volumes of the tests, every
step of the maps rules (projection of all maps, every figure, the density, the viewer) in one
process, each step timed in wall and CPU seconds, and the same figures' surfaces drawn by nilearn
itself (what plot_cortical_maps cost before it painted them through ``face_index_raster``).
Prints the load average: timings on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO / "workflow" / "scripts"), str(REPO / "tests")]

NSD_GRID = (81, 104, 83)
NSD_VERTICES = {"lh": 227_021, "rh": 226_601}


class Timer:
    def __init__(self, label: str):
        self.label = label

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu
        print(f"  {self.label:<48s} {self.wall:7.2f} s wall {self.cpu:7.2f} s CPU", flush=True)


def nsd_size(folder: Path) -> None:
    from brainldm.maps import surface
    from brainldm.nsd import layout as nsd

    print(f"NSD size: grid {NSD_GRID}, native vertices {NSD_VERTICES}")
    rng = np.random.default_rng(0)
    axes = [np.linspace(-1, 1, n) for n in NSD_GRID]
    xx, yy, zz = np.meshgrid(*axes, indexing="ij")
    mask = xx**2 + yy**2 + zz**2 < 0.8
    volume = np.where(mask, rng.normal(size=NSD_GRID), np.nan).astype(np.float32)
    labels = np.where(mask, rng.integers(0, 6, NSD_GRID), np.nan).astype(np.float32)
    paths = surface.transform_paths(folder, 1)
    with Timer("write 8 transform .mgz files"):
        for hemi, n in NSD_VERTICES.items():
            for depth in nsd.CORTICAL_DEPTHS:
                coordinates = rng.uniform(1, np.array(NSD_GRID), size=(n, 3))
                coordinates[rng.random(n) < 0.01] = surface.INVALID_COORDINATE
                surface.write_layer_coordinates(paths[hemi][depth], coordinates)
            surface.write_fsaverage_indices(
                paths[hemi]["fsaverage"], rng.integers(1, n + 1, surface.FSAVERAGE_VERTICES)
            )
    with Timer("read the transforms"):
        transforms = surface.load_transforms(paths)
    for interpolation, data in (("cubic", volume), ("linear", volume), ("nearest", volume), ("wta", labels)):
        with Timer(f"one map to fsaverage, {interpolation}"):
            surface.project_volume(data, transforms, NSD_GRID, interpolation=interpolation)
    import resource

    print(
        "  peak RSS of the process so far: "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB"
    )


def toy(folder: Path) -> None:
    with Timer("import nilearn, matplotlib, scipy, nibabel"):
        import matplotlib

        matplotlib.use("Agg")
        for module in ("nibabel", "scipy.ndimage", "nilearn.plotting"):
            importlib.import_module(module)
    from encoding_volumes import ENCODING, write_encoding_volumes

    from brainldm.core import names
    from brainldm.maps import figures as map_specs
    from brainldm.maps import surface
    from brainldm.toy.world import ToyParams, write_toy_world

    print("toy (subject 1; models z, c, zc0.25, zc0.75; 3 U-Net blocks)")
    params = ToyParams()
    write_toy_world(folder / "nsd", folder / "coco", params)
    volumes = write_encoding_volumes(folder / "nsd", 1, folder / "encoding")
    names = names.surface_volume_names(ENCODING)
    outputs = {name: str(folder / "surface" / f"{name}.npz") for name in names}
    with Timer(f"project_to_surface ({len(names)} maps)"):
        surface.project_volumes(
            {n: volumes[n] for n in names},
            outputs,
            surface.transform_paths(folder / "nsd", 1),
            params.grid,
            label_maps=names.label_volume_names(names),
        )
    figures = {name: str(folder / "maps" / f"{name}.png") for name in names.figure_names(ENCODING)}
    with Timer("meshes (first use of nilearn's fsaverage5)"):
        from brainldm.maps.draw import fsaverage5

        fsaverage5()
    with Timer("face_index_raster (once per process: nilearn draws the meshes)"):
        from brainldm.maps.draw import face_index_raster

        face_index_raster(100)
    with Timer(f"plot_cortical_maps ({len(figures)} figures x 5 views)"):
        map_specs.draw_cortical_maps(
            outputs,
            str(folder / "encoding/volumes/unet_best_block.json"),
            ENCODING,
            figures,
            subject="01",
            dpi=100,
        )
    with Timer(f"the same {len(figures)} figures' surfaces drawn by nilearn"):
        nilearn_drawn(
            outputs, str(folder / "encoding/volumes/unet_best_block.json"), ENCODING, folder / "nilearn"
        )
    with Timer("plot_accuracy_density"):
        map_specs.draw_accuracy_density(
            str(volumes["z_r"]),
            str(volumes["c_r"]),
            str(folder / "density.png"),
            x_model="z",
            y_model="c",
            subject="01",
        )
    with Timer("view_surface"):
        map_specs.write_viewer(outputs, str(folder / "viewer.html"), viewer_map="z-c", subject="01")


def nilearn_drawn(surface_paths, block_names_path, encoding, folder: Path) -> None:
    """Each figure's five panels drawn by nilearn itself and saved, as plot_cortical_maps did
    before it painted them through the face raster."""
    import matplotlib.pyplot as plt

    from brainldm.maps import draw as maps
    from brainldm.maps import figures as map_specs
    from brainldm.maps.surface import load_surface_map

    folder.mkdir(parents=True, exist_ok=True)
    surface_maps = {name: load_surface_map(path) for name, path in surface_paths.items()}
    for figure_map in map_specs.figure_maps(
        surface_maps, encoding, map_specs.read_block_names(block_names_path), subject="01"
    ):
        figure = plt.figure(figsize=maps.FIGURE_SIZE, dpi=100)
        maps.draw_with_nilearn(figure_map.values, figure_map.style, figure)
        figure.savefig(folder / f"{figure_map.name}.png", dpi=100)
        plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nsd", action="store_true")
    parser.add_argument("--toy", action="store_true")
    args = parser.parse_args()
    both = not (args.nsd or args.toy)
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="bench_surface-") as tmp:
        if args.nsd or both:
            nsd_size(Path(tmp) / "nsd_size")
        if args.toy or both:
            toy(Path(tmp) / "toy")
    print(f"load average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
