"""A tiny Stable Diffusion in diffusers format for the toy world, trained on the toy stimuli.

:func:`assemble_toy_model` writes a folder that :func:`brainldm.features.sd_model.load_stable_diffusion`
and ``StableDiffusionImg2ImgPipeline.from_pretrained`` read exactly like SD v1.4: the same classes
(``AutoencoderKL``, ``UNet2DConditionModel``, ``CLIPTextModel``, ``CLIPTokenizer``,
``DDIMScheduler`` with SD v1.4's scheduler settings), at tiny sizes (:data:`TOY_DEFAULTS`):

- VAE: 3 blocks (downsampling x4: a 64 px toy image gives a (4, 16, 16) latent), warm-started
  as an average-pooling encoder / smoothing decoder (:func:`init_vae_as_pooling`) and fitted on
  the toy images outside the shared (test) set; ``scaling_factor`` = 1 / std of its latents;
- text encoder: a 2-layer CLIP text transformer with hidden size 32 and 77 positions (so c is
  (77, 32), built by the same code path as SD's (77, 768));
- tokenizer: a byte-pair vocabulary of every word the toy captions can use (each a single
  token; any other text falls back to characters);
- U-Net: 2 levels (DownBlock2D + CrossAttnDownBlock2D, CrossAttnUpBlock2D + UpBlock2D, the
  cross-attention mid block between them) with cross attention on the text hidden size at the
  8 x 8 level (SD has it at its finer levels; on a CPU, attention over 16 x 16 positions would
  more than double the cost of training).

Text encoder and U-Net are trained together as a text-to-image latent diffusion model by
:mod:`brainldm.toy.training`, which writes the weights that ship in ``workflow/toy_model/``
(safetensors, with their sha256 in ``manifest.json``); assembling only checks and copies them, so
it takes seconds and gives the same bytes every time.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from brainldm.core.atomic import atomic_path
from brainldm.features.sd_model import sd_v1_4_configs
from brainldm.toy.weights import MANIFEST, SHIPPED_WEIGHTS, WEIGHT_FILES

log = logging.getLogger(__name__)

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
#: Same word split as the CLIP tokenizer's pre-tokenizer (letters, single digits, punctuation runs).
_WORD = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+|_+", re.UNICODE)

#: Default sizes (recorded in the folder).
TOY_DEFAULTS = {
    "vae_block_out_channels": [16, 32, 32],
    "vae_layers_per_block": 1,
    "vae_norm_num_groups": 4,
    "latent_channels": 4,
    "text_hidden_size": 32,
    "text_layers": 2,
    "text_heads": 2,
    "text_intermediate_size": 64,
    "max_length": 77,
    "unet_block_out_channels": [32, 64],
    # Cross attention at the 8 x 8 level only (SD has it at the finer levels): attention over
    # 16 x 16 positions would more than double the CPU cost of a training step.
    "unet_down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
    "unet_up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
    "unet_layers_per_block": 1,
    "unet_attention_head_dim": 8,
    "unet_norm_num_groups": 16,
}


# --------------------------------------------------------------------------- tokenizer


def caption_words(captions: Sequence[Sequence[str]]) -> collections.Counter:
    """Word counts over all captions, split and lower-cased as CLIP's tokenizer does."""
    counts: collections.Counter = collections.Counter()
    for image_captions in captions:
        for caption in image_captions:
            counts.update(_WORD.findall(" ".join(caption.split()).lower()))
    return counts


def learn_bpe(word_counts: dict[str, int], max_merges: int = 10000) -> list[tuple[str, str]]:
    """Byte-pair merges that make every word a single token (CLIP style, ``</w>`` word ends).

    Merges the most frequent adjacent pair (ties broken by the pair's text, so the result is
    deterministic) until no word has two symbols left or ``max_merges`` is reached. Applying the
    merges in order reproduces the learnt segmentation, as BPE tokenizers do.
    """
    words = {w: list(w[:-1]) + [w[-1] + "</w>"] for w in word_counts if w}
    merges: list[tuple[str, str]] = []
    while len(merges) < max_merges:
        pairs: collections.Counter = collections.Counter()
        for word, symbols in words.items():
            for a, b in zip(symbols, symbols[1:]):
                pairs[(a, b)] += word_counts[word]
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        for word, symbols in words.items():
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            words[word] = merged
    return merges


