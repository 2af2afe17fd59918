"""The evaluation's real networks with random weights, staged offline where the production code
looks for the published ones.

No published weights can be fetched here, so the real architectures are built at their real sizes,
randomly initialised, and saved where and as the published files would be:

- torchvision's AlexNet, Inception v3 and EfficientNet-B1 (both weight versions): the
  ``state_dict`` in ``$TORCH_HOME/hub/checkpoints`` under the file name of its weights enum's URL
  (torch.hub caches a download under that name and reads a cached file without fetching it);
- SwAV: a ``facebookresearch_swav_main`` hub repository whose ``hubconf.py`` has the published
  one's form (torchvision's ``resnet50``, the 800-epoch checkpoint by URL, its DataParallel
  ``module.`` prefixes stripped, loaded with ``strict=False``) and a checkpoint of the published
  one's form (ResNet-50 trunk, projection head and prototypes, no ``fc``);
- CLIP ViT-L/14: a local model folder in the form of ``openai/clip-vit-large-patch14`` (a two-tower
  ``CLIPModel``) with its published configuration.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import torch

#: (builder, weights enum, version, seed): the torchvision weights the evaluation loads.
TORCHVISION_STAGED = (
    ("alexnet", "AlexNet_Weights", "IMAGENET1K_V1", 1),
    ("inception_v3", "Inception_V3_Weights", "IMAGENET1K_V1", 2),
    ("efficientnet_b1", "EfficientNet_B1_Weights", "IMAGENET1K_V1", 3),
    ("efficientnet_b1", "EfficientNet_B1_Weights", "IMAGENET1K_V2", 4),
)
SWAV_SEED = 5

SWAV_HUBCONF = '''\
import torch
from torchvision.models.resnet import resnet50 as _resnet50

dependencies = ["torch", "torchvision"]


def resnet50(pretrained=True, **kwargs):
    """ResNet-50 with SwAV's 800-epoch weights (this test's stand-in of the published hubconf)."""
    model = _resnet50(pretrained=False, **kwargs)
    if pretrained:
        state_dict = torch.hub.load_state_dict_from_url(
            url="https://dl.fbaipublicfiles.com/deepcluster/swav_800ep_pretrain.pth.tar",
            map_location="cpu",
        )
        # the checkpoint was saved from a DataParallel wrapper
        state_dict = {key.replace("module.", ""): value for key, value in state_dict.items()}
        # it has SwAV's projection head and prototypes, and no classifier
        model.load_state_dict(state_dict, strict=False)
    return model
'''

#: The published configuration of openai/clip-vit-large-patch14 (both towers).
CLIP_VIT_L14_VISION = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 224,
    "patch_size": 14,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
CLIP_VIT_L14_TEXT = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "vocab_size": 49408,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
CLIP_EMBEDDING = 768


def enum_weights(enum_name: str, version: str):
    import torchvision.models

    return getattr(getattr(torchvision.models, enum_name), version)


def checkpoint_name(enum_name: str, version: str) -> str:
    """The file name torch.hub caches the enum's weights under (the last part of its URL)."""
    return Path(urlparse(enum_weights(enum_name, version).url).path).name


def random_torchvision_model(builder: str, seed: int) -> torch.nn.Module:
    """``builder``'s architecture with random weights and the parameters its weights enum loads
    (Inception v3 with its auxiliary classifier, as the published file has it)."""
    import torchvision.models

    torch.manual_seed(seed)
    options = {"aux_logits": True, "init_weights": True} if builder == "inception_v3" else {}
    return getattr(torchvision.models, builder)(weights=None, **options)


def swav_checkpoint(seed: int = SWAV_SEED) -> dict:
    """A random checkpoint of the published SwAV one's form: ``module.``-prefixed ResNet-50
    trunk, projection head (2048 -> 2048 -> 128) and 3000 prototypes; no ``fc``."""
    import torchvision.models

    torch.manual_seed(seed)
    trunk = torchvision.models.resnet50(weights=None).state_dict()
    state = {f"module.{key}": value for key, value in trunk.items() if not key.startswith("fc.")}
    state["module.projection_head.0.weight"] = torch.randn(2048, 2048) * 0.02
    state["module.projection_head.0.bias"] = torch.zeros(2048)
    state["module.projection_head.3.weight"] = torch.randn(128, 2048) * 0.02
    state["module.projection_head.3.bias"] = torch.zeros(128)
    state["module.prototypes.weight"] = torch.randn(3000, 128) * 0.02
    return state


def stage_torch_home(home: Path) -> Path:
    """Write every torchvision checkpoint and the SwAV repository and checkpoint into ``home``
    (a ``$TORCH_HOME``); returns ``home``."""
    from brainldm.evaluation.networks import SWAV_CHECKPOINT

    checkpoints = home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    for builder, enum_name, version, seed in TORCHVISION_STAGED:
        state = random_torchvision_model(builder, seed).state_dict()
        torch.save(state, checkpoints / checkpoint_name(enum_name, version))
    repo = home / "hub" / "facebookresearch_swav_main"
    repo.mkdir()
    (repo / "hubconf.py").write_text(SWAV_HUBCONF)
    torch.save(swav_checkpoint(), checkpoints / SWAV_CHECKPOINT)
    return home


