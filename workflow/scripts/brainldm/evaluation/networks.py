"""Feature networks of the field's evaluation, loaded by their standard routes.

- AlexNet (torchvision, IMAGENET1K_V1): ``features.4`` (ReLU after conv2) and ``features.11``
  (ReLU after conv5);
- Inception v3 (torchvision, IMAGENET1K_V1): ``avgpool`` (2048);
- EfficientNet-B1 (torchvision; IMAGENET1K_V2 in MindEye's code, IMAGENET1K_V1 in
  Brain-Diffuser's): ``avgpool`` (1280);
- SwAV ResNet-50 (``torch.hub``, ``facebookresearch/swav:main``, 800-epoch checkpoint):
  ``avgpool`` (2048);
- CLIP ViT-L/14 (``transformers.CLIPVisionModelWithProjection``): the final image embedding
  ``image_embeds`` (768).

A :class:`FeatureNetwork` takes float images (n, 3, H, W) in [0, 1], resizes them to its input
size (bilinear with antialiasing, as torchvision's tensor ``Resize``; no crop), normalises them
(ImageNet mean/std, CLIP's own for CLIP) and returns the flattened outputs of its layers, read
with forward hooks (the values ``torchvision.models.feature_extraction`` would return).

Weights come from the torch hub cache (``$TORCH_HOME/hub``) and the Hugging Face cache
(``$HF_HOME``), downloaded when online. A missing package or weight raises
:class:`ExtractorUnavailable` with one message naming it and how to pre-stage it offline.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:  # annotations only: torch is imported where it is used
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_MODEL_ID = "openai/clip-vit-large-patch14"

#: (torchvision builder, weights version) -> (weights enum, file in $TORCH_HOME/hub/checkpoints)
TORCHVISION_WEIGHTS = {
    ("alexnet", "IMAGENET1K_V1"): ("AlexNet_Weights", "alexnet-owt-7be5be79.pth"),
    ("inception_v3", "IMAGENET1K_V1"): ("Inception_V3_Weights", "inception_v3_google-0cc3c7bd.pth"),
    ("efficientnet_b1", "IMAGENET1K_V1"): (
        "EfficientNet_B1_Weights",
        "efficientnet_b1_rwightman-bac287d4.pth",
    ),
    ("efficientnet_b1", "IMAGENET1K_V2"): ("EfficientNet_B1_Weights", "efficientnet_b1-c27df63c.pth"),
}
SWAV_HUB_REPO = "facebookresearch/swav:main"
SWAV_CHECKPOINT = "swav_800ep_pretrain.pth.tar"

#: Field network -> the layers read from it (module paths; ``image_embeds`` for CLIP).
NETWORK_LAYERS = {
    "alexnet": ("features.4", "features.11"),
    "inception": ("avgpool",),
    "effnet": ("avgpool",),
    "swav": ("avgpool",),
    "clip": ("image_embeds",),
}


class ExtractorUnavailable(RuntimeError):
    """A feature network's package or weights are missing; the message says how to stage them."""


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200] if text else ''}"


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------
def torchvision_help(builder: str, version: str, user: str) -> str:
    """How to install torchvision and pre-stage ``builder``'s ``version`` weights offline."""
    weights, filename = TORCHVISION_WEIGHTS[(builder, version)]
    return (
        f"{user} needs the torchvision package and its {weights}.{version} weights (file {filename}). "
        "Install torchvision matching torch (pip install torchvision==<the release paired with your "
        "torch>; envs/evaluation.yaml pins it), and on an offline node pre-stage the weights: on a "
        'machine with internet run `TORCH_HOME=/shared/torch python -c "import torchvision; '
        f"torchvision.models.{builder}(weights='{version}')\"`, then set TORCH_HOME=/shared/torch for "
        f"the run (the file lies in $TORCH_HOME/hub/checkpoints/{filename})."
    )


