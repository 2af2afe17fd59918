"""The Natural Scenes Dataset: where each file lies (its key) and how to read it.

Keys are paths relative to an NSD root, identical to the public bucket's object keys, so one
root may be a full local copy, a partial one, the download cache ``resources/nsd`` or the toy
world ``resources/toy/nsd``. Readers never copy a file and never load more than asked: the
stimulus brick is read row by row, betas one session at a time.

Conventions kept from NSD: the design file is 1-based (MATLAB); ``nsdId`` is 0-based; subjects
are numbered 1..8 and written ``subjNN``.
"""

from __future__ import annotations

import csv
import json
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np

TRIALS_PER_SESSION = 750
#: Side in pixels of NSD's stimulus images (``imgBrick`` is (73000, 425, 425, 3) uint8).
NSD_STIMULUS_SIZE = 425
BETAS_DIR = "nsddata_betas/ppdata/subj{subject:02d}/func1pt8mm/betas_fithrf_GLMdenoise_RR"
COCO_CAPTION_FILES = (
    "annotations/captions_train2017.json",
    "annotations/captions_val2017.json",
)
#: Atlas holding each ROI name that the configuration accepts.
ROI_ATLAS = {
    **{
        name: "streams"
        for name in ("early", "midventral", "midlateral", "midparietal", "ventral", "lateral", "parietal")
    },
    **{name: "prf-visualrois" for name in ("V1v", "V1d", "V2v", "V2d", "V3v", "V3d", "hV4")},
    "nsdgeneral": "nsdgeneral",
    # The whole brain: every voxel of the subject's brain mask, which has a key of its own.
    "brainmask": "brainmask",
}
#: "Atlases" whose ROI is every voxel > 0 of one volume (no label table).
WHOLE_VOLUME_ATLASES = ("nsdgeneral", "brainmask")


class NSDFormatError(ValueError):
    """An NSD file whose content is not what NSD's layout promises."""


def _reason(error: BaseException) -> str:
    """First line of an exception's message, or its type when it has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


@contextmanager
def open_hdf5(path: str | Path, expected: str) -> Iterator:
    """An HDF5 file opened read-only; one that HDF5 cannot open or read raises :class:`NSDFormatError`.

    h5py's own messages (``Unable to synchronously open file (truncated file: eof = ...)``)
    name no file; this one names ``path`` and what was ``expected`` of it. Errors raised while
    the ``with`` body reads the file are named the same way, so the body should only read it.
    """
    import h5py

    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        found = "missing" if not Path(path).is_file() else f"not a readable HDF5 file ({_reason(error)})"
        raise NSDFormatError(f"{path}: {found}; expected {expected}") from error
    try:
        with handle:
            yield handle
    except OSError as error:
        reason = _reason(error)
        raise NSDFormatError(f"{path}: HDF5 data cannot be read ({reason}); expected {expected}") from error


#: What nibabel and the gzip/zlib layers under it raise for a file that is not a readable image:
#: ``ImageFileError`` (no known format), ``EOFError`` (compressed data ends early), ``zlib.error``
#: (corrupt compressed data), ``OSError`` (``gzip.BadGzipFile``, unreadable), ``ValueError``
#: (a header that contradicts itself, or fewer data bytes than it announces).
_IMAGE_READ_ERRORS = (EOFError, zlib.error, OSError, ValueError)


def load_image(path: str | Path, expected: str, dtype: type | None = None) -> tuple[np.ndarray, object]:
    """Read a whole NIfTI or MGH image (``.nii``, ``.nii.gz``, ``.mgz``) and decompress all of it.

    Parameters
    ----------
    path : the image file
    expected : what the caller expects the file to be (for the message)
    dtype : None to return the data as stored, or a float dtype for ``get_fdata(dtype=...)``
        (NIfTI scaling applied)

    Returns
    -------
    data : ndarray, the image's shape
    image : the nibabel image (header, affine)

    Raises
    ------
    NSDFormatError
        The file is missing, is no image nibabel knows, or cannot be decompressed or read to its
        end (a truncated or corrupt ``.gz``/``.mgz``); the message names ``path``.
    """
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError

    if not Path(path).is_file():
        raise NSDFormatError(f"{path}: missing; expected {expected}")
    try:
        image = nib.load(str(path))
        data = np.asarray(image.dataobj) if dtype is None else image.get_fdata(dtype=dtype)
    except (ImageFileError, *_IMAGE_READ_ERRORS) as error:
        raise NSDFormatError(
            f"{path}: cannot be read or decompressed to its end ({type(error).__name__}: {_reason(error)}); "
            f"expected {expected}"
        ) from error
    return data, image


def subject_dir(subject: int) -> str:
    """``subjNN`` for a 1-based subject number."""
    return f"subj{subject:02d}"


def expdesign_key() -> str:
    return "nsddata/experiments/nsd/nsd_expdesign.mat"


def stim_info_key() -> str:
    return "nsddata/experiments/nsd/nsd_stim_info_merged.csv"


def stimuli_key() -> str:
    return "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5"


def betas_key(subject: int, session: int, beta_format: str = "nifti") -> str:
    """Key of one session's single-trial betas (``nifti`` or ``hdf5``)."""
    suffix = {"nifti": "nii.gz", "hdf5": "hdf5"}
    if beta_format not in suffix:
        raise ValueError(f"beta_format {beta_format!r}: expected 'nifti' or 'hdf5'")
    return f"{BETAS_DIR.format(subject=subject)}/betas_session{session:02d}.{suffix[beta_format]}"


