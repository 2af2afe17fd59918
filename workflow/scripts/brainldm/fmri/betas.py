"""NSD betas session files: headers, voxels read in a stream, and value scaling.

A session is read one trial at a time and only the requested voxels are kept, so memory does not
grow with the file:

- NIfTI (``.nii.gz``/``.nii``) sessions are inflated volume by volume (one trial at a time,
  ~1.4 MB at 1.8 mm) and the voxels are picked from each volume; no full float copy of the
  4-D array is ever made;
- HDF5 sessions are read in blocks of trials.

Values (``value_scaling``): ``raw`` = the stored int16 values as float (percent signal change x
300), the paper's choice; ``percent`` = raw / 300; ``zscore_session`` = each voxel z-scored over
the trials of each session (mean 0, std 1 over the session's trials; a constant voxel becomes 0),
the Brain-Diffuser/MindEye convention. NIfTI ``scl_slope``/``scl_inter`` are applied when set.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brainldm.nsd import layout as nsd

VALUE_SCALINGS = ("raw", "percent", "zscore_session")
PERCENT_SCALE = 300.0  # NSD's int16 betas are percent signal change x 300
BETA_DTYPES = (np.dtype(np.int16), np.dtype(np.float32), np.dtype(np.float64))
_HDF5_BLOCK_BYTES = 64 << 20
_GZIP_CHUNK = 1 << 20
BETAS_HDF5 = "NSD's betas HDF5 (dataset 'betas', (n_trials, Z, Y, X))"


class FMRIDataError(nsd.NSDFormatError):
    """Input data that cannot be prepared; the message names the file and the problem."""


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
        with nsd.open_hdf5(path, BETAS_HDF5) as handle:
            if "betas" not in handle:
                raise FMRIDataError(f"{path}: dataset 'betas' missing; expected {BETAS_HDF5}")
            dataset = handle["betas"]
            shape, dtype = dataset.shape, dataset.dtype
        if len(shape) != 4:
            raise FMRIDataError(f"{path}: 'betas' shape {shape}; expected (n_trials, Z, Y, X)")
        header = BetasHeader(
            path, session, "hdf5", tuple(int(n) for n in shape[:0:-1]), int(shape[0]), np.dtype(dtype), None
        )
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
        header = BetasHeader(
            path,
            session,
            "nifti",
            tuple(int(n) for n in image.shape[:3]),
            int(image.shape[3]),
            np.dtype(proxy.dtype),
            np.asarray(image.affine),
            int(proxy.offset),
            slope,
            inter,
        )
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
                view[filled : filled + len(out)] = out
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
        block = max(1, _HDF5_BLOCK_BYTES // (n_volume * header.dtype.itemsize))
        with nsd.open_hdf5(header.path, BETAS_HDF5) as handle:
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
