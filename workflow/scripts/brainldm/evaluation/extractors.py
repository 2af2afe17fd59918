"""Feature extractors of the identification: the networks whose features are compared.

:data:`EXTRACTORS` maps a configured name to a factory: ``pixels`` (flattened RGB, for the toy),
``clip`` (CLIP ViT-L/14 image embedding, ``transformers``), ``inception`` (Inception-v3 pooled,
2048) and ``alexnet`` (``features.5``, ``features.12``, ``classifier.5``), the last two from
``torchvision`` with IMAGENET1K_V1 weights; :func:`register_extractors` adds others (the toy
world's ``toy_semantic``, :mod:`brainldm.toy.extractors`). Every network gets the paper's
preprocessing: Resize 299 (shorter side, bilinear) + CenterCrop 299 + ImageNet normalisation.
Missing packages or weights give :class:`ExtractorUnavailable` with how to stage them (loading
code in :mod:`brainldm.evaluation.networks`, shared with the field's eight metrics).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from brainldm.evaluation.batches import prepared_batches
from brainldm.evaluation.networks import (
    CLIP_MODEL_ID,
    ExtractorUnavailable,
    NetworkPlacement,
    load_clip_vision,
    load_torchvision_model,
    placement_from,
)

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
PAPER_CROP = 299


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


#: What an extractor's ``extract`` is fed (its ``input_kind``), made from a batch of (H, W, 3)
#: uint8 images: the images themselves, or the paper's preprocessing (made once per batch for
#: every extractor that takes it).
INPUT_PREPARERS: dict[str, Callable[[list], object]] = {
    "images": lambda images: images,
    "paper": paper_preprocess,
}


def prepare_inputs(images: list, kinds: Sequence[str]) -> dict[str, object]:
    """``{kind: input}`` of one batch for each of ``kinds`` (keys of :data:`INPUT_PREPARERS`)."""
    return {kind: INPUT_PREPARERS[kind](images) for kind in kinds}


# --------------------------------------------------------------------------------------------
# extractors
# --------------------------------------------------------------------------------------------
class FeatureExtractor:
    """Maps images to named feature matrices.

    ``extract`` takes one batch's input of kind ``input_kind`` (:data:`INPUT_PREPARERS`) and
    returns ``{feature name: (n, d) float32}``; calling the extractor runs it over any number of
    images (:func:`extract_features`).
    """

    names: tuple[str, ...] = ()
    input_kind: str = "images"

    def __call__(
        self, images: Sequence, batch_size: int = 16, reader_threads: int = 0
    ) -> dict[str, np.ndarray]:
        """``images``: (H, W, 3) uint8 arrays, PIL images, or PNG paths (read batch by batch)."""
        return extract_features(images, [self], batch_size, reader_threads)

    def extract(self, inputs) -> dict[str, np.ndarray]:
        raise NotImplementedError


def extract_features(
    images: Sequence, extractors: Sequence[FeatureExtractor], batch_size: int = 16, reader_threads: int = 0
) -> dict[str, np.ndarray]:
    """Every feature of every extractor, reading each image and preparing each kind of input
    once per batch for all of them.

    Parameters
    ----------
    images : (H, W, 3) uint8 arrays, PIL images, or PNG paths
    extractors : their feature names must differ
    batch_size : images per batch
    reader_threads : threads that read and prepare batches ahead of the networks
        (:func:`brainldm.evaluation.batches.prepared_batches`)

    Returns
    -------
    {feature name: (n_images, d) float32}
    """
    kinds = tuple(dict.fromkeys(extractor.input_kind for extractor in extractors))
    parts: dict[str, list[np.ndarray]] = {name: [] for extractor in extractors for name in extractor.names}
    batches = prepared_batches(
        images, batch_size, lambda _start, batch: prepare_inputs(batch, kinds), reader_threads
    )
    for _, inputs in batches:
        for extractor in extractors:
            for name, value in extractor.extract(inputs[extractor.input_kind]).items():
                parts[name].append(np.asarray(value, dtype=np.float32).reshape(len(value), -1))
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}


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


class PaperNetworkExtractor(FeatureExtractor):
    """A torch network fed the paper's preprocessing, placed by :class:`NetworkPlacement`."""

    input_kind = "paper"

    def __init__(self, model, placement: NetworkPlacement):
        import torch

        self.torch = torch
        self.model, self.device, self.dtype, self.memory_format = placement.place(model)

    def network_input(self, batch: np.ndarray):
        """The (n, 3, 299, 299) float32 paper batch on the network's device, dtype and layout."""
        return (
            self.torch.from_numpy(batch)
            .to(self.device)
            .to(dtype=self.dtype, memory_format=self.memory_format)
        )


