"""Feature networks of the field's metrics: the real torchvision architectures, SwAV's hub entry and
CLIP ViT-L/14's published configuration, with random weights staged offline where the published
files would be (tests/field_networks.py), loaded by the production routes; their layers, shapes,
preprocessing and batching, and the offline messages."""

from __future__ import annotations

import urllib.error

import numpy as np
import pytest
import torch
from field_networks import (
    CLIP_EMBEDDING,
    CLIP_VIT_L14_VISION,
    FIELD_SIZES,
    SWAV_HUBCONF,
    TORCHVISION_STAGED,
    checkpoint_name,
    enum_weights,
    hide_torchvision,
    reference_features,
    reference_model,
    swav_checkpoint,
)
from PIL import Image

from brainldm.evaluation import networks as fn
from brainldm.evaluation.networks import ExtractorUnavailable, build_network, resize_square, to_float_images

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TORCHVISION_NETWORKS = {"alexnet": "alexnet", "inception": "inception_v3", "effnet": "efficientnet_b1"}


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


def test_staging_instructions_name_the_files_the_weights_enums_use():
    """Each (builder, version) the evaluation loads names the weights enum torchvision has, and the
    file its URL is cached under; the staging command's string form resolves to that enum."""
    assert sorted(fn.TORCHVISION_WEIGHTS) == sorted((b, v) for b, _, v, _ in TORCHVISION_STAGED)
    for (builder, version), (enum_name, filename) in fn.TORCHVISION_WEIGHTS.items():
        weights = enum_weights(enum_name, version)
        assert filename == checkpoint_name(enum_name, version), (builder, version)
        assert type(weights).verify(version) is weights  # `torchvision.models.<builder>(weights='<version>')`
        message = fn.torchvision_help(builder, version, "test")
        assert f"$TORCH_HOME/hub/checkpoints/{filename}" in message
        assert f"torchvision.models.{builder}(weights='{version}')" in message


@pytest.fixture(scope="module")
def loaded(offline_field_networks, skinny_clip_dir) -> dict:
    """The five networks, each loaded once by its production route (staged files, offline)."""
    return {
        "alexnet": fn.load_torchvision_model("alexnet"),
        "inception": fn.load_torchvision_model("inception_v3"),
        "effnet": fn.load_torchvision_model("efficientnet_b1", "IMAGENET1K_V2"),
        "swav": fn.load_swav(),
        "clip": fn.load_clip_vision(str(skinny_clip_dir)),
    }


def test_torchvision_route_loads_the_staged_file_of_each_enum(offline_field_networks, loaded):
    """``weights=<Enum>.<version>`` reads exactly the staged file (V1 and V2 of EfficientNet-B1
    differ); Inception gets the input transform its Google weights expect."""
    checkpoints = offline_field_networks / "hub" / "checkpoints"
    for name, builder in TORCHVISION_NETWORKS.items():
        versions = ["IMAGENET1K_V1", "IMAGENET1K_V2"] if name == "effnet" else ["IMAGENET1K_V1"]
        for version in versions:
            model = loaded[name] if version == versions[-1] else fn.load_torchvision_model(builder, version)
            enum_name, filename = fn.TORCHVISION_WEIGHTS[(builder, version)]
            staged = torch.load(checkpoints / filename)
            state = model.state_dict()
            assert state.keys() == staged.keys()
            for key, value in staged.items():
                torch.testing.assert_close(state[key], value, rtol=0, atol=0, msg=f"{builder} {key}")
            assert not model.training
    assert loaded["inception"].transform_input and loaded["inception"].aux_logits
    v1 = torch.load(checkpoints / fn.TORCHVISION_WEIGHTS[("efficientnet_b1", "IMAGENET1K_V1")][1])
    assert not torch.equal(v1["features.0.0.weight"], loaded["effnet"].state_dict()["features.0.0.weight"])