def roi_key(subject: int, atlas: str) -> str:
    return f"nsddata/ppdata/{subject_dir(subject)}/func1pt8mm/roi/{atlas}.nii.gz"


def brainmask_key(subject: int) -> str:
    return f"nsddata/ppdata/{subject_dir(subject)}/func1pt8mm/brainmask.nii.gz"


def label_table_key(atlas: str) -> str:
    return f"nsddata/freesurfer/fsaverage/label/{atlas}.mgz.ctab"


#: Hemispheres in the order NSD's transform files and every surface output use.
HEMISPHERES = ("lh", "rh")
#: NSD's three cortical depths (25, 50 and 75 % from white to pial), averaged for surface maps.
CORTICAL_DEPTHS = ("layerB1", "layerB2", "layerB3")


def transforms_dir(subject: int) -> str:
    return f"nsddata/ppdata/{subject_dir(subject)}/transforms"


def layer_transform_key(subject: int, hemi: str, depth: str) -> str:
    """Key of ``?h.func1pt8-to-layerB?.mgz``: per native vertex, 1-based (X, Y, Z) voxel coordinates."""
    return f"{transforms_dir(subject)}/{hemi}.func1pt8-to-{depth}.mgz"


def fsaverage_transform_key(subject: int, hemi: str) -> str:
    """Key of ``?h.white-to-fsaverage.mgz``: per fsaverage vertex, the 1-based native vertex."""
    return f"{transforms_dir(subject)}/{hemi}.white-to-fsaverage.mgz"


def surface_transform_keys(subject: int) -> list[str]:
    """The 8 transform keys mapping one subject's func1pt8mm volume to fsaverage (lh, then rh)."""
    keys = []
    for hemi in HEMISPHERES:
        keys += [layer_transform_key(subject, hemi, depth) for depth in CORTICAL_DEPTHS]
        keys.append(fsaverage_transform_key(subject, hemi))
    return keys


def root_of(path: str | Path, key: str) -> Path:
    """The NSD root that holds ``path`` as ``key`` (``root/key`` -> ``root``)."""
    path = Path(path)
    key_parts = Path(key).parts
    if path.parts[-len(key_parts) :] != key_parts:
        raise ValueError(f"{path} does not end with the NSD key {key}")
    return Path(*path.parts[: -len(key_parts)]) if len(path.parts) > len(key_parts) else Path(".")


def atlases_for(rois: Iterable[str]) -> list[str]:
    """The ROI volumes under ``roi/`` needed for ``rois``, sorted (the brain mask, which every
    subject's preparation reads anyway, is not one of them)."""
    unknown = [roi for roi in rois if roi not in ROI_ATLAS]
    if unknown:
        raise ValueError(f"unknown ROI {unknown[0]!r}: expected one of {sorted(ROI_ATLAS)}")
    return sorted({ROI_ATLAS[roi] for roi in rois} - {"brainmask"})


#: Atlases whose every label the encoding summary reports (one row per label).
ENCODING_SUMMARY_ATLASES = ("streams", "prf-visualrois")


