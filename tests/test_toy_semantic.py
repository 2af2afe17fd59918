"""The toy semantic feature space: the shipped attribute classifier, its identification features
and the per-attribute match table."""

from __future__ import annotations

import numpy as np
import pytest

from brainldm.evaluation.extractors import get_extractor
from brainldm.evaluation.identification import paper_identification
from brainldm.toy.attributes import ATTRIBUTE_VALUES
from brainldm.toy.extractors import register_toy_extractors
from brainldm.toy.semantic import (
    attribute_matches,
    load_semantic_net,
    match_reconstructions,
    predict_attributes,
)
from brainldm.toy.world import ToyParams, toy_stimuli

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def world():
    return toy_stimuli(ToyParams())


def test_classifier_reads_held_out_stimuli_and_blurred_ones(world):
    """On the shared (test) stimuli it never saw, clean and blurred as a VAE decode is."""
    import torch

    net = load_semantic_net()
    test = world.shared_nsd_ids
    images = world.images[test]
    truth = [world.attributes[i] for i in test]
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    blurred = torch.nn.functional.interpolate(
        torch.nn.functional.avg_pool2d(x, 4), scale_factor=4, mode="bilinear"
    )
    blurred = blurred.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for version in (images, blurred):
        predicted = predict_attributes(net, list(version))
        for name in ATTRIBUTE_VALUES:
            accuracy = np.mean([p[name] == t[name] for p, t in zip(predicted, truth)])
            assert accuracy > 0.8, (name, accuracy)


def test_toy_semantic_features_identify_the_stimuli_in_the_registry(world, monkeypatch):
    from brainldm.evaluation import extractors

    monkeypatch.setattr(extractors, "EXTRACTORS", dict(extractors.EXTRACTORS))
    with pytest.raises(ValueError, match="unknown"):
        get_extractor("toy_semantic")  # production code does not know the toy world
    register_toy_extractors()
    extractor = get_extractor("toy_semantic")
    images = list(world.images[world.shared_nsd_ids])
    features = extractor(images, batch_size=7)["toy_semantic"]
    assert features.shape == (30, 9) and features.dtype == np.float32
    np.testing.assert_allclose(features[:, :4].sum(1), 1, atol=1e-5)  # shape probabilities
    np.testing.assert_allclose(features[:, 4:].sum(1), 1, atol=1e-5)  # colour probabilities
    # each image's own features identify it against images of other shape or colour
    accuracy, _ = paper_identification(
        features, features[:, None] + 0.01 * np.random.default_rng(0).random((30, 1, 9))
    )
    assert accuracy > 0.85
    # batch size does not change the features beyond float rounding
    np.testing.assert_allclose(extractor(images, batch_size=30)["toy_semantic"], features, atol=1e-6)


def test_attribute_matches_counts_and_chance():
    truth = [
        {"shape": "circle", "colour": "red", "size": "small", "position": "left", "background": "gray"},
        {"shape": "square", "colour": "blue", "size": "large", "position": "top", "background": "dark"},
    ]
    right = [[dict(t)] * 2 for t in truth]
    swapped = [[dict(truth[1])] * 2, [dict(truth[0])] * 2]
    rows = {
        (r["method"], r["attribute"]): r
        for r in attribute_matches(truth, {"right": right, "swapped": swapped})
    }
    assert rows[("right", "shape")]["match"] == 1.0 and rows[("swapped", "shape")]["match"] == 0.0
    # both methods predict each value half of the time; seen values are half/half too: chance 1/2
    assert rows[("right", "colour")]["chance"] == pytest.approx(0.5)
    assert rows[("right", "shape")]["n_samples"] == 2 and rows[("right", "shape")]["n_images"] == 2
    with pytest.raises(ValueError, match="predictions for 1 images, 2 seen"):
        attribute_matches(truth, {"short": right[:1]})


def test_match_reconstructions_from_files(tmp_path, world):
    from PIL import Image

    net = load_semantic_net()
    ids = world.shared_nsd_ids[:6]
    files = {}
    for k, n in enumerate(ids):
        path = tmp_path / f"{n}.png"
        Image.fromarray(world.images[n]).save(path)
        files[(int(n), "copy", 0)] = path
    truth = [world.attributes[n] for n in ids]
    rows = match_reconstructions(net, truth, world.images[ids], ids, files, ["copy"], {"copy": 1})
    copy = {r["attribute"]: r for r in rows if r["method"] == "copy"}
    original = {r["attribute"]: r for r in rows if r["method"] == "original"}
    assert all(copy[a]["match"] == original[a]["match"] for a in ATTRIBUTE_VALUES)
    with pytest.raises(FileNotFoundError, match="1 copy reconstructions are missing"):
        del files[(int(ids[0]), "copy", 0)]
        match_reconstructions(net, truth, world.images[ids], ids, files, ["copy"], {"copy": 1})
