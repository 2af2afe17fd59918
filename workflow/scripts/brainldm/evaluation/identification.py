"""Identification accuracy of reconstructions: the paper's protocol and the field's two-way one.

Paper (Takagi & Nishimoto 2023; anchored on the ORIGINAL image): for test image ``i``, with
``m(i, j)`` the mean over image ``j``'s samples of the Pearson r between the features of
original ``i`` and of the sample, the pair (i, j) is correct when ``m(i, i) > m(i, j)``
(strictly: ties fail). Accuracy = mean over ``i`` of the fraction of ``j != i`` that are correct;
chance 0.5.

Field standard (Brain-Diffuser, MindEye; anchored on the RECONSTRUCTION): with
``R[i, j] = r(original_i, reconstruction_j)``, reconstruction ``j`` scores the fraction of
``i != j`` with ``R[i, j] < R[j, j]`` (strictly); accuracy = mean over ``j``. One reconstruction
per image (the first sample).

Features come from the extractors of :mod:`brainldm.evaluation.extractors`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from brainldm.core.tables import summarize_tables
from brainldm.evaluation.extractors import build_extractors, extract_features
from brainldm.linear.stats import pearson_matrix

LOGGER = logging.getLogger("brainldm.evaluation.identification")


# --------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------
def paper_identification(originals: np.ndarray, samples: np.ndarray) -> tuple[float, np.ndarray]:
    """The paper's identification accuracy (anchored on the original image).

    Parameters
    ----------
    originals : (n_images, d) float
        Features of the original test images.
    samples : (n_images, n_samples, d) float
        Features of each image's reconstructions (``samples[j]`` belong to image ``j``).

    Returns
    -------
    accuracy : float
        Mean over images ``i`` of the fraction of ``j != i`` with ``m(i, i) > m(i, j)``, where
        ``m(i, j)`` is the mean Pearson r between original ``i`` and the samples of ``j``.
        Chance is 0.5; ties count as failures.
    per_image : (n_images,) float64
    """
    originals = np.asarray(originals).reshape(len(originals), -1)
    samples = np.asarray(samples)
    if samples.ndim == 2:
        samples = samples[:, None]
    n, k = samples.shape[:2]
    if n != len(originals) or n < 2:
        raise ValueError(
            f"need the same number (>= 2) of originals ({len(originals)}) and sample groups ({n})"
        )
    r = pearson_matrix(originals, samples.reshape(n * k, -1)).reshape(n, n, k)
    m = r.mean(axis=2)  # (i original, j image of the samples)
    own = np.diag(m)
    correct = own[:, None] > m  # strictly better than image j's samples
    np.fill_diagonal(correct, False)
    per_image = correct.sum(1) / (n - 1)
    return float(per_image.mean()), per_image


def two_way_identification(originals: np.ndarray, reconstructions: np.ndarray) -> tuple[float, np.ndarray]:
    """Field-standard two-way identification (Brain-Diffuser / MindEye; anchored on the
    reconstruction).

    Parameters
    ----------
    originals : (n_images, d) float
    reconstructions : (n_images, d) float
        One reconstruction per image, row ``j`` reconstructing image ``j``.

    Returns
    -------
    accuracy : float
        Mean over reconstructions ``j`` of the fraction of ``i != j`` with
        ``r(orig_i, rec_j) < r(orig_j, rec_j)`` (strict; ties fail). Chance 0.5.
    per_image : (n_images,) float64
    """
    n = len(originals)
    if len(reconstructions) != n or n < 2:
        raise ValueError(
            f"need the same number (>= 2) of originals ({n}) and reconstructions ({len(reconstructions)})"
        )
    R = pearson_matrix(originals, reconstructions)  # R[i, j] = r(G_i, P_j)
    own = np.diag(R)
    wins = R < own[None, :]
    np.fill_diagonal(wins, False)
    per_image = wins.sum(0) / (n - 1)
    return float(per_image.mean()), per_image


# --------------------------------------------------------------------------------------------
# a subject's reconstructions
# --------------------------------------------------------------------------------------------
def read_subject_reconstructions(
    shard_dirs: Sequence[str | Path],
    test_ids_path: str | Path,
    stimuli_path: str | Path,
    reconstruction_config: dict,
    *,
    image_size: int,
):
    """What the evaluation rules score for one subject.

    Parameters
    ----------
    shard_dirs : rule reconstruct_images' shard folders (each with its ``manifest.tsv``)
    test_ids_path : ``.npy`` of the test images' nsdIds (int64)
    stimuli_path : the NSD stimulus brick
    reconstruction_config : the validated ``reconstruction`` config section
    image_size : side of the brick's images (``brainldm.nsd.layout.stimulus_image_size``)

    Returns
    -------
    originals : (n_images, H, W, 3) uint8, rows in nsdId order
    nsd_ids : (n_images,) int64
    files : {(nsdId, method, sample): PNG path}
    methods : tuple of str
    samples_per_method : {method: samples per image}
    """
    from brainldm.nsd.layout import read_stimuli
    from brainldm.reconstruction.outputs import read_manifests
    from brainldm.reconstruction.sampler import ReconstructionSettings

    files = read_manifests([Path(shard) / "manifest.tsv" for shard in shard_dirs])
    nsd_ids = np.load(test_ids_path)
    settings = ReconstructionSettings.from_config(reconstruction_config)
    samples = {method: settings.samples_of(method) for method in settings.methods}
    return (
        read_stimuli(stimuli_path, nsd_ids, image_size=image_size),
        nsd_ids,
        files,
        settings.methods,
        samples,
    )


IDENTIFICATION_COLUMNS = ("method", "feature", "accuracy", "n_images", "two_way_accuracy")


def identify_reconstructions(
    originals: np.ndarray,
    nsd_ids: Sequence[int],
    files: dict[tuple[int, str, int], str | Path],
    methods: Sequence[str],
    samples_per_method: dict[str, int],
    extractor_names: Sequence[str],
    *,
    batch_size: int = 16,
    reader_threads: int = 0,
    **options,
) -> list[dict]:
    """Paper and two-way identification of one subject's reconstructions.

    Every extractor is loaded once; each image set (the originals, then each method's samples) is
    read once and fed to all of them batch by batch.

    Parameters
    ----------
    originals : (n_images, H, W, 3) uint8
        The original test images, rows in ``nsd_ids`` order.
    nsd_ids : (n_images,) int
    files : {(nsdId, method, sample): PNG path}
        The reconstructions (``brainldm.reconstruction.outputs.read_manifests``).
    methods : reconstruction methods to score
    samples_per_method : number of samples per image of each method
    extractor_names : names from :data:`EXTRACTORS`
    batch_size : images per forward pass
    reader_threads : threads reading and preparing images ahead of the networks (0: none)
    options : passed to :func:`~brainldm.evaluation.extractors.get_extractor` (``device``,
        ``network_dtype``, ``channels_last``, ``clip_model``, ``pixel_size``)

    Returns
    -------
    rows : list of dict with keys :data:`IDENTIFICATION_COLUMNS`, by extractor, then method,
        then feature
    """
    nsd_ids = [int(n) for n in nsd_ids]
    missing = [
        (n, m, s)
        for m in methods
        for n in nsd_ids
        for s in range(samples_per_method[m])
        if (n, m, s) not in files
    ]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} reconstructions are missing (first: nsdId {missing[0][0]}, method "
            f"{missing[0][1]}, sample {missing[0][2]}); they are outputs of rule reconstruct_images"
        )
    extractors = build_extractors(extractor_names, **options)
    original_features = extract_features(
        list(originals), list(extractors.values()), batch_size, reader_threads
    )
    scores = {}
    for method in methods:
        k = samples_per_method[method]
        paths = [files[(nid, method, s)] for nid in nsd_ids for s in range(k)]
        sample_features = extract_features(paths, list(extractors.values()), batch_size, reader_threads)
        for feature, orig in original_features.items():
            feats = sample_features[feature].reshape(len(nsd_ids), k, -1)
            scores[method, feature] = (
                paper_identification(orig, feats)[0],
                two_way_identification(orig, feats[:, 0])[0],
            )
            LOGGER.info(
                "%s / %s: paper %.4f, two-way %.4f (%d images)",
                method,
                feature,
                *scores[method, feature],
                len(nsd_ids),
            )
    return [
        {
            "method": method,
            "feature": feature,
            "accuracy": scores[method, feature][0],
            "n_images": len(nsd_ids),
            "two_way_accuracy": scores[method, feature][1],
        }
        for extractor in extractors.values()
        for method in methods
        for feature in extractor.names
    ]


SUMMARY_COLUMNS = ("subject",) + IDENTIFICATION_COLUMNS


def summarize_identification(
    paths: Sequence[str | Path], subjects: Sequence[int], out_path: str | Path
) -> None:
    """Per-subject identification tables into one (columns :data:`SUMMARY_COLUMNS`)."""
    summarize_tables(paths, subjects, IDENTIFICATION_COLUMNS, out_path)