def load_torchvision_model(builder: str, version: str = "IMAGENET1K_V1", user: str | None = None):
    """``torchvision.models.<builder>(weights=<Enum>.<version>)`` in eval mode.

    Raises
    ------
    ExtractorUnavailable
        torchvision cannot be imported, or the weights are neither cached nor downloadable.
    """
    user = user or f"network {builder!r}"
    if (builder, version) not in TORCHVISION_WEIGHTS:
        raise ValueError(
            f"no torchvision weights {version!r} known for {builder!r}; expected one of "
            f"{sorted(TORCHVISION_WEIGHTS)}"
        )
    # Imported at run time: only these networks need torchvision; every other metric runs
    # without it, and its absence is reported with the staging instructions.
    try:
        models = importlib.import_module("torchvision.models")
    except (ImportError, RuntimeError) as error:
        raise ExtractorUnavailable(
            torchvision_help(builder, version, user)
            + f" torchvision cannot be imported ({_first_line(error)})."
        ) from None
    import torch

    weights_enum, filename = TORCHVISION_WEIGHTS[(builder, version)]
    try:
        weights = getattr(getattr(models, weights_enum), version)
        return getattr(models, builder)(weights=weights).eval()
    except Exception as error:  # download failures surface as URLError/RuntimeError/OSError
        cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
        raise ExtractorUnavailable(
            torchvision_help(builder, version, user)
            + f" Not found in {cached} and could not be downloaded ({_first_line(error)})."
        ) from None


def swav_help(repo_dir: Path) -> str:
    return (
        f"network 'swav' needs the torch.hub repository {SWAV_HUB_REPO} (looked for in {repo_dir}) and "
        f"its checkpoint {SWAV_CHECKPOINT}, and torchvision (the repository builds torchvision's "
        'resnet50). On a machine with internet run `TORCH_HOME=/shared/torch python -c "import torch; '
        f"torch.hub.load('{SWAV_HUB_REPO}', 'resnet50')\"` (it stores the repository in "
        "$TORCH_HOME/hub/facebookresearch_swav_main and the checkpoint in "
        f"$TORCH_HOME/hub/checkpoints/{SWAV_CHECKPOINT}), copy that folder to the offline node and set "
        "TORCH_HOME=/shared/torch for the run (or evaluation.swav_hub_dir to the repository folder)."
    )


def load_swav(hub_dir: str | Path | None = None):
    """SwAV ResNet-50 through ``torch.hub``, from a staged repository when there is one.

    Parameters
    ----------
    hub_dir : folder holding the ``facebookresearch/swav`` repository (its ``hubconf.py``);
        default ``$TORCH_HOME/hub/facebookresearch_swav_main``, where ``torch.hub`` keeps it.
        Without one there, the repository is fetched from GitHub (online only).
    """
    import torch

    repo_dir = Path(hub_dir) if hub_dir else Path(torch.hub.get_dir()) / "facebookresearch_swav_main"
    try:
        if (repo_dir / "hubconf.py").is_file():
            model = torch.hub.load(str(repo_dir), "resnet50", source="local")
        elif hub_dir:
            raise FileNotFoundError(f"{repo_dir / 'hubconf.py'} does not exist")
        else:
            model = torch.hub.load(SWAV_HUB_REPO, "resnet50", trust_repo=True)
    except Exception as error:  # the hub's code, its imports and downloads can fail in many ways
        raise ExtractorUnavailable(swav_help(repo_dir) + f" Loading failed ({_first_line(error)}).") from None
    return model.eval()


def load_clip_vision(model_id: str = CLIP_MODEL_ID, user: str = "network 'clip'"):
    """``CLIPVisionModelWithProjection.from_pretrained(model_id)`` in eval mode (hub id or folder)."""
    from transformers import CLIPVisionModelWithProjection

    try:
        model = CLIPVisionModelWithProjection.from_pretrained(model_id)
    except (OSError, ValueError) as error:
        raise ExtractorUnavailable(
            f"{user}: cannot load the CLIP vision model {model_id!r} ({_first_line(error)}). On a "
            f"machine with internet pre-stage it with `hf download {model_id}` (Hugging Face cache, "
            "~/.cache/huggingface or $HF_HOME; copy it over and set HF_HUB_OFFLINE=1 on an "
            f"offline node), or `hf download {model_id} --local-dir models/clip-vit-l-14` and "
            "set evaluation.clip_model to that folder."
        ) from None
    return model.eval()


