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

from .atomic import atomic_path, save_npy, write_text
from .nsd import ExpDesign, session_of_trial

log = logging.getLogger(__name__)

FEATURES = ("z", "c")
CHUNK_SIZE = 256


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


def needed_nsd_ids(
    design: ExpDesign,
    subjects: Sequence[int],
    sessions: Sequence[int],
    trials_per_session: int = 750,
) -> np.ndarray:
    """nsdIds seen by ``subjects`` in ``sessions``: (n_images,) int64 ascending, unique.

    Parameters
    ----------
    design : ExpDesign
    subjects : sequence of int (1-based)
    sessions : sequence of int (1-based)
    trials_per_session : int
        750 in NSD.
    """
    sessions = np.asarray(list(sessions), dtype=np.int64)
    seen = []
    for subject in subjects:
        ids = design.trial_nsd_ids(int(subject))
        session = session_of_trial(np.arange(len(ids)), trials_per_session)
        seen.append(ids[np.isin(session, sessions)])
    if not seen:
        raise ValueError("needed_nsd_ids: no subjects given")
    return np.unique(np.concatenate(seen)).astype(np.int64)


def shard_nsd_ids(nsd_ids: np.ndarray, shard: int, n_shards: int) -> np.ndarray:
    """Contiguous slice ``shard`` (0-based) of ``n_shards`` of the ascending ``nsd_ids``."""
    if not 0 <= shard < n_shards:
        raise ValueError(f"shard {shard} is out of range 0..{n_shards - 1} (features.n_shards = {n_shards})")
    return np.array_split(np.asarray(nsd_ids, dtype=np.int64), n_shards)[shard]


def captions_by_nsd_id(stim_info: dict, coco_captions: dict[int, list[str]], nsd_ids: Sequence[int]) -> dict[int, list[str]]:
    """Every caption of each image: ``{nsdId: [caption, ...]}``, joined through stim-info's cocoId.

    ``coco_captions`` is :func:`brainldm.nsd.read_coco_captions` of the caption JSONs, parsed once
    per job (the paper's release re-parsed them for every image).
    """
    from .nsd import captions_for

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
    stamp = json.dumps({
        "feature": feature,
        "nsd_ids_sha1": hashlib.sha1(nsd_ids.tobytes()).hexdigest(),
        "dtype": str(np.dtype(out_dtype)),
        "chunk_size": chunk_size,
        "settings": settings or {},
        "model": {key: model.get(key) for key in ("model_id", "revision", "device", "dtype")},
        "per_sample": (record or {}).get("per_sample"),
    }, sort_keys=True)
    if parts.exists() and (not (parts / "settings.json").exists() or (parts / "settings.json").read_text() != stamp):
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
    write_text(record_path(out_path), json.dumps({**(record or {}), "value_settings": settings or {}}, indent=2) + "\n")
    save_npy(out_path, array)
    shutil.rmtree(parts, ignore_errors=True)
    return array


def record_path(array_path: str | os.PathLike) -> Path:
    """``x.json`` beside ``x.npy``."""
    return Path(array_path).with_suffix(".json")


def ids_path(array_path: str | os.PathLike) -> Path:
    """``x_nsd_ids.npy`` beside ``x.npy``."""
    array_path = Path(array_path)
    return array_path.with_name(array_path.name.removesuffix(".npy") + "_nsd_ids.npy")


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
    components : brainldm.sd_model.SDComponents
        ``vae`` for z; ``text_encoder`` and ``tokenizer`` for c.
    nsd_ids : (n,) int64 ascending
    read_images : callable, for z
        ``read_images(nsd_ids) -> (n, H, W, 3) uint8`` in the order asked.
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
        vae = components.vae

        def compute(ids: np.ndarray) -> np.ndarray:
            return encode_z(vae, read_images(ids), ids, settings.z_image_size, settings.posterior, settings.seed,
                            per_sample=per_sample)

        dtype = "float32"
    elif feature == "c":
        if captions is None:
            raise ValueError("extract c: captions are required")
        missing = [int(n) for n in nsd_ids if int(n) not in captions or not captions[int(n)]]
        if missing:
            raise ValueError(f"extract c: no captions for nsdIds {missing[:10]}{' ...' if len(missing) > 10 else ''}")

        def compute(ids: np.ndarray) -> np.ndarray:
            texts = [captions[int(n)] for n in ids]
            return encode_c(components.text_encoder, components.tokenizer, texts,
                            batch_size=max(8, 5 * settings.batch_size), per_sample=per_sample)

        dtype = settings.c_dtype
    else:
        raise ValueError(f"feature {feature!r}: expected one of {FEATURES}")
    if record is None:
        record = feature_record(components, settings, feature, {"per_sample": per_sample})
    return extract_shard(
        feature, compute, nsd_ids, out_path, settings.batch_size, dtype,
        settings=settings.value_settings(feature), chunk_size=chunk_size, progress=progress, record=record,
    )


