"""Identification metrics against hand-computed cases; feature extractors and their errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from field_networks import hide_torchvision

from brainldm.core.tables import format_rows, read_rows
from brainldm.evaluation import extractors as ident_extractors
from brainldm.evaluation import identification as ident
from brainldm.evaluation.extractors import paper_preprocess
from brainldm.evaluation.identification import paper_identification, two_way_identification
from brainldm.evaluation.networks import ExtractorUnavailable
from brainldm.linear.stats import pearson_matrix

REPO = Path(__file__).resolve().parents[1]


def features_with_correlations(R: np.ndarray, d: int = 16, seed: int = 0):
    """Originals (n, d) and samples (n, k, d) whose Pearson r are exactly ``R``.

    ``R[i, j, s]`` = r(original i, sample s of image j). Originals are orthonormal zero-mean
    vectors e_i; each sample is sum_i R[i, j, s] e_i + (the rest of unit norm) e_extra.
    """
    R = np.asarray(R, dtype=float)
    if R.ndim == 2:
        R = R[:, :, None]
    n, _, k = R.shape
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((d, n + 1))
    basis -= basis.mean(0)
    q, _ = np.linalg.qr(basis)
    e = q.T  # (n + 1, d), orthonormal, zero mean
    originals = e[:n] * 3.0 + 1.0  # scale and shift do not change Pearson r
    samples = np.zeros((n, k, d))
    for j in range(n):
        for s in range(k):
            coef = R[:, j, s]
            assert np.sum(coef**2) <= 1, "a unit sample cannot have these correlations"
            rest = np.sqrt(1.0 - np.sum(coef**2))
            samples[j, s] = coef @ e[:n] + rest * e[n]
    return originals, samples


def test_constructed_features_have_the_requested_correlations():
    R = np.array([[0.5, 0.45, 0.1], [0.2, 0.4, 0.3], [0.3, 0.1, 0.2]])
    originals, samples = features_with_correlations(R)
    np.testing.assert_allclose(pearson_matrix(originals, samples[:, 0]), R, atol=1e-12)


def test_known_correlations_paper_vs_two_way():
    # rows: original i, columns: reconstruction j
    R = np.array([[0.5, 0.45, 0.1], [0.2, 0.4, 0.3], [0.3, 0.1, 0.2]])
    originals, samples = features_with_correlations(R)
    acc, per_image = paper_identification(originals, samples)
    # paper, per original i (row): i0: 0.5 > 0.45, 0.1 -> 1; i1: 0.4 > 0.2, 0.3 -> 1;
    # i2: 0.2 < 0.3, > 0.1 -> 0.5
    np.testing.assert_allclose(per_image, [1.0, 1.0, 0.5])
    assert acc == pytest.approx(5 / 6)
    acc2, per_rec = two_way_identification(originals, samples[:, 0])
    # two-way, per reconstruction j (column): j0: 0.5 > 0.2, 0.3 -> 1; j1: 0.4 < 0.45, > 0.1
    # -> 0.5; j2: 0.2 > 0.1, < 0.3 -> 0.5
    np.testing.assert_allclose(per_rec, [1.0, 0.5, 0.5])
    assert acc2 == pytest.approx(2 / 3)


def test_paper_averages_correlations_over_samples():
    # image 0's two samples correlate 0.9 and 0.1 with original 0 (mean 0.5); image 1's
    # samples 0.45 and 0.45: original 0 is correctly identified (0.5 > 0.45)
    R = np.zeros((2, 2, 2))
    R[0, 0] = [0.9, 0.1]
    R[0, 1] = [0.45, 0.45]
    R[1, 1] = [0.6, 0.6]
    R[1, 0] = [0.3, 0.6]  # mean 0.45 < 0.6
    originals, samples = features_with_correlations(R)
    acc, per_image = paper_identification(originals, samples)
    np.testing.assert_allclose(per_image, [1.0, 1.0])
    # with image 1's samples at 0.55 and 0.5 (mean 0.525 > 0.5) original 0 fails, although its
    # best single sample (0.9) beats both
    R[0, 1] = [0.55, 0.5]
    originals, samples = features_with_correlations(R)
    _, per_image = paper_identification(originals, samples)
    np.testing.assert_allclose(per_image, [0.0, 1.0])


def test_ties_fail_in_both_protocols():
    originals = np.array([[1.0, 2.0, 3.0, 0.0], [0.0, 1.0, 0.0, 2.0]])
    same = np.array([1.0, 0.0, 2.0, 5.0])
    samples = np.stack([same, same])[:, None]  # both images get identical reconstructions
    acc, per_image = paper_identification(originals, samples)
    assert acc == 0.0 and per_image.tolist() == [0.0, 0.0]
    # the two-way protocol compares originals against one reconstruction: identical originals tie
    twins = np.stack([originals[0], originals[0]])
    acc2, per_rec = two_way_identification(twins, np.array([[1.0, 2.0, 3.0, 1.0], [0.0, 1.0, 4.0, 2.0]]))
    assert acc2 == 0.0 and per_rec.tolist() == [0.0, 0.0]


def test_n2_perfect_and_reversed():
    originals = np.array([[1.0, 2.0, 3.0], [3.0, 1.0, 2.0]])
    good = np.array([[1.0, 2.0, 3.1], [3.0, 1.1, 2.0]])
    acc, _ = paper_identification(originals, good[:, None])
    assert acc == 1.0 and two_way_identification(originals, good)[0] == 1.0
    swapped = good[::-1]
    assert paper_identification(originals, swapped[:, None])[0] == 0.0
    assert two_way_identification(originals, swapped)[0] == 0.0
    with pytest.raises(ValueError, match=">= 2"):
        paper_identification(originals[:1], good[:1, None])


def test_random_features_agree_with_a_loop_and_sit_near_chance():
    rng = np.random.default_rng(1)
    n, k, d = 40, 3, 20
    originals = rng.standard_normal((n, d))
    samples = rng.standard_normal((n, k, d))
    acc, per_image = paper_identification(originals, samples)
    loop = []
    for i in range(n):
        m = [np.mean([np.corrcoef(originals[i], samples[j, s])[0, 1] for s in range(k)]) for j in range(n)]
        loop.append(np.mean([m[i] > m[j] for j in range(n) if j != i]))
    np.testing.assert_allclose(per_image, loop)
    assert 0.35 < acc < 0.65
    noisy = originals[:, None] + 0.8 * rng.standard_normal((n, k, d))
    assert paper_identification(originals, noisy)[0] > 0.95


def test_paper_preprocess_resizes_shorter_side_crops_centre_and_normalises():
    image = np.zeros((40, 80, 3), dtype=np.uint8)
    image[:, 20:60] = 255  # white centre, black sides (cropped away)
    batch = paper_preprocess([image])
    assert batch.shape == (1, 3, 299, 299) and batch.dtype == np.float32
    white = (1.0 - ident_extractors.IMAGENET_MEAN) / ident_extractors.IMAGENET_STD
    np.testing.assert_allclose(batch[0, :, 10:-10, 10:-10].mean(axis=(1, 2)), white, rtol=1e-3)
    grey = np.full((30, 30, 3), 128, dtype=np.uint8)
    np.testing.assert_allclose(
        paper_preprocess([grey])[0, :, 5, 5],
        (128 / 255 - ident_extractors.IMAGENET_MEAN) / ident_extractors.IMAGENET_STD,
        rtol=1e-5,
    )


def test_pixel_extractor_and_registry():
    images = [np.full((64, 64, 3), v, dtype=np.uint8) for v in (0, 255)]
    feats = ident_extractors.get_extractor("pixels", pixel_size=8)(images, batch_size=1)
    assert feats["pixels"].shape == (2, 8 * 8 * 3)
    assert feats["pixels"][0].max() == 0 and feats["pixels"][1].min() == 1.0
    assert set(ident_extractors.EXTRACTORS) == {
        "pixels",
        "clip",
        "alexnet",
        "inception",
    }  # the toy adds its own
    with pytest.raises(ValueError, match="unknown"):
        ident_extractors.get_extractor("vgg")


def test_torchvision_extractors_fail_with_staging_instructions(monkeypatch):
    hide_torchvision(monkeypatch)  # as where it is not installed
    for name, filename in [
        ("alexnet", "alexnet-owt-7be5be79.pth"),
        ("inception", "inception_v3_google-0cc3c7bd.pth"),
    ]:
        with pytest.raises(ExtractorUnavailable) as info:
            ident_extractors.get_extractor(name)
        message = str(info.value)
        assert "torchvision" in message and "TORCH_HOME" in message and filename in message
    with pytest.raises(ExtractorUnavailable, match="alexnet.*\n.*inception"):
        ident_extractors.build_extractors(["pixels", "alexnet", "inception"])
    # the identification reports every missing network at once, before reading any image
    with pytest.raises(ExtractorUnavailable, match="alexnet.*\n.*inception"):
        ident.identify_reconstructions(
            np.zeros((2, 4, 4, 3), np.uint8), [1, 2], {}, [], {}, ["alexnet", "inception"]
        )


def test_alexnet_extractor_reads_the_three_paper_layers(offline_field_networks):
    """The real AlexNet (random weights, loaded by the registry's route) at the paper's 299 px."""
    images = [np.random.default_rng(i).integers(0, 255, (50, 60, 3), dtype=np.uint8) for i in range(3)]
    extractor = ident_extractors.get_extractor("alexnet", device="cpu")
    feats = extractor(images, batch_size=2)
    # 299 px: conv1 (11, stride 4, pad 2) -> 74, pool -> 36, conv2 and pool -> 17 (features.5),
    # conv3-5 and pool -> 8 (features.12); fc7 has 4096 units
    assert feats["alexnet.features.5"].shape == (3, 192 * 17 * 17)
    assert feats["alexnet.features.12"].shape == (3, 256 * 8 * 8)
    assert feats["alexnet.classifier.5"].shape == (3, 4096)
    assert feats["alexnet.classifier.5"].min() >= 0  # a ReLU output
    # Batching must not mix images: image 0 alone gives its batched row. Float32 convolutions
    # sum hundreds of products in a batch-size-dependent order, so the two differ by a few ulps
    # of the layer's largest values, not of each (possibly tiny) element: compare on that scale.
    # The rows of different images differ by orders of magnitude more, so a mix-up still fails.
    again = extractor(images[:1])["alexnet.features.12"][0]
    batched = feats["alexnet.features.12"]
    scale = np.abs(batched).max()
    np.testing.assert_allclose(again, batched[0], rtol=0, atol=1e-5 * scale)
    assert np.abs(batched[1] - batched[0]).max() > 1e-2 * scale


def test_inception_extractor_reads_the_pooled_features(offline_field_networks):
    """The real Inception v3 at the paper's 299 px: 2048 pooled features, batch-independent."""
    images = [np.random.default_rng(i).integers(0, 255, (40, 30, 3), dtype=np.uint8) for i in range(2)]
    extractor = ident_extractors.get_extractor("inception", device="cpu")
    assert extractor.model.transform_input  # the input scaling of its Google weights
    feats = extractor(images, batch_size=2)["inception"]
    assert feats.shape == (2, 2048) and feats.min() >= 0  # the average of ReLU outputs
    alone = extractor(images[1:])["inception"][0]
    np.testing.assert_allclose(alone, feats[1], rtol=0, atol=1e-5 * np.abs(feats).max())
    assert np.abs(feats[1] - feats[0]).max() > 1e-3 * np.abs(feats).max()


def test_clip_extractor_end_to_end_at_the_paper_size(skinny_clip_dir):
    """ViT-L/14's published widths and patch size (2 of its layers) fed 299 px: the position
    embeddings of its 16 x 16 patch grid are interpolated to 21 x 21."""
    import torch
    from transformers import CLIPVisionModelWithProjection

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(4)]
    extractor = ident_extractors.get_extractor("clip", clip_model=str(skinny_clip_dir), device="cpu")
    feats = extractor(images, batch_size=3)["clip"]
    assert feats.shape == (4, 768)
    model = CLIPVisionModelWithProjection.from_pretrained(skinny_clip_dir).eval()
    with torch.no_grad():
        direct = model(
            pixel_values=torch.from_numpy(paper_preprocess(images)), interpolate_pos_encoding=True
        ).image_embeds
    np.testing.assert_allclose(feats, direct.numpy(), rtol=1e-4, atol=1e-5)
    # each image identified among the others by its own copy
    acc, _ = paper_identification(feats, feats[:, None])
    assert acc == 1.0


