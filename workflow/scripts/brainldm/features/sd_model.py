"""Load Stable Diffusion's components (VAE, CLIP text encoder, tokenizer, U-Net, DDIM scheduler).

Every stage loads the model through :func:`load_stable_diffusion`, for the real SD v1.4
(``CompVis/stable-diffusion-v1-4`` on the Hugging Face hub, or any local copy of it in diffusers
format) and for the tiny toy model that :mod:`brainldm.toy.model` writes (a local folder with the
same classes). The model is resolved to a local folder first, so that a machine without internet
gets one clear message saying how to pre-stage the weights, instead of a half-built model
(``transformers`` 5 silently builds an empty tokenizer when its files are missing).

:func:`sd_v1_4_configs` holds SD v1.4's published component configurations, so that shapes can be
checked without any weights (:func:`build_components_from_configs`).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch

log = logging.getLogger(__name__)

#: Hugging Face id of the model the paper used.
SD_V1_4_ID = "CompVis/stable-diffusion-v1-4"

#: Components that :func:`load_stable_diffusion` can load, in load order.
COMPONENTS = ("vae", "text_encoder", "tokenizer", "unet", "scheduler")

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")

# Files needed per component (configs always; weights as safetensors, .bin as a fallback).
_CONFIG_FILES = {
    "vae": ["config.json"],
    "text_encoder": ["config.json"],
    "tokenizer": [],  # vocab.json + merges.txt, or tokenizer.json: checked in _missing_files
    "unet": ["config.json"],
    "scheduler": ["scheduler_config.json"],
}
_WEIGHT_FILES = {
    "vae": ["diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"],
    "unet": ["diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"],
    "text_encoder": ["model.safetensors", "pytorch_model.bin"],
}


class ModelNotAvailableError(OSError):
    """The model's files cannot be found locally and cannot be downloaded."""


