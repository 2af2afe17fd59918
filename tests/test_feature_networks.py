"""Feature networks of the field's metrics: preprocessing, layers read, loading routes, offline
messages. Real weights cannot be fetched here and torchvision cannot be imported beside this CPU
torch, so tiny networks with the real layer names stand in (tests/tiny_networks.py), and the
torchvision route is exercised through a stand-in ``torchvision.models`` module of the same API."""

from __future__ import annotations

import sys
import types
import urllib.error

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from tiny_networks import tiny_alexnet, tiny_clip_vision, tiny_pooled

from brainldm.evaluation import networks as fn
from brainldm.evaluation.networks import ExtractorUnavailable, build_network, resize_square, to_float_images

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_resize_square_matches_pil_bilinear_on_float_images():
    image = np.random.default_rng(0).random((425, 425)).astype(np.float32)
    batch = torch.from_numpy(np.repeat(image[None, None], 3, axis=1))
    for size in (256, 224, 342, 64):
        pil = np.asarray(Image.fromarray(image, mode="F").resize((size, size), Image.BILINEAR))
        ours = resize_square(batch, size).numpy()
        assert ours.shape == (1, 3, size, size)
        np.testing.assert_allclose(ours[0, 1], pil, atol=1e-4)
    assert resize_square(batch, 425) is batch  # already that size: untouched


def test_to_float_images_scales_and_checks():
    images = np.zeros((2, 4, 5, 3), dtype=np.uint8)
    images[1, :, :, 2] = 255
    tensor = to_float_images(images)
    assert tensor.shape == (2, 3, 4, 5) and tensor.dtype == torch.float32
    assert tensor[1, 2].min() == 1.0 and tensor[1, :2].max() == 0.0 and tensor[0].max() == 0.0
    with pytest.raises(ValueError, match="uint8"):
        to_float_images(images.astype(np.float32))


