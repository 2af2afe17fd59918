"""Benchmark: images/s of z and c extraction, this pipeline against a one-image-at-a-time loop.

The loop mimics the paper's release: for every image it opens the stimulus file and reads one
image, resizes it, encodes it alone, and also decodes it (its script ran a needless decode per
image; a VAE decode is the smallest such waste), and for c it re-parses the COCO caption JSON
files for every image and encodes each caption alone.

Usage (CPU, toy world and toy model built in a temporary folder):

    python tests/benchmarks/bench_features.py [--images 120] [--device cpu] [--threads 1]
    python tests/benchmarks/bench_features.py --sd-configs --images 8   # SD v1.4 sizes, random weights

``--sd-configs`` times SD v1.4's real VAE and text encoder (built from the published configs with
random weights: same cost as the real ones) at 320 px; on a GPU, pass ``--device cuda``. The
figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "workflow" / "scripts"))

from brainldm.features import extract as F  # noqa: E402
from brainldm.nsd import layout as nsd  # noqa: E402


def timed(fn, repeat=1):
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best, result


def release_like_z(vae, stimuli, ids, size, seed, stimulus_size):
    """One image at a time, one seed stream, with a wasted decode per image."""
    from PIL import Image

    param = next(vae.parameters())
    generator = torch.Generator(device=param.device).manual_seed(seed)
    out = []
    with torch.no_grad():
        for n in ids:
            image = nsd.read_stimuli(stimuli, [n], image_size=stimulus_size)[0]  # opens the file per image
            image = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.LANCZOS))
            x = (
                torch.from_numpy(np.array(image))
                .permute(2, 0, 1)[None]
                .float()
                .div(127.5)
                .sub(1)
                .to(param.device, param.dtype)
            )
            latents = vae.encode(x).latent_dist.sample(generator=generator) * vae.config.scaling_factor
            vae.decode(latents / vae.config.scaling_factor)  # the needless decode
            out.append(latents.float().cpu().numpy())
    return np.concatenate(out)


def release_like_c(text_encoder, tokenizer, stim_info_path, caption_paths, ids):
    """Re-parse stim info and caption JSONs for every image; encode each caption alone."""
    out = []
    for n in ids:
        stim_info = nsd.read_stim_info(stim_info_path)
        coco = nsd.read_coco_captions(caption_paths)
        captions = nsd.captions_for(stim_info, coco, [n])[0]
        hidden = [F.encode_captions(text_encoder, tokenizer, [text])[0] for text in captions]
        out.append(np.mean(hidden, axis=0))
    return np.stack(out)


def pipeline_z(vae, stimuli, ids, size, seed, batch_size, per_sample, stimulus_size):
    out = []
    for start in range(0, len(ids), batch_size):
        batch = ids[start : start + batch_size]
        out.append(
            F.encode_z(
                vae,
                nsd.read_stimuli(stimuli, batch, image_size=stimulus_size),
                batch,
                size,
                "sample",
                seed,
                per_sample=per_sample,
            )
        )
    return np.concatenate(out)


def pipeline_c(text_encoder, tokenizer, stim_info_path, caption_paths, ids, batch_size, per_sample):
    stim_info = nsd.read_stim_info(stim_info_path)
    coco = nsd.read_coco_captions(caption_paths)  # parsed once
    captions = F.captions_by_nsd_id(stim_info, coco, ids)
    out = []
    for start in range(0, len(ids), batch_size):
        batch = ids[start : start + batch_size]
        out.append(
            F.encode_c(
                text_encoder,
                tokenizer,
                [captions[int(n)] for n in batch],
                batch_size=5 * batch_size,
                per_sample=per_sample,
            )
        )
    return np.concatenate(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=120)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sd-configs", action="store_true", help="SD v1.4 sizes (random weights) at 320 px")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32

    from brainldm.toy.world import ToyParams, write_toy_world

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_features_"))
    params = ToyParams()
    if not (work / "nsd" / nsd.stimuli_key()).exists():
        write_toy_world(work / "nsd", work / "coco", params)
    stimuli = work / "nsd" / nsd.stimuli_key()
    stim_info_path = work / "nsd" / nsd.stim_info_key()
    caption_paths = [work / "coco" / name for name in nsd.COCO_CAPTION_FILES]
    ids = np.sort(nsd.read_stim_info(stim_info_path)["nsdId"]).astype(np.int64)[: args.images]

    from brainldm.features.sd_model import build_components_from_configs, load_stable_diffusion

    model_dir = work / "model"
    if not model_dir.exists():
        from brainldm.toy.model import assemble_toy_model

        assemble_toy_model(model_dir)
    toy = load_stable_diffusion(str(model_dir), device=args.device, dtype=dtype)
    vae, text_encoder, tokenizer, size = toy.vae, toy.text_encoder, toy.tokenizer, params.image_size
    model_name = "toy model (VAE 16-32-32 ch, text 2x32)"
    if args.sd_configs:
        built = build_components_from_configs(components=("vae", "text_encoder"))
        vae, text_encoder = built["vae"].to(device), built["text_encoder"].to(device)
        if dtype != torch.float32:
            vae, text_encoder = vae.to(dtype=dtype), text_encoder.to(dtype=dtype)
        size = 320
        model_name = "SD v1.4 VAE + CLIP ViT-L/14 text encoder (published configs, random weights)"

    device_name = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} thread(s)"
    )
    print(f"device: {device_name}; {model_name}; {len(ids)} images at {size} px; batch {args.batch_size}")
    vae.eval()
    text_encoder.eval()
    # warm up
    pipeline_z(vae, stimuli, ids[:2], size, 42, 2, True, params.image_size)
    pipeline_c(text_encoder, tokenizer, stim_info_path, caption_paths, ids[:2], 2, True)
    rows = []
    with torch.no_grad():
        t, z_loop = timed(lambda: release_like_z(vae, stimuli, ids, size, 42, params.image_size))
        rows.append(("z", "one image at a time (release-like, with decode)", t))
        per_sample = device.type == "cpu"
        t, z_pipe = timed(
            lambda: pipeline_z(vae, stimuli, ids, size, 42, args.batch_size, per_sample, params.image_size)
        )
        rows.append(("z", f"pipeline ({'per-sample, bit-exact' if per_sample else 'batched'})", t))
        if per_sample:
            t, _ = timed(
                lambda: pipeline_z(vae, stimuli, ids, size, 42, args.batch_size, False, params.image_size)
            )
            rows.append(("z", "pipeline batched (GPU path)", t))
        t, c_loop = timed(lambda: release_like_c(text_encoder, tokenizer, stim_info_path, caption_paths, ids))
        rows.append(("c", "one image at a time (release-like, JSON re-parsed)", t))
        t, c_pipe = timed(
            lambda: pipeline_c(
                text_encoder, tokenizer, stim_info_path, caption_paths, ids, args.batch_size, per_sample
            )
        )
        rows.append(("c", f"pipeline ({'per-sample, bit-exact' if per_sample else 'batched'})", t))
        if per_sample:
            t, _ = timed(
                lambda: pipeline_c(
                    text_encoder, tokenizer, stim_info_path, caption_paths, ids, args.batch_size, False
                )
            )
            rows.append(("c", "pipeline batched (GPU path)", t))
    np.testing.assert_allclose(c_pipe, c_loop, rtol=0, atol=1e-3 if dtype == torch.float32 else 5e-2)
    baseline = {feature: seconds for feature, name, seconds in rows if name.startswith("one image")}
    print(f"{'feature':8}{'method':52}{'seconds':>9}{'images/s':>10}{'speed-up':>10}")
    for feature, name, seconds in rows:
        print(
            f"{feature:8}{name:52}{seconds:9.2f}{len(ids) / seconds:10.3g}{baseline[feature] / seconds:9.1f}x"
        )
    size_mb = sum(p.stat().st_size for p in caption_paths) / 1e6
    start = time.perf_counter()
    for p in caption_paths:
        json.loads(p.read_text())
    print(
        f"(toy caption JSONs: {size_mb:.2f} MB, parsed in {time.perf_counter() - start:.3f} s; COCO's "
        "captions_train2017.json is ~90 MB, so the release's per-image re-parse costs far more on NSD)"
    )


if __name__ == "__main__":
    main()