# --------------------------------------------------------------------------- merge and load


def merge_shards(
    feature: str,
    shard_paths: Sequence[str | os.PathLike],
    features_dir: str | os.PathLike,
    expected_nsd_ids: np.ndarray | None = None,
    record: dict | None = None,
) -> Path:
    """Merge shard arrays into ``{features_dir}/{feature}.npy`` (rows by ascending nsdId).

    Writes ``{feature}.npy``, ``{feature}_nsd_ids.npy`` (int64) and ``{feature}.json`` (``record``
    plus shape, dtype and count). The array is filled through a memory map, so ``c`` for NSD
    (~4.4 GB in float16) never needs twice its size in memory.

    Raises
    ------
    ValueError
        Shards overlap, disagree in shape or dtype, or do not cover ``expected_nsd_ids`` exactly.
    """
    features_dir = Path(features_dir)
    records = [json.loads(record_path(p).read_text()) if record_path(p).exists() else {} for p in shard_paths]
    for path, r in zip(shard_paths, records):
        for key in ("value_settings",):
            if r.get(key) != records[0].get(key):
                raise ValueError(f"{path}: {key} {r.get(key)} differ from {shard_paths[0]}'s {records[0].get(key)}")
        model, first = r.get("model", {}), records[0].get("model", {})
        if (model.get("model_id"), model.get("revision")) != (first.get("model_id"), first.get("revision")):
            raise ValueError(f"{path}: made with model {model.get('model_id')!r}, {shard_paths[0]} with {first.get('model_id')!r}")
    ids = [np.load(ids_path(p)) for p in shard_paths]
    arrays = [np.load(p, mmap_mode="r") for p in shard_paths]
    for path, a, i in zip(shard_paths, arrays, ids):
        if len(a) != len(i):
            raise ValueError(f"{path}: {len(a)} rows but {len(i)} nsdIds in {ids_path(path)}")
    # empty shards (more shards than images) carry no row shape
    kept = [(p, a, i) for p, a, i in zip(shard_paths, arrays, ids) if len(i)]
    for path, a, _ in kept:
        if a.shape[1:] != kept[0][1].shape[1:] or a.dtype != kept[0][1].dtype:
            raise ValueError(
                f"{path}: rows {a.shape[1:]} {a.dtype} differ from {kept[0][0]}'s "
                f"{kept[0][1].shape[1:]} {kept[0][1].dtype}; were the shards made with other settings?"
            )
    shard_paths_all = list(shard_paths)
    shard_paths, arrays, ids = [p for p, _, _ in kept], [a for _, a, _ in kept], [i for _, _, i in kept]
    all_ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    order = np.argsort(all_ids, kind="stable")
    sorted_ids = all_ids[order]
    if len(np.unique(sorted_ids)) != len(sorted_ids):
        raise ValueError(f"{feature}: shards overlap (an nsdId appears twice)")
    if expected_nsd_ids is not None:
        expected = np.unique(np.asarray(expected_nsd_ids, dtype=np.int64))
        if not np.array_equal(expected, sorted_ids):
            missing = np.setdiff1d(expected, sorted_ids)
            extra = np.setdiff1d(sorted_ids, expected)
            raise ValueError(
                f"{feature}: shards hold {len(sorted_ids)} images, expected {len(expected)}; "
                f"missing nsdIds {missing[:10].tolist()}, unexpected {extra[:10].tolist()}"
            )
    shape = (len(sorted_ids), *arrays[0].shape[1:]) if arrays else (0,)
    dtype = arrays[0].dtype if arrays else np.float32
    out = features_dir / f"{feature}.npy"
    with atomic_path(out) as tmp:
        merged = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
        offsets = np.cumsum([0] + [len(i) for i in ids])
        position = np.empty(len(all_ids), dtype=np.int64)
        position[order] = np.arange(len(all_ids))
        for k, a in enumerate(arrays):
            rows = position[offsets[k] : offsets[k + 1]]
            for s in range(0, len(a), CHUNK_SIZE):
                merged[rows[s : s + CHUNK_SIZE]] = a[s : s + CHUNK_SIZE]
        merged.flush()
        del merged
    save_npy(ids_path(out), sorted_ids.astype(np.int64))
    info = dict(records[0]) if records else {}
    if records:
        info["devices"] = sorted({str(r.get("model", {}).get("device")) for r in records})
    info.update(record or {})
    info.update({"feature": feature, "n_images": int(len(sorted_ids)), "shape": list(shape[1:]),
                 "dtype": str(np.dtype(dtype)), "n_shards": len(shard_paths_all)})
    write_text(features_dir / f"{feature}.json", json.dumps(info, indent=2) + "\n")
    return out