def save_clip(folder: Path, vision_layers: int = 24, text_layers: int = 12, seed: int = 6) -> Path:
    """A random-weight ``CLIPModel`` of ViT-L/14's published configuration, saved to ``folder``;
    fewer transformer layers than published where given (each layer has the published sizes)."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={**CLIP_VIT_L14_TEXT, "num_hidden_layers": text_layers},
        vision_config={**CLIP_VIT_L14_VISION, "num_hidden_layers": vision_layers},
        projection_dim=CLIP_EMBEDDING,
    )
    CLIPModel(config).save_pretrained(folder)
    return folder


# --------------------------------------------------------------------------------------------
# the field's protocol, written out independently of the production code
# --------------------------------------------------------------------------------------------
#: Metric -> (network, output read), as the field's code names them (MindEye's feature extractors).
FIELD_READS = {
    "AlexNet(2)": ("alexnet", "features.4"),
    "AlexNet(5)": ("alexnet", "features.11"),
    "Inception": ("inception", "avgpool"),
    "CLIP": ("clip", "image_embeds"),
    "EffNet-B": ("effnet", "avgpool"),
    "SwAV": ("swav", "avgpool"),
}
FIELD_LAYERS = {
    name: tuple(layer for network, layer in FIELD_READS.values() if network == name)
    for name in ("alexnet", "inception", "effnet", "swav")
}
#: Per protocol: the size every image is resized to first, then each network's input size.
FIELD_SIZES = {
    "mindeye": (256, {"alexnet": 256, "inception": 342, "clip": 224, "effnet": 255, "swav": 224}),
    "brain_diffuser": (224, {"alexnet": 224, "inception": 224, "clip": 224, "effnet": 224, "swav": 224}),
}
FIELD_EFFNET = {"mindeye": "IMAGENET1K_V2", "brain_diffuser": "IMAGENET1K_V1"}
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
OPENAI_CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


def reference_model(name: str, torch_home: Path, effnet_version: str = "IMAGENET1K_V2"):
    """The network ``name`` built without the production loaders: the architecture as the
    published weights expect it, and the staged file read with ``torch.load``."""
    import torchvision.models as models

    checkpoints = torch_home / "hub" / "checkpoints"

    def staged(enum_name, version):
        return torch.load(checkpoints / checkpoint_name(enum_name, version), map_location="cpu")

    if name == "alexnet":
        model = models.alexnet()
        model.load_state_dict(staged("AlexNet_Weights", "IMAGENET1K_V1"))
    elif name == "inception":
        # Google's weights expect inputs scaled to [-1, 1]: transform_input maps ImageNet-normalised
        # inputs there (torchvision sets it for these weights)
        model = models.inception_v3(aux_logits=True, transform_input=True, init_weights=False)
        model.load_state_dict(staged("Inception_V3_Weights", "IMAGENET1K_V1"))
    elif name == "effnet":
        model = models.efficientnet_b1()
        model.load_state_dict(staged("EfficientNet_B1_Weights", effnet_version))
    elif name == "swav":
        model = models.resnet50()
        state = torch.load(checkpoints / "swav_800ep_pretrain.pth.tar", map_location="cpu")
        trunk = {key[len("module.") :]: value for key, value in state.items()}
        trunk = {key: value for key, value in trunk.items() if not key.startswith(("projection", "proto"))}
        missing = model.load_state_dict(trunk, strict=False).missing_keys
        assert sorted(missing) == ["fc.bias", "fc.weight"], missing
    else:
        raise ValueError(name)
    return model.eval()


def reference_features(name: str, model, images, base_size: int, size: int) -> dict:
    """``{layer: (n, d) float32}`` of (n, H, W, 3) uint8 ``images`` by torchvision's own
    transforms (bilinear, antialiased resizes to ``base_size`` then ``size``; no crop) and its
    feature extractor (``clip``: the ``image_embeds`` of a ``CLIPVisionModelWithProjection``)."""
    import numpy as np
    from torchvision.models.feature_extraction import create_feature_extractor
    from torchvision.transforms import v2

    batch = torch.from_numpy(np.ascontiguousarray(np.asarray(images).transpose(0, 3, 1, 2)))
    mean, std = OPENAI_CLIP if name == "clip" else IMAGENET
    transform = v2.Compose(
        [
            v2.ToDtype(torch.float32, scale=True),
            v2.Resize((base_size, base_size), antialias=True),
            v2.Resize((size, size), antialias=True),
            v2.Normalize(mean, std),
        ]
    )
    inputs = transform(batch)
    with torch.no_grad():
        if name == "clip":
            return {"image_embeds": model(pixel_values=inputs).image_embeds.numpy()}
        extractor = create_feature_extractor(model, return_nodes=list(FIELD_LAYERS[name]))
        return {layer: value.flatten(1).numpy() for layer, value in extractor(inputs).items()}


def hide_torchvision(monkeypatch) -> None:
    """Make torchvision unimportable for one test, as where it is not installed: its entries in
    ``sys.modules`` (those an earlier test imported too) become ``None``."""
    import sys

    for name in [name for name in sys.modules if name.split(".")[0] == "torchvision"] + ["torchvision"]:
        monkeypatch.setitem(sys.modules, name, None)