def subject_keys(subject: int, sessions: Sequence[int], beta_format: str, rois: Iterable[str]) -> list[str]:
    """Every key that preparing ``subject`` needs: betas sessions, ROI volumes, brain mask."""
    atlases = atlases_for(rois)
    keys = [betas_key(subject, session, beta_format) for session in sessions]
    keys += [roi_key(subject, atlas) for atlas in atlases]
    keys += [label_table_key(atlas) for atlas in atlases if atlas not in WHOLE_VOLUME_ATLASES]
    keys.append(brainmask_key(subject))
    return keys


# --------------------------------------------------------------------------- design


@dataclass(frozen=True)
class ExpDesign:
    """NSD's experimental design, as stored (1-based values).

    Attributes
    ----------
    masterordering : (n_trials,) int64
        Per trial of the full design, 1-based index into a subject's image list.
    subjectim : (n_subjects, n_subject_images) int64
        Per subject, 1-based 73k ids (nsdId + 1) of its images; the first columns are shared.
    sharedix : (n_shared,) int64
        1-based 73k ids of the shared images.
    """

    masterordering: np.ndarray
    subjectim: np.ndarray
    sharedix: np.ndarray

    @property
    def n_trials(self) -> int:
        return int(self.masterordering.shape[0])

    def trial_nsd_ids(self, subject: int) -> np.ndarray:
        """0-based nsdId of every trial of the design for ``subject``: (n_trials,) int64."""
        if not 1 <= subject <= self.subjectim.shape[0]:
            raise ValueError(f"subject {subject}: the design holds subjects 1..{self.subjectim.shape[0]}")
        return self.subjectim[subject - 1, self.masterordering - 1] - 1

    def shared_nsd_ids(self) -> np.ndarray:
        """0-based nsdIds of the shared images: (n_shared,) int64."""
        return self.sharedix - 1


