"""Benchmark: the production Reconstructor at SD v1.4's sizes (random weights), per batch size.

Builds SD v1.4's VAE, CLIP text encoder, U-Net and DDIM scheduler from their published
configurations (:func:`brainldm.features.sd_model.sd_v1_4_configs`, random weights: the same
cost as the real ones) and runs :class:`brainldm.reconstruction.sampler.Reconstructor` on random decoded
``z`` (4, 40, 40) and ``c`` (77, 768). For each batch size it times one pipeline call of each
method (``z`` VAE decode, ``c`` generation, ``zc`` img2img) and then ``reconstruct()`` end to end
(PNG writing included), and prints:

- images/s of each method and of the end-to-end run (reconstructions of all methods per second);
- the share of the end-to-end wall time the device waited for the CPU (PIL resizes, host copies,
  PNG encoding or waiting for the PNG writer: ``Reconstructor.cpu_seconds``);
- peak GPU memory (``torch.cuda.max_memory_allocated``) of the batch size;
- the paper's workload projected from the end-to-end rate: 982 test images x (1 ``z`` + 5 ``c``
  samples of 50 steps + 5 ``zc`` samples of 40 steps) per subject, and 4 subjects. A run with
  other steps or samples is scaled by its U-Net image-steps (exact at ``--size sd``'s defaults).

Then, at the last batch size, each ``--variants`` option flipped from its default (speed
options of ``reconstruction`` in the config) with the end-to-end rate and the largest pixel
difference from the default's images.

Usage::

    python tests/benchmarks/bench_reconstruction.py --device cuda --batch-sizes 1 8 16 32
    python tests/benchmarks/bench_reconstruction.py --size tiny          # CPU, seconds
    python tests/benchmarks/bench_reconstruction.py --device cpu --image-size 64 --steps 2 --samples 1 \
        --batch-sizes 2                 # SD v1.4's networks on a CPU at 64 px: a check, minutes

``--size sd``: 512 px, 50 DDIM steps (``zc`` 40); ``small`` and ``tiny``: narrow networks, small
images and few steps, so that a CPU runs every branch in seconds (their projections describe
those toy-sized networks, not SD). ``--gpu-options`` applies the GPU-only options on a CPU too.
Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "workflow" / "scripts"))

from brainldm.features.sd_model import SDComponents, build_components_from_configs, sd_v1_4_configs  # noqa: E402
from brainldm.reconstruction import sampler as rec  # noqa: E402
from brainldm.reconstruction import shards as rec_shards  # noqa: E402

#: The paper's per-subject workload (see the module docstring).
N_TEST_IMAGES, N_SUBJECTS, PAPER_SAMPLES, PAPER_STEPS, PAPER_STRENGTH = 982, 4, 5, 50, 0.8

#: Options flipped one at a time by ``--variants`` (name -> settings changes).
VARIANTS = {
    "sync-writer": {"background_writer": False},
    "classic-attention": {"fused_attention": False},
    "no-channels-last": {"channels_last": False},
    "no-tf32": {"tf32": False},
    "compile": {"compile_unet": True},
}


def configs_for(size: str) -> tuple[dict, dict]:
    """Component configurations and run settings of ``--size``.

    Returns (configs as :func:`sd_v1_4_configs`, dict with image_size, z_latent, ddim_steps).
    """
    configs = sd_v1_4_configs()
    if size == "sd":
        return configs, {"image_size": 512, "z_latent": 40, "ddim_steps": PAPER_STEPS}
    # the same block layout as SD (4 levels, cross-attention in the first three, x8 VAE), narrow
    width = {"small": 64, "tiny": 16}[size]
    hidden = {"small": 128, "tiny": 32}[size]
    configs["unet"].update(
        block_out_channels=[width, 2 * width, 4 * width, 4 * width],
        layers_per_block=1,
        cross_attention_dim=hidden,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    configs["vae"].update(
        block_out_channels=[width // 2, width, width, width], layers_per_block=1, norm_num_groups=8
    )
    configs["text_encoder"].update(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=1,
        num_attention_heads=2,
        projection_dim=hidden,
    )
    run = {
        "small": {"image_size": 128, "z_latent": 10, "ddim_steps": 10},
        "tiny": {"image_size": 64, "z_latent": 5, "ddim_steps": 3},
    }
    return configs, run[size]


def tokenizer_in(folder: Path):
    """A CLIP tokenizer of byte-level tokens only (the empty prompt needs its special tokens only)."""
    from transformers import CLIPTokenizer

    from brainldm.toy.model import toy_vocabulary, write_tokenizer_files

    vocab, merges = toy_vocabulary([["a photo"]])
    write_tokenizer_files(folder, vocab, merges, max_length=77)
    return CLIPTokenizer.from_pretrained(folder)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> tuple[float, object]:
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - start, result


def unet_image_steps(n_samples: int, steps: int, strength: float) -> int:
    """U-Net image-steps of one test image (``c`` then ``zc``; guidance doubles each)."""
    return n_samples * steps + n_samples * int(steps * strength)


def warm_up(reconstructor, z, c, ids, out_dir: Path) -> float:
    """``reconstruct()`` at 2 DDIM steps, same batches: kernels loaded (compiled, for
    ``compile_unet``), allocator grown and the writer thread started before anything is timed.
    Returns its seconds."""
    full = reconstructor.settings
    reconstructor.settings = dataclasses.replace(full, ddim_steps=2)
    try:
        return timed(
            lambda: rec_shards.reconstruct(reconstructor, z, c, ids, out_dir, progress=False),
            reconstructor.device,
        )[0]
    finally:
        reconstructor.settings = full


def run_end_to_end(reconstructor, z, c, ids, out_dir: Path) -> tuple[float, dict, list]:
    """``reconstruct()`` timed; returns (seconds, cpu_seconds by stage, the written images)."""
    reconstructor.cpu_seconds.clear()
    seconds, manifest = timed(
        lambda: rec_shards.reconstruct(reconstructor, z, c, ids, out_dir, progress=False),
        reconstructor.device,
    )
    from PIL import Image

    images = [np.asarray(Image.open(out_dir / row[3])) for row in manifest]
    return seconds, dict(reconstructor.cpu_seconds), images


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    parser.add_argument("--size", default="sd", choices=["sd", "small", "tiny"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the size's)")
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="px of c and zc (default: the size's; a CPU check of SD's networks)",
    )
    parser.add_argument("--samples", type=int, default=PAPER_SAMPLES, help="samples of c and zc per image")
    parser.add_argument(
        "--images",
        type=int,
        default=None,
        help="test images of each end-to-end run (default: fill one batch)",
    )
    parser.add_argument("--variants", nargs="*", default=[], choices=sorted(VARIANTS))
    parser.add_argument("--gpu-options", action="store_true", help="apply the GPU-only options on a CPU too")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--compile-backend",
        default="inductor",
        help="torch.compile backend of the compile variant (eager: TorchDynamo's capture only, for a CPU)",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.compile_backend != "inductor":
        import functools

        torch.compile = functools.partial(torch.compile, backend=args.compile_backend)

    from brainldm.features.sd_model import resolve_device, resolve_dtype

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    configs, run = configs_for(args.size)
    steps = args.steps or run["ddim_steps"]
    if args.image_size:
        run = {**run, "image_size": args.image_size}
    hidden = configs["text_encoder"]["hidden_size"]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_reconstruction_") as tmp:
        tmp = Path(tmp)
        # the modules' random weights drawn on the device itself: SD's 1.07 B parameters take
        # ~40 s to initialise on 2 CPU cores, a moment on a GPU (the scheduler's tables stay on
        # the CPU, as diffusers keeps them)
        with device:
            built = build_components_from_configs(configs, components=("vae", "text_encoder", "unet"))
        built.update(build_components_from_configs(configs, components=("scheduler",)))
        components = SDComponents(
            **{name: built[name].to(device, dtype) for name in ("vae", "text_encoder", "unet")},
            scheduler=built["scheduler"],
            tokenizer=tokenizer_in(tmp / "tokenizer"),
            device=device,
            dtype=dtype,
        )
        name = (
            torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else f"CPU, {torch.get_num_threads()} thread(s)"
        )
        n_params = sum(p.numel() for p in components.unet.parameters()) / 1e6
        print(
            f"device: {name}; dtype {str(dtype).replace('torch.', '')}; size {args.size}: U-Net "
            f"{n_params:.1f} M parameters, {run['image_size']} px, "
            f"z latent {run['z_latent']}x{run['z_latent']}, "
            f"{steps} DDIM steps (zc {int(steps * 0.8)}), {args.samples} samples; "
            f"built in {time.perf_counter() - started:.1f} s",
            flush=True,
        )
        base = dict(
            n_samples=args.samples, image_size=run["image_size"], ddim_steps=steps, strength=0.8, seed=42
        )
        run_steps = unet_image_steps(args.samples, steps, 0.8)
        paper_steps = unet_image_steps(PAPER_SAMPLES, PAPER_STEPS, PAPER_STRENGTH)
        rng = np.random.default_rng(0)
        gpu_options = True if args.gpu_options else None
        last = {}
        for batch in args.batch_sizes:
            settings = rec.ReconstructionSettings(batch_size=batch, **base)
            reconstructor = rec.Reconstructor(components, settings, per_image=False, gpu_options=gpu_options)
            n_images = args.images or max(1, math.ceil(batch / args.samples))
            z = rng.standard_normal((max(batch, n_images), 4, run["z_latent"], run["z_latent"])).astype(
                np.float32
            )
            c = rng.standard_normal((max(batch, n_images), 77, hidden)).astype(np.float32)
            ids = np.arange(n_images) + 1000
            jobs = [(int(i), 0) for i in range(batch)]
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            warm_up(reconstructor, z[:n_images], c[:n_images], ids, tmp / f"b{batch}-warm")
            xz = reconstructor.decode_z(z[:batch])
            t_z, xz = timed(lambda: reconstructor.decode_z(z[:batch]), device)
            t_c, _ = timed(lambda: reconstructor.generate_c(c[:batch], jobs), device)
            t_zc, _ = timed(lambda: reconstructor.img2img_zc(list(xz), c[:batch], jobs), device)
            wall, waits, images = run_end_to_end(
                reconstructor, z[:n_images], c[:n_images], ids, tmp / f"b{batch}"
            )
            peak = (
                f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"
                if device.type == "cuda"
                else "n/a (CPU)"
            )
            n_out = len(images)
            per_image = wall / n_images * paper_steps / run_steps
            minutes = per_image * N_TEST_IMAGES / 60
            wait_text = ", ".join(f"{k} {v:.2f} s" for k, v in sorted(waits.items()))
            print(
                f"batch {batch}: z {batch / t_z:.4g} img/s, c {batch / t_c:.4g} img/s, "
                f"zc {batch / t_zc:.4g} img/s, "
                f"end-to-end {n_out / wall:.4g} img/s ({n_out} PNGs of {n_images} images in {wall:.2f} s), "
                f"GPU waits {100 * sum(waits.values()) / wall:.2f}% ({wait_text}), "
                f"peak GPU memory {peak}, projected {minutes:.4g} min/subject, "
                f"{N_SUBJECTS * minutes:.4g} min for {N_SUBJECTS} subjects",
                flush=True,
            )
            last = {"batch": batch, "images": images, "wall": wall, "n": n_images, "z": z, "c": c, "ids": ids}
        # each Reconstructor sets attention, memory layout and TF32 from its settings; compiling
        # cannot be undone, so it runs last
        for variant in sorted(args.variants, key=lambda name: name == "compile"):
            settings = rec.ReconstructionSettings(batch_size=last["batch"], **{**base, **VARIANTS[variant]})
            reconstructor = rec.Reconstructor(components, settings, per_image=False, gpu_options=gpu_options)
            n = last["n"]
            setup = warm_up(reconstructor, last["z"][:n], last["c"][:n], last["ids"], tmp / f"{variant}-warm")
            wall, waits, images = run_end_to_end(
                reconstructor, last["z"][:n], last["c"][:n], last["ids"], tmp / f"{variant}"
            )
            diff = max(
                int(np.abs(a.astype(int) - b.astype(int)).max()) for a, b in zip(images, last["images"])
            )
            print(
                f"variant {variant} (batch {last['batch']}): end-to-end {len(images) / wall:.4g} img/s, "
                f"{last['wall'] / wall:.3g}x the defaults, "
                f"GPU waits {100 * sum(waits.values()) / wall:.2f}%, "
                f"max pixel difference {diff} levels, warm-up (2 steps) {setup:.1f} s",
                flush=True,
            )
        usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(f"peak host memory {usage:.2f} GiB; total {time.perf_counter() - started:.1f} s", flush=True)


if __name__ == "__main__":
    main()
