"""Benchmark: the identification and metric networks at their real sizes (random weights).

Builds the evaluation's real architectures with random weights (torchvision's AlexNet, Inception
v3, EfficientNet-B1 and ResNet-50 (SwAV's trunk); CLIP ViT-L/14 from its published
configuration), writes ``--images`` reconstruction-like PNGs at 512 px beside 425 px originals
(NSD's stimulus size), and times the production code's two passes over them, per setting:

- identification: :func:`brainldm.evaluation.extractors.extract_features` with the paper's three
  networks (Inception, AlexNet, CLIP, fed the paper's 299 px preprocessing);
- metrics: :func:`brainldm.evaluation.evaluate.scored_features` with the eight metrics' networks
  (MindEye's protocol: AlexNet 256, Inception 342, CLIP 224, EffNet-B 255, SwAV 224) and
  PixCorr and SSIM against the originals.

First it prints the CPU work per image on one thread (reading a PNG, the paper's preprocessing,
the metrics' preparation): a GPU pass at ``r`` images/s needs about ``r x ms / 1000`` reader
threads to never wait. Then, for each setting (batch size x network dtype x reader threads x
channels-last), it prints images/s of each pass, the share of the pass the networks waited for the
readers (the time spent waiting for the next prepared batch), peak GPU memory, and the paper's
evaluation workload projected from those rates: per subject, identification reads the 982
originals and 982 x (1 ``z`` + 5 ``c`` + 5 ``zc``) samples, the metrics (first sample) the
originals and 982 x 3 reconstructions; then 4 subjects. Figures are printed, never asserted.

Usage::

    python tests/benchmarks/bench_evaluation.py --device cuda --images 256 --batch-sizes 32 64 \
        --dtypes float32 float16 --reader-threads 0 4
    python tests/benchmarks/bench_evaluation.py --tiny     # CPU, 6 images, 2 of CLIP's 24 layers

``--tiny`` keeps every network's architecture and input size but CLIP's depth (2 of 24 layers),
so a CPU runs each branch in well under a minute; its projections describe that cut network.
``--gpu-options`` applies the GPU-only placement (channels-last) on a CPU too.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[2] / "workflow" / "scripts"))
sys.path.insert(0, str(HERE.parents[1]))  # tests/: CLIP ViT-L/14's published configuration

from field_networks import CLIP_VIT_L14_VISION  # noqa: E402

from brainldm.evaluation import evaluate as ev  # noqa: E402
from brainldm.evaluation import extractors as ex  # noqa: E402
from brainldm.evaluation.networks import NETWORK_LAYERS, NetworkPlacement, build_network  # noqa: E402

#: The paper's evaluation workload per subject (see the module docstring).
N_TEST_IMAGES, N_SUBJECTS, PAPER_SAMPLES, N_METHODS = 982, 4, 5, 3
IDENTIFICATION_IMAGES = N_TEST_IMAGES * (1 + 1 + 2 * PAPER_SAMPLES)
METRIC_IMAGES = N_TEST_IMAGES * (1 + N_METHODS)
ORIGINAL_SIZE, RECONSTRUCTION_SIZE = 425, 512


def random_networks(clip_layers: int) -> dict[str, torch.nn.Module]:
    """The evaluation's architectures with random weights, on the CPU, by field network name."""
    import torchvision.models as tvm
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    return {
        "alexnet": tvm.alexnet(weights=None),
        # the weights route builds it with Google's input scaling and the auxiliary classifier
        "inception": tvm.inception_v3(
            weights=None, aux_logits=True, init_weights=False, transform_input=True
        ),
        "effnet": tvm.efficientnet_b1(weights=None),
        "swav": tvm.resnet50(weights=None),
        "clip": CLIPVisionModelWithProjection(
            CLIPVisionConfig(**{**CLIP_VIT_L14_VISION, "num_hidden_layers": clip_layers})
        ),
    }


