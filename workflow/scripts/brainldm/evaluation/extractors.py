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

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from brainldm.evaluation.networks import (
    CLIP_MODEL_ID,
    ExtractorUnavailable,
    device_of,
    load_clip_vision,
    load_torchvision_model,
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


def load_png(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 of a PNG; a clear error when it is missing."""
    from PIL import Image

    if not Path(path).exists():
        raise FileNotFoundError(f"{path} is missing (an output of rule reconstruct_images)")
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


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
}


def register_extractors(factories: dict[str, Callable[..., FeatureExtractor]]) -> None:
    """Add extractors to :data:`EXTRACTORS` (the toy world adds its own: it is built on the
    production code, never the reverse)."""
    EXTRACTORS.update(factories)


def get_extractor(name: str, **options) -> FeatureExtractor:
    """Build the extractor ``name`` (see :data:`EXTRACTORS`); options: ``device``,
    ``clip_model``, ``pixel_size``, and those of registered extractors."""
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