class ClipExtractor(PaperNetworkExtractor):
    """CLIP image embedding (``image_embeds``, 768 for ViT-L/14) of
    ``transformers.CLIPVisionModelWithProjection``.

    Fed the paper's 299 px preprocessing; the ViT's position embeddings are interpolated to the
    299 px patch grid (``interpolate_pos_encoding``).
    """

    names = ("clip",)

    def __init__(self, model_id: str = CLIP_MODEL_ID, placement: NetworkPlacement | None = None, model=None):
        super().__init__(
            model if model is not None else load_clip_vision(model_id, user="feature extractor 'clip'"),
            placement or NetworkPlacement(),
        )

    def extract(self, batch):
        with self.torch.no_grad():
            out = self.model(pixel_values=self.network_input(batch), interpolate_pos_encoding=True)
        return {"clip": out.image_embeds.float().cpu().numpy()}


#: Extractor name -> torchvision builder (IMAGENET1K_V1 weights, as in the paper's evaluation).
TORCHVISION_BUILDERS = {"alexnet": "alexnet", "inception": "inception_v3"}


def _load_torchvision_model(name: str):
    return load_torchvision_model(
        TORCHVISION_BUILDERS[name], "IMAGENET1K_V1", user=f"feature extractor {name!r}"
    )


class AlexNetExtractor(PaperNetworkExtractor):
    """AlexNet (IMAGENET1K_V1) outputs of ``features.5``, ``features.12`` (max-pools) and
    ``classifier.5`` (ReLU after fc7)."""

    names = ("alexnet.features.5", "alexnet.features.12", "alexnet.classifier.5")

    def __init__(self, placement: NetworkPlacement | None = None, model=None):
        super().__init__(
            model if model is not None else _load_torchvision_model("alexnet"),
            placement or NetworkPlacement(),
        )

    def extract(self, batch):
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
                model(self.network_input(batch))
        finally:
            for hook in hooks:
                hook.remove()
        return {key: value.flatten(1).float().cpu().numpy() for key, value in captured.items()}


class InceptionExtractor(PaperNetworkExtractor):
    """Inception-v3 (IMAGENET1K_V1) pooled features (``avgpool``, 2048)."""

    names = ("inception",)

    def __init__(self, placement: NetworkPlacement | None = None, model=None):
        super().__init__(
            model if model is not None else _load_torchvision_model("inception"),
            placement or NetworkPlacement(),
        )

    def extract(self, batch):
        captured = {}
        hook = self.model.avgpool.register_forward_hook(lambda _m, _i, out: captured.__setitem__("x", out))
        try:
            with self.torch.no_grad():
                self.model(self.network_input(batch))
        finally:
            hook.remove()
        return {"inception": captured["x"].flatten(1).float().cpu().numpy()}


#: Registry: configured name -> factory(**options) -> FeatureExtractor.
EXTRACTORS: dict[str, Callable[..., FeatureExtractor]] = {
    "pixels": lambda **kw: PixelExtractor(size=kw.get("pixel_size", 64)),
    "clip": lambda **kw: ClipExtractor(kw.get("clip_model", CLIP_MODEL_ID), placement_from(kw)),
    "alexnet": lambda **kw: AlexNetExtractor(placement_from(kw)),
    "inception": lambda **kw: InceptionExtractor(placement_from(kw)),
}


def register_extractors(factories: dict[str, Callable[..., FeatureExtractor]]) -> None:
    """Add extractors to :data:`EXTRACTORS` (the toy world adds its own: it is built on the
    production code, never the reverse)."""
    EXTRACTORS.update(factories)


def get_extractor(name: str, **options) -> FeatureExtractor:
    """Build the extractor ``name`` (see :data:`EXTRACTORS`); options: those of
    :func:`brainldm.evaluation.networks.placement_from` (``device``, ``network_dtype``,
    ``channels_last``, ``gpu_options``), ``clip_model``, ``pixel_size``, and those of registered
    extractors."""
    if name not in EXTRACTORS:
        raise ValueError(f"feature extractor {name!r} is unknown; expected one of {sorted(EXTRACTORS)}")
    return EXTRACTORS[name](**options)


def build_extractors(names: Sequence[str], **options) -> dict[str, FeatureExtractor]:
    """``{name: extractor}`` of :func:`get_extractor`, each loaded once; every missing package or
    weight is reported together in one :class:`ExtractorUnavailable`."""
    extractors, problems = {}, []
    for name in dict.fromkeys(names):
        try:
            extractors[name] = get_extractor(name, **options)
        except ExtractorUnavailable as error:
            problems.append(str(error))
    if problems:
        raise ExtractorUnavailable("\n".join(problems))
    return extractors