def read_expdesign(path: str | Path) -> ExpDesign:
    """Read ``nsd_expdesign.mat`` (MATLAB v5) and check its fields.

    Raises
    ------
    NSDFormatError
        The file is not a readable MATLAB file, or a field is missing or not 1-based positive
        integers.
    """
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    try:
        mat = loadmat(path)
    except (MatReadError, ValueError, OSError, TypeError, IndexError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise NSDFormatError(
            f"{path}: not a readable MATLAB file ({reason}); expected NSD's nsd_expdesign.mat"
        ) from error
    fields = {}
    for name in ("masterordering", "subjectim", "sharedix"):
        if name not in mat:
            raise NSDFormatError(f"{path}: field {name!r} missing; expected NSD's expdesign fields")
        values = np.asarray(mat[name])
        if values.size == 0 or values.min() < 1:
            raise NSDFormatError(f"{path}: field {name!r} must hold 1-based ids (>= 1)")
        fields[name] = values.astype(np.int64)
    masterordering = fields["masterordering"].ravel()
    if masterordering.max() > fields["subjectim"].shape[1]:
        raise NSDFormatError(
            f"{path}: masterordering reaches {masterordering.max()} but subjectim has "
            f"{fields['subjectim'].shape[1]} columns"
        )
    return ExpDesign(masterordering, fields["subjectim"], fields["sharedix"].ravel())


def session_of_trial(trial_index: np.ndarray, trials_per_session: int = TRIALS_PER_SESSION) -> np.ndarray:
    """1-based session of 0-based trial indices."""
    return np.asarray(trial_index) // trials_per_session + 1


# --------------------------------------------------------------------------- stimuli


def read_stim_info(path: str | Path) -> dict[str, np.ndarray]:
    """Read ``nsd_stim_info_merged.csv`` into a dict of columns, rows in file order.

    Integer-looking columns become int64, ``True``/``False`` columns bool, others str.
    NSD's leading unnamed index column is dropped.
    """
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        raise NSDFormatError(f"{path}: empty file; expected NSD's stim-info CSV")
    header, body = rows[0], rows[1:]
    for required in ("nsdId", "cocoId", "cocoSplit", "shared1000"):
        if required not in header:
            raise NSDFormatError(f"{path}: column {required!r} missing")
    for line, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise NSDFormatError(
                f"{path}: line {line} has {len(row)} fields; expected {len(header)} as in the header "
                "(a truncated or damaged stim-info CSV)"
            )
    columns: dict[str, np.ndarray] = {}
    for index, name in enumerate(header):
        if name == "":
            continue
        values = [row[index] for row in body]
        columns[name] = _parse_column(values)
    for name in ("nsdId", "cocoId"):
        if columns[name].dtype != np.int64:
            bad = next(str(value) for value in columns[name] if not value.lstrip("-").isdigit())
            raise NSDFormatError(f"{path}: column {name!r} holds {bad!r}; expected integer ids")
    return columns


def _parse_column(values: list[str]) -> np.ndarray:
    if values and all(v in ("True", "False") for v in values):
        return np.array([v == "True" for v in values])
    try:
        return np.array([int(v) for v in values], dtype=np.int64)
    except ValueError:
        return np.array(values, dtype=str)


def _check_brick(handle, path: str | Path, image_size: int):
    """The ``imgBrick`` dataset of an open stimulus file, checked to be (n, size, size, 3) uint8."""
    if "imgBrick" not in handle:
        raise NSDFormatError(f"{path}: dataset 'imgBrick' missing; expected NSD's stimulus brick")
    brick = handle["imgBrick"]
    if brick.ndim != 4 or brick.shape[1:] != (image_size, image_size, 3) or brick.dtype != np.uint8:
        raise NSDFormatError(
            f"{path}: 'imgBrick' is {brick.shape} {brick.dtype}; expected (n, {image_size}, {image_size}, 3) "
            f"uint8 (the dataset's images, {image_size} x {image_size} RGB)"
        )
    return brick


def read_stimuli(path: str | Path, nsd_ids: Sequence[int], *, image_size: int) -> np.ndarray:
    """Read the stimulus images ``nsd_ids`` from the brick, in the order asked.

    Parameters
    ----------
    path : the brick (``nsd_stimuli.hdf5``)
    nsd_ids : (n,) int, 0-based rows
    image_size : the side the dataset's images have (:data:`NSD_STIMULUS_SIZE` on NSD, the toy's
        own on the toy world); a brick of another size or dtype is refused, never resized

    Returns
    -------
    images : (len(nsd_ids), image_size, image_size, 3) uint8
    """
    nsd_ids = np.asarray(nsd_ids, dtype=np.int64)
    with open_hdf5(path, "NSD's stimulus brick (HDF5 with dataset 'imgBrick')") as handle:
        brick = _check_brick(handle, path, image_size)
        if nsd_ids.size and (nsd_ids.min() < 0 or nsd_ids.max() >= brick.shape[0]):
            raise NSDFormatError(
                f"{path}: nsdId out of range 0..{brick.shape[0] - 1}: {nsd_ids.min()}..{nsd_ids.max()}"
            )
        # h5py reads fancy indices only in increasing order: read sorted unique rows, reorder.
        unique, inverse = np.unique(nsd_ids, return_inverse=True)
        rows = brick[unique] if unique.size else np.empty((0, *brick.shape[1:]), brick.dtype)
    return rows[inverse]


class CocoCaptions(dict):
    """``{cocoId: [caption, ...]}`` that remembers the caption files it was read from (``files``)."""

    def __init__(self, by_image: Mapping[int, list[str]], files: Sequence[str | Path]):
        super().__init__(by_image)
        self.files = tuple(str(path) for path in files)


def read_coco_captions(paths: Iterable[str | Path]) -> CocoCaptions:
    """Captions of every COCO image in the caption JSON files, keyed by cocoId.

    Captions of one image keep the order of their annotation ids.
    """
    paths = list(paths)
    by_image: dict[int, list[tuple[int, str]]] = {}
    for path in paths:
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
        except json.JSONDecodeError as error:
            raise NSDFormatError(
                f"{path}: not valid JSON ({error.msg} at line {error.lineno} column {error.colno}); "
                "expected a COCO captions file (captions_*2017.json)"
            ) from error
        except UnicodeDecodeError as error:
            raise NSDFormatError(
                f"{path}: not UTF-8 text ({error.reason} at byte {error.start}); expected a COCO "
                "captions file (captions_*2017.json)"
            ) from error
        if not isinstance(data, dict) or "annotations" not in data:
            raise NSDFormatError(f"{path}: key 'annotations' missing; expected COCO captions JSON")
        for annotation in data["annotations"]:
            by_image.setdefault(int(annotation["image_id"]), []).append(
                (int(annotation["id"]), annotation["caption"].strip())
            )
    return CocoCaptions({image: [c for _, c in sorted(items)] for image, items in by_image.items()}, paths)


def captions_for(
    stim_info: dict[str, np.ndarray], captions: Mapping[int, list[str]], nsd_ids: Sequence[int]
) -> list[list[str]]:
    """Captions of each image ``nsd_ids`` (joined through the stim-info ``cocoId``).

    ``captions`` is :func:`read_coco_captions`' result, whose files a missing caption names.
    """
    position = {int(n): i for i, n in enumerate(stim_info["nsdId"])}
    result = []
    for nsd_id in nsd_ids:
        coco_id = int(stim_info["cocoId"][position[int(nsd_id)]])
        if coco_id not in captions:
            read = (
                "the COCO caption files read: " + ", ".join(captions.files)
                if isinstance(captions, CocoCaptions)
                else "the captions given"
            )
            raise NSDFormatError(
                f"nsdId {nsd_id}: cocoId {coco_id} has no caption in {read}; expected at least one "
                f"annotation with image_id {coco_id}"
            )
        result.append(captions[coco_id])
    return result


# --------------------------------------------------------------------------- volumes


def read_volume(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a 3-D NIfTI volume (ROI, mask): ``(data (X, Y, Z) as stored, affine (4, 4))``."""
    data, image = load_image(path, "a 3-D NIfTI volume (.nii.gz) on the subject's func1pt8mm grid")
    if data.ndim != 3:
        raise NSDFormatError(f"{path}: shape {data.shape}; expected a 3-D volume")
    return data, image.affine


def read_label_table(path: str | Path) -> dict[str, int]:
    """Read a FreeSurfer-style ``.ctab`` (``value name ...`` per line) into ``{name: value}``."""
    table: dict[str, int] = {}
    for line in Path(path).read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].lstrip("-").isdigit():
            table[parts[1]] = int(parts[0])
    if not table:
        raise NSDFormatError(f"{path}: no 'value name' lines; expected a label table")
    return table


def roi_mask(roi: str, atlas_volume: np.ndarray, label_table: dict[str, int] | None) -> np.ndarray:
    """Boolean (X, Y, Z) mask of ``roi`` in its atlas volume.

    ``nsdgeneral`` and ``brainmask`` (``atlas_volume`` is then the brain mask) are ``> 0``; other
    ROIs are the voxels whose value is the label's.
    """
    if roi in WHOLE_VOLUME_ATLASES:
        return atlas_volume > 0
    if label_table is None or roi not in label_table:
        raise NSDFormatError(f"ROI {roi!r} is not in the label table of atlas {ROI_ATLAS.get(roi)!r}")
    return atlas_volume == label_table[roi]


def read_betas_session(path: str | Path) -> np.ndarray:
    """Read one session of single-trial betas as stored, trials first.

    NIfTI files are (X, Y, Z, n_trials); HDF5 files hold ``betas`` as (n_trials, Z, Y, X).
    Both are returned as (n_trials, X, Y, Z) int16 so callers need not care.
    """
    path = Path(path)
    if path.suffix == ".hdf5":
        with open_hdf5(path, "NSD's betas HDF5 (dataset 'betas', (n_trials, Z, Y, X) int16)") as handle:
            if "betas" not in handle:
                raise NSDFormatError(f"{path}: dataset 'betas' missing")
            data = handle["betas"][()]
        data = np.ascontiguousarray(data.transpose(0, 3, 2, 1))
    else:
        data, _ = load_image(path, "NSD's betas NIfTI ((X, Y, Z, n_trials) int16)")
        if data.ndim != 4:
            raise NSDFormatError(f"{path}: shape {data.shape}; expected (X, Y, Z, n_trials)")
        data = np.moveaxis(data, -1, 0)
    if data.dtype != np.int16:
        raise NSDFormatError(f"{path}: dtype {data.dtype}; expected int16 (percent change x 300)")
    return data


def stimulus_image_size(config: dict) -> int:
    """Side in pixels of the dataset's stimulus images: NSD's 425, or the toy's ``toy.image_size``."""
    from brainldm.core.dataset import is_toy

    return config["toy"]["image_size"] if is_toy(config) else NSD_STIMULUS_SIZE