def _byte_level_alphabet() -> list[str]:
    """The 256 characters of GPT-2/CLIP's byte-level mapping, in byte order."""
    keep = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def toy_vocabulary(captions: Sequence[Sequence[str]]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP-format vocabulary and merges for the toy captions.

    Returns
    -------
    vocab : dict str -> int
        256 byte-level characters, the same with ``</w>``, one token per merge, then
        ``<|startoftext|>`` and ``<|endoftext|>`` last (as in CLIP, the end token has the highest id).
    merges : list of (str, str)
    """
    alphabet = _byte_level_alphabet()
    tokens = alphabet + [c + "</w>" for c in alphabet]
    merges = learn_bpe(caption_words(captions))
    tokens += [a + b for a, b in merges]
    vocab: dict[str, int] = {}
    for token in tokens + [BOS, EOS]:
        vocab.setdefault(token, len(vocab))
    return vocab, merges


def write_tokenizer_files(
    folder: Path, vocab: dict[str, int], merges: list[tuple[str, str]], max_length: int
) -> None:
    """vocab.json, merges.txt, tokenizer_config.json and special_tokens_map.json (CLIP format)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    special = {"bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": EOS}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": max_length, **special}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


# --------------------------------------------------------------------------- VAE fit


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """(n, H, W, 3) uint8 -> (n, 3, H, W) float32 in [-1, 1]."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images: expected (n, H, W, 3) uint8, got {images.shape} {images.dtype}")
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def tensor_to_images(x: torch.Tensor) -> np.ndarray:
    """(n, 3, H, W) float in [-1, 1] -> (n, H, W, 3) uint8."""
    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round()
    return x.permute(0, 2, 3, 1).to(torch.uint8).cpu().numpy()


def pixcorr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image Pearson r over all pixels and channels: (n,) float64."""
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))


@torch.no_grad()
def vae_roundtrip(
    vae, images: np.ndarray, generator: torch.Generator | None = None, batch_size: int = 32
) -> np.ndarray:
    """decode(sample of encode(x)) for (n, H, W, 3) uint8 images -> (n, H, W, 3) uint8."""
    out = []
    param = next(vae.parameters())
    for start in range(0, len(images), batch_size):
        x = images_to_tensor(images[start : start + batch_size]).to(param.device, param.dtype)
        latents = vae.encode(x).latent_dist.sample(generator=generator)
        out.append(tensor_to_images(vae.decode(latents).sample))
    return np.concatenate(out)


