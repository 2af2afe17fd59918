"""The toy world: a small dataset in NSD's exact key layout and formats, with planted truth.

Every stage reads it with the same readers as real NSD (:mod:`brainldm.nsd.layout`). It holds

- procedural stimuli (one object of a shape, colour, size and position on a background) in the
  stimulus brick, each with five COCO-style captions written from its attributes;
- an expdesign .mat and a stim-info CSV with NSD's fields and 1-based conventions;
- per subject: betas sessions (NIfTI and HDF5), ``streams``, ``prf-visualrois`` and
  ``nsdgeneral`` ROI volumes and a brain mask on a small grid, and NSD-format surface
  transforms placing that grid under fsaverage's geometry (:mod:`brainldm.toy.surface`);
- planted ground truth: early voxels have Gaussian receptive fields over the image, ventral
  voxels respond linearly to caption semantics (shape and colour), all other brain voxels are
  noise; ``snr`` scales signal against unit noise. The parameters are written to
  ``planted/subjNN_planted.npz`` beside the data.

Everything is drawn from ``numpy.random.default_rng`` streams seeded by ``seed``.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brainldm.core.atomic import atomic_path, write_text
from brainldm.nsd import layout as nsd
from brainldm.toy.attributes import COLOURS, SHAPES
from brainldm.toy.stimuli import draw_attributes, render_image, write_captions
from brainldm.toy.surface import write_toy_transforms

STREAMS_LABELS = {
    "Unknown": 0,
    "early": 1,
    "midventral": 2,
    "midlateral": 3,
    "midparietal": 4,
    "ventral": 5,
    "lateral": 6,
    "parietal": 7,
}
PRF_LABELS = {"Unknown": 0, "V1v": 1, "V1d": 2, "V2v": 3, "V2d": 4, "V3v": 5, "V3d": 6, "hV4": 7}
VOXEL_CLASS = {"outside": -1, "noise": 0, "early": 1, "ventral": 2}
BETA_GAIN_PERCENT = 2.0  # planted signal and noise amplitude, percent signal change
VOXEL_SIZE_MM = 1.8


@dataclass(frozen=True)
class ToyParams:
    """Sizes of the toy world (config section ``toy``)."""

    n_subjects: int = 2
    n_sessions: int = 5
    trials_per_session: int = 72
    n_shared_images: int = 30
    n_own_images: int = 90
    image_size: int = 64
    grid: tuple[int, int, int] = (20, 24, 18)
    snr: float = 1.0
    seed: int = 0

    @classmethod
    def from_config(cls, toy: dict) -> "ToyParams":
        return cls(**{**toy, "grid": tuple(toy["grid"])})

    @property
    def n_images(self) -> int:
        return self.n_shared_images + self.n_subjects * self.n_own_images


# --------------------------------------------------------------------------- files


def toy_nsd_keys(params: ToyParams) -> list[str]:
    """Every NSD key the toy world writes (relative to its NSD root)."""
    keys = [
        nsd.expdesign_key(),
        nsd.stim_info_key(),
        nsd.stimuli_key(),
        nsd.label_table_key("streams"),
        nsd.label_table_key("prf-visualrois"),
    ]
    for subject in range(1, params.n_subjects + 1):
        for session in range(1, params.n_sessions + 1):
            keys += [nsd.betas_key(subject, session, "nifti"), nsd.betas_key(subject, session, "hdf5")]
        keys += [nsd.roi_key(subject, atlas) for atlas in ("streams", "prf-visualrois", "nsdgeneral")]
        keys += [nsd.brainmask_key(subject), planted_key(subject)]
        keys += nsd.surface_transform_keys(subject)
    keys.append(ATTRIBUTES_KEY)
    return keys


ATTRIBUTES_KEY = "planted/attributes.json"


def planted_key(subject: int) -> str:
    return f"planted/{nsd.subject_dir(subject)}_planted.npz"


# --------------------------------------------------------------------------- design


def make_design(params: ToyParams, rng: np.random.Generator) -> tuple[nsd.ExpDesign, np.ndarray]:
    """NSD-style design: each subject's images shown 3 times in a random order.

    Returns the design (1-based, as stored) and the per-image subject ownership
    ``(n_images, n_subjects)`` bool.
    """
    n_per_subject = params.n_shared_images + params.n_own_images
    n_trials = params.n_sessions * params.trials_per_session
    if n_trials != 3 * n_per_subject:
        raise ValueError(
            f"toy design: {params.n_sessions} sessions x {params.trials_per_session} trials = "
            f"{n_trials}; expected 3 x {n_per_subject} images"
        )
    order = rng.permutation(params.n_images)  # nsdIds in a random order, then dealt out
    shared = np.sort(order[: params.n_shared_images])
    subjectim = np.empty((params.n_subjects, n_per_subject), dtype=np.int64)
    seen = np.zeros((params.n_images, params.n_subjects), dtype=bool)
    for s in range(params.n_subjects):
        start = params.n_shared_images + s * params.n_own_images
        own = np.sort(order[start : start + params.n_own_images])
        subjectim[s] = np.concatenate([shared, own]) + 1
        seen[subjectim[s] - 1, s] = True
    masterordering = rng.permutation(np.repeat(np.arange(1, n_per_subject + 1), 3))
    return nsd.ExpDesign(masterordering.astype(np.int64), subjectim, shared + 1), seen


#: The 116-byte text that opens a MATLAB 5 file; scipy's savemat puts the current date there.
MAT_HEADER_TEXT = b"MATLAB 5.0 MAT-file, Platform: posix, written by the brainldm toy world".ljust(116)


def write_expdesign(path: Path, design: nsd.ExpDesign) -> None:
    """``nsd_expdesign.mat`` (MATLAB 5 format, as NSD's), the same bytes for the same design."""
    import io

    from scipy.io import savemat

    buffer = io.BytesIO()
    # MATLAB shapes as in NSD: masterordering and sharedix are 1 x n rows.
    savemat(
        buffer,
        {
            "masterordering": design.masterordering[None, :].astype(np.float64),
            "subjectim": design.subjectim.astype(np.float64),
            "sharedix": design.sharedix[None, :].astype(np.float64),
        },
    )
    content = MAT_HEADER_TEXT + buffer.getvalue()[len(MAT_HEADER_TEXT) :]
    with atomic_path(path) as tmp:
        tmp.write_bytes(content)


def write_stim_info(
    path: Path, design: nsd.ExpDesign, seen: np.ndarray, coco_ids: np.ndarray, coco_splits: list[str]
) -> None:
    """The stim-info CSV: NSD's columns, a leading unnamed index column, 1-based trial numbers."""
    n_images, n_subjects = seen.shape
    repetitions = np.zeros((n_images, n_subjects, 3), dtype=np.int64)
    for s in range(n_subjects):
        trial_ids = design.trial_nsd_ids(s + 1)
        counts = np.zeros(n_images, dtype=np.int64)
        for trial, nsd_id in enumerate(trial_ids):
            repetitions[nsd_id, s, counts[nsd_id]] = trial + 1
            counts[nsd_id] += 1
    shared = set(design.shared_nsd_ids().tolist())
    header = ["", "cocoId", "cocoSplit", "cropBox", "nsdId", "shared1000"]
    header += [f"subject{s + 1}" for s in range(n_subjects)]
    header += [f"subject{s + 1}_rep{r}" for s in range(n_subjects) for r in range(3)]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for i in range(n_images):
            row = [i, int(coco_ids[i]), coco_splits[i], "(0, 0, 0, 0)", i, i in shared]
            row += [bool(seen[i, s]) for s in range(n_subjects)]
            row += [int(repetitions[i, s, r]) for s in range(n_subjects) for r in range(3)]
            writer.writerow(row)


def write_coco(
    coco_root: Path, coco_ids: np.ndarray, coco_splits: list[str], captions: list[list[str]], image_size: int
) -> None:
    """COCO-format caption JSONs, one per split, as in ``annotations_trainval2017.zip``."""
    annotation_id = 1
    for split, name in (("train2017", nsd.COCO_CAPTION_FILES[0]), ("val2017", nsd.COCO_CAPTION_FILES[1])):
        images, annotations = [], []
        for coco_id, image_split, image_captions in zip(coco_ids, coco_splits, captions):
            if image_split != split:
                continue
            images.append(
                {
                    "id": int(coco_id),
                    "file_name": f"{int(coco_id):012d}.jpg",
                    "height": image_size,
                    "width": image_size,
                }
            )
            for caption in image_captions:
                annotations.append({"image_id": int(coco_id), "id": annotation_id, "caption": caption})
                annotation_id += 1
        document = {
            "info": {"description": "brainldm toy world captions"},
            "licenses": [],
            "images": images,
            "annotations": annotations,
        }
        write_text(coco_root / name, json.dumps(document))


# --------------------------------------------------------------------------- brain


def make_atlases(grid: tuple[int, int, int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Brain mask, ``streams``, ``prf-visualrois`` and ``nsdgeneral`` volumes on ``grid``.

    Posterior slabs (low y) are early visual cortex, split into V1-V3 ventral/dorsal; below them
    (low z, mid y) lies ventral cortex with hV4 at its back; lateral and parietal fill the rest
    of the visual territory; the front of the brain is outside the visual streams.
    """
    x, y, z = (np.arange(n) / (n - 1) for n in grid)
    xx, yy, zz = np.meshgrid(x, y, z, indexing="ij")
    brain = ((xx - 0.5) / 0.48) ** 2 + ((yy - 0.5) / 0.48) ** 2 + ((zz - 0.5) / 0.46) ** 2 <= 1.0
    streams = np.zeros(grid, dtype=np.int16)
    early = brain & (yy < 0.3)
    ventral = brain & (yy >= 0.3) & (yy < 0.6) & (zz < 0.4)
    lateral = brain & (yy >= 0.3) & (yy < 0.6) & (zz >= 0.4) & (np.abs(xx - 0.5) > 0.3)
    parietal = brain & (yy >= 0.3) & (yy < 0.6) & (zz >= 0.7)
    for name, region in (
        ("early", early),
        ("ventral", ventral),
        ("lateral", lateral),
        ("parietal", parietal),
    ):
        streams[region & (streams == 0)] = STREAMS_LABELS[name]
    prf = np.zeros(grid, dtype=np.int16)
    upper = zz >= 0.5
    for index, band in enumerate(((0.0, 0.1), (0.1, 0.2), (0.2, 0.3))):
        in_band = early & (yy >= band[0]) & (yy < band[1])
        prf[in_band & ~upper] = PRF_LABELS[f"V{index + 1}v"]
        prf[in_band & upper] = PRF_LABELS[f"V{index + 1}d"]
    prf[ventral & (yy < 0.38)] = PRF_LABELS["hV4"]
    nsdgeneral = np.where(brain, 0, -1).astype(np.int16)
    nsdgeneral[early | ventral | lateral | parietal] = 1
    return {
        "brainmask": brain.astype(np.int16),
        "streams": streams,
        "prf-visualrois": prf,
        "nsdgeneral": nsdgeneral,
    }


def affine_for(grid: tuple[int, int, int]) -> np.ndarray:
    affine = np.diag([VOXEL_SIZE_MM] * 3 + [1.0])
    affine[:3, 3] = -VOXEL_SIZE_MM * (np.asarray(grid) - 1) / 2
    return affine


def semantic_features(attributes: list[dict[str, str]]) -> np.ndarray:
    """One-hot shape and colour of each image: (n_images, n_shapes + n_colours) float64."""
    colours = tuple(COLOURS)
    features = np.zeros((len(attributes), len(SHAPES) + len(colours)))
    for i, attrs in enumerate(attributes):
        features[i, SHAPES.index(attrs["shape"])] = 1.0
        features[i, len(SHAPES) + colours.index(attrs["colour"])] = 1.0
    return features


def plant_responses(
    images: np.ndarray,
    attributes: list[dict[str, str]],
    atlases: dict[str, np.ndarray],
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Planted, noise-free responses of every brain voxel to every image.

    Returns the planted parameters and ``signal`` (n_images, n_brain_voxels) float64 with unit
    variance over images for early and ventral voxels and zero for noise voxels.
    """
    n_images, size = images.shape[:2]
    brain = atlases["brainmask"].astype(bool)
    streams = atlases["streams"][brain]
    voxel_class = np.full(streams.shape, VOXEL_CLASS["noise"], dtype=np.int8)
    voxel_class[streams == STREAMS_LABELS["early"]] = VOXEL_CLASS["early"]
    voxel_class[streams == STREAMS_LABELS["ventral"]] = VOXEL_CLASS["ventral"]
    n_voxels = brain.sum()

    early = np.flatnonzero(voxel_class == VOXEL_CLASS["early"])
    rf_centre = rng.uniform(0.15, 0.85, size=(early.size, 2))
    rf_sigma = rng.uniform(0.06, 0.2, size=early.size)
    rf_colour = rng.normal(size=(early.size, 3))
    grid = (np.arange(size) + 0.5) / size
    pixels = images.astype(np.float64) / 255.0 - 0.5  # (n, H, W, 3)
    gx = np.exp(-((grid[None, :] - rf_centre[:, :1]) ** 2) / (2 * rf_sigma[:, None] ** 2))  # (v, W)
    gy = np.exp(-((grid[None, :] - rf_centre[:, 1:]) ** 2) / (2 * rf_sigma[:, None] ** 2))  # (v, H)
    weights = gy[:, :, None] * gx[:, None, :]
    weights /= weights.sum(axis=(1, 2), keepdims=True)
    # RF-weighted colour per voxel, (n, v, 3): one matrix product over the pixels
    pooled = np.matmul(weights.reshape(early.size, -1), pixels.reshape(n_images, size * size, 3))
    early_signal = np.einsum("nvc,vc->nv", pooled, rf_colour)

    ventral = np.flatnonzero(voxel_class == VOXEL_CLASS["ventral"])
    semantics = semantic_features(attributes)
    semantic_weights = rng.normal(size=(semantics.shape[1], ventral.size))
    ventral_signal = semantics @ semantic_weights

    signal = np.zeros((n_images, n_voxels))
    for columns, values in ((early, early_signal), (ventral, ventral_signal)):
        values = values - values.mean(axis=0)
        signal[:, columns] = values / np.maximum(values.std(axis=0), 1e-12)
    return {
        "voxel_class": voxel_class,
        "early_voxels": early,
        "rf_centre": rf_centre,
        "rf_sigma": rf_sigma,
        "rf_colour": rf_colour,
        "ventral_voxels": ventral,
        "semantic_weights": semantic_weights,
        "signal": signal,
    }


def write_volume(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    import nibabel as nib

    with atomic_path(path) as tmp:
        nib.save(nib.Nifti1Image(data, affine), str(tmp))


def write_betas(nifti_path: Path, hdf5_path: Path, betas: np.ndarray, affine: np.ndarray) -> None:
    """One session in both NSD formats. ``betas``: (X, Y, Z, n_trials) int16."""
    import h5py

    write_volume(nifti_path, betas, affine)
    with atomic_path(hdf5_path) as tmp, h5py.File(tmp, "w") as handle:
        handle.create_dataset("betas", data=betas.transpose(3, 2, 1, 0))


def write_subject(
    nsd_root: Path,
    subject: int,
    params: ToyParams,
    design: nsd.ExpDesign,
    images: np.ndarray,
    attributes: list[dict[str, str]],
    rng: np.random.Generator,
) -> None:
    atlases = make_atlases(params.grid, rng)
    affine = affine_for(params.grid)
    for atlas in ("streams", "prf-visualrois", "nsdgeneral"):
        write_volume(nsd_root / nsd.roi_key(subject, atlas), atlases[atlas], affine)
    write_volume(nsd_root / nsd.brainmask_key(subject), atlases["brainmask"], affine)

    planted = plant_responses(images, attributes, atlases, rng)
    brain = atlases["brainmask"].astype(bool)
    n_voxels = int(brain.sum())
    trial_ids = design.trial_nsd_ids(subject)
    for session in range(1, params.n_sessions + 1):
        trials = slice((session - 1) * params.trials_per_session, session * params.trials_per_session)
        ids = trial_ids[trials]
        noise = rng.normal(size=(ids.size, n_voxels))
        session_offset = rng.normal(0.0, 0.5, size=n_voxels)
        percent = BETA_GAIN_PERCENT * (params.snr * planted["signal"][ids] + noise) + session_offset
        volume = np.zeros((*params.grid, ids.size), dtype=np.int16)
        volume[brain] = np.clip(np.rint(300.0 * percent), -32768, 32767).astype(np.int16).T
        write_betas(
            nsd_root / nsd.betas_key(subject, session, "nifti"),
            nsd_root / nsd.betas_key(subject, session, "hdf5"),
            volume,
            affine,
        )

    write_toy_transforms(nsd_root, subject, params.grid)

    planted_values = {key: value for key, value in planted.items() if key != "signal"}
    with atomic_path(nsd_root / planted_key(subject)) as tmp:
        np.savez(
            tmp,
            snr=params.snr,
            gain_percent=BETA_GAIN_PERCENT,
            brain_ijk=np.argwhere(brain).astype(np.int32),
            **planted_values,
        )


# --------------------------------------------------------------------------- entry point


@dataclass(frozen=True)
class ToyStimuli:
    """The toy world's stimuli and design, drawn from ``params.seed`` (nsdId = row index).

    Attributes
    ----------
    attributes : list (n_images) of dict
    images : (n_images, image_size, image_size, 3) uint8
    captions : list (n_images) of list of str
    design : brainldm.nsd.layout.ExpDesign
    seen : (n_images, n_subjects) bool
    coco_ids : (n_images,) int64
    coco_splits : list (n_images) of str
    subject_seeds : list of numpy SeedSequence, one per subject (its betas and atlases)
    """

    attributes: list
    images: np.ndarray
    captions: list
    design: nsd.ExpDesign
    seen: np.ndarray
    coco_ids: np.ndarray
    coco_splits: list
    subject_seeds: list

    @property
    def shared_nsd_ids(self) -> np.ndarray:
        """0-based nsdIds of the shared (test) images."""
        return self.design.shared_nsd_ids()


def toy_stimuli(params: ToyParams) -> ToyStimuli:
    """Draw the toy world's stimuli, captions and design without writing anything.

    The same draws as :func:`write_toy_world` (which calls it), so training code can use the
    exact images and captions of a toy world.
    """
    seeds = np.random.SeedSequence(params.seed).spawn(3 + params.n_subjects)
    stimulus_rng, design_rng, caption_rng = (np.random.default_rng(s) for s in seeds[:3])
    attributes = draw_attributes(params.n_images, stimulus_rng)
    images = np.stack([render_image(a, params.image_size, stimulus_rng) for a in attributes])
    design, seen = make_design(params, design_rng)
    coco_ids = 100_000 + design_rng.choice(900_000, size=params.n_images, replace=False)
    coco_splits = ["val2017" if design_rng.random() < 0.2 else "train2017" for _ in range(params.n_images)]
    captions = [write_captions(a, caption_rng) for a in attributes]
    return ToyStimuli(attributes, images, captions, design, seen, coco_ids, coco_splits, list(seeds[3:]))


def write_toy_world(nsd_root: str | Path, coco_root: str | Path, params: ToyParams) -> None:
    """Write the whole toy world: NSD files under ``nsd_root``, caption JSONs under ``coco_root``.

    The same ``params`` (seed included) always give byte-identical arrays.
    """
    import h5py

    nsd_root, coco_root = Path(nsd_root), Path(coco_root)
    world = toy_stimuli(params)
    attributes, images, captions, design, seen = (
        world.attributes,
        world.images,
        world.captions,
        world.design,
        world.seen,
    )
    with atomic_path(nsd_root / nsd.stimuli_key()) as tmp, h5py.File(tmp, "w") as handle:
        handle.create_dataset("imgBrick", data=images, chunks=(1, *images.shape[1:]))

    write_expdesign(nsd_root / nsd.expdesign_key(), design)
    write_stim_info(nsd_root / nsd.stim_info_key(), design, seen, world.coco_ids, world.coco_splits)
    write_coco(coco_root, world.coco_ids, world.coco_splits, captions, params.image_size)
    for atlas, labels in (("streams", STREAMS_LABELS), ("prf-visualrois", PRF_LABELS)):
        write_text(
            nsd_root / nsd.label_table_key(atlas),
            "".join(f"{value} {name}\n" for name, value in labels.items()),
        )

    for subject in range(1, params.n_subjects + 1):
        write_subject(
            nsd_root,
            subject,
            params,
            design,
            images,
            attributes,
            np.random.default_rng(world.subject_seeds[subject - 1]),
        )
    write_text(nsd_root / ATTRIBUTES_KEY, json.dumps(attributes))