#: Flattened sizes of the layers read, per protocol: AlexNet at 256 px: conv1 (11, stride 4,
#: pad 2) -> 63, pool -> 31 = features.4 (192 channels), pool -> 15 = features.11 (256); at 224:
#: 55, 27, 13.
LAYER_SIZES = {
    "mindeye": {"features.4": 192 * 31 * 31, "features.11": 256 * 15 * 15},
    "brain_diffuser": {"features.4": 192 * 27 * 27, "features.11": 256 * 13 * 13},
}
POOLED = {"inception": 2048, "effnet": 1280, "swav": 2048, "clip": CLIP_EMBEDDING}
FIRST_MODULE = {
    "alexnet": "features.0",
    "inception": "Conv2d_1a_3x3.conv",
    "effnet": "features.0.0",
    "swav": "conv1",
    "clip": "vision_model.embeddings.patch_embedding",
}


@pytest.mark.parametrize("protocol", ["mindeye", "brain_diffuser"])
def test_layers_shapes_and_values_at_each_protocol_input_size(offline_field_networks, loaded, protocol):
    """Every network at the protocol's input size: the first layer sees that size, the layers read
    have their real sizes, and the values equal torchvision's own route (its transforms and
    feature extractor on the same weights, built without the production loaders)."""
    base_size, sizes = FIELD_SIZES[protocol]
    images = random_images(2, 64, seed=1)
    base = resize_square(to_float_images(images), base_size)
    for name, model in loaded.items():
        network = build_network(name, input_size=sizes[name], device="cpu", model=model)
        seen = []
        hook = model.get_submodule(FIRST_MODULE[name]).register_forward_pre_hook(
            lambda _m, inputs: seen.append(inputs[0].shape[-2:])
        )
        try:
            feats = network(base)
        finally:
            hook.remove()
        assert seen == [(sizes[name], sizes[name])], name
        expected_sizes = LAYER_SIZES[protocol] if name == "alexnet" else {network.layers[0]: POOLED[name]}
        assert {layer: value.shape for layer, value in feats.items()} == {
            layer: (2, size) for layer, size in expected_sizes.items()
        }, name
        # the loaded EfficientNet-B1 has the V2 weights, reference_model's default
        reference = model if name == "clip" else reference_model(name, offline_field_networks)
        expected = reference_features(name, reference, images, base_size, sizes[name])
        for layer, value in feats.items():
            scale = np.abs(expected[layer]).max()
            np.testing.assert_allclose(value, expected[layer], rtol=0, atol=1e-5 * scale, err_msg=name)
    assert feats["image_embeds"].shape == (2, CLIP_EMBEDDING)


def test_inception_sees_googles_input_scaling(loaded):
    """torchvision's Inception weights expect pixels in [-1, 1]; the evaluation normalises with
    ImageNet's mean and std, and ``transform_input`` (set by the weights route) maps that back:
    the first convolution sees (pixel - 0.5) / 0.5."""
    model = loaded["inception"]
    network = build_network("inception", input_size=299, device="cpu", model=model)
    images = to_float_images(random_images(1, 299, seed=2))
    seen = []
    hook = model.Conv2d_1a_3x3.register_forward_pre_hook(lambda _m, inputs: seen.append(inputs[0]))
    try:
        network(images)
    finally:
        hook.remove()
    torch.testing.assert_close(seen[0], (images - 0.5) / 0.5, rtol=0, atol=1e-5)
    # a grey image normalises to (0.5 - mean) / std in every pixel before the network
    grey = torch.full((1, 3, 20, 20), 0.5)
    expected = (0.5 - np.array(fn.IMAGENET_MEAN)) / np.array(fn.IMAGENET_STD)
    np.testing.assert_allclose(network.preprocess(grey)[0, :, 7, 7].numpy(), expected, rtol=1e-6)