# --------------------------------------------------------------------------------------------
# preprocessing and forward passes
# --------------------------------------------------------------------------------------------
def device_of(device: str | None):
    """``torch.device``: CUDA when available for ``None``/``"auto"``."""
    import torch

    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


#: ``evaluation.network_dtype`` -> torch dtype name of the evaluation networks' weights and inputs.
NETWORK_DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class NetworkPlacement:
    """Where and how an evaluation network runs.

    Attributes
    ----------
    device : torch device name, ``None``/``"auto"`` for CUDA when available
    dtype : ``float32`` (the field's metrics) or ``float16`` (config ``evaluation.network_dtype``;
        changes the features beyond rounding, so it is a named departure)
    channels_last : NHWC layout of convolutional networks (config ``evaluation.channels_last``);
        only the kernels' summation order changes, so it is result-neutral
    gpu_options : apply ``channels_last``; default on a GPU only, so that CPU runs keep their
        bit-exact path (tests turn it on on the CPU to run the GPU's code)
    """

    device: str | None = None
    dtype: str = "float32"
    channels_last: bool = True
    gpu_options: bool | None = None

    def __post_init__(self):
        if self.dtype not in NETWORK_DTYPES:
            raise ValueError(
                f"evaluation network dtype {self.dtype!r} is unknown; expected one of {NETWORK_DTYPES}"
            )

    def place(self, model):
        """``model`` in eval mode on the device, in the dtype and memory layout; returns
        ``(model, torch.device, torch.dtype, memory_format)``, the last three for its inputs."""
        import torch

        device = device_of(self.device)
        dtype = getattr(torch, self.dtype)
        on_gpu = device.type == "cuda" if self.gpu_options is None else self.gpu_options
        layout = torch.channels_last if on_gpu and self.channels_last else torch.contiguous_format
        model = model.eval().to(device=device, dtype=dtype)
        if layout is torch.channels_last:
            model = model.to(memory_format=layout)
        return model, device, dtype, layout


def to_uint8_images(images: Sequence) -> "torch.Tensor":
    """(n, H, W, 3) uint8 images (arrays or a sequence of them) -> (n, 3, H, W) uint8 tensor (on
    the CPU; a GPU is sent these, a quarter of the float bytes)."""
    import torch

    array = (
        np.stack([np.asarray(image) for image in images]) if not isinstance(images, np.ndarray) else images
    )
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[3] != 3:
        raise ValueError(f"images must be (n, H, W, 3) uint8, got {array.dtype} {array.shape}")
    return torch.from_numpy(np.ascontiguousarray(array.transpose(0, 3, 1, 2)))


def to_float_images(images: Sequence) -> "torch.Tensor":
    """(n, H, W, 3) uint8 images (arrays or a sequence of them) -> (n, 3, H, W) float32 in [0, 1]."""
    return to_uint8_images(images).float() / 255.0


def resize_square(images: "torch.Tensor", size: int) -> "torch.Tensor":
    """Bilinear resize of (n, 3, H, W) float images to ``size`` x ``size``, antialiased.

    The same arithmetic as torchvision's ``Resize((size, size), BILINEAR, antialias=True)`` on
    tensors (``torch.nn.functional.interpolate``, ``align_corners=False``).
    """
    import torch.nn.functional as F

    if tuple(images.shape[-2:]) == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


#: The options of :func:`placement_from`.
PLACEMENT_KEYS = ("device", "network_dtype", "channels_last", "gpu_options")


def placement_from(options: dict) -> NetworkPlacement:
    """The :class:`NetworkPlacement` named by the :data:`PLACEMENT_KEYS` of a job's options
    (defaults for the missing ones; other keys are ignored)."""
    return NetworkPlacement(
        device=options.get("device"),
        dtype=options.get("network_dtype", "float32"),
        channels_last=options.get("channels_last", True),
        gpu_options=options.get("gpu_options"),
    )