def test_alexnet_network_reads_features_4_and_11_with_the_real_preprocessing():
    model = tiny_alexnet()
    network = build_network("alexnet", input_size=256, device="cpu", model=model)
    images = to_float_images(random_images(3, 64))
    feats = network(images)
    # 256 px: conv1 (11, stride 4, pad 2) -> 63, pool -> 31, conv2 -> 31 (features.4);
    # pool -> 15, conv3-5 -> 15 (features.11)
    assert feats["features.4"].shape == (3, 6 * 31 * 31)
    assert feats["features.11"].shape == (3, 5 * 15 * 15)
    mean = torch.tensor(fn.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(fn.IMAGENET_STD).view(1, 3, 1, 1)
    x = (
        F.interpolate(images, size=(256, 256), mode="bilinear", align_corners=False, antialias=True) - mean
    ) / std
    with torch.no_grad():
        conv2 = model.features[:5](x.clone())
        conv5 = model.features[:12](x.clone())
    scale = conv2.abs().max().item()
    np.testing.assert_allclose(feats["features.4"], conv2.flatten(1).numpy(), rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(
        feats["features.11"], conv5.flatten(1).numpy(), rtol=0, atol=1e-5 * conv5.abs().max().item()
    )
    assert feats["features.4"].min() >= 0  # the output of the (in-place) ReLU after conv2


def test_pooled_networks_read_avgpool_at_their_input_size():
    model = tiny_pooled()
    seen = []
    model.features.register_forward_pre_hook(lambda _m, inputs: seen.append(tuple(inputs[0].shape)))
    network = build_network("inception", input_size=342, device="cpu", model=model)
    images = to_float_images(random_images(2, 256))
    feats = network(images)["avgpool"]
    assert seen == [(2, 3, 342, 342)]
    assert feats.shape == (2, 6)
    with torch.no_grad():
        direct = model.avgpool(model.features(network.preprocess(images))).flatten(1).numpy()
    np.testing.assert_allclose(feats, direct, rtol=1e-5, atol=1e-6)
    # a grey image normalises to (0.5 - mean) / std in every pixel before the network
    grey = torch.full((1, 3, 20, 20), 0.5)
    expected = (0.5 - np.array(fn.IMAGENET_MEAN)) / np.array(fn.IMAGENET_STD)
    np.testing.assert_allclose(network.preprocess(grey)[0, :, 7, 7].numpy(), expected, rtol=1e-6)


def test_clip_network_gives_image_embeds_with_clip_normalisation():
    model = tiny_clip_vision(224)
    network = build_network("clip", input_size=224, device="cpu", model=model)
    images = to_float_images(random_images(2, 256))
    feats = network(images)["image_embeds"]
    assert feats.shape == (2, 16)
    mean = torch.tensor(fn.CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(fn.CLIP_STD).view(1, 3, 1, 1)
    x = (
        F.interpolate(images, size=(224, 224), mode="bilinear", align_corners=False, antialias=True) - mean
    ) / std
    with torch.no_grad():
        direct = model(pixel_values=x).image_embeds.numpy()
    np.testing.assert_allclose(feats, direct, rtol=1e-4, atol=1e-5)


def fake_torchvision(monkeypatch, fail: Exception | None = None):
    """A stand-in ``torchvision`` with the weights API's names; records what was asked for."""
    calls = []
    models = types.ModuleType("torchvision.models")

    def enum(name):
        return type(
            name, (), {"IMAGENET1K_V1": f"{name}.IMAGENET1K_V1", "IMAGENET1K_V2": f"{name}.IMAGENET1K_V2"}
        )

    def builder(name, factory):
        def build(weights=None):
            calls.append((name, weights))
            if fail is not None:
                raise fail
            return factory()

        return build

    models.AlexNet_Weights = enum("AlexNet_Weights")
    models.Inception_V3_Weights = enum("Inception_V3_Weights")
    models.EfficientNet_B1_Weights = enum("EfficientNet_B1_Weights")
    models.alexnet = builder("alexnet", tiny_alexnet)
    models.inception_v3 = builder("inception_v3", tiny_pooled)
    models.efficientnet_b1 = builder("efficientnet_b1", tiny_pooled)
    package = types.ModuleType("torchvision")
    package.models = models
    monkeypatch.setitem(sys.modules, "torchvision", package)
    monkeypatch.setitem(sys.modules, "torchvision.models", models)
    return calls


def test_torchvision_route_asks_for_the_documented_weights(monkeypatch):
    calls = fake_torchvision(monkeypatch)
    assert build_network("alexnet", input_size=256, device="cpu").layers == ("features.4", "features.11")
    build_network("inception", input_size=342, device="cpu")
    build_network("effnet", input_size=255, device="cpu")  # MindEye's default: V2
    build_network("effnet", input_size=224, device="cpu", effnet_weights="IMAGENET1K_V1")  # Brain-Diffuser
    assert calls == [
        ("alexnet", "AlexNet_Weights.IMAGENET1K_V1"),
        ("inception_v3", "Inception_V3_Weights.IMAGENET1K_V1"),
        ("efficientnet_b1", "EfficientNet_B1_Weights.IMAGENET1K_V2"),
        ("efficientnet_b1", "EfficientNet_B1_Weights.IMAGENET1K_V1"),
    ]


def test_missing_torchvision_or_weights_give_staging_instructions(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # not importable, as on this machine
    with pytest.raises(ExtractorUnavailable) as info:
        build_network("effnet", input_size=255, device="cpu")
    message = str(info.value)
    assert "torchvision" in message and "TORCH_HOME" in message and "efficientnet_b1-c27df63c.pth" in message
    assert "\n" not in message
    fake_torchvision(monkeypatch, fail=urllib.error.URLError("no network"))
    with pytest.raises(ExtractorUnavailable) as info:
        build_network("effnet", input_size=224, device="cpu", effnet_weights="IMAGENET1K_V1")
    message = str(info.value)
    assert "efficientnet_b1_rwightman-bac287d4.pth" in message and "could not be downloaded" in message
    assert "URLError" in message and "TORCH_HOME=/shared/torch" in message


HUBCONF = """
import torch
from torch import nn

dependencies = ["torch"]


class ResNetStandIn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 5, 7, 4, 3)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        return self.fc(torch.flatten(self.avgpool(self.conv1(x)), 1))


def resnet50(pretrained=True, **kwargs):
    model = ResNetStandIn()
    if pretrained:
        state_dict = torch.hub.load_state_dict_from_url(
            url="https://dl.fbaipublicfiles.com/deepcluster/swav_800ep_pretrain.pth.tar", map_location="cpu")
        model.load_state_dict({k.replace("module.", ""): v for k, v in state_dict.items()}, strict=False)
    return model
"""


@pytest.fixture
def staged_torch_home(tmp_path, monkeypatch):
    """$TORCH_HOME with a staged swav repository (hubconf of the real one's form, a stand-in
    ResNet) and its checkpoint where torch.hub keeps it; downloads fail as offline."""
    import torch.hub

    home = tmp_path / "torch"
    repo = home / "hub" / "facebookresearch_swav_main"
    repo.mkdir(parents=True)
    (repo / "hubconf.py").write_text(HUBCONF)
    monkeypatch.setenv("TORCH_HOME", str(home))

    def offline(*_args, **_kwargs):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(torch.hub, "urlopen", offline)
    return home


def test_swav_loads_through_torch_hub_from_the_staged_repository(staged_torch_home):
    torch.manual_seed(1)
    weights = {"module.conv1.weight": torch.randn(5, 3, 7, 7), "module.conv1.bias": torch.randn(5)}
    checkpoints = staged_torch_home / "hub" / "checkpoints"
    checkpoints.mkdir()
    torch.save(weights, checkpoints / fn.SWAV_CHECKPOINT)
    network = build_network("swav", input_size=224, device="cpu")
    torch.testing.assert_close(network.model.conv1.weight, weights["module.conv1.weight"])
    feats = network(to_float_images(random_images(2, 256)))["avgpool"]
    assert feats.shape == (2, 5)


def test_swav_missing_checkpoint_or_repository_names_them(staged_torch_home, tmp_path):
    with pytest.raises(ExtractorUnavailable) as info:
        build_network("swav", input_size=224, device="cpu")  # repository staged, checkpoint not
    message = str(info.value)
    assert (
        fn.SWAV_CHECKPOINT in message and "TORCH_HOME" in message and "facebookresearch/swav:main" in message
    )
    assert "URLError" in message
    with pytest.raises(ExtractorUnavailable, match="hubconf.py does not exist"):
        build_network("swav", input_size=224, device="cpu", swav_hub_dir=str(tmp_path / "nowhere"))


def test_clip_missing_names_the_model_and_hf_staging(tmp_path):
    with pytest.raises(ExtractorUnavailable) as info:
        build_network("clip", input_size=224, device="cpu", clip_model=str(tmp_path / "no" / "clip"))
    message = str(info.value)
    assert "hf download" in message and "HF_HOME" in message and "HF_HUB_OFFLINE" in message
    assert str(tmp_path / "no" / "clip") in message


def test_unknown_network_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown; expected one of"):
        build_network("vgg", input_size=224)