@torch.no_grad()
def init_vae_as_pooling(
    vae, const: float = 4.0, gn_weight: float = 0.25, gn_bias: float = 2.0, logvar: float = -10.0
) -> None:
    """Set ``vae``'s weights so it starts as an average-pooling encoder and smoothing decoder.

    A warm start that the short fit refines (a 2-core machine cannot train a VAE from scratch
    in a minute): every residual branch and attention output is zeroed (identity blocks), the
    encoder's downsampling convolutions average 2x2 pixels, the decoder's upsampling convolutions
    smooth (nearest x2 then a [1, 2, 1]/4 kernel, i.e. about bilinear), and the RGB channels pass
    through channels 0-2 with a constant channel 3 beside them so that the output GroupNorms act
    as a (nearly) fixed affine map; the SiLU after them works near-linearly (input ~``gn_bias``).
    The posterior log-variance starts at ``logvar``. Needs at least 4 channels per norm group in
    the first and last blocks (RGB and the constant share group 0).
    """
    from diffusers.models.attention_processor import Attention
    from diffusers.models.downsampling import Downsample2D
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.upsampling import Upsample2D

    groups = vae.config.norm_num_groups
    if min(vae.config.block_out_channels) // groups < 4:
        raise ValueError(
            f"init_vae_as_pooling: block_out_channels {vae.config.block_out_channels} with "
            f"{groups} norm groups leave fewer than 4 channels per group"
        )

    def identity_(conv, n):
        conv.weight.zero_()
        k = conv.weight.shape[-1] // 2
        for c in range(n):
            conv.weight[c, c, k, k] = 1.0
        if conv.bias is not None:
            conv.bias.zero_()

    for module in vae.modules():
        if isinstance(module, ResnetBlock2D):
            module.conv2.weight.zero_()
            module.conv2.bias.zero_()
            if module.conv_shortcut is not None:
                identity_(
                    module.conv_shortcut,
                    min(module.conv_shortcut.in_channels, module.conv_shortcut.out_channels),
                )
        elif isinstance(module, Attention):
            module.to_out[0].weight.zero_()
            module.to_out[0].bias.zero_()
        elif isinstance(module, Downsample2D):  # pad (0, 1, 0, 1), 3x3 stride 2: top-left 2x2
            module.conv.weight.zero_()
            module.conv.bias.zero_()
            for c in range(module.conv.in_channels):
                module.conv.weight[c, c, 0:2, 0:2] = 0.25
        elif isinstance(module, Upsample2D):
            module.conv.weight.zero_()
            module.conv.bias.zero_()
            kernel = torch.tensor([0.25, 0.5, 0.25])
            for c in range(module.conv.in_channels):
                module.conv.weight[c, c] = kernel[:, None] * kernel[None, :]
    b = torch.tensor(gn_bias)
    slope = float(torch.sigmoid(b) * (1 + b * (1 - torch.sigmoid(b))))  # SiLU'(gn_bias)
    silu_b = float(torch.nn.functional.silu(b))
    scale = 1.0 / (gn_weight * slope)
    for part in (vae.encoder, vae.decoder):
        identity_(part.conv_in, 3)
        part.conv_in.bias[3] = const
        part.conv_norm_out.weight.fill_(gn_weight)
        part.conv_norm_out.bias.fill_(gn_bias)
        out = part.conv_out
        out.weight.zero_()
        out.bias.zero_()
        k = out.weight.shape[-1] // 2
        for c in range(3):
            out.weight[c, c, k, k] = scale
            out.bias[c] = -scale * silu_b
    vae.encoder.conv_out.bias[vae.config.latent_channels :] = logvar
    identity_(vae.quant_conv, 2 * vae.config.latent_channels)
    identity_(vae.post_quant_conv, vae.config.latent_channels)


def fit_vae(
    vae,
    images: np.ndarray,
    seed: int,
    steps: int = 240,
    batch_size: int = 8,
    lr: float = 1e-3,
    kl_weight: float = 1e-6,
) -> dict:
    """Fit ``vae`` in place on ``images`` (n, H, W, 3) uint8 for ``steps`` seeded Adam steps.

    Batches are drawn and randomly flipped left-right by a generator seeded with ``seed``; the
    posterior is sampled as in use (MSE + a small KL term).

    Returns
    -------
    dict
        steps, first/last loss and the settings.
    """
    x_all = images_to_tensor(images)
    generator = torch.Generator().manual_seed(seed)
    vae.train().requires_grad_(True)
    optimizer = torch.optim.Adam(vae.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    losses = []
    for step in range(steps):
        index = torch.randint(len(x_all), (batch_size,), generator=generator)
        flip = torch.rand(batch_size, generator=generator) < 0.5
        x = x_all[index]
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=generator)).sample
        loss = torch.nn.functional.mse_loss(recon, x) + kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if step % 100 == 0:
            log.info("toy VAE fit: step %d/%d loss %.4f", step, steps, losses[-1])
    vae.eval().requires_grad_(False)
    return {
        "steps": steps,
        "first_loss": losses[0] if losses else None,
        "last_loss": float(np.mean(losses[-20:])) if losses else None,
        "batch_size": batch_size,
        "lr": lr,
        "kl_weight": kl_weight,
    }


# --------------------------------------------------------------------------- components


