"""Stable Diffusion features of the seen images: ``z`` (VAE latents) and ``c`` (caption embeddings).

- ``z``: the image resized to ``z_image_size`` (Lanczos), scaled to [-1, 1], VAE-encoded; a
  sample of the posterior (or its mean) times ``vae.config.scaling_factor``. SD v1.4 at 320 px:
  (4, 40, 40). The sampling noise of image ``nsdId`` comes from its own generator seeded by
  ``(seed, nsdId)``, so a feature never depends on batch size, sharding or order.
- ``c``: every caption of the image tokenized and padded to the tokenizer's 77 tokens, the text
  encoder's last hidden state, averaged over the captions: (77, 768) for SD v1.4.

On CPU (``per_sample``, the default there) every image and caption goes through the networks on
its own, so a value is the same bit for bit whatever the batch size, sharding or order (for a
given torch thread count, which sets how reductions are split): oneDNN and NNPACK convolutions,
GEMMs and fused attention choose their algorithm, blocking or thread split from the batch size,
so batched CPU results differ in the last bits. On a GPU the batches are real (that is where
batching pays) and may round differently with the batch size, within float error; the
per-image seeding still makes them independent of sharding and order.

Extraction runs in shards (contiguous slices of the sorted nsdIds); each shard writes chunks of
``chunk_size`` images as it goes and resumes from them after an interruption. Shards are merged
into one array per feature, rows indexed by ascending nsdId:
``{feature}.npy``, ``{feature}_nsd_ids.npy`` (int64) and ``{feature}.json`` (model and settings).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from brainldm.core.atomic import save_npy, write_text
from brainldm.features.store import CHUNK_SIZE, ids_path, record_path

log = logging.getLogger(__name__)

FEATURES = ("z", "c")


@dataclass(frozen=True)
class FeatureSettings:
    """Config section ``features`` (what changes values is recorded beside the arrays).

    Attributes
    ----------
    z_image_size : int
        Side in pixels the image is resized to before the VAE (paper: 320).
    posterior : {"sample", "mean"}
        ``sample`` (paper) draws from the VAE posterior, ``mean`` takes its mean.
    batch_size : int
        Images per forward pass (no effect on the values on CPU).
    seed : int
        Seed of the posterior noise (paper: 42), combined with each nsdId.
    c_dtype : {"float16", "float32"}
        On-disk dtype of ``c`` (computed in float32). ``z`` is always float32.
    n_shards : int
        Number of extraction jobs per feature.
    """

    z_image_size: int = 320
    posterior: str = "sample"
    batch_size: int = 16
    seed: int = 42
    c_dtype: str = "float16"
    n_shards: int = 8

    @classmethod
    def from_config(cls, features: dict) -> "FeatureSettings":
        return cls(**{k: features[k] for k in cls.__dataclass_fields__ if k in features})

    def value_settings(self, feature: str) -> dict:
        """Settings that change the values of ``feature`` (resume and merge check them)."""
        if feature == "z":
            return {"z_image_size": self.z_image_size, "posterior": self.posterior, "seed": self.seed}
        return {"c_dtype": self.c_dtype}


# --------------------------------------------------------------------------- images and shards


def captions_by_nsd_id(
    stim_info: dict, coco_captions: dict[int, list[str]], nsd_ids: Sequence[int]
) -> dict[int, list[str]]:
    """Every caption of each image: ``{nsdId: [caption, ...]}``, joined through stim-info's cocoId.

    ``coco_captions`` is :func:`brainldm.nsd.layout.read_coco_captions` of the caption JSONs, parsed once
    per job (the paper's release re-parsed them for every image).
    """
    from brainldm.nsd.layout import captions_for

    ids = [int(n) for n in nsd_ids]
    return dict(zip(ids, captions_for(stim_info, coco_captions, ids)))


def z_noise_seed(seed: int, nsd_id: int) -> int:
    """Seed of the posterior noise of image ``nsd_id``: a 63-bit hash of ``(seed, nsd_id)``."""
    state = np.random.SeedSequence([int(seed), int(nsd_id), 0x5A]).generate_state(2, np.uint32)
    return int((int(state[0]) << 32 | int(state[1])) & (2**63 - 1))


def resize_for_z(images: np.ndarray, size: int) -> torch.Tensor:
    """Lanczos-resize (n, H, W, 3) uint8 images to (n, 3, size, size) float32 in [-1, 1]."""
    from PIL import Image

    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images: expected (n, H, W, 3) uint8, got {images.shape} {images.dtype}")
    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        if image.shape[:2] == (size, size):
            out[i] = image
        else:
            out[i] = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.LANCZOS))
    x = torch.from_numpy(out).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


# --------------------------------------------------------------------------- z and c


@torch.no_grad()
def encode_z(
    vae,
    images: np.ndarray,
    nsd_ids: Sequence[int],
    size: int = 320,
    posterior: str = "sample",
    seed: int = 42,
    per_sample: bool = False,
) -> np.ndarray:
    """``z`` of one batch of images.

    Parameters
    ----------
    vae : diffusers.AutoencoderKL
    images : (n, H, W, 3) uint8
    nsd_ids : (n,) int
        Ids of the images (seed their posterior noise).
    size : int
        Resize side (multiple of the VAE's downsampling factor).
    posterior : {"sample", "mean"}
    seed : int
    per_sample : bool
        Encode the images one by one (bit-identical whatever the batch; CPU default).

    Returns
    -------
    z : (n, latent_channels, size / f, size / f) float32
        Posterior sample (or mean) times ``vae.config.scaling_factor``.
    """
    if posterior not in ("sample", "mean"):
        raise ValueError(f"features.posterior {posterior!r}: expected 'sample' or 'mean'")
    if len(images) != len(nsd_ids):
        raise ValueError(f"encode_z: {len(images)} images but {len(nsd_ids)} nsd_ids")
    param = next(vae.parameters())
    x = resize_for_z(images, size).to(param.device, param.dtype)
    if per_sample:
        dists = [vae.encode(x[i : i + 1]).latent_dist for i in range(len(x))]
        mean = torch.cat([d.mean for d in dists]).float()
        std = torch.cat([d.std for d in dists]).float()
    else:
        dist = vae.encode(x).latent_dist
        mean, std = dist.mean.float(), dist.std.float()
    if posterior == "sample":
        noise = torch.stack(
            [
                torch.randn(mean.shape[1:], generator=torch.Generator().manual_seed(z_noise_seed(seed, n)))
                for n in nsd_ids
            ]
        ).to(mean.device)
        latents = mean + std * noise
    else:
        latents = mean
    return (latents * float(vae.config.scaling_factor)).cpu().numpy().astype(np.float32)


def text_max_length(tokenizer, text_encoder) -> int:
    """Token length c is padded to: the tokenizer's (77 for CLIP), checked against the encoder."""
    length = int(tokenizer.model_max_length)
    positions = int(text_encoder.config.max_position_embeddings)
    if length > positions:
        raise ValueError(
            f"tokenizer model_max_length {length} exceeds the text encoder's "
            f"{positions} positions; the model folder's tokenizer_config.json is wrong"
        )
    return length


@torch.no_grad()
def encode_captions(
    text_encoder, tokenizer, captions: Sequence[str], batch_size: int = 64, per_sample: bool = False
) -> np.ndarray:
    """Last hidden state of each caption, padded to max length: (n_captions, 77, hidden) float32.

    ``per_sample`` runs the captions one by one (bit-identical whatever the batch; CPU default).
    """
    length = text_max_length(tokenizer, text_encoder)
    batch_size = 1 if per_sample else batch_size
    device = next(text_encoder.parameters()).device
    out = []
    for start in range(0, len(captions), batch_size):
        tokens = tokenizer(
            list(captions[start : start + batch_size]),
            padding="max_length",
            max_length=length,
            truncation=True,
            return_tensors="pt",
        )
        hidden = text_encoder(tokens.input_ids.to(device)).last_hidden_state
        out.append(hidden.float().cpu().numpy())
    if not out:
        hidden = int(text_encoder.config.hidden_size)
        return np.zeros((0, length, hidden), dtype=np.float32)
    return np.concatenate(out).astype(np.float32, copy=False)


def encode_c(
    text_encoder, tokenizer, captions: Sequence[Sequence[str]], batch_size: int = 64, per_sample: bool = False
) -> np.ndarray:
    """``c`` of images: mean over each image's captions of their last hidden states.

    Parameters
    ----------
    captions : list (n_images) of list of str
        All captions of each image (at least one each).
    batch_size : int
        Captions per text-encoder pass.
    per_sample : bool
        One caption per pass (see :func:`encode_captions`).

    Returns
    -------
    c : (n_images, 77, hidden) float32
    """
    for i, image_captions in enumerate(captions):
        if len(image_captions) == 0:
            raise ValueError(f"encode_c: image {i} of the batch has no caption")
    flat = [caption for image_captions in captions for caption in image_captions]
    hidden = encode_captions(text_encoder, tokenizer, flat, batch_size=batch_size, per_sample=per_sample)
    out, start = [], 0
    for image_captions in captions:
        stop = start + len(image_captions)
        out.append(hidden[start:stop].mean(axis=0))
        start = stop
    return np.stack(out).astype(np.float32, copy=False)


# --------------------------------------------------------------------------- shards


def chunk_dir(shard_path: str | os.PathLike) -> Path:
    """Folder of a shard's resumable chunks (beside the shard file, removed when it is done)."""
    shard_path = Path(shard_path)
    return shard_path.with_name(shard_path.name.removesuffix(".npy") + ".chunks")


def extract_shard(
    feature: str,
    compute: Callable[[np.ndarray], np.ndarray],
    nsd_ids: np.ndarray,
    out_path: str | os.PathLike,
    batch_size: int,
    out_dtype: str | np.dtype = "float32",
    settings: dict | None = None,
    record: dict | None = None,
    chunk_size: int = CHUNK_SIZE,
    progress: bool = True,
) -> np.ndarray:
    """Compute ``feature`` for ``nsd_ids`` in batches, resumably; write ``out_path`` (.npy).

    Parameters
    ----------
    feature : str
        Name, for messages.
    compute : callable
        ``compute(batch_nsd_ids) -> (len(batch), ...) float32``.
    nsd_ids : (n,) int64
        The shard's images, ascending.
    out_path : path
        Shard array (n, ...) in ``out_dtype``; ``{stem}_nsd_ids.npy`` is written beside it.
    batch_size : int
    settings : dict, optional
        What determines the values; chunks left by a run with other settings (or other ids,
        model, device or dtype, as named in ``record``) are discarded.
    record : dict, optional
        Written as ``{stem}.json`` beside the shard (model, settings) for the merge to check.
    chunk_size : int
        Images per chunk file. Chunks are written atomically; a rerun skips finished ones.

    Returns
    -------
    (n, ...) array in ``out_dtype``.
    """
    from tqdm import tqdm

    out_path = Path(out_path)
    nsd_ids = np.asarray(nsd_ids, dtype=np.int64)
    parts = chunk_dir(out_path)
    model = (record or {}).get("model", {})
    stamp = json.dumps(
        {
            "feature": feature,
            "nsd_ids_sha1": hashlib.sha1(nsd_ids.tobytes()).hexdigest(),
            "dtype": str(np.dtype(out_dtype)),
            "chunk_size": chunk_size,
            "settings": settings or {},
            "model": {key: model.get(key) for key in ("model_id", "revision", "device", "dtype")},
            "per_sample": (record or {}).get("per_sample"),
        },
        sort_keys=True,
    )
    if parts.exists() and (
        not (parts / "settings.json").exists() or (parts / "settings.json").read_text() != stamp
    ):
        log.warning("%s: discarding chunks of an earlier run with other settings in %s", feature, parts)
        shutil.rmtree(parts)
    parts.mkdir(parents=True, exist_ok=True)
    write_text(parts / "settings.json", stamp)
    starts = list(range(0, len(nsd_ids), chunk_size))
    done = [s for s in starts if (parts / f"{s:07d}.npy").exists()]
    if done:
        log.info("%s: resuming, %d of %d chunks already done", feature, len(done), len(starts))
    bar = tqdm(total=len(nsd_ids), desc=f"{feature} {out_path.stem}", unit="img", disable=not progress)
    bar.update(sum(min(chunk_size, len(nsd_ids) - s) for s in done))
    for start in starts:
        path = parts / f"{start:07d}.npy"
        if path.exists():
            continue
        ids = nsd_ids[start : start + chunk_size]
        values = []
        for b in range(0, len(ids), batch_size):
            values.append(compute(ids[b : b + batch_size]))
            bar.update(len(ids[b : b + batch_size]))
        save_npy(path, np.concatenate(values).astype(out_dtype, copy=False))
    bar.close()
    chunks = [np.load(parts / f"{s:07d}.npy") for s in starts]
    if chunks:
        array = np.concatenate(chunks)
    else:
        array = np.zeros((0,), dtype=out_dtype)
    save_npy(ids_path(out_path), nsd_ids)
    write_text(
        record_path(out_path),
        json.dumps({**(record or {}), "value_settings": settings or {}}, indent=2) + "\n",
    )
    save_npy(out_path, array)
    shutil.rmtree(parts, ignore_errors=True)
    return array


def extract_feature_shard(
    feature: str,
    components,
    nsd_ids: np.ndarray,
    out_path: str | os.PathLike,
    settings: FeatureSettings,
    read_images: Callable[[np.ndarray], np.ndarray] | None = None,
    captions: dict[int, list[str]] | None = None,
    progress: bool = True,
    chunk_size: int = CHUNK_SIZE,
    record: dict | None = None,
    per_sample: bool | None = None,
) -> np.ndarray:
    """Extract ``feature`` ("z" or "c") for one shard's ``nsd_ids`` and write it.

    Parameters
    ----------
    components : brainldm.features.sd_model.SDComponents
        ``vae`` for z; ``text_encoder`` and ``tokenizer`` for c.
    nsd_ids : (n,) int64 ascending
    read_images : callable, for z
        ``read_images(nsd_ids) -> (n, H, W, 3) uint8`` in the order asked; it should check its
        file (:func:`brainldm.nsd.layout.read_stimuli` does), as it is called once on the first
        image before any chunk is written.
    captions : dict nsdId -> list of str, for c
        Every caption of each image (parsed once by the caller).
    per_sample : bool, optional
        One image (caption) per network pass; default: on CPU only (bit-identical whatever the
        batch size); on GPU the batches are real.
    """
    if per_sample is None:
        per_sample = getattr(components, "device", torch.device("cpu")).type == "cpu"
    if feature == "z":
        if read_images is None:
            raise ValueError("extract z: read_images is required")
        if len(nsd_ids):
            # One image read before anything is written: a reader that refuses its file (a
            # stimulus brick of the wrong size or dtype) stops the shard with nothing on disk.
            read_images(np.asarray(nsd_ids[:1]))
        vae = components.vae

        def compute(ids: np.ndarray) -> np.ndarray:
            return encode_z(
                vae,
                read_images(ids),
                ids,
                settings.z_image_size,
                settings.posterior,
                settings.seed,
                per_sample=per_sample,
            )

        dtype = "float32"
    elif feature == "c":
        if captions is None:
            raise ValueError("extract c: captions are required")
        missing = [int(n) for n in nsd_ids if int(n) not in captions or not captions[int(n)]]
        if missing:
            raise ValueError(
                f"extract c: no captions for nsdIds {missing[:10]}{' ...' if len(missing) > 10 else ''}"
            )

        def compute(ids: np.ndarray) -> np.ndarray:
            texts = [captions[int(n)] for n in ids]
            return encode_c(
                components.text_encoder,
                components.tokenizer,
                texts,
                batch_size=max(8, 5 * settings.batch_size),
                per_sample=per_sample,
            )

        dtype = settings.c_dtype
    else:
        raise ValueError(f"feature {feature!r}: expected one of {FEATURES}")
    if record is None:
        record = feature_record(components, settings, feature, {"per_sample": per_sample})
    return extract_shard(
        feature,
        compute,
        nsd_ids,
        out_path,
        settings.batch_size,
        dtype,
        settings=settings.value_settings(feature),
        chunk_size=chunk_size,
        progress=progress,
        record=record,
    )


def feature_record(components, settings: FeatureSettings, feature: str, extra: dict | None = None) -> dict:
    """What ``{feature}.json`` records: model, device, dtype, settings and library versions."""
    from importlib.metadata import version  # importing diffusers only for its version takes seconds

    record = {
        "model": components.describe() if hasattr(components, "describe") else {},
        "settings": asdict(settings),
        "value_settings": settings.value_settings(feature),
        "versions": {
            "torch": torch.__version__,
            "diffusers": version("diffusers"),
            "transformers": version("transformers"),
            "numpy": np.__version__,
        },
    }
    if feature == "z" and getattr(components, "vae", None) is not None:
        record["vae_scaling_factor"] = float(components.vae.config.scaling_factor)
    record.update(extra or {})
    return record