def load_features(
    features_dir: str | os.PathLike,
    feature: str,
    nsd_ids: Sequence[int] | None = None,
    dtype: str | np.dtype | None = None,
) -> np.ndarray:
    """Rows of ``{features_dir}/{feature}.npy`` for ``nsd_ids``, in the order asked.

    Parameters
    ----------
    features_dir : path
        ``results/{dataset}/features``.
    feature : {"z", "c"}
    nsd_ids : sequence of int, optional
        May repeat (one row per training trial); all rows when omitted.
    dtype : optional
        Cast the result (e.g. float32 for c stored as float16).

    Returns
    -------
    (len(nsd_ids), ...) array

    Raises
    ------
    KeyError
        Some ``nsd_ids`` have no features (names up to ten of them and the file).
    """
    features_dir = Path(features_dir)
    path = features_dir / f"{feature}.npy"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no {feature} features; run the merge_features rule first")
    array = np.load(path, mmap_mode="r")
    stored = np.load(ids_path(path))
    if nsd_ids is None:
        out = np.asarray(array)
    else:
        asked = np.asarray(nsd_ids, dtype=np.int64)
        rows = np.searchsorted(stored, asked)
        rows = np.clip(rows, 0, max(len(stored) - 1, 0))
        bad = (len(stored) == 0) | (stored[rows] != asked) if len(asked) else np.zeros(0, bool)
        if np.any(bad):
            missing = np.unique(asked[bad])
            raise KeyError(
                f"{path}: no {feature} features for {len(missing)} nsdIds, e.g. {missing[:10].tolist()}; "
                "were the features extracted for other subjects or sessions?"
            )
        out = array[rows] if len(asked) else np.zeros((0, *array.shape[1:]), array.dtype)
    return out.astype(dtype, copy=False) if dtype is not None else np.asarray(out)


def feature_record(components, settings: FeatureSettings, feature: str, extra: dict | None = None) -> dict:
    """What ``{feature}.json`` records: model, device, dtype, settings and library versions."""
    import diffusers
    import transformers

    record = {
        "model": components.describe() if hasattr(components, "describe") else {},
        "settings": asdict(settings),
        "value_settings": settings.value_settings(feature),
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                     "transformers": transformers.__version__, "numpy": np.__version__},
    }
    if feature == "z" and getattr(components, "vae", None) is not None:
        record["vae_scaling_factor"] = float(components.vae.config.scaling_factor)
    record.update(extra or {})
    return record