def toy_component_configs(vocab: dict[str, int], image_size: int, sizes: dict | None = None) -> dict:
    """Constructor arguments of the toy VAE, CLIP text config and U-Net (JSON-able).

    Parameters
    ----------
    vocab : the tokenizer's vocabulary (its size and special token ids go into the text config)
    image_size : side of the toy images in pixels (a multiple of the VAE's downsampling)
    sizes : overrides of :data:`TOY_DEFAULTS`
    """
    sizes = {**TOY_DEFAULTS, **(sizes or {})}
    sd = sd_v1_4_configs()
    n_vae = len(sizes["vae_block_out_channels"])
    factor = 2 ** (n_vae - 1)
    if image_size % factor:
        raise ValueError(f"toy model: image size {image_size} must be a multiple of {factor}")
    eos_id, bos_id = vocab[EOS], vocab[BOS]
    return {
        "sizes": sizes,
        "vae": dict(
            in_channels=3,
            out_channels=3,
            latent_channels=sizes["latent_channels"],
            block_out_channels=list(sizes["vae_block_out_channels"]),
            layers_per_block=sizes["vae_layers_per_block"],
            down_block_types=["DownEncoderBlock2D"] * n_vae,
            up_block_types=["UpDecoderBlock2D"] * n_vae,
            norm_num_groups=sizes["vae_norm_num_groups"],
            sample_size=int(image_size),
            scaling_factor=1.0,
        ),
        "text_encoder": dict(
            vocab_size=len(vocab),
            hidden_size=sizes["text_hidden_size"],
            intermediate_size=sizes["text_intermediate_size"],
            num_hidden_layers=sizes["text_layers"],
            num_attention_heads=sizes["text_heads"],
            max_position_embeddings=sizes["max_length"],
            hidden_act=sd["text_encoder"]["hidden_act"],
            projection_dim=sizes["text_hidden_size"],
            bos_token_id=bos_id,
            eos_token_id=eos_id,
            pad_token_id=eos_id,
        ),
        "unet": dict(
            in_channels=sizes["latent_channels"],
            out_channels=sizes["latent_channels"],
            sample_size=int(image_size) // factor,
            block_out_channels=list(sizes["unet_block_out_channels"]),
            layers_per_block=sizes["unet_layers_per_block"],
            down_block_types=list(sizes["unet_down_block_types"]),
            up_block_types=list(sizes["unet_up_block_types"]),
            cross_attention_dim=sizes["text_hidden_size"],
            attention_head_dim=sizes["unet_attention_head_dim"],
            norm_num_groups=sizes["unet_norm_num_groups"],
        ),
    }


def new_toy_components(configs: dict, seed: int) -> dict:
    """Freshly initialised ``vae``, ``text_encoder`` and ``unet`` from :func:`toy_component_configs`.

    Each is seeded on its own (``seed``, ``seed + 10``, ``seed + 20``); the VAE starts as
    :func:`init_vae_as_pooling` sets it.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    vae = AutoencoderKL(**configs["vae"])
    init_vae_as_pooling(vae)
    torch.manual_seed(seed + 10)
    text_encoder = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))
    torch.manual_seed(seed + 20)
    unet = UNet2DConditionModel(**configs["unet"])
    return {"vae": vae.eval(), "text_encoder": text_encoder.eval(), "unet": unet.eval()}


# --------------------------------------------------------------------------- shipped weights


class ToyWeightsError(ValueError):
    """A toy weights folder is incomplete or a file's sha256 differs from its manifest."""


