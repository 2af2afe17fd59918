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

Feature extractors (:data:`EXTRACTORS`, :func:`get_extractor`): ``pixels`` (flattened RGB, for
the toy), ``clip`` (CLIP ViT-L/14 image embedding, ``transformers``), ``inception`` (Inception-v3
pooled, 2048) and ``alexnet`` (``features.5``, ``features.12``, ``classifier.5``), the last two
from ``torchvision`` with IMAGENET1K_V1 weights, and ``toy_semantic`` (the toy world's trained
attribute classifier, :mod:`brainldm.toy.semantic`). Every network gets the paper's preprocessing:
Resize 299 (shorter side, bilinear) + CenterCrop 299 + ImageNet normalisation. Missing packages
or weights give :class:`ExtractorUnavailable` with how to stage them (loading code in
:mod:`brainldm.evaluation.networks`, shared with the field's eight metrics,
:mod:`brainldm.evaluation.evaluate`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from brainldm.core.tables import summarize_tables
from brainldm.evaluation.networks import (
    CLIP_MODEL_ID,
    ExtractorUnavailable,
    device_of,
    load_clip_vision,
    load_torchvision_model,
)
from brainldm.linear.stats import pearson_matrix

LOGGER = logging.getLogger("brainldm.evaluation.identification")

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
PAPER_CROP = 299


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
# preprocessing
# --------------------------------------------------------------------------------------------
def _to_pil(image):
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(
            f"images must be (H, W, 3) uint8 arrays or PIL images, got {array.dtype} {array.shape}"
        )
    return Image.fromarray(array)


def paper_preprocess(images: Sequence, size: int = PAPER_CROP) -> np.ndarray:
    """Resize (shorter side to ``size``, bilinear with antialiasing, as torchvision on PIL) +
    CenterCrop ``size`` + ImageNet normalisation.

    Parameters
    ----------
    images : sequence of (H, W, 3) uint8 arrays or PIL images

    Returns
    -------
    batch : (n, 3, size, size) float32
    """
    from PIL import Image

    out = np.empty((len(images), 3, size, size), dtype=np.float32)
    for index, image in enumerate(images):
        pil = _to_pil(image)
        w, h = pil.size
        scale = size / min(w, h)
        new_w, new_h = (size, max(size, int(h * scale))) if w <= h else (max(size, int(w * scale)), size)
        pil = pil.resize((new_w, new_h), Image.BILINEAR)
        left, top = int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))
        pil = pil.crop((left, top, left + size, top + size))
        array = np.asarray(pil, dtype=np.float32) / 255.0
        out[index] = ((array - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)
    return out


# --------------------------------------------------------------------------------------------
# extractors
# --------------------------------------------------------------------------------------------
class FeatureExtractor:
    """Maps images to named feature matrices.

    Call with a sequence of (H, W, 3) uint8 images; returns ``{feature name: (n, d) float32}``.
    """

    names: tuple[str, ...] = ()

    def __call__(self, images: Sequence, batch_size: int = 16) -> dict[str, np.ndarray]:
        """``images``: (H, W, 3) uint8 arrays, PIL images, or PNG paths (read batch by batch)."""
        parts: dict[str, list[np.ndarray]] = {name: [] for name in self.names}
        for start in range(0, len(images), batch_size):
            batch = [
                load_png(im) if isinstance(im, (str, Path)) else im
                for im in images[start : start + batch_size]
            ]
            for name, value in self.extract(batch).items():
                parts[name].append(np.asarray(value, dtype=np.float32).reshape(len(value), -1))
        return {name: np.concatenate(chunks) for name, chunks in parts.items()}

    def extract(self, images: Sequence) -> dict[str, np.ndarray]:
        raise NotImplementedError


class PixelExtractor(FeatureExtractor):
    """Flattened RGB pixels in [0, 1] after a bilinear resize to ``size`` x ``size``."""

    names = ("pixels",)

    def __init__(self, size: int = 64):
        self.size = size

    def extract(self, images):
        from PIL import Image

        return {
            "pixels": np.stack(
                [
                    np.asarray(_to_pil(im).resize((self.size, self.size), Image.BILINEAR), dtype=np.float32)
                    / 255.0
                    for im in images
                ]
            )
        }


class ClipExtractor(FeatureExtractor):
    """CLIP image embedding (``image_embeds``, 768 for ViT-L/14) of
    ``transformers.CLIPVisionModelWithProjection``.

    Fed the paper's 299 px preprocessing; the ViT's position embeddings are interpolated to the
    299 px patch grid (``interpolate_pos_encoding``).
    """

    names = ("clip",)

    def __init__(self, model_id: str = CLIP_MODEL_ID, device: str | None = None):
        import torch

        self.torch = torch
        self.device = device_of(device)
        self.model = load_clip_vision(model_id, user="feature extractor 'clip'").to(self.device)

    def extract(self, images):
        batch = self.torch.from_numpy(paper_preprocess(images)).to(self.device)
        with self.torch.no_grad():
            out = self.model(pixel_values=batch, interpolate_pos_encoding=True)
        return {"clip": out.image_embeds.float().cpu().numpy()}


#: Extractor name -> torchvision builder (IMAGENET1K_V1 weights, as in the paper's evaluation).
TORCHVISION_BUILDERS = {"alexnet": "alexnet", "inception": "inception_v3"}


def _load_torchvision_model(name: str):
    return load_torchvision_model(
        TORCHVISION_BUILDERS[name], "IMAGENET1K_V1", user=f"feature extractor {name!r}"
    )


class AlexNetExtractor(FeatureExtractor):
    """AlexNet (IMAGENET1K_V1) outputs of ``features.5``, ``features.12`` (max-pools) and
    ``classifier.5`` (ReLU after fc7)."""

    names = ("alexnet.features.5", "alexnet.features.12", "alexnet.classifier.5")

    def __init__(self, device: str | None = None, model=None):
        import torch

        self.torch = torch
        self.device = device_of(device)
        self.model = (
            (model if model is not None else _load_torchvision_model("alexnet")).eval().to(self.device)
        )

    def extract(self, images):
        model = self.model
        captured = {}
        layers = {
            "alexnet.features.5": model.features[5],
            "alexnet.features.12": model.features[12],
            "alexnet.classifier.5": model.classifier[5],
        }
        hooks = [
            module.register_forward_hook(lambda _m, _i, out, key=key: captured.__setitem__(key, out))
            for key, module in layers.items()
        ]
        try:
            with self.torch.no_grad():
                model(self.torch.from_numpy(paper_preprocess(images)).to(self.device))
        finally:
            for hook in hooks:
                hook.remove()
        return {key: value.flatten(1).float().cpu().numpy() for key, value in captured.items()}


class InceptionExtractor(FeatureExtractor):
    """Inception-v3 (IMAGENET1K_V1) pooled features (``avgpool``, 2048)."""

    names = ("inception",)

    def __init__(self, device: str | None = None, model=None):
        import torch

        self.torch = torch
        self.device = device_of(device)
        self.model = (
            (model if model is not None else _load_torchvision_model("inception")).eval().to(self.device)
        )

    def extract(self, images):
        captured = {}
        hook = self.model.avgpool.register_forward_hook(lambda _m, _i, out: captured.__setitem__("x", out))
        try:
            with self.torch.no_grad():
                self.model(self.torch.from_numpy(paper_preprocess(images)).to(self.device))
        finally:
            hook.remove()
        return {"inception": captured["x"].flatten(1).float().cpu().numpy()}


#: Registry: configured name -> factory(**options) -> FeatureExtractor.
EXTRACTORS: dict[str, Callable[..., FeatureExtractor]] = {
    "pixels": lambda **kw: PixelExtractor(size=kw.get("pixel_size", 64)),
    "clip": lambda **kw: ClipExtractor(model_id=kw.get("clip_model", CLIP_MODEL_ID), device=kw.get("device")),
    "alexnet": lambda **kw: AlexNetExtractor(device=kw.get("device")),
    "inception": lambda **kw: InceptionExtractor(device=kw.get("device")),
    "toy_semantic": lambda **kw: _toy_semantic_extractor(kw.get("toy_weights")),
}


def _toy_semantic_extractor(weights_dir=None) -> FeatureExtractor:
    """The toy world's semantic space (:mod:`brainldm.toy.semantic`; imported here, as it
    imports this module)."""
    from brainldm.toy.semantic import ToySemanticExtractor

    return ToySemanticExtractor(weights_dir)


def get_extractor(name: str, **options) -> FeatureExtractor:
    """Build the extractor ``name`` (see :data:`EXTRACTORS`); options: ``device``,
    ``clip_model``, ``pixel_size``, ``toy_weights`` (a toy weights folder; default the shipped one)."""
    if name not in EXTRACTORS:
        raise ValueError(f"feature extractor {name!r} is unknown; expected one of {sorted(EXTRACTORS)}")
    return EXTRACTORS[name](**options)


def check_extractors(names: Sequence[str], **options) -> None:
    """Build each extractor once so that missing packages or weights fail early, together."""
    problems = []
    for name in names:
        try:
            get_extractor(name, **options)
        except ExtractorUnavailable as error:
            problems.append(str(error))
    if problems:
        raise ExtractorUnavailable("\n".join(problems))


# --------------------------------------------------------------------------------------------
# a subject's reconstructions
# --------------------------------------------------------------------------------------------
def load_png(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 of a PNG; a clear error when it is missing."""
    from PIL import Image

    if not Path(path).exists():
        raise FileNotFoundError(f"{path} is missing (an output of rule reconstruct_images)")
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


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
    from brainldm.reconstruction import ReconstructionSettings, read_manifests

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
    **options,
) -> list[dict]:
    """Paper and two-way identification of one subject's reconstructions.

    Parameters
    ----------
    originals : (n_images, H, W, 3) uint8
        The original test images, rows in ``nsd_ids`` order.
    nsd_ids : (n_images,) int
    files : {(nsdId, method, sample): PNG path}
        The reconstructions (``brainldm.reconstruction.read_manifests``).
    methods : reconstruction methods to score
    samples_per_method : number of samples per image of each method
    extractor_names : names from :data:`EXTRACTORS`
    batch_size : images per forward pass
    options : passed to :func:`get_extractor` (``device``, ``clip_model``, ``pixel_size``)

    Returns
    -------
    rows : list of dict with keys :data:`IDENTIFICATION_COLUMNS`
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
    results = []
    for extractor_name in extractor_names:
        extractor = get_extractor(extractor_name, **options)
        original_features = extractor(list(originals), batch_size=batch_size)
        for method in methods:
            k = samples_per_method[method]
            paths = [files[(nid, method, s)] for nid in nsd_ids for s in range(k)]
            sample_features = extractor(paths, batch_size=batch_size)  # PNGs read batch by batch
            for feature, orig in original_features.items():
                feats = sample_features[feature].reshape(len(nsd_ids), k, -1)
                accuracy, _ = paper_identification(orig, feats)
                two_way, _ = two_way_identification(orig, feats[:, 0])
                results.append(
                    {
                        "method": method,
                        "feature": feature,
                        "accuracy": accuracy,
                        "n_images": len(nsd_ids),
                        "two_way_accuracy": two_way,
                    }
                )
                LOGGER.info(
                    "%s / %s: paper %.4f, two-way %.4f (%d images)",
                    method,
                    feature,
                    accuracy,
                    two_way,
                    len(nsd_ids),
                )
    return results


SUMMARY_COLUMNS = ("subject",) + IDENTIFICATION_COLUMNS


def summarize_identification(
    paths: Sequence[str | Path], subjects: Sequence[int], out_path: str | Path
) -> None:
    """Per-subject identification tables into one (columns :data:`SUMMARY_COLUMNS`)."""
    summarize_tables(paths, subjects, IDENTIFICATION_COLUMNS, out_path)
