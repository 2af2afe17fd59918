"""The field's eight metrics per protocol on images and PNGs, end to end through the real networks
(random weights, tests/field_networks.py) on the toy world's reconstructions; summaries beside
published rows."""

from __future__ import annotations

import numpy as np
import pytest
from field_networks import hide_torchvision
from PIL import Image

from brainldm.core.tables import read_rows
from brainldm.evaluation import evaluate as ev
from brainldm.evaluation.networks import ExtractorUnavailable, build_network

pytestmark = pytest.mark.usefixtures("one_torch_thread")
EIGHT = list(ev.FIELD_METRICS)


def structured_images(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """Smooth random colour images (rows distinct), (n, size, size, 3) uint8."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((n, 4, 4, 3))
    up = np.kron(coarse, np.ones((1, size // 4, size // 4, 1)))
    return np.clip(up * 255 + rng.normal(0, 10, up.shape), 0, 255).astype(np.uint8)


def test_protocols_hold_the_documented_sizes_and_weights():
    mindeye, bd = ev.PROTOCOLS["mindeye"], ev.PROTOCOLS["brain_diffuser"]
    assert (mindeye.base_size, mindeye.pixel_size, mindeye.pixels_from_base) == (256, 425, True)
    assert mindeye.input_sizes == {"alexnet": 256, "inception": 342, "clip": 224, "effnet": 255, "swav": 224}
    assert mindeye.effnet_weights == "IMAGENET1K_V2" and bd.effnet_weights == "IMAGENET1K_V1"
    assert set(bd.input_sizes.values()) == {224} and bd.base_size == 224 and not bd.pixels_from_base
    assert [(s.kind, s.higher_is_better) for s in ev.FIELD_METRICS.values()] == [
        ("pixcorr", True),
        ("ssim", True),
        ("two_way", True),
        ("two_way", True),
        ("two_way", True),
        ("two_way", True),
        ("distance", False),
        ("distance", False),
    ]


def test_pixel_metrics_follow_the_protocol_resizes():
    from brainldm.evaluation.metrics import pixcorr
    from brainldm.evaluation.networks import resize_square, to_float_images

    rng = np.random.default_rng(5)
    originals = rng.integers(0, 256, (3, 40, 40, 3), dtype=np.uint8)  # fine detail: resizes matter
    reconstructions = np.clip(originals + rng.normal(0, 40, originals.shape), 0, 255).astype(np.uint8)
    for name, chosen in ev.PROTOCOLS.items():
        specs, networks, extractors = ev.build_scorers(["PixCorr"], chosen)
        value = ev.score_reconstructions(
            originals, list(reconstructions), specs, chosen, networks, extractors, {}, batch_size=2
        )["PixCorr"]

        def at_425(images):
            tensor = to_float_images(images)
            if chosen.pixels_from_base:  # MindEye: 256 first, then 425
                tensor = resize_square(tensor, 256)
            return resize_square(tensor, 425).numpy()

        assert value == pytest.approx(pixcorr(at_425(originals), at_425(reconstructions)).mean(), abs=1e-9), (
            name
        )


def test_shuffled_reconstructions_identify_near_chance(offline_field_networks):
    """80 images (a tighter check of chance than the end-to-end test's toy set allows) through
    the real AlexNet and the pixel space."""
    chosen = ev.PROTOCOLS["mindeye"]
    networks = {"alexnet": build_network("alexnet", input_size=256, device="cpu")}
    specs, networks, extractors = ev.build_scorers(
        ["AlexNet(2)", "two-way:pixels"], chosen, networks=networks, pixel_size=16
    )
    originals = structured_images(80, seed=1)
    noisy = np.clip(originals + np.random.default_rng(2).normal(0, 25, originals.shape), 0, 255).astype(
        np.uint8
    )
    features = ev.image_features(list(originals), networks, extractors, chosen)
    matched = ev.score_reconstructions(originals, list(noisy), specs, chosen, networks, extractors, features)
    shuffled = ev.score_reconstructions(
        originals,
        list(noisy[np.random.default_rng(3).permutation(80)]),
        specs,
        chosen,
        networks,
        extractors,
        features,
    )
    for name in ("AlexNet(2)", "two-way:pixels"):
        assert matched[name] > 0.9
        # 80 scores, each the fraction of 79 comparisons; their mean sits near 0.5 (sd ~0.03)
        assert abs(shuffled[name] - 0.5) < 0.12


def write_pngs(tmp_path, originals, methods):
    """PNGs per (nsdId, method, sample): sample 0 = the original, later samples noisier."""
    rng = np.random.default_rng(7)
    files = {}
    for method, k in methods.items():
        for row, nsd_id in enumerate(range(100, 100 + len(originals))):
            for s in range(k):
                image = (
                    originals[row]
                    if s == 0
                    else np.clip(originals[row] + rng.normal(0, 30 * s, originals[row].shape), 0, 255).astype(
                        np.uint8
                    )
                )
                path = tmp_path / method / f"nsd{nsd_id}_s{s}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(image).save(path)
                files[(nsd_id, method, s)] = path
    return files


def test_evaluate_reconstructions_first_and_mean_of_samples(tmp_path):
    originals = structured_images(5, seed=4)
    ids = list(range(100, 105))
    files = write_pngs(tmp_path, originals, {"z": 1, "zc": 3})
    metrics = ["PixCorr", "SSIM", "two-way:pixels"]
    first = ev.evaluate_reconstructions(
        originals, ids, files, ["z", "zc"], {"z": 1, "zc": 3}, metrics, pixel_size=16
    )
    assert [(r["method"], r["metric"]) for r in first] == [(m, x) for m in ("z", "zc") for x in metrics]
    assert all(r["protocol"] == "mindeye" and r["n_images"] == 5 and r["n_samples"] == 1 for r in first)
    assert all(r["value"] == pytest.approx(1.0, abs=1e-9) for r in first)  # sample 0 is the original
    mean = ev.evaluate_reconstructions(
        originals,
        ids,
        files,
        ["z", "zc"],
        {"z": 1, "zc": 3},
        metrics,
        samples="mean",
        protocol="brain_diffuser",
        pixel_size=16,
    )
    by_key = {(r["method"], r["metric"]): r for r in mean}
    assert by_key[("z", "PixCorr")]["n_samples"] == 1 and by_key[("zc", "PixCorr")]["n_samples"] == 3
    chosen = ev.PROTOCOLS["brain_diffuser"]
    specs, networks, extractors = ev.build_scorers(metrics, chosen, pixel_size=16)
    features = ev.image_features(list(originals), networks, extractors, chosen)
    per_sample = [
        ev.score_reconstructions(
            originals, [files[(n, "zc", s)] for n in ids], specs, chosen, networks, extractors, features
        )
        for s in range(3)
    ]
    for metric in metrics:
        expected = np.mean([scores[metric] for scores in per_sample])
        assert by_key[("zc", metric)]["value"] == pytest.approx(expected, abs=1e-12)
    assert by_key[("zc", "PixCorr")]["value"] < 0.99  # the noisy samples count
    del files[(102, "zc", 2)]
    with pytest.raises(FileNotFoundError, match="nsdId 102, method zc, sample 2"):
        ev.evaluate_reconstructions(originals, ids, files, ["zc"], {"zc": 3}, metrics, samples="mean")
    # the first-sample mode needs only sample 0
    assert len(ev.evaluate_reconstructions(originals, ids, files, ["zc"], {"zc": 3}, ["PixCorr"])) == 1


def test_bad_metric_names_and_missing_networks_are_reported_at_once(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match=r"'two-way:vgg' names no identification feature extractor"):
        ev.registry_extractor_names(["PixCorr", "two-way:vgg"])
    with pytest.raises(ValueError, match="'Alex' is unknown"):
        ev.registry_extractor_names(["Alex"])
    with pytest.raises(ValueError, match="evaluation.protocol"):
        ev.evaluate_reconstructions(
            np.zeros((2, 4, 4, 3), np.uint8), [1, 2], {}, [], {}, ["PixCorr"], protocol="x"
        )
    hide_torchvision(monkeypatch)  # as where it is not installed
    with pytest.raises(ExtractorUnavailable) as info:
        ev.build_scorers(
            ["PixCorr", "AlexNet(2)", "AlexNet(5)", "EffNet-B", "SwAV"],
            ev.PROTOCOLS["mindeye"],
            swav_hub_dir=str(tmp_path / "swav"),
        )
    lines = str(info.value).splitlines()
    assert len(lines) == 3  # AlexNet once for both layers, EffNet-B, SwAV
    assert "alexnet-owt-7be5be79.pth" in lines[0] and "efficientnet_b1-c27df63c.pth" in lines[1]
    assert "swav_800ep_pretrain.pth.tar" in lines[2]


def summary_rows(n_images: int):
    """Two subjects' tables as evaluate_reconstructions writes them."""
    values = {
        1: {"PixCorr": 0.2, "AlexNet(2)": 0.8, "SwAV": 0.5, "two-way:pixels": 0.7},
        2: {"PixCorr": 0.4, "AlexNet(2)": 0.9, "SwAV": 0.3, "two-way:pixels": 0.6},
    }
    return {
        subject: [
            {
                "method": "zc",
                "metric": metric,
                "value": value,
                "protocol": "mindeye",
                "n_images": n_images,
                "n_samples": 1,
            }
            for metric, value in table.items()
        ]
        for subject, table in values.items()
    }


@pytest.mark.parametrize("n_images, note", [(982, "published, other test set"), (1000, "published")])
def test_summary_and_comparison_with_published_rows(tmp_path, n_images, note):
    paths = []
    for subject, rows in summary_rows(n_images).items():
        path = tmp_path / f"subj{subject}.tsv"
        path.write_text(ev.format_rows(rows, ev.METRIC_COLUMNS))
        paths.append(path)
    ev.summarize_metrics(paths, [1, 2], tmp_path / "metrics.tsv", tmp_path / "comparison.tsv")
    summary = read_rows(tmp_path / "metrics.tsv")
    assert list(summary[0]) == ["subject", "method", "metric", "value", "protocol", "n_images", "n_samples"]
    assert [(r["subject"], r["metric"]) for r in summary][:2] == [("1", "PixCorr"), ("1", "AlexNet(2)")]
    table = read_rows(tmp_path / "comparison.tsv")
    ours = table[0]
    assert list(ours)[:5] == ["source", "method", "protocol", "test_images", "subjects"]
    assert (ours["source"], ours["method"], ours["subjects"], ours["test_images"]) == (
        "this run",
        "zc",
        "1,2",
        str(n_images),
    )
    # subject means; identification in percent as published, distances as they are
    assert (ours["PixCorr"], ours["AlexNet(2)"], ours["SwAV"], ours["two-way:pixels"]) == (
        "0.300",
        "85.0",
        "0.400",
        "65.0",
    )
    assert ours["SSIM"] == "-" and ours["note"] == "this run"
    published = table[1:]
    assert len(published) == len(ev.PUBLISHED) and all(row["note"] == note for row in published)
    mindeye2 = next(row for row in published if row["source"].startswith("MindEye2"))
    assert (mindeye2["PixCorr"], mindeye2["AlexNet(2)"], mindeye2["SwAV"]) == ("0.322", "96.1", "0.344")
    assert mindeye2["two-way:pixels"] == "-"
    (tmp_path / "bad.tsv").write_text("method\tmetric\nzc\tPixCorr\n")
    with pytest.raises(ValueError, match="bad.tsv: columns"):
        ev.summarize_metrics([tmp_path / "bad.tsv"], [1], tmp_path / "m.tsv", tmp_path / "c.tsv")


# --------------------------------------------------------------------------------------------
# end to end: the eight metrics through the real networks on the toy world's reconstructions
# --------------------------------------------------------------------------------------------
#: Test images of toy subject 1 scored end to end (of its 30): enough for chance to be told from
#: identification, few enough for the real networks on one CPU thread.
E2E_IMAGES = 12
NETWORK_METRICS = [name for name, spec in ev.FIELD_METRICS.items() if spec.source is not None]


@pytest.fixture(scope="module")
def toy_test_set(toy_run, toy_config):
    """Subject 1's first :data:`E2E_IMAGES` test images (uint8), nsdIds and reconstruction files,
    as rule evaluate_reconstructions reads them from the session's toy run."""
    from brainldm.evaluation.identification import read_subject_reconstructions
    from brainldm.nsd.layout import stimuli_key

    subject = toy_run / "results" / "toy" / "subj01"
    originals, ids, files, methods, _ = read_subject_reconstructions(
        sorted((subject / "reconstruction").glob("shard*")),
        subject / "decoding" / "z_nsd_ids.npy",
        toy_run / "resources" / "toy" / "nsd" / stimuli_key(),
        toy_config["reconstruction"],
        image_size=toy_config["toy"]["image_size"],
    )
    assert "zc" in methods
    return originals[:E2E_IMAGES], [int(n) for n in ids[:E2E_IMAGES]], files


@pytest.fixture(scope="module")
def reference_networks(offline_field_networks, skinny_clip_dir) -> dict:
    """The five networks built without the production loaders (field_networks.reference_model),
    EfficientNet-B1 in both weight versions."""
    from field_networks import reference_model
    from transformers import CLIPVisionModelWithProjection

    models = {
        name: reference_model(name, offline_field_networks) for name in ("alexnet", "inception", "swav")
    }
    for version in ("IMAGENET1K_V1", "IMAGENET1K_V2"):
        models[f"effnet:{version}"] = reference_model("effnet", offline_field_networks, version)
    models["clip"] = CLIPVisionModelWithProjection.from_pretrained(skinny_clip_dir).eval()
    return models


def reference_reads(protocol: str, models: dict, images: np.ndarray) -> dict:
    """``{network metric: (n, d) features}`` of uint8 ``images`` by torchvision's own route at the
    field's documented sizes and layers (field_networks.reference_features)."""
    from field_networks import FIELD_EFFNET, FIELD_READS, FIELD_SIZES, reference_features

    base_size, sizes = FIELD_SIZES[protocol]
    models = {**models, "effnet": models[f"effnet:{FIELD_EFFNET[protocol]}"]}
    features = {
        name: reference_features(name, models[name], images, base_size, sizes[name])
        for name in dict.fromkeys(network for network, _ in FIELD_READS.values())
    }
    return {metric: features[name][layer] for metric, (name, layer) in FIELD_READS.items()}


def metrics_of_reads(originals: dict, reconstructions: dict) -> dict:
    """The network metrics of reconstruction features (row i reconstructing original i)."""
    from brainldm.evaluation.metrics import correlation_distance, two_way_identification

    return {
        metric: (
            float(correlation_distance(originals[metric], reconstructions[metric]).mean())
            if ev.FIELD_METRICS[metric].kind == "distance"
            else two_way_identification(originals[metric], reconstructions[metric])[0]
        )
        for metric in originals
    }


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["mindeye", "brain_diffuser"])
def test_eight_metrics_end_to_end_through_the_real_networks(
    protocol, toy_test_set, offline_field_networks, skinny_clip_dir, reference_networks, tmp_path
):
    """``evaluate_reconstructions`` loads every network by its production route (staged random
    weights, offline) and scores three sets of the toy's test images: the ``zc`` reconstructions,
    the originals themselves, and the ``zc`` reconstructions shifted by one image (a derangement).

    - every value is finite and in its range;
    - identical images: PixCorr and SSIM 1, two-way identification 100 %, distances 0;
    - the network metrics of all three sets equal those of features computed independently
      (torchvision's transforms and feature extractor at the documented sizes and layers): the
      distances to 0.1 % (with random weights they can be small: SwAV's are below 0.01), a
      two-way score to one comparison of the n (n - 1), for a near tie that float rounding can
      flip;
    - the shifted set identifies at chance: within 0.2 of 0.5 (for a derangement of 12 the
      expectation is (n - 2) / (2 (n - 1)) = 0.455, as each reconstruction's own original,
      another row, beats it; a mean of 12 such scores has a standard deviation near 0.08).
    """
    from brainldm.evaluation.batches import load_png

    originals, ids, toy_files = toy_test_set
    n = len(ids)
    files = {key: path for key, path in toy_files.items() if key[1] == "zc" and key[2] == 0}
    for row, nsd_id in enumerate(ids):
        identical = tmp_path / f"identical_{nsd_id}.png"
        Image.fromarray(originals[row]).save(identical)
        files[(nsd_id, "identical", 0)] = identical
        files[(nsd_id, "shifted", 0)] = files[(ids[(row + 1) % n], "zc", 0)]
    methods = ["zc", "identical", "shifted"]
    rows = ev.evaluate_reconstructions(
        originals,
        ids,
        files,
        methods,
        dict.fromkeys(methods, 1),
        EIGHT,
        protocol=protocol,
        device="cpu",
        clip_model=str(skinny_clip_dir),
    )
    values = {(r["method"], r["metric"]): r["value"] for r in rows}
    assert len(values) == 3 * 8 and all(np.isfinite(v) for v in values.values())
    for (method, metric), value in values.items():
        kind = ev.FIELD_METRICS[metric].kind
        low, high = {"pixcorr": (-1, 1), "ssim": (-1, 1), "two_way": (0, 1), "distance": (0, 2)}[kind]
        assert low - 1e-9 <= value <= high + 1e-9, (method, metric, value)
    for metric in ("PixCorr", "SSIM"):
        assert values[("identical", metric)] == pytest.approx(1.0, abs=1e-9)
    for metric in ("AlexNet(2)", "AlexNet(5)", "Inception", "CLIP"):
        assert values[("identical", metric)] == 1.0
    for metric in ("EffNet-B", "SwAV"):
        assert values[("identical", metric)] == pytest.approx(0.0, abs=1e-6)

    original_reads = reference_reads(protocol, reference_networks, originals)
    zc_reads = reference_reads(
        protocol, reference_networks, np.stack([load_png(files[(nsd_id, "zc", 0)]) for nsd_id in ids])
    )
    sets = {
        "zc": zc_reads,
        "identical": original_reads,
        "shifted": {metric: np.roll(value, -1, axis=0) for metric, value in zc_reads.items()},
    }
    one_comparison = 1 / (n * (n - 1))
    for method, reads in sets.items():
        expected = metrics_of_reads(original_reads, reads)
        assert list(expected) == NETWORK_METRICS
        for metric, value in expected.items():
            if ev.FIELD_METRICS[metric].kind == "distance":  # small with random weights: relative
                assert values[(method, metric)] == pytest.approx(value, rel=1e-3, abs=1e-7), (method, metric)
            else:
                assert values[(method, metric)] == pytest.approx(value, abs=one_comparison + 1e-12), (
                    method,
                    metric,
                )
    for metric in ("AlexNet(2)", "AlexNet(5)", "Inception", "CLIP"):
        assert abs(values[("shifted", metric)] - 0.5) < 0.2, (metric, values[("shifted", metric)])
    print(protocol, {key: round(value, 4) for key, value in values.items()})