@dataclass
class SDComponents:
    """Stable Diffusion's parts, loaded and placed on one device.

    Attributes
    ----------
    vae : diffusers.AutoencoderKL or None
    text_encoder : transformers.CLIPTextModel or None
    tokenizer : transformers.CLIPTokenizer or None
    unet : diffusers.UNet2DConditionModel or None
    scheduler : diffusers.DDIMScheduler or None
    device : torch.device
    dtype : torch.dtype
        dtype of the VAE, text encoder and U-Net weights.
    model_id : str
        ``model.id`` as configured (hub id or folder).
    revision : str or None
    path : pathlib.Path
        The local folder the components were read from (a hub snapshot or the folder itself).
    """

    vae: Any = None
    text_encoder: Any = None
    tokenizer: Any = None
    unet: Any = None
    scheduler: Any = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    model_id: str = ""
    revision: str | None = None
    path: Path | None = None

    def describe(self) -> dict:
        """JSON-able record of what was loaded (model id, revision, device, dtype, classes)."""
        return {
            "model_id": self.model_id,
            "revision": self.revision,
            "path": str(self.path) if self.path is not None else None,
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
            "components": {
                name: type(getattr(self, name)).__name__
                for name in COMPONENTS
                if getattr(self, name) is not None
            },
        }


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU raises ValueError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"model.device is {device!r} but torch sees no CUDA device "
            f"(torch {torch.__version__}); use device 'auto' or 'cpu'"
        )
    if device not in {"cpu"} and not device.startswith("cuda"):
        raise ValueError(f"model.device {device!r} is not supported; expected auto, cpu or cuda")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype = "auto", device: torch.device | str = "cpu") -> torch.dtype:
    """``auto`` -> float16 on a GPU, float32 on CPU; or the named dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    device = torch.device(device)
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    table = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype not in table:
        raise ValueError(f"model.dtype {dtype!r} is not supported; expected auto, {', '.join(table)}")
    return table[dtype]


def _staging_help(model_id: str, revision: str | None) -> str:
    rev = f" --revision {revision}" if revision else ""
    return (
        f"Pre-stage it on a machine with internet, either into the Hugging Face cache "
        f"(`hf download {model_id}{rev}`, or `huggingface-cli download {model_id}{rev}` with older "
        f"huggingface_hub; then copy the cache, ~/.cache/huggingface/hub or $HF_HOME/hub, to this "
        f"machine, and set HF_HUB_OFFLINE=1 if it has no internet), or into a local folder "
        f"(`hf download {model_id}{rev} --local-dir models/sd-v1-4`) and set model.id to that "
        f"folder. A local folder must be in diffusers format (model_index.json, vae/, "
        f"text_encoder/, tokenizer/, unet/, scheduler/)."
    )


def _missing_files(folder: Path, components: Iterable[str]) -> list[str]:
    missing = []
    for name in components:
        for fname in _CONFIG_FILES[name]:
            if not (folder / name / fname).is_file():
                missing.append(f"{name}/{fname}")
        if name == "tokenizer":
            slow = all((folder / name / f).is_file() for f in ("vocab.json", "merges.txt"))
            if not slow and not (folder / name / "tokenizer.json").is_file():
                missing.append("tokenizer/vocab.json + merges.txt (or tokenizer.json)")
        if name in _WEIGHT_FILES and not any((folder / name / w).is_file() for w in _WEIGHT_FILES[name]):
            missing.append(f"{name}/{' or '.join(_WEIGHT_FILES[name])}")
    return missing


def resolve_model_dir(
    model_id: str, revision: str | None = None, components: Iterable[str] = COMPONENTS
) -> Path:
    """Return a local diffusers-format folder holding ``model_id``'s ``components``.

    ``model_id`` is an existing folder (used as it is) or a hub id ``owner/name`` (looked up in
    the Hugging Face cache, downloaded when the hub is reachable).

    Raises
    ------
    ModelNotAvailableError
        Naming the model id, what is missing and how to pre-stage it.
    """
    components = list(components)
    folder = Path(model_id).expanduser()
    if folder.is_dir():
        missing = _missing_files(folder, components)
        if missing:
            raise ModelNotAvailableError(
                f"model folder {str(folder)!r} (model.id) lacks {', '.join(missing)}. "
                + _staging_help(SD_V1_4_ID, revision)
            )
        return folder
    if not _HUB_ID.match(model_id):
        raise ModelNotAvailableError(
            f"model.id {model_id!r} is neither an existing folder nor a hub id 'owner/name'. "
            "For the toy world, build the folder with `snakemake make_toy_model` (rule output "
            "resources/toy/model). " + _staging_help(SD_V1_4_ID, revision)
        )
    from huggingface_hub import snapshot_download

    patterns = ["model_index.json"]
    for name in components:
        if name in _WEIGHT_FILES:  # configs and safetensors weights (no fp16/flax/onnx copies)
            patterns += [f"{name}/*.json", f"{name}/{_WEIGHT_FILES[name][0]}"]
        else:  # small files only
            patterns += [f"{name}/*"]
    try:
        folder = Path(snapshot_download(model_id, revision=revision, allow_patterns=patterns))
        missing = _missing_files(folder, components)
        if missing:  # an older repo with .bin weights only
            bins = [f"{n}/{w}" for n in components for w in _WEIGHT_FILES.get(n, [])[1:]]
            folder = Path(snapshot_download(model_id, revision=revision, allow_patterns=patterns + bins))
    except Exception as error:  # offline, no cache, unknown repo, gated repo, ...
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in {"", "0", "false", "False"}
        raise ModelNotAvailableError(
            f"Stable Diffusion model {model_id!r}"
            + (f" (revision {revision})" if revision else "")
            + " is not in the local Hugging Face cache and could not be downloaded"
            + (" (HF_HUB_OFFLINE is set)" if offline else "")
            + f": {type(error).__name__}: {str(error).splitlines()[0].rstrip('.') if str(error) else ''}. "
            + _staging_help(model_id, revision)
        ) from error
    missing = _missing_files(folder, components)
    if missing:
        raise ModelNotAvailableError(
            f"Stable Diffusion model {model_id!r} in {folder} lacks {', '.join(missing)}. "
            + _staging_help(model_id, revision)
        )
    return folder


def load_stable_diffusion(
    model_id: str = SD_V1_4_ID,
    revision: str | None = None,
    device: str = "auto",
    dtype: str | torch.dtype = "auto",
    *,
    components: Iterable[str] | None = None,
) -> SDComponents:
    """Load Stable Diffusion's components with diffusers/transformers ``from_pretrained``.

    Parameters
    ----------
    model_id : str
        Hub id (``CompVis/stable-diffusion-v1-4``) or a local folder in diffusers format (the toy
        model ``resources/toy/model``, or a pre-staged copy of SD v1.4).
    revision : str, optional
        Hub revision (branch, tag or commit); ignored for local folders.
    device : {"auto", "cpu", "cuda"}
        ``auto`` = CUDA when torch sees a GPU, else CPU.
    dtype : {"auto", "float32", "float16"} or torch.dtype
        ``auto`` = float16 on GPU, float32 on CPU. Applies to VAE, text encoder and U-Net.
    components : iterable of str, optional
        Subset of ``("vae", "text_encoder", "tokenizer", "unet", "scheduler")`` to load (others are
        ``None``); all by default. Feature extraction skips the U-Net.

    Returns
    -------
    SDComponents
        Modules in eval mode without gradients, on ``device`` in ``dtype``. The scheduler is
        ``DDIMScheduler.from_config`` of the model's scheduler config (SD v1.4 ships a PNDM
        config; DDIM from it is the paper's sampler).

    Raises
    ------
    ModelNotAvailableError
        The weights are neither local nor downloadable; the message names ``model_id`` and how to
        pre-stage it.
    """
    wanted = list(COMPONENTS if components is None else components)
    unknown = sorted(set(wanted) - set(COMPONENTS))
    if unknown:
        raise ValueError(f"unknown component(s) {unknown}; expected a subset of {COMPONENTS}")
    # Each library is imported only when one of its components is loaded: diffusers takes ~9 s
    # to import on a 2-core CPU and transformers' CLIP ~7 s, a toy job's whole compute.
    if {"vae", "unet", "scheduler"} & set(wanted):
        from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    if {"text_encoder", "tokenizer"} & set(wanted):
        from transformers import CLIPTextModel, CLIPTokenizer
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    folder = resolve_model_dir(model_id, revision, wanted)
    log.info("loading %s from %s on %s as %s", ", ".join(wanted), folder, torch_device, torch_dtype)

    out = SDComponents(
        device=torch_device, dtype=torch_dtype, model_id=model_id, revision=revision, path=folder
    )
    if "vae" in wanted:
        out.vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=torch_dtype)
    if "text_encoder" in wanted:
        out.text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", dtype=torch_dtype)
    if "unet" in wanted:
        out.unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=torch_dtype)
    for name in ("vae", "text_encoder", "unet"):
        module = getattr(out, name)
        if module is not None:
            module.to(torch_device).eval().requires_grad_(False)
    if "tokenizer" in wanted:
        out.tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
        if out.tokenizer.vocab_size <= 3:
            raise ModelNotAvailableError(
                f"tokenizer of {model_id!r} in {folder} has an empty vocabulary "
                f"({out.tokenizer.vocab_size} tokens); its vocab.json/merges.txt are broken. "
                + _staging_help(model_id, revision)
            )
    if "scheduler" in wanted:
        config = DDIMScheduler.load_config(folder, subfolder="scheduler")
        out.scheduler = DDIMScheduler.from_config(config)
    return out


def sd_v1_4_configs() -> dict[str, dict]:
    """SD v1.4's published component configurations (diffusers/transformers argument names).

    Returns
    -------
    dict
        ``vae`` (AutoencoderKL kwargs), ``unet`` (UNet2DConditionModel kwargs), ``text_encoder``
        (CLIPTextConfig kwargs), ``tokenizer`` (vocab size, max length), ``scheduler``
        (DDIMScheduler kwargs). A fresh deep copy on every call.
    """
    configs = {
        "vae": {
            "in_channels": 3,
            "out_channels": 3,
            "latent_channels": 4,
            "block_out_channels": [128, 256, 512, 512],
            "layers_per_block": 2,
            "down_block_types": ["DownEncoderBlock2D"] * 4,
            "up_block_types": ["UpDecoderBlock2D"] * 4,
            "act_fn": "silu",
            "norm_num_groups": 32,
            "sample_size": 512,
            "scaling_factor": 0.18215,
        },
        "unet": {
            "in_channels": 4,
            "out_channels": 4,
            "sample_size": 64,
            "block_out_channels": [320, 640, 1280, 1280],
            "layers_per_block": 2,
            "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
            "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
            "cross_attention_dim": 768,
            "attention_head_dim": 8,
            "act_fn": "silu",
            "norm_num_groups": 32,
        },
        "text_encoder": {
            "vocab_size": 49408,
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "max_position_embeddings": 77,
            "hidden_act": "quick_gelu",
            "projection_dim": 768,
        },
        "tokenizer": {"vocab_size": 49408, "model_max_length": 77},
        "scheduler": {
            "num_train_timesteps": 1000,
            "beta_start": 0.00085,
            "beta_end": 0.012,
            "beta_schedule": "scaled_linear",
            "steps_offset": 1,
            "clip_sample": False,
            "set_alpha_to_one": False,
        },
    }
    return copy.deepcopy(configs)


def build_components_from_configs(
    configs: dict[str, dict] | None = None,
    components: Iterable[str] = ("vae", "text_encoder", "unet", "scheduler"),
    seed: int = 0,
) -> dict[str, Any]:
    """Randomly initialised modules from configs (default: SD v1.4's), without any weights.

    For shape checks only; no tokenizer (it needs a vocabulary). ``seed`` seeds torch's global
    generator before each module is built, so the weights are repeatable.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    configs = sd_v1_4_configs() if configs is None else configs
    built: dict[str, Any] = {}
    for name in components:
        torch.manual_seed(seed)
        if name == "vae":
            built[name] = AutoencoderKL(**configs["vae"]).eval().requires_grad_(False)
        elif name == "unet":
            built[name] = UNet2DConditionModel(**configs["unet"]).eval().requires_grad_(False)
        elif name == "text_encoder":
            model = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))
            built[name] = model.eval().requires_grad_(False)
        elif name == "scheduler":
            built[name] = DDIMScheduler(**configs["scheduler"])
        else:
            raise ValueError(f"cannot build component {name!r} from a config")
    return built


def read_model_record(model_dir: str | os.PathLike) -> dict:
    """The toy model's ``brainldm_toy_model.json`` record, or ``{}`` for other models."""
    path = Path(model_dir) / "brainldm_toy_model.json"
    return json.loads(path.read_text()) if path.is_file() else {}
