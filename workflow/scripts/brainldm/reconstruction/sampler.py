"""Images from decoded features: ``z`` (VAE decode), ``c`` (generation) and ``zc`` (img2img).

For each test image, with the decoded latent ``z`` (4, h, w) and text embedding ``c`` (77, d):

- ``z``: ``Xz = VAE.decode(z / scaling_factor)`` (deterministic, one image; 320 px for SD v1.4);
- ``c``: DDIM generation from Gaussian noise conditioned on ``c``, classifier-free guidance
  with the empty prompt ``""`` as the unconditional embedding (``image_size`` px);
- ``zc``: the paper's img2img: ``Xz`` resized to ``image_size`` (Lanczos), re-encoded (a
  posterior sample), noised to ``strength`` of the DDIM schedule and denoised conditioned on
  ``c`` with the same guidance.

``c`` and ``zc`` use diffusers' ``StableDiffusionPipeline`` / ``StableDiffusionImg2ImgPipeline``
with ``prompt_embeds`` / ``negative_prompt_embeds`` and one ``torch.Generator`` per image, seeded
from ``(seed, nsdId, sample index)`` (:func:`sample_seed`): an image never depends on which other
images share its batch or its shard. Generators live on the CPU, so a seed gives the same noise
on any device.

Files: ``<out_dir>/<method>/nsd<nsdId:05d>_s<sample>.png`` (``z`` has one sample, ``s0``) and a
``manifest.tsv`` (nsdId, method, sample, file) per output folder.

Speed (:data:`SPEED_KEYS`, none of which changes an image beyond a GPU's own rounding): batches of
``batch_size`` samples on a GPU (``auto``: chosen from the card's memory,
:func:`auto_batch_size`), and on a GPU only, channels-last memory layout, TF32 matmuls and an
opt-in ``torch.compile`` of the U-Net; PyTorch's fused attention (SDPA) on every device; PNGs
encoded and written on a background thread while the next batch runs (byte-identical files).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from brainldm.core.settings import RESULT_NEUTRAL_KEYS

LOGGER = logging.getLogger("brainldm.reconstruction")

METHODS = ("z", "c", "zc")

#: Keys of the ``reconstruction`` config section that change speed only, never an image beyond a
#: GPU's batch-to-batch rounding: rules read them from the config, not from ``params`` (which
#: are rerun triggers). ``n_shards`` and ``figure_images`` change which jobs and figure exist.
SPEED_KEYS = RESULT_NEUTRAL_KEYS["reconstruction"]

#: ``batch_size: auto`` on a GPU: samples per pipeline call for a card of at least this many GiB
#: (16-bit weights; float32 halves it). Guidance doubles the U-Net's batch; the VAE decode of a
#: batch at 512 px is the peak. Estimated from the activations' sizes; the device check
#: (tests/benchmarks/device_check.sh) prints the measured peak memory per batch size.
BATCH_SIZE_BY_GPU_GIB = ((70, 32), (36, 16), (20, 8), (0, 4))


def auto_batch_size(total_memory_bytes: int, dtype_bytes: int = 2) -> int:
    """Samples per pipeline call for a GPU of ``total_memory_bytes`` (:data:`BATCH_SIZE_BY_GPU_GIB`)."""
    gib = total_memory_bytes / 2**30
    batch = next(size for floor, size in BATCH_SIZE_BY_GPU_GIB if gib >= floor)
    return max(1, batch * 2 // max(2, dtype_bytes))


@dataclass(frozen=True)
class ReconstructionSettings:
    """The paper's img2img settings and the speed options (config section ``reconstruction``).

    ``batch_size`` is an int or ``"auto"`` (:func:`auto_batch_size` on a GPU; 4 on CPU, where
    the default per-image calls ignore it).
    """

    methods: tuple[str, ...] = METHODS
    n_samples: int = 5
    image_size: int = 512
    strength: float = 0.8
    ddim_steps: int = 50
    ddim_eta: float = 0.0
    guidance_scale: float = 5.0
    seed: int = 42
    batch_size: int | str = "auto"
    channels_last: bool = True
    fused_attention: bool = True
    tf32: bool = True
    compile_unet: bool = False
    background_writer: bool = True

    @classmethod
    def from_config(cls, section: dict) -> "ReconstructionSettings":
        """Build from the validated ``reconstruction`` config section (extra keys ignored)."""
        names = cls.__dataclass_fields__
        values = {key: section[key] for key in names if key in section}
        if "methods" in values:
            values["methods"] = tuple(values["methods"])
        return cls(**values)

    def samples_of(self, method: str) -> int:
        """Samples per image: ``z`` is deterministic (one), the others ``n_samples``."""
        return 1 if method == "z" else self.n_samples


def sample_seed(seed: int, nsd_id: int, sample: int) -> int:
    """The torch seed of one sample: a hash of (seed, nsdId, sample index), in [0, 2**63)."""
    state = np.random.SeedSequence([int(seed), int(nsd_id), int(sample)]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def generators_for(jobs: Sequence[tuple[int, int]], seed: int) -> list:
    """One CPU ``torch.Generator`` per (nsdId, sample) job."""
    import torch

    return [torch.Generator("cpu").manual_seed(sample_seed(seed, nid, s)) for nid, s in jobs]


class Reconstructor:
    """Runs the three methods with one set of loaded SD components.

    Parameters
    ----------
    components : brainldm.features.sd_model.SDComponents (or any object with ``vae``, ``text_encoder``,
        ``tokenizer``, ``unet``, ``scheduler``, ``device``, ``dtype``)
    settings : ReconstructionSettings
    per_image : bool, optional
        One image (all of its samples of a method) per pipeline call; default on CPU
        (bit-identical images whatever the batch size and shard), off on GPU (batches of
        ``batch_size`` samples; the per-sample generators keep each sample's noise the
        same, batched kernels may round differently).
    gpu_options : bool, optional
        Apply the GPU speed options of ``settings`` (channels-last, TF32, ``compile_unet``);
        default on a GPU only, so that CPU runs keep today's bit-exact path. Tests turn them on
        on the CPU to run the GPU's code.

    Attributes
    ----------
    batch_size : int
        ``settings.batch_size`` resolved (``auto`` -> :func:`auto_batch_size`).
    cpu_seconds : collections.Counter
        Seconds the calling thread spent on CPU-only work while the device idled, by stage:
        ``resize`` (PIL Lanczos of ``Xz``), ``host_copy`` (VAE output to uint8 on the host),
        ``png`` (encoding and writing, or waiting for the background writer).
    """

    def __init__(
        self,
        components,
        settings: ReconstructionSettings,
        per_image: bool | None = None,
        gpu_options: bool | None = None,
    ):
        import torch
        from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

        self.torch = torch
        self.settings = settings
        self.device = torch.device(getattr(components, "device", "cpu"))
        self.dtype = getattr(components, "dtype", torch.float32)
        self.batch_size = self._resolve_batch_size(settings.batch_size)
        self.cpu_seconds: Counter = Counter()
        self._set_attention(components, settings.fused_attention)
        if self.device.type == "cuda" if gpu_options is None else gpu_options:
            self._apply_gpu_options(components, settings)
        parts = dict(
            vae=components.vae,
            text_encoder=components.text_encoder,
            tokenizer=components.tokenizer,
            unet=components.unet,
            scheduler=components.scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        self.txt2img = StableDiffusionPipeline(**parts)
        self.img2img = StableDiffusionImg2ImgPipeline(**parts)
        for pipe in (self.txt2img, self.img2img):
            pipe.set_progress_bar_config(disable=True)
        self.vae = components.vae
        self.uncond = self._empty_prompt_embedding()
        # On CPU, a batch that holds one image only makes it bit-identical whatever the batch
        # size and shard (batched kernels round differently); on a GPU the batches are real.
        self.per_image = self.device.type == "cpu" if per_image is None else bool(per_image)

    def batches(self, jobs: Sequence[tuple[int, int]]) -> list[list[tuple[int, int]]]:
        """(row, sample) jobs split into pipeline calls: per image, or ``batch_size`` at a time."""
        if self.per_image:
            return [list(batch) for _, batch in itertools.groupby(jobs, key=lambda job: job[0])]
        size = self.batch_size
        return [list(jobs[start : start + size]) for start in range(0, len(jobs), size)]

    def _resolve_batch_size(self, batch_size: int | str) -> int:
        if batch_size != "auto":
            if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
                raise ValueError(
                    f"reconstruction.batch_size {batch_size!r} is invalid; expected 'auto' or an integer >= 1"
                )
            return batch_size
        if self.device.type != "cuda":
            return 4
        total = self.torch.cuda.get_device_properties(self.device).total_memory
        return auto_batch_size(total, self.torch.finfo(self.dtype).bits // 8)

    @staticmethod
    def _set_attention(components, fused: bool) -> None:
        """PyTorch's fused attention (``scaled_dot_product_attention``), or the explicit
        softmax(QK^T)V of diffusers' classic processor, in the U-Net and the VAE."""
        from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

        for module in (components.unet, components.vae):
            module.set_attn_processor(AttnProcessor2_0() if fused else AttnProcessor())

    def _apply_gpu_options(self, components, settings: ReconstructionSettings) -> None:
        """Channels-last layout of the U-Net and VAE, TF32 matmuls, ``torch.compile`` of the U-Net."""
        torch = self.torch
        # channels-last: convolutions run in NHWC on tensor cores; the modules accept NCHW inputs
        # unchanged. Set either way, so a Reconstructor never inherits an earlier one's layout.
        layout = torch.channels_last if settings.channels_last else torch.contiguous_format
        components.unet.to(memory_format=layout)
        components.vae.to(memory_format=layout)
        # TF32 touches float32 matmuls and convolutions only (fp16/bf16 weights use neither):
        # a 10-bit mantissa, the rounding of the 16-bit weights themselves
        torch.backends.cuda.matmul.allow_tf32 = bool(settings.tf32)
        torch.backends.cudnn.allow_tf32 = bool(settings.tf32)
        if settings.compile_unet:
            # in place (nn.Module.compile): diffusers' pipelines keep seeing a UNet2DConditionModel
            components.unet.compile()

    def _empty_prompt_embedding(self):
        """CLIP text encoder's last hidden state of ``""`` padded to the maximum length: (1, L, d)."""
        tok = self.txt2img.tokenizer
        ids = tok(
            [""], padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids.to(self.device)
        with self.torch.no_grad():
            return self.txt2img.text_encoder(ids)[0].to(self.dtype)

    def _check_c(self, c: np.ndarray) -> None:
        expected = tuple(self.uncond.shape[1:])
        if tuple(c.shape[1:]) != expected:
            raise ValueError(
                f"decoded c has per-image shape {tuple(c.shape[1:])} but this model's text "
                f"embedding is {expected} (max length, hidden size)"
            )

    def decode_z(self, z: np.ndarray) -> np.ndarray:
        """``Xz``: VAE decode of decoded latents.

        Parameters
        ----------
        z : (n, 4, h, w) float — decoded latents (scaled, as SD's features)

        Returns
        -------
        images : (n, H, W, 3) uint8
        """
        torch = self.torch
        latents = torch.as_tensor(np.asarray(z, dtype=np.float32)).to(self.device, self.dtype)
        with torch.no_grad():
            decoded = self.vae.decode(latents / self.vae.config.scaling_factor).sample
        if self.device.type == "cuda":  # so that the timer below counts the copy, not the decode
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        images = _to_uint8(decoded)
        self.cpu_seconds["host_copy"] += time.perf_counter() - start
        return images

    def generate_c(self, c: np.ndarray, jobs: Sequence[tuple[int, int]]) -> np.ndarray:
        """``c`` method: DDIM generation conditioned on ``c`` rows (one row per job).

        Parameters
        ----------
        c : (n_jobs, L, d) float
        jobs : (nsdId, sample) per row, for the seeds

        Returns
        -------
        images : (n_jobs, image_size, image_size, 3) uint8
        """
        s = self.settings
        self._check_c(c)
        embeds = self.torch.as_tensor(np.asarray(c, dtype=np.float32)).to(self.device, self.dtype)
        out = self.txt2img(
            prompt_embeds=embeds,
            negative_prompt_embeds=self.uncond.expand(len(jobs), -1, -1),
            height=s.image_size,
            width=s.image_size,
            num_inference_steps=s.ddim_steps,
            guidance_scale=s.guidance_scale,
            eta=s.ddim_eta,
            generator=generators_for(jobs, s.seed),
            output_type="np",
        ).images
        return _float_images_to_uint8(out)

    def img2img_zc(
        self, xz: Sequence[np.ndarray], c: np.ndarray, jobs: Sequence[tuple[int, int]]
    ) -> np.ndarray:
        """``zc`` method: the paper's img2img from ``Xz`` conditioned on ``c``.

        Parameters
        ----------
        xz : n_jobs x (H, W, 3) uint8 — the ``z`` reconstructions (resized here to image_size)
        c : (n_jobs, L, d) float
        jobs : (nsdId, sample) per row

        Returns
        -------
        images : (n_jobs, image_size, image_size, 3) uint8
        """
        from PIL import Image

        s = self.settings
        self._check_c(c)
        start = time.perf_counter()
        init = [
            Image.fromarray(np.asarray(x)).resize((s.image_size, s.image_size), Image.LANCZOS) for x in xz
        ]
        self.cpu_seconds["resize"] += time.perf_counter() - start
        embeds = self.torch.as_tensor(np.asarray(c, dtype=np.float32)).to(self.device, self.dtype)
        out = self.img2img(
            prompt_embeds=embeds,
            negative_prompt_embeds=self.uncond.expand(len(jobs), -1, -1),
            image=init,
            strength=s.strength,
            num_inference_steps=s.ddim_steps,
            guidance_scale=s.guidance_scale,
            eta=s.ddim_eta,
            generator=generators_for(jobs, s.seed),
            output_type="np",
        ).images
        return _float_images_to_uint8(out)


def _to_uint8(decoded) -> np.ndarray:
    """VAE output in [-1, 1], (n, 3, H, W) tensor -> (n, H, W, 3) uint8."""
    array = ((decoded.float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).cpu().numpy()
    return _float_images_to_uint8(array)


def _float_images_to_uint8(images: np.ndarray) -> np.ndarray:
    """(n, H, W, 3) floats in [0, 1] -> uint8 (rounded, as diffusers' numpy_to_pil)."""
    return (np.clip(np.asarray(images), 0, 1) * 255).round().astype(np.uint8)
