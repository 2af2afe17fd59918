"""Per-subject fMRI preparation: NSD betas to ROI matrices for the paper's split, streamed.

One subject's sessions are read one at a time; of each session only the voxels of the union of
the requested ROIs are kept, so memory does not grow with the number of sessions:

- NIfTI (``.nii.gz``/``.nii``) sessions are inflated volume by volume (one trial at a time,
  ~1.4 MB at 1.8 mm) and the ROI voxels are picked from each volume; no full float copy of the
  4-D array is ever made;
- HDF5 sessions are read in blocks of trials.

Train rows are appended to their ``.npy`` files as each session is read (their number is known
from the design beforehand). Test repeats are kept (``(n_test_images, n_repeats, n_voxels)``
float32, ~240 MB for 1,000 images x 20,000 voxels) and averaged at the end.

Outputs in ``out_dir`` (``results/<dataset>/subjNN/fmri``) for each ROI:

- ``{roi}_train.npy``: (n_train_trials, n_voxels) float32, rows in trial order;
- ``{roi}_test.npy``: (n_test_images, n_voxels) float32, the mean over each image's repeats,
  rows by ascending nsdId;
- ``{roi}_voxels.npz``: ``ijk`` (n_voxels, 3) int32 voxel indices into the volume (C order, the
  order of ``volume[mask]``), ``shape`` (3,) and ``affine`` (4, 4) of the grid, ``atlas`` and
  ``label`` of the ROI, and per voxel ``split_half_r`` and ``noise_ceiling`` (see below);

and for the subject: ``train_trials.tsv`` (row, nsdId, trial, session; trial = 1-based global
trial number as in NSD's stim-info ``subjectS_repR``), ``test_images.tsv`` (row, nsdId,
n_repeats, trials = the 1-based trial numbers of its repeats) and ``qc.tsv`` (one row per ROI).

Values (``value_scaling``): ``raw`` = the stored int16 values as float (percent signal change x
300), the paper's choice; ``percent`` = raw / 300; ``zscore_session`` = each voxel z-scored over
the trials of each session (mean 0, std 1 over the session's trials; a constant voxel becomes 0),
the Brain-Diffuser/MindEye convention. NIfTI ``scl_slope``/``scl_inter`` are applied when set.

Reliability (QC): for each voxel, the Pearson correlation across test images between the betas
of two presentations of the same image, for each pair of presentations (1st-2nd, 1st-3rd,
2nd-3rd) over the images shown at least that often, averaged with weights = number of images.
This split-half (test-retest) reliability ``r`` of single trials estimates the fraction of a
trial's variance that is signal, so NSD's noise-ceiling SNR is ``ncsnr**2 = r / (1 - r)`` and the
noise ceiling of the averaged test betas, in percent of variance explainable, is

    NC = 100 * ncsnr**2 / (ncsnr**2 + mean_i(1 / n_i))   (r <= 0 gives 0)

where ``n_i`` is the number of repeats averaged for test image ``i`` (all images with 3 repeats:
``NC = 100 * 3r / (1 + 2r)``, the Spearman-Brown formula). It uses the values after
``value_scaling``.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np

from . import nsd
from .atomic import atomic_path
from .split import SubjectSplit, make_split

log = logging.getLogger("brainldm.fmri")

VALUE_SCALINGS = ("raw", "percent", "zscore_session")
PERCENT_SCALE = 300.0  # NSD's int16 betas are percent signal change x 300
BETA_DTYPES = (np.dtype(np.int16), np.dtype(np.float32), np.dtype(np.float64))
AFFINE_TOLERANCE_MM = 1e-3
QC_COLUMNS = (
    "subject", "roi", "atlas", "label", "sessions", "n_sessions", "value_scaling",
    "n_train_trials", "n_train_images", "n_test_trials", "n_test_images",
    "test_repeats_min", "test_repeats_mean", "test_repeats_max", "test_images_by_repeats",
    "n_voxels", "n_voxels_all_zero", "n_voxels_outside_brainmask", "n_reliability_images",
    "split_half_r_median", "split_half_r_mean", "noise_ceiling_median", "noise_ceiling_mean",
)
_HDF5_BLOCK_BYTES = 64 << 20
_GZIP_CHUNK = 1 << 20


class FMRIDataError(nsd.NSDFormatError):
    """Input data that cannot be prepared; the message names the file and the problem."""


def output_names(rois: Sequence[str]) -> list[str]:
    """File names :func:`prepare_subject` writes into its output folder."""
    names = [f"{roi}_{kind}" for roi in rois for kind in ("train.npy", "test.npy", "voxels.npz")]
    return names + ["train_trials.tsv", "test_images.tsv", "qc.tsv"]


# --------------------------------------------------------------------------- betas files


@dataclass(frozen=True)
class BetasHeader:
    """What a betas session file holds, read from its header only.

    Attributes
    ----------
    grid : (3,) tuple of int
        Volume shape (X, Y, Z).
    affine : (4, 4) float64 or None
        Voxel-to-world transform (None for HDF5, which stores none).
    dtype : numpy dtype as stored (byte order included).
    offset : int
        Byte offset of the data (NIfTI).
    slope, inter : float
        NIfTI scaling (1, 0 when unset).
    """

    path: Path
    session: int
    format: str
    grid: tuple[int, int, int]
    n_trials: int
    dtype: np.dtype
    affine: np.ndarray | None
    offset: int = 0
    slope: float = 1.0
    inter: float = 0.0

    @property
    def scaled(self) -> bool:
        return (self.slope, self.inter) != (1.0, 0.0)


def inspect_betas(path: str | Path, session: int = 0) -> BetasHeader:
    """Read the header of one betas session (NIfTI or NSD's HDF5) and check its dtype.

    Raises
    ------
    FMRIDataError
        Missing file, not 4-D, or a dtype other than int16 (NSD) or float32/float64.
    """
    path = Path(path)
    if not path.is_file():
        raise FMRIDataError(f"{path}: betas of session {session} missing")
    if path.suffix == ".hdf5":
        import h5py

        with h5py.File(path, "r") as handle:
            if "betas" not in handle:
                raise FMRIDataError(f"{path}: dataset 'betas' missing; expected NSD's betas HDF5")
            dataset = handle["betas"]
            shape, dtype = dataset.shape, dataset.dtype
        if len(shape) != 4:
            raise FMRIDataError(f"{path}: 'betas' shape {shape}; expected (n_trials, Z, Y, X)")
        header = BetasHeader(path, session, "hdf5", tuple(int(n) for n in shape[:0:-1]),
                             int(shape[0]), np.dtype(dtype), None)
    else:
        import nibabel as nib

        try:
            image = nib.load(str(path))
        except Exception as error:  # nibabel raises several types for unreadable headers
            raise FMRIDataError(f"{path}: not a readable NIfTI file ({error})") from None
        if len(image.shape) != 4:
            raise FMRIDataError(f"{path}: shape {image.shape}; expected (X, Y, Z, n_trials)")
        proxy = image.dataobj
        if getattr(proxy, "order", "F") != "F" or not hasattr(proxy, "offset"):
            raise FMRIDataError(f"{path}: unsupported data layout; expected a NIfTI-1/2 file")
        slope, inter = proxy.slope, proxy.inter
        slope = 1.0 if not np.isfinite(slope) or slope == 0 else float(slope)
        inter = 0.0 if not np.isfinite(inter) else float(inter)
        header = BetasHeader(path, session, "nifti", tuple(int(n) for n in image.shape[:3]),
                             int(image.shape[3]), np.dtype(proxy.dtype), np.asarray(image.affine),
                             int(proxy.offset), slope, inter)
    if header.dtype.newbyteorder("=") not in BETA_DTYPES:
        raise FMRIDataError(
            f"{path}: dtype {header.dtype}; expected int16 (NSD's percent signal change x 300) "
            f"or float32/float64"
        )
    return header


class _GzipStream:
    """Sequential reader of a (multi-member) gzip file that fills caller buffers.

    Inflates with zlib directly (CRC checked by zlib), which is faster than :mod:`gzip`.
    """

    def __init__(self, path: Path):
        self.path = path
        self._file = open(path, "rb")
        self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._pending = b""

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        filled, wanted = 0, len(view)
        try:
            while filled < wanted:
                if not self._pending:
                    self._pending = self._file.read(_GZIP_CHUNK)
                    if not self._pending:
                        break
                out = self._inflate.decompress(self._pending, wanted - filled)
                self._pending = self._inflate.unconsumed_tail
                view[filled:filled + len(out)] = out
                filled += len(out)
                if self._inflate.eof:  # end of a gzip member: another may follow
                    rest = self._inflate.unused_data.lstrip(b"\0")
                    self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
                    self._pending = rest
        except zlib.error as error:
            raise FMRIDataError(f"{self.path}: corrupt gzip data ({error})") from None
        return filled

    def close(self) -> None:
        self._file.close()


class _PlainStream:
    def __init__(self, path: Path):
        self.path = path
        self._file = open(path, "rb", buffering=0)

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        filled = 0
        while filled < len(view):
            n = self._file.readinto(view[filled:])
            if not n:
                break
            filled += n
        return filled

    def close(self) -> None:
        self._file.close()


def read_session_voxels(header: BetasHeader, flat_index: np.ndarray) -> np.ndarray:
    """Read the voxels ``flat_index`` of every trial of one session.

    Parameters
    ----------
    header : BetasHeader
        From :func:`inspect_betas`.
    flat_index : (n_voxels,) int64
        Fortran-order flat indices into the (X, Y, Z) grid (``i + X * (j + Y * k)``), which is
        NIfTI's on-disk order and the C order of HDF5's (Z, Y, X) volumes.

    Returns
    -------
    betas : (n_trials, n_voxels), the file's dtype in native byte order.
    """
    n_volume = int(np.prod(header.grid))
    native = header.dtype.newbyteorder("=")
    out = np.empty((header.n_trials, flat_index.size), dtype=native)
    if header.format == "hdf5":
        import h5py

        block = max(1, _HDF5_BLOCK_BYTES // (n_volume * header.dtype.itemsize))
        with h5py.File(header.path, "r") as handle:
            dataset = handle["betas"]
            for start in range(0, header.n_trials, block):
                stop = min(start + block, header.n_trials)
                out[start:stop] = dataset[start:stop].reshape(stop - start, n_volume)[:, flat_index]
        return out

    gz = header.path.suffix == ".gz"
    stream = _GzipStream(header.path) if gz else _PlainStream(header.path)
    try:
        skip = bytearray(header.offset)
        if stream.readinto(skip) != header.offset:
            raise FMRIDataError(f"{header.path}: file ends inside the header")
        volume = bytearray(n_volume * header.dtype.itemsize)
        values = np.frombuffer(volume, dtype=header.dtype)
        for trial in range(header.n_trials):
            if stream.readinto(volume) != len(volume):
                raise FMRIDataError(
                    f"{header.path}: file ends after {trial} of {header.n_trials} trials (truncated)"
                )
            out[trial] = values[flat_index]
        if gz:  # read to the end so that zlib checks the gzip trailer (CRC, length)
            rest = bytearray(_GZIP_CHUNK)
            while stream.readinto(rest):
                pass
    finally:
        stream.close()
    return out


# --------------------------------------------------------------------------- ROI volumes


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


def _check_same_grid(path: Path, shape, affine, ref_path: Path, ref_shape, ref_affine) -> None:
    if tuple(shape) != tuple(ref_shape):
        raise FMRIDataError(
            f"{path}: grid {tuple(shape)} differs from {ref_path} {tuple(ref_shape)}; betas, ROI "
            f"and brain-mask volumes must share one grid"
        )
    if affine is not None and ref_affine is not None and not np.allclose(
            affine, ref_affine, atol=AFFINE_TOLERANCE_MM):
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


def load_rois(rois: Sequence[str], atlas_paths: Mapping[str, str | Path],
              label_table_paths: Mapping[str, str | Path], brainmask_path: str | Path,
              grid: tuple[int, int, int], affine: np.ndarray | None, grid_source: str | Path) -> RoiSet:
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
        _check_same_grid(Path(atlas_paths[atlas]), data.shape, atlas_affine, ref_path, ref_shape, ref_affine)
        if ref_affine is None:  # HDF5 betas: the first atlas sets the affine
            ref_path, ref_affine = Path(atlas_paths[atlas]), atlas_affine
        volumes[atlas] = data
    brainmask, mask_affine = _read_checked_volume(brainmask_path, "brain mask")
    _check_same_grid(Path(brainmask_path), brainmask.shape, mask_affine, ref_path, ref_shape, ref_affine)
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
                f"{atlas_paths.get(atlas, brainmask_path)}: ROI {roi!r} ({what} of atlas {atlas!r}) has no voxels"
            )
    union = np.logical_or.reduce([masks[roi] for roi in rois])
    ijk = np.argwhere(union).astype(np.int32)
    union_c = np.ravel_multi_index(tuple(ijk.T), union.shape)
    columns = {roi: np.searchsorted(union_c, np.flatnonzero(masks[roi])) for roi in rois}
    in_brain = brainmask[tuple(ijk.T)] > 0
    return RoiSet(rois, tuple(int(n) for n in union.shape), np.asarray(ref_affine, dtype=np.float64),
                  ijk, columns, atlas_of, label_of, in_brain)


# --------------------------------------------------------------------------- values


def scale_session(raw: np.ndarray, header: BetasHeader, value_scaling: str) -> np.ndarray:
    """Turn one session's stored values into the prepared values.

    Parameters
    ----------
    raw : (n_trials, n_voxels) int16/float32/float64, as stored
    header : BetasHeader of the session (NIfTI scaling, file name for messages)
    value_scaling : ``raw``, ``percent`` or ``zscore_session``

    Returns
    -------
    values : (n_trials, n_voxels) float32
    """
    if value_scaling not in VALUE_SCALINGS:
        raise ValueError(f"value_scaling {value_scaling!r}: expected one of {VALUE_SCALINGS}")
    values = raw.astype(np.float32)
    if header.scaled:
        values *= np.float32(header.slope)
        values += np.float32(header.inter)
    if raw.dtype.kind == "f" or header.scaled:
        finite = np.isfinite(values)
        if not finite.all():
            trial, column = np.argwhere(~finite)[0]
            raise FMRIDataError(
                f"{header.path}: {int((~finite).sum())} NaN/inf values among the ROI voxels of "
                f"session {header.session} (first at trial {trial + 1} of the file, ROI-union "
                f"voxel {column})"
            )
    if value_scaling == "percent":
        values /= np.float32(PERCENT_SCALE)
    elif value_scaling == "zscore_session":
        # Moments accumulated in float64; the values are standardised in place (float32).
        mean = values.mean(axis=0, dtype=np.float64)
        std = values.std(axis=0, dtype=np.float64)
        values -= mean.astype(np.float32)
        values *= np.divide(1.0, std, out=np.zeros_like(std), where=std > 0).astype(np.float32)
    return values


# --------------------------------------------------------------------------- repeats


def mean_over_repeats(repeats: np.ndarray, n_repeats: np.ndarray, columns: np.ndarray,
                      block: int = 2048) -> np.ndarray:
    """Average each test image's presentations (float64 sums, in column blocks).

    Parameters
    ----------
    repeats : (n_images, max_repeats, n_voxels) float32, unused slots zero
    n_repeats : (n_images,) int
    columns : (n_selected,) int, voxels to average

    Returns
    -------
    (n_images, n_selected) float32
    """
    out = np.empty((repeats.shape[0], columns.size), dtype=np.float32)
    divisor = np.maximum(n_repeats, 1)[:, None]
    for start in range(0, columns.size, block):
        cols = columns[start:start + block]
        out[:, start:start + cols.size] = repeats[:, :, cols].sum(axis=1, dtype=np.float64) / divisor
    return out


# --------------------------------------------------------------------------- reliability


def split_half_reliability(repeats: np.ndarray, n_repeats: np.ndarray,
                           min_images: int = 3, block: int = 1024) -> tuple[np.ndarray, int]:
    """Per-voxel test-retest reliability of single trials across test images.

    Parameters
    ----------
    repeats : (n_images, max_repeats, n_voxels) float32
        Betas of each presentation of each test image (unused slots ignored).
    n_repeats : (n_images,) int
        Presentations of each image.
    min_images : int
        Fewest images a pair of presentations needs to count.

    Returns
    -------
    r : (n_voxels,) float64
        Weighted mean over presentation pairs of the Pearson correlation across images; NaN where
        no pair has ``min_images`` images or the voxel is constant.
    n_images : int
        Images with at least two presentations.
    """
    n_images, max_repeats, n_voxels = repeats.shape
    r = np.full(n_voxels, np.nan)
    pairs = [(a, b) for a in range(max_repeats) for b in range(a + 1, max_repeats)]
    for start in range(0, n_voxels, block):
        cols = slice(start, min(start + block, n_voxels))
        total = np.zeros(cols.stop - start)
        weight = np.zeros(cols.stop - start)
        for a, b in pairs:
            rows = n_repeats > b
            n = int(rows.sum())
            if n < min_images:
                continue
            x = repeats[rows, a, cols].astype(np.float64)
            y = repeats[rows, b, cols].astype(np.float64)
            x -= x.mean(axis=0)
            y -= y.mean(axis=0)
            denominator = np.sqrt((x * x).sum(axis=0) * (y * y).sum(axis=0))
            valid = denominator > 0
            corr = np.divide((x * y).sum(axis=0), denominator, out=np.zeros_like(denominator), where=valid)
            total += np.where(valid, n * corr, 0.0)
            weight += np.where(valid, n, 0.0)
        r[cols] = np.divide(total, weight, out=np.full_like(total, np.nan), where=weight > 0)
    return r, int((n_repeats >= 2).sum())


def noise_ceiling(r: np.ndarray, n_repeats: np.ndarray) -> np.ndarray:
    """Noise ceiling (percent of variance explainable) of repeat-averaged betas.

    ``NC = 100 * s / (s + mean(1 / n_repeats))`` with ``s = r / (1 - r)`` (NSD's ncsnr squared);
    ``r <= 0`` gives 0, ``r >= 1`` gives 100, NaN stays NaN.

    Parameters
    ----------
    r : (n_voxels,) float64 split-half reliability of single trials
    n_repeats : (n_images,) int, repeats averaged per test image
    """
    counts = np.asarray(n_repeats, dtype=np.float64)
    mean_inverse = float(np.mean(1.0 / counts[counts > 0])) if (counts > 0).any() else np.nan
    r = np.asarray(r, dtype=np.float64)
    clipped = np.clip(r, 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        snr2 = clipped / (1.0 - clipped)
        nc = np.where(clipped >= 1.0, 100.0, 100.0 * snr2 / (snr2 + mean_inverse))
    return np.where(np.isnan(r), np.nan, nc)


# --------------------------------------------------------------------------- preparation


class _NpyAppender:
    """A float32 ``.npy`` of known shape whose rows are appended as they arrive."""

    def __init__(self, path: Path, n_rows: int, n_columns: int):
        self.path, self.n_rows, self.n_columns, self.rows = path, n_rows, n_columns, 0
        self._file = open(path, "wb")
        np.lib.format.write_array_header_1_0(
            self._file, {"descr": "<f4", "fortran_order": False, "shape": (n_rows, n_columns)})

    def append(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype="<f4")
        assert rows.ndim == 2 and rows.shape[1] == self.n_columns, (rows.shape, self.n_columns)
        self._file.write(rows.data)
        self.rows += rows.shape[0]

    def close(self) -> None:
        self._file.close()
        if self.rows != self.n_rows:
            raise RuntimeError(f"{self.path}: wrote {self.rows} rows; expected {self.n_rows}")


def _read_sessions(headers: Sequence[BetasHeader], flat_index: np.ndarray,
                   workers: int) -> Iterator[tuple[BetasHeader, np.ndarray]]:
    """Yield ``(header, raw voxels)`` per session in order, reading up to ``workers`` ahead."""
    if workers <= 1:
        for header in headers:
            yield header, read_session_voxels(header, flat_index)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending = deque()
        upcoming = iter(headers)
        for header in upcoming:
            pending.append((header, pool.submit(read_session_voxels, header, flat_index)))
            if len(pending) == workers:
                break
        while pending:
            header, future = pending.popleft()
            next_header = next(upcoming, None)
            if next_header is not None:
                pending.append((next_header, pool.submit(read_session_voxels, next_header, flat_index)))
            try:
                block = future.result()
            except BaseException:
                for _, other in pending:
                    other.cancel()
                raise
            yield header, block


def _format_sessions(sessions: Sequence[int]) -> str:
    """``1-37`` for a contiguous range, else a comma list."""
    sessions = sorted(sessions)
    if sessions == list(range(sessions[0], sessions[-1] + 1)) and len(sessions) > 1:
        return f"{sessions[0]}-{sessions[-1]}"
    return ",".join(map(str, sessions))


def _write_tsv(path: Path, header: Sequence[str], rows) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _stat(values: np.ndarray, fn) -> str:
    values = values[np.isfinite(values)]
    return f"{fn(values):.4f}" if values.size else "nan"


def prepare_subject(out_dir: str | Path, *, subject: int, sessions: Sequence[int],
                    betas_paths: Sequence[str | Path], expdesign_path: str | Path,
                    atlas_paths: Mapping[str, str | Path], label_table_paths: Mapping[str, str | Path],
                    brainmask_path: str | Path, rois: Sequence[str], value_scaling: str = "raw",
                    trials_per_session: int = nsd.TRIALS_PER_SESSION, workers: int = 1,
                    progress: bool = True) -> list[dict]:
    """Prepare one subject's fMRI: ROI matrices of the paper's split, streamed by session.

    Everything is checked before any betas are read (files present, headers, dtypes, grids,
    ROIs non-empty); NaN/inf values stop the run when met. All outputs are written to temporary
    siblings and renamed only when every one is complete.

    Parameters
    ----------
    out_dir : folder for the outputs (see the module docstring)
    subject : 1-based NSD subject
    sessions : 1-based sessions; ``betas_paths`` holds one file per session, same order
    expdesign_path : ``nsd_expdesign.mat``
    atlas_paths, label_table_paths, brainmask_path : ROI volumes, label tables, brain mask
    rois : ROI names (``streams``/``prf-visualrois`` labels or ``nsdgeneral``)
    value_scaling : ``raw`` (paper), ``percent`` or ``zscore_session``
    trials_per_session : 750 in NSD; each betas file must hold exactly this many trials
    workers : sessions read concurrently (inflating releases the GIL); memory grows by one
        session of ROI voxels (int16) per worker
    progress : show a tqdm bar over sessions

    Returns
    -------
    qc : list of dict, one per ROI, keys :data:`QC_COLUMNS`
    """
    from tqdm import tqdm

    rois = list(dict.fromkeys(rois))
    if value_scaling not in VALUE_SCALINGS:
        raise ValueError(f"value_scaling {value_scaling!r}: expected one of {VALUE_SCALINGS}")
    nsd.atlases_for(rois)  # unknown ROI names fail here
    sessions = [int(s) for s in sessions]
    if len(betas_paths) != len(sessions):
        raise ValueError(f"{len(betas_paths)} betas files for {len(sessions)} sessions; expected one each")
    order = np.argsort(sessions, kind="stable")
    sessions = [sessions[i] for i in order]
    betas_paths = [Path(betas_paths[i]) for i in order]
    out_dir = Path(out_dir)

    missing = [f"{path} (session {s})" for s, path in zip(sessions, betas_paths) if not path.is_file()]
    if missing:
        raise FMRIDataError(f"betas of {len(missing)} session(s) missing: " + "; ".join(missing))
    headers = [inspect_betas(path, s) for s, path in zip(sessions, betas_paths)]
    first = headers[0]
    for header in headers:
        if header.n_trials != trials_per_session:
            raise FMRIDataError(
                f"{header.path}: {header.n_trials} trials; expected {trials_per_session} per session"
            )
        _check_same_grid(header.path, header.grid, header.affine, first.path, first.grid, first.affine)

    design_path = Path(expdesign_path)
    if not design_path.is_file():
        raise FMRIDataError(f"{design_path}: experiment design missing")
    split = make_split(nsd.read_expdesign(design_path), subject, sessions, trials_per_session)
    roiset = load_rois(rois, atlas_paths, label_table_paths, brainmask_path, first.grid,
                       next((h.affine for h in headers if h.affine is not None), None), first.path)
    flat_index = roiset.flat_index
    n_union = flat_index.size
    log.info("subject %02d: %d sessions, %d train trials, %d test images (%d trials); ROI voxels %s "
             "(union %d); values %s", subject, len(sessions), split.n_train_trials,
             split.n_test_images, split.n_test_trials,
             {roi: int(c.size) for roi, c in roiset.columns.items()}, n_union, value_scaling)

    repeats = np.zeros((split.n_test_images, max(split.max_repeats, 1), n_union), dtype=np.float32)
    any_nonzero = np.zeros(n_union, dtype=bool)
    with contextlib.ExitStack() as stack:
        tmp = {name: stack.enter_context(atomic_path(out_dir / name)) for name in output_names(rois)}
        appenders = {roi: _NpyAppender(tmp[f"{roi}_train.npy"], split.n_train_trials, cols.size)
                     for roi, cols in roiset.columns.items()}
        try:
            bar = tqdm(total=len(headers), desc=f"subj{subject:02d} sessions", unit="session",
                       disable=not progress)
            sessions_read = stack.enter_context(
                contextlib.closing(_read_sessions(headers, flat_index, workers)))
            for header, raw in sessions_read:
                positions = split.session_trials(header.session)
                any_nonzero |= (raw != 0).any(axis=0)
                values = scale_session(raw, header, value_scaling)
                del raw
                is_test = split.is_test[positions]
                train_rows = np.flatnonzero(~is_test)
                for roi, cols in roiset.columns.items():
                    appenders[roi].append(values[np.ix_(train_rows, cols)])
                test_positions = positions[is_test]
                repeats[split.test_row[test_positions], split.repeat[test_positions]] = values[is_test]
                del values
                log.info("session %d: %d train trials, %d test trials from %s", header.session,
                         train_rows.size, test_positions.size, header.path)
                bar.update()
            bar.close()
        finally:
            for appender in appenders.values():
                appender._file.close()
        for appender in appenders.values():
            appender.close()

        n_repeats = split.test_repeats
        reliability, n_reliability_images = split_half_reliability(repeats, n_repeats)
        ceiling = noise_ceiling(reliability, n_repeats)

        qc = []
        repeat_histogram = np.bincount(n_repeats, minlength=split.max_repeats + 1)
        for roi, cols in roiset.columns.items():
            np.save(tmp[f"{roi}_test.npy"], mean_over_repeats(repeats, n_repeats, cols))
            np.savez(tmp[f"{roi}_voxels.npz"], ijk=roiset.ijk[cols], shape=np.asarray(roiset.grid),
                     affine=roiset.affine, atlas=np.asarray(roiset.atlas[roi]),
                     label=np.asarray(roiset.label[roi]), split_half_r=reliability[cols],
                     noise_ceiling=ceiling[cols])
            qc.append({
                "subject": f"{subject:02d}", "roi": roi, "atlas": roiset.atlas[roi],
                "label": roiset.label[roi], "sessions": _format_sessions(sessions),
                "n_sessions": len(sessions), "value_scaling": value_scaling,
                "n_train_trials": split.n_train_trials, "n_train_images": split.n_train_images,
                "n_test_trials": split.n_test_trials, "n_test_images": split.n_test_images,
                "test_repeats_min": int(n_repeats.min()) if n_repeats.size else 0,
                "test_repeats_mean": f"{n_repeats.mean():.4f}" if n_repeats.size else "nan",
                "test_repeats_max": int(n_repeats.max(initial=0)),
                "test_images_by_repeats": ",".join(
                    f"{k}:{int(c)}" for k, c in enumerate(repeat_histogram) if k > 0),
                "n_voxels": int(cols.size),
                "n_voxels_all_zero": int((~any_nonzero[cols]).sum()),
                "n_voxels_outside_brainmask": int((~roiset.in_brain[cols]).sum()),
                "n_reliability_images": n_reliability_images,
                "split_half_r_median": _stat(reliability[cols], np.median),
                "split_half_r_mean": _stat(reliability[cols], np.mean),
                "noise_ceiling_median": _stat(ceiling[cols], np.median),
                "noise_ceiling_mean": _stat(ceiling[cols], np.mean),
            })
        train_positions = split.train_trials
        _write_tsv(tmp["train_trials.tsv"], ("row", "nsdId", "trial", "session"),
                   zip(range(train_positions.size), split.nsd_id[train_positions],
                       split.trial_index[train_positions] + 1, split.session[train_positions]))
        trials_of = [[] for _ in range(split.n_test_images)]
        for position in np.flatnonzero(split.is_test):
            trials_of[split.test_row[position]].append(str(split.trial_index[position] + 1))
        _write_tsv(tmp["test_images.tsv"], ("row", "nsdId", "n_repeats", "trials"),
                   ((row, nsd_id, n, ",".join(trials)) for row, (nsd_id, n, trials)
                    in enumerate(zip(split.test_nsd_ids, n_repeats, trials_of))))
        _write_tsv(tmp["qc.tsv"], QC_COLUMNS, ([row[c] for c in QC_COLUMNS] for row in qc))
    for row in qc:
        log.info("QC %s: %d voxels, split-half r median %s, noise ceiling median %s%%", row["roi"],
                 row["n_voxels"], row["split_half_r_median"], row["noise_ceiling_median"])
    return qc


def prepare_subject_from_root(nsd_root: str | Path, out_dir: str | Path, *, subject: int,
                              sessions: Sequence[int], rois: Sequence[str],
                              beta_format: str = "nifti", **options) -> list[dict]:
    """:func:`prepare_subject` with every input at its NSD key under ``nsd_root``."""
    root = Path(nsd_root)
    atlases = nsd.atlases_for(rois)
    return prepare_subject(
        out_dir, subject=subject, sessions=sessions,
        betas_paths=[root / nsd.betas_key(subject, s, beta_format) for s in sessions],
        expdesign_path=root / nsd.expdesign_key(),
        atlas_paths={a: root / nsd.roi_key(subject, a) for a in atlases},
        label_table_paths={a: root / nsd.label_table_key(a) for a in atlases if a not in nsd.WHOLE_VOLUME_ATLASES},
        brainmask_path=root / nsd.brainmask_key(subject), rois=rois, **options)


# --------------------------------------------------------------------------- outputs


def read_tsv(path: str | Path) -> list[dict[str, str]]:
    """Rows of a tab-separated table with a header, as dicts of strings."""
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def load_prepared(fmri_dir: str | Path, roi: str) -> dict[str, np.ndarray]:
    """Read one ROI's prepared data back.

    Returns
    -------
    dict with ``train`` (n_train_trials, n_voxels) float32, ``test`` (n_test_images, n_voxels)
    float32, ``train_nsd_ids`` (n_train_trials,) int64, ``train_trials`` (1-based trial numbers),
    ``train_sessions``, ``test_nsd_ids`` (n_test_images,) int64, ``test_repeats``, ``ijk``,
    ``shape``, ``affine``.
    """
    fmri_dir = Path(fmri_dir)
    train_rows = read_tsv(fmri_dir / "train_trials.tsv")
    test_rows = read_tsv(fmri_dir / "test_images.tsv")
    voxels = np.load(fmri_dir / f"{roi}_voxels.npz")
    return {
        "train": np.load(fmri_dir / f"{roi}_train.npy"),
        "test": np.load(fmri_dir / f"{roi}_test.npy"),
        "train_nsd_ids": np.array([int(r["nsdId"]) for r in train_rows], dtype=np.int64),
        "train_trials": np.array([int(r["trial"]) for r in train_rows], dtype=np.int64),
        "train_sessions": np.array([int(r["session"]) for r in train_rows], dtype=np.int64),
        "test_nsd_ids": np.array([int(r["nsdId"]) for r in test_rows], dtype=np.int64),
        "test_repeats": np.array([int(r["n_repeats"]) for r in test_rows], dtype=np.int64),
        "ijk": voxels["ijk"], "shape": voxels["shape"], "affine": voxels["affine"],
    }


def summarize_qc(qc_paths: Sequence[str | Path], out_path: str | Path) -> list[dict[str, str]]:
    """Concatenate per-subject ``qc.tsv`` tables into one summary (rows by subject, then ROI).

    Raises
    ------
    FMRIDataError
        A table whose columns are not :data:`QC_COLUMNS`.
    """
    rows: list[dict[str, str]] = []
    for path in qc_paths:
        table = read_tsv(path)
        with open(path) as handle:
            header = handle.readline().rstrip("\n").split("\t")
        if tuple(header) != QC_COLUMNS:
            raise FMRIDataError(f"{path}: columns {header}; expected {list(QC_COLUMNS)}")
        rows += table
    rows.sort(key=lambda row: row["subject"])  # stable: ROI order kept within a subject
    with atomic_path(out_path) as tmp:
        _write_tsv(tmp, QC_COLUMNS, ([row[c] for c in QC_COLUMNS] for row in rows))
    return rows