def test_clip_missing_offline_gives_a_clear_message(tmp_path):
    code = "from brainldm.evaluation.extractors import get_extractor\nget_extractor('clip', device='cpu')\n"
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_HOME=str(tmp_path / "hf"),
        PYTHONPATH=str(REPO / "workflow" / "scripts"),
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("brainldm.evaluation.networks.ExtractorUnavailable")
    assert "openai/clip-vit-large-patch14" in last and "hf download" in last and "HF_HUB_OFFLINE" in last


def test_identify_reconstructions_reads_pngs_and_summarises(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(3)
    originals = rng.integers(0, 255, (5, 16, 16, 3), dtype=np.uint8)
    ids = [3, 8, 20, 21, 40]
    files = {}
    for method, k in (("z", 1), ("zc", 2)):
        for row, nid in enumerate(ids):
            for s in range(k):
                noisy = np.clip(originals[row] + rng.normal(0, 20, originals[row].shape), 0, 255).astype(
                    np.uint8
                )
                path = tmp_path / method / f"{nid}_{s}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(noisy).save(path)
                files[(nid, method, s)] = path
    rows = ident.identify_reconstructions(
        originals, ids, files, ["z", "zc"], {"z": 1, "zc": 2}, ["pixels"], pixel_size=16
    )
    assert [(r["method"], r["feature"]) for r in rows] == [("z", "pixels"), ("zc", "pixels")]
    assert all(r["accuracy"] == 1.0 and r["two_way_accuracy"] == 1.0 and r["n_images"] == 5 for r in rows)
    text = format_rows(rows, ident.IDENTIFICATION_COLUMNS)
    assert text.splitlines()[1] == "z\tpixels\t1.000000\t5\t1.000000"
    (tmp_path / "s1.tsv").write_text(text)
    (tmp_path / "s2.tsv").write_text(text)
    ident.summarize_identification([tmp_path / "s1.tsv", tmp_path / "s2.tsv"], [1, 2], tmp_path / "all.tsv")
    summary = read_rows(tmp_path / "all.tsv")
    assert [r["subject"] for r in summary] == ["1", "1", "2", "2"]
    assert list(summary[0]) == ["subject", "method", "feature", "accuracy", "n_images", "two_way_accuracy"]
    del files[(8, "zc", 1)]
    with pytest.raises(FileNotFoundError, match="nsdId 8, method zc, sample 1"):
        ident.identify_reconstructions(originals, ids, files, ["zc"], {"zc": 2}, ["pixels"])


def test_read_subject_reconstructions_gathers_what_the_rules_score(tmp_path):
    import h5py

    brick = np.random.default_rng(0).integers(0, 255, (6, 8, 8, 3), dtype=np.uint8)
    with h5py.File(tmp_path / "stimuli.hdf5", "w") as handle:
        handle["imgBrick"] = brick
    np.save(tmp_path / "ids.npy", np.array([1, 4], dtype=np.int64))
    shard = tmp_path / "shard0of1"
    shard.mkdir()
    (shard / "manifest.tsv").write_text("nsdId\tmethod\tsample\tfile\n4\tzc\t1\tzc/nsd4_s1.png\n")
    originals, ids, files, methods, samples = ident.read_subject_reconstructions(
        [shard],
        tmp_path / "ids.npy",
        tmp_path / "stimuli.hdf5",
        {"methods": ["z", "zc"], "n_samples": 3},
        image_size=8,
    )
    np.testing.assert_array_equal(originals, brick[[1, 4]])
    assert ids.tolist() == [1, 4] and methods == ("z", "zc") and samples == {"z": 1, "zc": 3}
    assert files == {(4, "zc", 1): shard / "zc" / "nsd4_s1.png"}