def smooth_images(n: int, size: int, seed: int) -> np.ndarray:
    """(n, size, size, 3) uint8: smooth colour fields plus noise (PNGs of a realistic size)."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.random((n, 3, 8, 8), dtype=np.float32))
    smooth = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic").numpy()
    noisy = smooth * 255 + rng.normal(0, 4, smooth.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1).copy()


class WaitClock:
    """Wraps ``prepared_batches`` where the evaluation imports it and adds up the seconds its
    callers wait for the next batch (the networks idle meanwhile)."""

    def __init__(self):
        self.seconds = 0.0
        self._original = ex.prepared_batches

    def __enter__(self):
        def waited(*args, **kwargs):
            batches = self._original(*args, **kwargs)
            while True:
                start = time.perf_counter()
                try:
                    item = next(batches)
                except StopIteration:
                    return
                finally:
                    self.seconds += time.perf_counter() - start
                yield item

        ex.prepared_batches = ev.prepared_batches = waited
        return self

    def __exit__(self, *_exc):
        ex.prepared_batches = ev.prepared_batches = self._original


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_pass(run, device: torch.device) -> tuple[float, float]:
    """(wall seconds, seconds waiting for readers) of ``run()``."""
    synchronize(device)
    with WaitClock() as clock:
        start = time.perf_counter()
        run()
        synchronize(device)
        wall = time.perf_counter() - start
    return wall, clock.seconds


def cpu_costs(paths: list, originals: np.ndarray, protocol) -> dict[str, float]:
    """Milliseconds per image, on the calling thread, of the CPU work the readers do: reading a
    PNG, the paper's 299 px preprocessing (identification), and the metrics' preparation (uint8
    tensor, PixCorr and SSIM at 425 px against the original)."""
    from brainldm.evaluation.batches import read_images

    n = min(len(paths), 16)
    start = time.perf_counter()
    images = read_images(paths[:n])
    read = time.perf_counter() - start
    start = time.perf_counter()
    ex.paper_preprocess(images)
    paper = time.perf_counter() - start
    start = time.perf_counter()
    ev.scored_features(images, {}, {}, protocol, n, originals=originals[:n], pixel_kinds=("pixcorr", "ssim"))
    metrics = time.perf_counter() - start
    return {"read": 1e3 * read / n, "paper": 1e3 * paper / n, "metrics": 1e3 * metrics / n}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=64, help="reconstruction PNGs per pass")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32])
    parser.add_argument("--dtypes", nargs="+", default=["float32"], choices=["float32", "float16"])
    parser.add_argument("--reader-threads", type=int, nargs="+", default=[0, 4])
    parser.add_argument(
        "--channels-last",
        nargs="+",
        default=["on"],
        choices=["on", "off"],
        help="convolutional layout on a GPU",
    )
    parser.add_argument("--passes", nargs="+", default=["identification", "metrics"])
    parser.add_argument("--tiny", action="store_true", help="CPU check: 6 images, CLIP cut to 2 layers")
    parser.add_argument(
        "--gpu-options", action="store_true", help="apply the GPU-only placement on a CPU too"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.tiny:
        args.images, args.batch_sizes = 6, [4]
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    clip_layers = 2 if args.tiny else CLIP_VIT_L14_VISION["num_hidden_layers"]
    print(f"device {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; "
        f"CLIP ViT-L/14 with {clip_layers} layers"
    )
    networks_cpu = random_networks(clip_layers)
    protocol = ev.PROTOCOLS["mindeye"]
    originals = smooth_images(args.images, ORIGINAL_SIZE, seed=1)
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        from PIL import Image

        for index, image in enumerate(smooth_images(args.images, RECONSTRUCTION_SIZE, seed=2)):
            paths.append(Path(folder) / f"nsd{index}_s0.png")
            Image.fromarray(image).save(paths[-1])
        kb = sum(path.stat().st_size for path in paths) / len(paths) / 1024
        print(
            f"{args.images} PNGs of {RECONSTRUCTION_SIZE} px ({kb:.0f} KB each), originals {ORIGINAL_SIZE} px"
        )
        costs = cpu_costs(paths, originals, protocol)
        print(
            f"CPU work per image, one thread: read PNG {costs['read']:.1f} ms, paper preprocessing "
            f"{costs['paper']:.1f} ms, metrics' preparation (PixCorr, SSIM) {costs['metrics']:.1f} ms",
            flush=True,
        )
        rates = {}
        settings = itertools.product(args.batch_sizes, args.dtypes, args.channels_last, args.reader_threads)
        for batch_size, dtype, layout, readers in settings:
            placement = NetworkPlacement(
                device=str(device),
                dtype=dtype,
                channels_last=layout == "on",
                gpu_options=True if args.gpu_options else None,
            )
            label = f"batch {batch_size}, {dtype}, channels-last {layout}, {readers} reader threads"
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            for name in args.passes:
                run = build_pass(
                    name, networks_cpu, placement, protocol, originals, paths, batch_size, readers
                )
                run(warm_up=True)  # lazy initialisation, cuDNN's algorithm search
                wall, waited = timed_pass(run, device)
                rates[name, batch_size, dtype, layout, readers] = args.images / wall
                memory = (
                    f", peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"
                    if device.type == "cuda"
                    else ""
                )
                print(
                    f"{name} ({label}): {args.images / wall:.2f} img/s "
                    f"({args.images} images in {wall:.2f} s), "
                    f"networks wait {100 * waited / wall:.1f}% for the readers{memory}",
                    flush=True,
                )
            if set(args.passes) == {"identification", "metrics"}:
                key = (batch_size, dtype, layout, readers)
                minutes = (
                    IDENTIFICATION_IMAGES / rates[("identification", *key)]
                    + METRIC_IMAGES / rates[("metrics", *key)]
                ) / 60
                print(
                    f"projected ({label}): identification {IDENTIFICATION_IMAGES} images + metrics "
                    f"{METRIC_IMAGES} images = {minutes:.2f} min/subject, {N_SUBJECTS * minutes:.2f} min for "
                    f"{N_SUBJECTS} subjects",
                    flush=True,
                )


def build_pass(name, networks_cpu, placement, protocol, originals, paths, batch_size, readers):
    """A callable running one pass (``run(warm_up=True)`` runs its first batch only)."""
    if name == "identification":
        extractors = [
            ex.InceptionExtractor(placement, model=copy.deepcopy(networks_cpu["inception"])),
            ex.AlexNetExtractor(placement, model=copy.deepcopy(networks_cpu["alexnet"])),
            ex.ClipExtractor(placement=placement, model=copy.deepcopy(networks_cpu["clip"])),
        ]

        def run(warm_up=False):
            images = paths[:batch_size] if warm_up else paths
            ex.extract_features(images, extractors, batch_size, readers)

        return run
    if name == "metrics":
        networks = {
            network: build_network(
                network,
                input_size=protocol.input_sizes[network],
                model=copy.deepcopy(networks_cpu[network]),
                device=placement.device,
                network_dtype=placement.dtype,
                channels_last=placement.channels_last,
                gpu_options=placement.gpu_options,
            )
            for network in NETWORK_LAYERS
        }

        def run(warm_up=False):
            images = paths[:batch_size] if warm_up else paths
            ev.scored_features(
                images,
                networks,
                {},
                protocol,
                batch_size,
                reader_threads=readers,
                originals=originals,
                pixel_kinds=("pixcorr", "ssim"),
            )

        return run
    raise SystemExit(f"--passes: {name!r} is unknown; expected identification or metrics")


if __name__ == "__main__":
    main()
