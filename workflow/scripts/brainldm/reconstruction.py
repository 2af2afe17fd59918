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
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from brainldm.core.atomic import atomic_path, write_text

LOGGER = logging.getLogger("brainldm.reconstruction")

METHODS = ("z", "c", "zc")

#: Keys of the ``reconstruction`` config section that change speed only, never an image beyond a
#: GPU's batch-to-batch rounding: rules read them from the config, not from ``params`` (which
#: are rerun triggers). ``n_shards`` and ``figure_images`` change which jobs and figure exist.
SPEED_KEYS = ("batch_size", "channels_last", "fused_attention", "tf32", "compile_unet", "background_writer")

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


def result_settings(section: dict) -> dict:
    """The ``reconstruction`` config section without :data:`SPEED_KEYS`: what a rule passes as
    ``params``, so that changing a speed option reruns nothing."""
    return {key: value for key, value in section.items() if key not in SPEED_KEYS}


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


def image_path(out_dir: str | Path, method: str, nsd_id: int, sample: int) -> Path:
    """``<out_dir>/<method>/nsd<nsdId:05d>_s<sample>.png``."""
    return Path(out_dir) / method / f"nsd{int(nsd_id):05d}_s{int(sample)}.png"


def shard_rows(n_images: int, shard: int, n_shards: int) -> np.ndarray:
    """Rows (of the test set) of shard ``shard`` of ``n_shards``: every ``n_shards``-th row."""
    if not 0 <= shard < n_shards:
        raise ValueError(f"shard {shard} is outside 0..{n_shards - 1}")
    return np.arange(shard, n_images, n_shards)


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


def save_png(path: str | Path, image: np.ndarray) -> None:
    """Write an (H, W, 3) uint8 image as PNG atomically."""
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


class PngWriter:
    """Writes PNGs (:func:`save_png`) in order, on one background thread when ``background``.

    The files are the same bytes either way; in the background the next batch runs on the
    device while the previous one is encoded. At most ``max_pending`` images wait in memory;
    :meth:`close` waits for every file and raises the first error of any of them.
    """

    def __init__(self, background: bool, max_pending: int = 64):
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="png") if background else None
        self._pending: deque = deque()
        self._max_pending = max_pending

    def write(self, path: str | Path, image: np.ndarray) -> None:
        """Write (or queue) ``image`` (H, W, 3) uint8 at ``path``; the caller must not change it after."""
        if self._executor is None:
            save_png(path, image)
            return
        self._pending.append(self._executor.submit(save_png, path, image))
        while len(self._pending) > self._max_pending:
            self._pending.popleft().result()

    def close(self) -> None:
        """Wait for every queued file; re-raise the first error."""
        try:
            while self._pending:
                self._pending.popleft().result()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True, cancel_futures=True)


def reconstruct(
    reconstructor: Reconstructor,
    z: np.ndarray,
    c: np.ndarray,
    nsd_ids: Sequence[int],
    out_dir: str | Path,
    *,
    progress: bool = True,
) -> list[tuple[int, str, int, str]]:
    """Reconstruct ``nsd_ids`` with every configured method and write the PNGs.

    Parameters
    ----------
    z : (n, 4, h, w) float — decoded latents of these images
    c : (n, L, d) float — decoded text embeddings of these images
    nsd_ids : (n,) int
    out_dir : folder receiving ``<method>/nsd<id>_s<k>.png`` and ``manifest.tsv``

    Returns
    -------
    manifest : list of (nsdId, method, sample, relative file)
    """
    s = reconstructor.settings
    nsd_ids = [int(n) for n in nsd_ids]
    if not (len(z) == len(c) == len(nsd_ids)):
        raise ValueError(f"z ({len(z)}), c ({len(c)}) and nsd_ids ({len(nsd_ids)}) differ in length")
    out_dir = Path(out_dir)
    manifest: list[tuple[int, str, int, str]] = []
    timings = reconstructor.cpu_seconds
    writer = PngWriter(s.background_writer)

    def record(nid, method, sample, image):
        path = image_path(out_dir, method, nid, sample)
        start = time.perf_counter()
        writer.write(path, image)
        timings["png"] += time.perf_counter() - start
        manifest.append((nid, method, sample, str(path.relative_to(out_dir))))

    try:
        _run_methods(reconstructor, z, c, nsd_ids, record, progress)
    finally:
        start = time.perf_counter()
        writer.close()
        timings["png"] += time.perf_counter() - start
    write_manifest(out_dir / "manifest.tsv", manifest)
    return manifest