def sha256_of(path: str | os.PathLike) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(
    weights_dir: str | os.PathLike = SHIPPED_WEIGHTS, roles: Sequence[str] | None = None
) -> dict:
    """The manifest of a toy weights folder, after checking the sha256 of the files of ``roles``.

    Raises
    ------
    ToyWeightsError
        The manifest or a file is missing, or a file's sha256 differs from the manifest's.
    """
    weights_dir = Path(weights_dir)
    path = weights_dir / MANIFEST
    if not path.is_file():
        raise ToyWeightsError(
            f"{path} is missing: toy weights folders are written by "
            "`PYTHONPATH=workflow/scripts python3 -m brainldm.toy.training`"
        )
    manifest = json.loads(path.read_text())
    for role in roles if roles is not None else WEIGHT_FILES:
        name = WEIGHT_FILES[role]
        file = weights_dir / name
        if not file.is_file():
            raise ToyWeightsError(f"{file} is missing (toy weights: {role})")
        expected = manifest["sha256"].get(name)
        actual = sha256_of(file)
        if actual != expected:
            raise ToyWeightsError(
                f"{file}: sha256 {actual} differs from {expected} in {path}; the file is damaged "
                "or was changed without retraining (brainldm.toy.training writes both)"
            )
    return manifest


def load_state(weights_dir: str | os.PathLike, role: str) -> dict[str, torch.Tensor]:
    """A weights file of the folder as float32 tensors (stored as float16 to stay small)."""
    from safetensors.torch import load_file

    return {k: v.float() for k, v in load_file(Path(weights_dir) / WEIGHT_FILES[role]).items()}


def toy_pipeline(vae, text_encoder, tokenizer, unet):
    """The toy components as a ``StableDiffusionPipeline`` with SD v1.4's DDIM scheduler."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler(**sd_v1_4_configs()["scheduler"]),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def assemble_toy_model(out_dir: str | os.PathLike, weights_dir: str | os.PathLike = SHIPPED_WEIGHTS) -> dict:
    """Write the toy Stable Diffusion (diffusers format) from a trained weights folder.

    Parameters
    ----------
    out_dir : path
        Folder to create (written to a temporary sibling, then renamed).
    weights_dir : path
        Written by :func:`brainldm.toy.training.write_weights`; every file's sha256 is checked
        against its ``manifest.json`` first.

    Returns
    -------
    dict
        The record written to ``brainldm_toy_model.json``: the manifest (training command,
        settings and results, sha256 of each file) and the library versions used here.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    weights_dir = Path(weights_dir)
    manifest = read_manifest(weights_dir, roles=("vae", "text_encoder", "unet", "vocab", "merges"))
    configs = manifest["configs"]
    vae = AutoencoderKL(**{**configs["vae"], "scaling_factor": manifest["vae_scaling_factor"]})
    text_encoder = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))
    unet = UNet2DConditionModel(**configs["unet"])
    for role, module in (("vae", vae), ("text_encoder", text_encoder), ("unet", unet)):
        module.load_state_dict(load_state(weights_dir, role), strict=True)
        module.eval()
    vocab = json.loads((weights_dir / WEIGHT_FILES["vocab"]).read_text())
    merges = [
        tuple(line.split(" "))
        for line in (weights_dir / WEIGHT_FILES["merges"]).read_text().splitlines()[1:]
        if line
    ]
    max_length = configs["sizes"]["max_length"]

    import diffusers
    import transformers

    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        if tmp.exists():
            shutil.rmtree(tmp)
        write_tokenizer_files(tmp / "tokenizer_src", vocab, merges, max_length)
        tokenizer = CLIPTokenizer.from_pretrained(tmp / "tokenizer_src")
        pipe = toy_pipeline(vae, text_encoder, tokenizer, unet)
        pipe.save_pretrained(tmp, safe_serialization=True)
        # transformers 5 saves tokenizer.json only; keep the CLIP-format files beside it too.
        write_tokenizer_files(tmp / "tokenizer", vocab, merges, max_length)
        shutil.rmtree(tmp / "tokenizer_src")
        record = {
            "what": "brainldm toy Stable Diffusion (SD v1.4 classes at tiny sizes, trained on the toy world)",
            "weights": manifest,
            "assembled_with": {
                "torch": torch.__version__,
                "diffusers": diffusers.__version__,
                "transformers": transformers.__version__,
            },
        }
        (tmp / "brainldm_toy_model.json").write_text(json.dumps(record, indent=2) + "\n")
        if out_dir.exists():  # os.replace cannot replace a non-empty folder
            shutil.rmtree(out_dir)
    return record