class FeatureNetwork:
    """A network, the layers read from it, and its input preprocessing.

    Parameters
    ----------
    model : torch.nn.Module
    layers : module paths of the outputs read (``model.get_submodule(layer)``)
    input_size : the square size the images are resized to
    mean, std : per-channel normalisation
    placement : device, dtype and memory layout (default: float32, CUDA when available)
    """

    def __init__(
        self,
        model,
        layers: Sequence[str],
        input_size: int,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        placement: NetworkPlacement | None = None,
    ):
        import torch

        self.torch = torch
        self.model, self.device, self.dtype, self.memory_format = (placement or NetworkPlacement()).place(
            model
        )
        self.layers = tuple(layers)
        self.input_size = int(input_size)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)

    def preprocess(self, images: "torch.Tensor") -> "torch.Tensor":
        """(n, 3, H, W) float in [0, 1], on any device -> resized, normalised (n, 3, size, size)
        float32 on the network's device (a GPU resizes its own inputs)."""
        images = images.to(self.device).float()
        return (resize_square(images, self.input_size) - self.mean) / self.std

    def forward(self, batch: "torch.Tensor") -> dict:
        captured = {}
        hooks = [
            self.model.get_submodule(layer).register_forward_hook(
                lambda _module, _inputs, output, key=layer: captured.__setitem__(key, output.detach().clone())
            )
            for layer in self.layers
        ]
        try:
            self.model(batch)
        finally:
            for hook in hooks:
                hook.remove()
        return captured

    def __call__(self, images: "torch.Tensor") -> dict[str, np.ndarray]:
        """``{layer: (n, d) float32}`` of (n, 3, H, W) float images in [0, 1]."""
        with self.torch.no_grad():
            batch = self.preprocess(images).to(dtype=self.dtype, memory_format=self.memory_format)
            outputs = self.forward(batch)
        return {layer: outputs[layer].flatten(1).float().cpu().numpy() for layer in self.layers}


class ClipNetwork(FeatureNetwork):
    """CLIP's final image embedding (``image_embeds``) of ``CLIPVisionModelWithProjection``."""

    def forward(self, batch):
        return {"image_embeds": self.model(pixel_values=batch).image_embeds}


def build_network(
    name: str,
    *,
    input_size: int,
    effnet_weights: str = "IMAGENET1K_V2",
    clip_model: str = CLIP_MODEL_ID,
    swav_hub_dir: str | None = None,
    model=None,
    **placement_options,
) -> FeatureNetwork:
    """The field network ``name`` (a key of :data:`NETWORK_LAYERS`) at ``input_size`` px.

    ``placement_options`` are those of :func:`placement_from` (``device``, ``network_dtype``,
    ``channels_last``, ``gpu_options``). ``model`` replaces the loaded weights by a given module
    of the same layout (tests).
    """
    if name not in NETWORK_LAYERS:
        raise ValueError(f"feature network {name!r} is unknown; expected one of {sorted(NETWORK_LAYERS)}")
    unknown = sorted(set(placement_options) - set(PLACEMENT_KEYS))
    if unknown:
        raise TypeError(f"build_network got unknown options {unknown}; expected some of {PLACEMENT_KEYS}")
    placement = placement_from(placement_options)
    if model is None:
        if name == "alexnet":
            model = load_torchvision_model("alexnet")
        elif name == "inception":
            model = load_torchvision_model("inception_v3")
        elif name == "effnet":
            model = load_torchvision_model("efficientnet_b1", effnet_weights)
        elif name == "swav":
            model = load_swav(swav_hub_dir)
        else:
            model = load_clip_vision(clip_model)
    if name == "clip":
        return ClipNetwork(model, NETWORK_LAYERS[name], input_size, CLIP_MEAN, CLIP_STD, placement)
    return FeatureNetwork(model, NETWORK_LAYERS[name], input_size, IMAGENET_MEAN, IMAGENET_STD, placement)