def _run_methods(reconstructor: Reconstructor, z, c, nsd_ids: list[int], record, progress: bool) -> None:
    """Every configured method on every image, each output handed to ``record(nid, method, k, image)``."""
    from tqdm import tqdm

    s = reconstructor.settings

    need_xz = "z" in s.methods or "zc" in s.methods
    xz: dict[int, np.ndarray] = {}
    bar = tqdm(
        total=len(nsd_ids) * sum(s.samples_of(m) for m in s.methods),
        desc="reconstructions",
        disable=not progress,
    )
    if need_xz:
        for batch in reconstructor.batches([(row, 0) for row in range(len(nsd_ids))]):
            rows = [row for row, _ in batch]
            images = reconstructor.decode_z(np.asarray(z)[rows])
            for row, image in zip(rows, images):
                xz[row] = image
                if "z" in s.methods:
                    record(nsd_ids[row], "z", 0, image)
                    bar.update(1)
    for method in ("c", "zc"):
        if method not in s.methods:
            continue
        jobs = [(row, k) for row in range(len(nsd_ids)) for k in range(s.samples_of(method))]
        for chunk in reconstructor.batches(jobs):
            rows = [row for row, _ in chunk]
            seeds = [(nsd_ids[row], k) for row, k in chunk]
            c_rows = np.asarray(c)[rows]
            if method == "c":
                images = reconstructor.generate_c(c_rows, seeds)
            else:
                images = reconstructor.img2img_zc([xz[row] for row in rows], c_rows, seeds)
            for (nid, k), image in zip(seeds, images):
                record(nid, method, k, image)
                bar.update(1)
    bar.close()


def write_manifest(path: str | Path, manifest: Sequence[tuple[int, str, int, str]]) -> None:
    """``manifest.tsv``: nsdId, method, sample, file (relative to the manifest's folder)."""
    lines = ["nsdId\tmethod\tsample\tfile"] + [f"{n}\t{m}\t{k}\t{f}" for n, m, k, f in manifest]
    write_text(path, "\n".join(lines) + "\n")


def read_manifests(paths: Sequence[str | Path]) -> dict[tuple[int, str, int], Path]:
    """Merge shard manifests: ``{(nsdId, method, sample): absolute PNG path}``."""
    found: dict[tuple[int, str, int], Path] = {}
    for manifest in paths:
        manifest = Path(manifest)
        lines = manifest.read_text().splitlines()
        if not lines or lines[0].split("\t") != ["nsdId", "method", "sample", "file"]:
            raise ValueError(
                f"{manifest}: not a reconstruction manifest (header nsdId, method, sample, file)"
            )
        for line in lines[1:]:
            nid, method, sample, rel = line.split("\t")
            found[(int(nid), method, int(sample))] = manifest.parent / rel
    return found


def load_decoded(decoding_dir: str | Path, feature: str) -> tuple[np.ndarray, np.ndarray]:
    """A subject's decoded feature ``(pred (n_test, ...) float32, nsd_ids (n_test,) int64)``."""
    decoding_dir = Path(decoding_dir)
    pred_path, ids_path = decoding_dir / f"{feature}_pred.npy", decoding_dir / f"{feature}_nsd_ids.npy"
    for path in (pred_path, ids_path):
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing (an output of rule fit_decoder)")
    return np.load(pred_path), np.load(ids_path)


def reconstruct_shard(
    components,
    settings: ReconstructionSettings,
    decoding_dir: str | Path,
    out_dir: str | Path,
    shard: int,
    n_shards: int,
    *,
    progress: bool = True,
) -> list[tuple[int, str, int, str]]:
    """Reconstruct the test images of one shard of one subject into the folder ``out_dir``.

    The folder is filled as a temporary sibling and renamed when every image and the manifest
    are written, so ``out_dir`` never holds part of a shard (a killed job leaves nothing there).
    """
    z, z_ids = load_decoded(decoding_dir, "z")
    c, c_ids = load_decoded(decoding_dir, "c")
    if not np.array_equal(z_ids, c_ids):
        raise ValueError(f"{decoding_dir}: z and c predictions are for different test images")
    rows = shard_rows(len(z_ids), shard, n_shards)
    LOGGER.info(
        "shard %d/%d: %d of %d test images, methods %s",
        shard,
        n_shards,
        len(rows),
        len(z_ids),
        ",".join(settings.methods),
    )
    with atomic_path(out_dir) as tmp:
        return reconstruct(
            Reconstructor(components, settings), z[rows], c[rows], z_ids[rows], tmp, progress=progress
        )


def figure_rows(n_images: int, n_figure: int) -> np.ndarray:
    """Rows of the test images shown in the figure: ``n_figure`` evenly spaced rows."""
    n_figure = min(n_figure, n_images)
    return np.unique(np.linspace(0, n_images - 1, n_figure).round().astype(int))


def plot_reconstructions(
    originals: np.ndarray,
    nsd_ids: Sequence[int],
    files: dict[tuple[int, str, int], Path],
    methods: Sequence[str],
    out_path: str | Path,
    title: str = "",
) -> None:
    """Figure: one row per image, originals beside the first sample of each method.

    Parameters
    ----------
    originals : (n, H, W, 3) uint8
    nsd_ids : (n,) int
    files : from :func:`read_manifests`
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    columns = ["original", *methods]
    fig, axes = plt.subplots(
        len(nsd_ids), len(columns), figsize=(1.8 * len(columns), 1.8 * len(nsd_ids)), squeeze=False
    )
    for r, (nid, original) in enumerate(zip(nsd_ids, originals)):
        for col, name in enumerate(columns):
            ax = axes[r, col]
            if name == "original":
                image = original
            else:
                key = (int(nid), name, 0)
                if key not in files:
                    raise KeyError(f"no {name} reconstruction of nsdId {nid} in the manifests")
                with Image.open(files[key]) as im:
                    image = np.asarray(im.convert("RGB"))
            ax.imshow(image)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=9)
            if col == 0:
                ax.set_ylabel(f"nsd {nid}", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
