"""The evaluation's GPU paths, run on the CPU: images read and prepared on threads ahead of the
networks, each batch read and preprocessed once for every extractor, and the networks placed as
on a GPU (channels-last layout, float16)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from PIL import Image
from test_evaluation import structured_images, write_pngs

from brainldm.evaluation import batches
from brainldm.evaluation import evaluate as ev
from brainldm.evaluation import extractors as ident_extractors
from brainldm.evaluation import identification as ident
from brainldm.evaluation.networks import NetworkPlacement, build_network

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def reader_threads_alive() -> list[str]:
    return [thread.name for thread in threading.enumerate() if thread.name.startswith("reader")]


def mixed_images(tmp_path, n: int = 7) -> list:
    """``n`` 8 x 8 images, the odd ones as PNG paths, the even ones as arrays."""
    rng = np.random.default_rng(0)
    images = []
    for index in range(n):
        image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        if index % 2:
            path = tmp_path / f"image{index}.png"
            Image.fromarray(image).save(path)
            images.append(path)
        else:
            images.append(image)
    return images


def test_prepared_batches_are_the_same_and_in_order_with_reader_threads(tmp_path):
    images = mixed_images(tmp_path)

    def prepare(start, batch):
        return start, np.stack(batch), threading.current_thread().name

    alone = list(batches.prepared_batches(images, 3, prepare))
    assert [start for start, _ in alone] == [0, 3, 6]
    assert [len(values[1]) for _, values in alone] == [3, 3, 1]
    assert all(not name.startswith("reader") for _, (_, _, name) in alone)
    np.testing.assert_array_equal(
        np.concatenate([values[1] for _, values in alone]), np.stack(batches.read_images(images))
    )
    for threads in (1, 3):
        ahead = list(batches.prepared_batches(images, 3, prepare, reader_threads=threads))
        assert [start for start, _ in ahead] == [0, 3, 6]
        for (_, (_, expected, _)), (_, (_, got, name)) in zip(alone, ahead):
            np.testing.assert_array_equal(got, expected)
            assert name.startswith("reader")  # prepared off the calling thread
    assert reader_threads_alive() == []


def test_a_reader_error_reaches_the_caller_in_order_and_stops_the_readers(tmp_path):
    images = mixed_images(tmp_path)
    images[5].unlink()  # batch 1 (images 3-5) cannot be read
    seen = []
    with pytest.raises(FileNotFoundError, match=r"image5\.png is missing"):
        for start, _ in batches.prepared_batches(images, 3, lambda start, batch: batch, reader_threads=2):
            seen.append(start)
    assert seen == [0]  # the batch before the broken one arrived, nothing after it
    assert reader_threads_alive() == []
    # a caller that stops early leaves no reader running either
    for _ in batches.prepared_batches(
        mixed_images(tmp_path), 1, lambda start, batch: batch, reader_threads=2
    ):
        break
    assert reader_threads_alive() == []
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        list(batches.prepared_batches(images, 0, lambda start, batch: batch))


def test_reader_threads_run_beside_a_gpu_only():
    assert batches.reader_threads_for("cuda", 4) == 4
    assert batches.reader_threads_for("cpu", 4) == 0
    settings = {"batch_size": 8, "network_dtype": "float16", "channels_last": False, "clip_model": "clip"}
    assert batches.job_options(settings, "cuda", 4) == {**settings, "reader_threads": 4, "device": "cuda"}
    # auto: torch decides (CUDA when present); the CI machines have no GPU
    auto = batches.job_options(settings, "auto", 4)
    assert auto["device"] is None and auto["reader_threads"] == (4 if torch.cuda.is_available() else 0)


def test_extractors_share_each_batch_read_and_preprocessing(
    offline_field_networks, skinny_clip_dir, tmp_path, monkeypatch
):
    """The three paper networks take one paper preprocessing per batch (not one each) and one
    read of each PNG, and give the features each gives alone."""
    images = mixed_images(tmp_path, 5)
    extractors = [
        ident_extractors.get_extractor("alexnet", device="cpu"),
        ident_extractors.get_extractor("inception", device="cpu"),
        ident_extractors.get_extractor("clip", clip_model=str(skinny_clip_dir), device="cpu"),
        ident_extractors.get_extractor("pixels", pixel_size=4),
    ]
    alone = {}
    for extractor in extractors:
        alone.update(extractor(images, batch_size=3))
    calls = {"paper": 0, "png": 0}
    paper, load_png = ident_extractors.INPUT_PREPARERS["paper"], batches.load_png

    def counted(name, function):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)

        return wrapper

    monkeypatch.setitem(ident_extractors.INPUT_PREPARERS, "paper", counted("paper", paper))
    monkeypatch.setattr(batches, "load_png", counted("png", load_png))
    together = ident_extractors.extract_features(images, extractors, batch_size=3, reader_threads=2)
    assert calls == {"paper": 2, "png": 2}  # two batches; images 1 and 3 are the PNGs
    assert list(together) == list(alone)
    for name, values in alone.items():
        np.testing.assert_array_equal(together[name], values, err_msg=name)


def test_identification_rows_are_those_of_each_extractor_alone_in_their_order(
    offline_field_networks, tmp_path
):
    rng = np.random.default_rng(3)
    originals = structured_images(4, size=32, seed=3)
    ids = [3, 8, 20, 21]
    files = {}
    for method, k in (("z", 1), ("zc", 2)):
        for row, nid in enumerate(ids):
            for s in range(k):
                noisy = np.clip(originals[row] + rng.normal(0, 30, originals[row].shape), 0, 255)
                path = tmp_path / method / f"{nid}_{s}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(noisy.astype(np.uint8)).save(path)
                files[(nid, method, s)] = path
    arguments = (originals, ids, files, ["z", "zc"], {"z": 1, "zc": 2})
    options = dict(device="cpu", pixel_size=8, batch_size=3)
    together = ident.identify_reconstructions(
        *arguments, ["pixels", "inception"], **options, reader_threads=2
    )
    separately = [
        row
        for name in ("pixels", "inception")
        for row in ident.identify_reconstructions(*arguments, [name], **options)
    ]
    assert together == separately  # values and the order: by extractor, then method, then feature
    assert [(r["method"], r["feature"]) for r in together] == [
        ("z", "pixels"),
        ("zc", "pixels"),
        ("z", "inception"),
        ("zc", "inception"),
    ]


def test_evaluation_is_the_same_with_reader_threads(tmp_path):
    originals = structured_images(5, seed=4)
    ids = list(range(100, 105))
    files = write_pngs(tmp_path, originals, {"zc": 2})
    arguments = (originals, ids, files, ["zc"], {"zc": 2}, ["PixCorr", "SSIM", "two-way:pixels"])
    inline = ev.evaluate_reconstructions(*arguments, samples="mean", batch_size=2, pixel_size=16)
    ahead = ev.evaluate_reconstructions(
        *arguments, samples="mean", batch_size=2, pixel_size=16, reader_threads=3
    )
    assert ahead == inline
    assert inline[0]["value"] < 0.99  # sample 1 is noisy: the scores are not trivially 1


def features_of(network, seed: int = 0) -> np.ndarray:
    import torch

    images = torch.from_numpy(structured_images(3, size=64, seed=seed).transpose(0, 3, 1, 2)).float() / 255
    return network(images)


def test_channels_last_placement_runs_the_gpu_layout_on_the_cpu(offline_field_networks):
    import torch

    plain = build_network("alexnet", input_size=224, device="cpu")
    gpu_like = build_network("alexnet", input_size=224, device="cpu", gpu_options=True)
    conv = gpu_like.model.features[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert plain.model.features[0].weight.is_contiguous()  # CPU runs keep the default layout
    expected, got = features_of(plain), features_of(gpu_like)
    for layer in expected:
        scale = np.abs(expected[layer]).max()
        np.testing.assert_allclose(got[layer], expected[layer], rtol=0, atol=1e-5 * scale, err_msg=layer)
    off = build_network("alexnet", input_size=224, device="cpu", gpu_options=True, channels_last=False)
    assert off.model.features[0].weight.is_contiguous()
    extractor = ident_extractors.get_extractor("inception", device="cpu", gpu_options=True)
    assert extractor.model.Conv2d_1a_3x3.conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_float16_networks_agree_with_float32_to_half_precision(offline_field_networks, skinny_clip_dir):
    import torch

    for name in ("alexnet", "clip"):
        full = build_network(name, input_size=224, device="cpu", clip_model=str(skinny_clip_dir))
        half = build_network(
            name,
            input_size=224,
            device="cpu",
            clip_model=str(skinny_clip_dir),
            network_dtype="float16",
            gpu_options=True,
        )
        assert next(half.model.parameters()).dtype == torch.float16
        expected, got = features_of(full, seed=1), features_of(half, seed=1)
        for layer in expected:
            assert got[layer].dtype == np.float32
            scale = np.abs(expected[layer]).max()
            # float16 keeps 11 bits: ~1e-3 of the layer's scale after a few layers, not 1e-6
            error = np.abs(got[layer] - expected[layer]).max() / scale
            assert 0 < error < 2e-2, (name, layer, error)
            for row in range(3):
                assert np.corrcoef(got[layer][row], expected[layer][row])[0, 1] > 0.999
    half_extractor = ident_extractors.get_extractor("alexnet", device="cpu", network_dtype="float16")
    assert half_extractor.model.features[0].weight.dtype == torch.float16


def test_placement_names_a_bad_dtype_and_unknown_options(offline_field_networks):
    with pytest.raises(
        ValueError, match=r"dtype 'bfloat16' is unknown; expected one of \('float32', 'float16'\)"
    ):
        NetworkPlacement(dtype="bfloat16")
    with pytest.raises(TypeError, match=r"unknown options \['pixel_size'\]"):
        build_network("alexnet", input_size=224, device="cpu", pixel_size=8)


def test_benchmark_prints_both_passes_and_the_projection_for_each_setting():
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    number = r"([0-9.]+)"
    script = Path(__file__).parent / "benchmarks" / "bench_evaluation.py"
    command = [
        sys.executable,
        str(script),
        "--tiny",
        "--threads",
        "1",
        "--gpu-options",
        "--reader-threads",
        "0",
        "2",
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"}
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    passes = re.findall(
        rf"^(identification|metrics) \(batch 4, float32, channels-last on, (\d) reader threads\): "
        rf"{number} img/s \(6 images in {number} s\), networks wait {number}% for the readers$",
        out,
        flags=re.M,
    )
    assert [(name, readers) for name, readers, *_ in passes] == [
        ("identification", "0"),
        ("metrics", "0"),
        ("identification", "2"),
        ("metrics", "2"),
    ], out
    for _, _, rate, wall, wait in passes:
        assert float(rate) > 0 and abs(float(rate) * float(wall) - 6) < 0.05 * 6
        assert 0 <= float(wait) < 100
    projected = re.findall(
        rf"^projected \(.*(\d) reader threads\): identification 11784 images \+ metrics 3928 images = "
        rf"{number} min/subject, {number} min for 4 subjects$",
        out,
        flags=re.M,
    )
    assert [row[0] for row in projected] == ["0", "2"], out
    for index, (_, minutes, four) in enumerate(projected):
        identification, metrics = float(passes[2 * index][2]), float(passes[2 * index + 1][2])
        expected = (11784 / identification + 3928 / metrics) / 60
        assert float(minutes) == pytest.approx(expected, rel=0.01, abs=0.01)
        assert float(four) == pytest.approx(4 * float(minutes), rel=0.001, abs=0.01)
