"""What reconstruction writes: PNGs (in order, optionally on a background thread), the
manifest of each output folder, and the per-subject figure of originals beside reconstructions.

Files: ``<out_dir>/<method>/nsd<nsdId:05d>_s<sample>.png`` (``z`` has one sample, ``s0``) and a
``manifest.tsv`` (nsdId, method, sample, file) per output folder.
"""

from __future__ import annotations

import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np

from brainldm.core.atomic import atomic_path, write_text

LOGGER = logging.getLogger(__name__)


def image_path(out_dir: str | Path, method: str, nsd_id: int, sample: int) -> Path:
    """``<out_dir>/<method>/nsd<nsdId:05d>_s<sample>.png``."""
    return Path(out_dir) / method / f"nsd{int(nsd_id):05d}_s{int(sample)}.png"


def save_png(path: str | Path, image: np.ndarray) -> None:
    """Write an (H, W, 3) uint8 image as PNG atomically."""
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


class PngWriter:
    """Writes PNGs (:func:`save_png`) in order, on one background thread when ``background``.

    The files are the same bytes either way; in the background the next batch runs on the
    device while the previous one is encoded. At most ``max_pending`` images wait in memory;
    :meth:`close` waits for every file and raises the first error of any of them.
    """

    def __init__(self, background: bool, max_pending: int = 64):
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="png") if background else None
        self._pending: deque = deque()
        self._max_pending = max_pending

    def write(self, path: str | Path, image: np.ndarray) -> None:
        """Write (or queue) ``image`` (H, W, 3) uint8 at ``path``; the caller must not change it after."""
        if self._executor is None:
            save_png(path, image)
            return
        self._pending.append(self._executor.submit(save_png, path, image))
        while len(self._pending) > self._max_pending:
            self._pending.popleft().result()

    def close(self) -> None:
        """Wait for every queued file; re-raise the first error."""
        try:
            while self._pending:
                self._pending.popleft().result()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True, cancel_futures=True)


def write_manifest(path: str | Path, manifest: Sequence[tuple[int, str, int, str]]) -> None:
    """``manifest.tsv``: nsdId, method, sample, file (relative to the manifest's folder)."""
    lines = ["nsdId\tmethod\tsample\tfile"] + [f"{n}\t{m}\t{k}\t{f}" for n, m, k, f in manifest]
    write_text(path, "\n".join(lines) + "\n")


def read_manifests(paths: Sequence[str | Path]) -> dict[tuple[int, str, int], Path]:
    """Merge shard manifests: ``{(nsdId, method, sample): absolute PNG path}``."""
    found: dict[tuple[int, str, int], Path] = {}
    for manifest in paths:
        manifest = Path(manifest)
        lines = manifest.read_text().splitlines()
        if not lines or lines[0].split("\t") != ["nsdId", "method", "sample", "file"]:
            raise ValueError(
                f"{manifest}: not a reconstruction manifest (header nsdId, method, sample, file)"
            )
        for line in lines[1:]:
            nid, method, sample, rel = line.split("\t")
            found[(int(nid), method, int(sample))] = manifest.parent / rel
    return found


def figure_rows(n_images: int, n_figure: int) -> np.ndarray:
    """Rows of the test images shown in the figure: ``n_figure`` evenly spaced rows."""
    n_figure = min(n_figure, n_images)
    return np.unique(np.linspace(0, n_images - 1, n_figure).round().astype(int))


def plot_reconstructions(
    originals: np.ndarray,
    nsd_ids: Sequence[int],
    files: dict[tuple[int, str, int], Path],
    methods: Sequence[str],
    out_path: str | Path,
    title: str = "",
) -> None:
    """Figure: one row per image, originals beside the first sample of each method.

    Parameters
    ----------
    originals : (n, H, W, 3) uint8
    nsd_ids : (n,) int
    files : from :func:`read_manifests`
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    columns = ["original", *methods]
    fig, axes = plt.subplots(
        len(nsd_ids), len(columns), figsize=(1.8 * len(columns), 1.8 * len(nsd_ids)), squeeze=False
    )
    for r, (nid, original) in enumerate(zip(nsd_ids, originals)):
        for col, name in enumerate(columns):
            ax = axes[r, col]
            if name == "original":
                image = original
            else:
                key = (int(nid), name, 0)
                if key not in files:
                    raise KeyError(f"no {name} reconstruction of nsdId {nid} in the manifests")
                with Image.open(files[key]) as im:
                    image = np.asarray(im.convert("RGB"))
            ax.imshow(image)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=9)
            if col == 0:
                ax.set_ylabel(f"nsd {nid}", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