def test_batched_features_equal_one_image_at_a_time(loaded):
    """Batching never mixes images. Float32 convolutions sum in a batch-size-dependent order, so
    a row differs from its image alone by a few ulps of the layer's largest values; rows of
    different images differ by orders of magnitude more."""
    images = to_float_images(random_images(3, 48, seed=3))
    for name, model in loaded.items():
        network = build_network(name, input_size=FIELD_SIZES["mindeye"][1][name], device="cpu", model=model)
        batched = network(images)
        for row in range(3):
            alone = network(images[row : row + 1])
            for layer, value in batched.items():
                scale = np.abs(value).max()
                np.testing.assert_allclose(
                    alone[layer][0], value[row], rtol=0, atol=1e-5 * scale, err_msg=name
                )
        for layer, value in batched.items():
            assert np.abs(value[1] - value[0]).max() > 1e-3 * np.abs(value).max(), (name, layer)


def test_clip_vit_l14_published_configuration_loads_by_the_production_route(clip_vit_l14_dir):
    """The folder in openai/clip-vit-large-patch14's form (both towers) gives the vision tower
    with the published sizes and exactly the saved weights, and a 768-d embedding per image."""
    from safetensors.torch import load_file

    network = build_network("clip", input_size=224, device="cpu", clip_model=str(clip_vit_l14_dir))
    config = network.model.config
    assert {key: getattr(config, key) for key in CLIP_VIT_L14_VISION} == CLIP_VIT_L14_VISION
    saved = {}
    for shard in sorted(clip_vit_l14_dir.glob("*.safetensors")):
        saved.update(load_file(shard))
    state = network.model.state_dict()
    vision = {
        key: value for key, value in saved.items() if key.startswith(("vision_model.", "visual_projection."))
    }
    assert state.keys() == vision.keys()
    for key, value in vision.items():
        assert torch.equal(state[key], value), key
    feats = network(to_float_images(random_images(1, 256, seed=4)))["image_embeds"]
    assert feats.shape == (1, CLIP_EMBEDDING) and np.isfinite(feats).all()


def test_missing_torchvision_gives_staging_instructions(monkeypatch):
    hide_torchvision(monkeypatch)
    with pytest.raises(ExtractorUnavailable) as info:
        build_network("effnet", input_size=255, device="cpu")
    message = str(info.value)
    assert "torchvision" in message and "TORCH_HOME" in message and "efficientnet_b1-c27df63c.pth" in message
    assert "\n" not in message


def test_missing_weights_offline_give_staging_instructions(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    monkeypatch.setattr(torch.hub, "urlopen", offline)
    with pytest.raises(ExtractorUnavailable) as info:
        build_network("effnet", input_size=224, device="cpu", effnet_weights="IMAGENET1K_V1")
    message = str(info.value)
    assert "efficientnet_b1_rwightman-bac287d4.pth" in message and "could not be downloaded" in message
    assert "URLError" in message and "TORCH_HOME=/shared/torch" in message
    assert (
        str(tmp_path / "empty" / "hub" / "checkpoints" / "efficientnet_b1_rwightman-bac287d4.pth") in message
    )


def offline(*_args, **_kwargs):
    raise urllib.error.URLError("offline")


def test_swav_hub_entry_builds_torchvisions_resnet50_with_the_checkpoint(offline_field_networks, loaded):
    """The staged repository's hubconf (the published one's form) builds torchvision's ResNet-50
    and loads the checkpoint's trunk with its ``module.`` prefixes stripped."""
    import torchvision

    model = loaded["swav"]
    assert type(model) is torchvision.models.ResNet
    checkpoint = swav_checkpoint()
    state = model.state_dict()
    trunk = {key[len("module.") :]: value for key, value in checkpoint.items() if key[7:] in state}
    assert set(state) - set(trunk) == {"fc.weight", "fc.bias"}  # SwAV's checkpoint has no classifier
    for key, value in trunk.items():
        assert torch.equal(state[key], value), key


@pytest.fixture
def swav_repository_only(tmp_path, monkeypatch):
    """$TORCH_HOME with the swav repository staged and no checkpoint; downloads fail as offline."""
    home = tmp_path / "torch"
    repo = home / "hub" / "facebookresearch_swav_main"
    repo.mkdir(parents=True)
    (repo / "hubconf.py").write_text(SWAV_HUBCONF)
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setattr(torch.hub, "urlopen", offline)
    return home


def test_swav_missing_checkpoint_or_repository_names_them(swav_repository_only, tmp_path):
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
