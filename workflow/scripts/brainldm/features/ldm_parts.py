"""Encoding features: ``zc`` at several noise levels and the denoising U-Net's block outputs.

For every seen image, from its TRUE ``z`` and ``c`` (the features stage's arrays):

- ``zc{s}`` for each img2img strength ``s`` of ``encoding.zc_strengths``: the DDIM schedule of
  ``ddim_steps`` steps is entered at ``int(ddim_steps * s)`` steps before its end (diffusers'
  img2img rule), ``z`` is noised to that timestep with the scheduler's ``add_noise`` and denoised
  to the end conditioned on the image's own ``c``, with classifier-free guidance against the
  empty prompt (``guidance_scale``, ``eta``): the paper's sampler. The final latent is ``zc{s}``.
- ``unet_{block}_{step}``: during the denoising at strength ``encoding.unet_strength``, the output
  of each U-Net block of ``encoding.unet_blocks`` (``down_<i>``, ``mid``, ``up_<i>``; the
  conditional half of the guided batch) at the first (``early``), middle (``middle``) and last
  (``late``) denoising step, average-pooled over space to at most ``encoding.max_dims`` values
  (``channels x s x s`` with the largest ``s`` that fits; channels are averaged in groups when
  even ``s = 1`` is too many).

The noise of image ``nsdId`` at strength ``s`` (with ``ddim_eta > 0`` also the noise DDIM adds at
each step) comes from its own generator seeded by ``(seed, nsdId, s)``, so values never depend on
batching, sharding or order. All strengths of an image are denoised in the same U-Net passes
(their schedules end alike); on CPU every image goes through the U-Net alone, so its values are
bit-identical whatever the batch size.

All spaces of an image are stored side by side in one row, float16:
``encoding_features/encoding.npy`` (n_images, n_columns), ``encoding_nsd_ids.npy`` and
``encoding.json`` whose ``layout`` maps each space to its columns and shape
(:func:`brainldm.features.spaces.load_encoding_space`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch

from brainldm.core.names import unet_names, zc_names

LOGGER = logging.getLogger("brainldm.features.ldm_parts")

STEP_NAMES = ("early", "middle", "late")


@dataclass(frozen=True)
class EncodingFeatureSettings:
    """What determines the encoding features' values (recorded beside them)."""

    zc_strengths: tuple[float, ...] = (0.25, 0.5, 0.75)
    unet_strength: float = 0.75
    unet_blocks: tuple[str, ...] = ("down_0", "mid", "up_1")
    unet_steps: tuple[str, ...] = STEP_NAMES
    max_dims: int = 6400
    ddim_steps: int = 50
    ddim_eta: float = 0.0
    guidance_scale: float = 5.0
    seed: int = 42

    @classmethod
    def from_config(cls, encoding: dict, reconstruction: dict) -> "EncodingFeatureSettings":
        """From the validated ``encoding`` and ``reconstruction`` (the sampler) config sections."""
        return cls(
            zc_strengths=tuple(float(s) for s in encoding["zc_strengths"]),
            unet_strength=float(encoding["unet_strength"]),
            unet_blocks=tuple(encoding["unet_blocks"]),
            unet_steps=tuple(encoding["unet_steps"]),
            max_dims=int(encoding["max_dims"]),
            ddim_steps=int(reconstruction["ddim_steps"]),
            ddim_eta=float(reconstruction["ddim_eta"]),
            guidance_scale=float(reconstruction["guidance_scale"]),
            seed=int(encoding["seed"]),
        )

    def spaces(self) -> list[str]:
        """Names of the stored spaces: ``zc{s}`` then ``unet_{block}_{step}``."""
        return zc_names(self.zc_strengths) + unet_names(self.unet_blocks, self.unet_steps)


def denoising_timesteps(scheduler, ddim_steps: int, strength: float) -> torch.Tensor:
    """The timesteps img2img runs at ``strength``: the last ``int(ddim_steps * strength)`` of the schedule."""
    scheduler.set_timesteps(ddim_steps)
    n = min(int(ddim_steps * strength), ddim_steps)
    if n < 1:
        raise ValueError(
            f"encoding strength {strength} with {ddim_steps} DDIM steps denoises no step; "
            "use a larger strength or more reconstruction.ddim_steps"
        )
    return scheduler.timesteps[ddim_steps - n :]


def step_indices(n_steps: int, steps: Sequence[str]) -> dict[str, int]:
    """Index of the ``early`` (first), ``middle`` and ``late`` (last) denoising step."""
    table = {"early": 0, "middle": (n_steps - 1) // 2, "late": n_steps - 1}
    unknown = [s for s in steps if s not in table]
    if unknown:
        raise ValueError(f"encoding.unet_steps {unknown}: expected names among {list(table)}")
    return {s: table[s] for s in steps}


def unet_block(unet, name: str):
    """The module of U-Net block ``down_<i>``, ``mid`` or ``up_<i>``."""
    if name == "mid":
        return unet.mid_block
    kind, _, index = name.partition("_")
    blocks = {"down": unet.down_blocks, "up": unet.up_blocks}.get(kind)
    if blocks is None or not index.isdigit() or int(index) >= len(blocks):
        n_down, n_up = len(unet.down_blocks), len(unet.up_blocks)
        raise ValueError(
            f"encoding.unet_blocks: {name!r} is not a block of this U-Net; expected mid, "
            f"down_0..down_{n_down - 1} or up_0..up_{n_up - 1}"
        )
    return blocks[int(index)]


def pool_to(features: torch.Tensor, max_dims: int) -> torch.Tensor:
    """Average-pool (n, C, H, W) to at most ``max_dims`` values per image: (n, C', s, s) flattened.

    ``s`` is the largest side with ``C s^2 <= max_dims`` (at most the input's); if even ``s = 1``
    is too many, channels are averaged in consecutive groups to ``max_dims``.
    """
    n, channels, height, width = features.shape
    side = int(np.floor(np.sqrt(max_dims / channels))) if channels <= max_dims else 0
    if side >= 1:
        side = min(side, height, width)
        pooled = torch.nn.functional.adaptive_avg_pool2d(features.float(), side)
        return pooled.reshape(n, -1)
    pooled = features.float().mean(dim=(2, 3))  # (n, C)
    return torch.nn.functional.adaptive_avg_pool1d(pooled[:, None, :], max_dims)[:, 0]


def noise_seed(seed: int, nsd_id: int, strength: float) -> int:
    """Seed of the noise added to image ``nsd_id`` at ``strength``: a hash of the three."""
    state = np.random.SeedSequence([int(seed), int(nsd_id), int(round(strength * 1e6)), 0xE7]).generate_state(
        2
    )
    return int((int(state[0]) << 32 | int(state[1])) & (2**63 - 1))


class EncodingFeatureExtractor:
    """Runs the denoising of one batch of images and collects every encoding space.

    Every strength of ``settings.zc_strengths`` is denoised in the same U-Net passes: their
    schedules are suffixes of one DDIM schedule, so at each of its steps the strengths already
    entered share the timestep and go through the U-Net together (with the guided batch's
    unconditional half).

    Parameters
    ----------
    components : brainldm.features.sd_model.SDComponents
        ``unet``, ``scheduler``, ``text_encoder`` and ``tokenizer`` (for the empty prompt).
    settings : EncodingFeatureSettings
    per_sample : bool, optional
        One image (all its strengths) per U-Net pass (default on CPU: bit-identical whatever the
        batch); otherwise the whole batch at once.
    """

    def __init__(self, components, settings: EncodingFeatureSettings, per_sample: bool | None = None):
        self.unet = components.unet
        self.scheduler = components.scheduler
        self.settings = settings
        self.device = torch.device(getattr(components, "device", "cpu"))
        self.dtype = getattr(components, "dtype", torch.float32)
        self.per_sample = self.device.type == "cpu" if per_sample is None else bool(per_sample)
        tok = components.tokenizer
        ids = tok(
            [""], padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids.to(self.device)
        with torch.no_grad():
            self.uncond = components.text_encoder(ids)[0].to(self.dtype)  # (1, L, d)
        self.blocks = {name: unet_block(self.unet, name) for name in settings.unet_blocks}
        self.layout = None

    @torch.no_grad()
    def denoise(
        self,
        z: np.ndarray,
        c: np.ndarray,
        nsd_ids: Sequence[int],
        strengths: Sequence[float],
        record: tuple[float, dict[str, int]] | None = None,
    ):
        """``zc`` at each of ``strengths``; with ``record`` also the block outputs of one of them.

        Parameters
        ----------
        z : (n, 4, h, w) float — true latents
        c : (n, L, d) float — true text embeddings
        nsd_ids : (n,) int — for the noise seeds
        strengths : img2img strengths, denoised together
        record : (strength, {step name: step index within that strength's schedule}), optional

        Returns
        -------
        zc : {strength: (n, 4, h, w) float32}
        unet : {``unet_{block}_{step}``: (n, dims) float32}
        """
        s = self.settings
        if tuple(c.shape[1:]) != tuple(self.uncond.shape[1:]):
            raise ValueError(
                f"c has per-image shape {tuple(c.shape[1:])} but this model's text embedding "
                f"is {tuple(self.uncond.shape[1:])}"
            )
        strengths = [float(strength) for strength in strengths]
        lengths = [len(denoising_timesteps(self.scheduler, s.ddim_steps, strength)) for strength in strengths]
        timesteps = denoising_timesteps(self.scheduler, s.ddim_steps, strengths[int(np.argmax(lengths))])
        first_step = [len(timesteps) - length for length in lengths]  # where each strength enters
        recorded, record_at = None, {}
        if record is not None:
            recorded = next(k for k, strength in enumerate(strengths) if np.isclose(strength, record[0]))
            record_at = {first_step[recorded] + index: step for step, index in record[1].items()}
        clean = torch.as_tensor(np.asarray(z, dtype=np.float32))
        cond = torch.as_tensor(np.asarray(c, dtype=np.float32)).to(self.device, self.dtype)
        latents: dict[int, torch.Tensor] = {}
        generators: dict[int, list[torch.Generator]] = {}  # per strength, one per image
        captured: dict[str, torch.Tensor] = {}
        out: dict[str, torch.Tensor] = {}
        hooks = []
        if record_at:
            for name, module in self.blocks.items():

                def hook(_module, _inputs, output, name=name):
                    captured[name] = output[0] if isinstance(output, tuple) else output

                hooks.append(module.register_forward_hook(hook))
        try:
            for index, t in enumerate(timesteps):
                active = [k for k in range(len(strengths)) if first_step[k] <= index]
                for k in active:
                    if k not in latents:
                        generators[k] = [
                            torch.Generator().manual_seed(noise_seed(s.seed, n, strengths[k]))
                            for n in nsd_ids
                        ]
                        latents[k] = self._noised(clean, generators[k], t)
                stacked = torch.stack([latents[k] for k in active], dim=1)  # (n, n_active, 4, h, w)
                guided, kept = self._guided_noise(stacked, cond, t, captured)
                if index in record_at:
                    column = active.index(recorded)
                    for name, value in kept.items():
                        out[f"unet_{name}_{record_at[index]}"] = pool_to(value[:, column], s.max_dims).cpu()
                # with eta > 0 DDIM adds noise at every step: drawn from each image's own
                # generators, so that it is seeded and independent of the batch
                variance = (
                    None
                    if s.ddim_eta == 0
                    else torch.stack([self._draw(generators[k], clean.shape[1:]) for k in active], dim=1)
                    .flatten(0, 1)
                    .to(self.device, self.dtype)
                )
                stepped = self.scheduler.step(
                    guided.flatten(0, 1), t, stacked.flatten(0, 1), eta=s.ddim_eta, variance_noise=variance
                ).prev_sample.unflatten(0, stacked.shape[:2])
                for column, k in enumerate(active):
                    latents[k] = stepped[:, column]
        finally:
            for handle in hooks:
                handle.remove()
        zc = {strength: latents[k].float().cpu().numpy() for k, strength in enumerate(strengths)}
        return zc, {name: value.numpy() for name, value in out.items()}

    @staticmethod
    def _draw(generators: Sequence[torch.Generator], shape) -> torch.Tensor:
        """One standard normal array of ``shape`` per image, each from its own generator: (n, *shape)."""
        return torch.stack([torch.randn(shape, generator=generator) for generator in generators])

    def _noised(self, clean: torch.Tensor, generators: Sequence[torch.Generator], t) -> torch.Tensor:
        """``clean`` latents noised to timestep ``t`` with each image's own noise."""
        noised = self.scheduler.add_noise(
            clean, self._draw(generators, clean.shape[1:]), t.repeat(len(clean))
        )
        return noised.to(self.device, self.dtype)

    def _guided_noise(self, stacked, cond, t, captured):
        """Classifier-free guided noise of (n, n_active, 4, h, w) latents at timestep ``t``.

        Returns the guided noise (same shape) and, of each block output ``captured`` during the
        passes, the conditional half: ``{block: (n, n_active, C, H, W)}``.
        """
        n, n_active = stacked.shape[:2]
        images = [slice(i, i + 1) for i in range(n)] if self.per_sample else [slice(0, n)]
        guided, kept = [], {}
        for rows in images:
            latents = stacked[rows].flatten(0, 1)  # (images x strengths, 4, h, w)
            count = len(latents)
            context = torch.cat(
                [self.uncond.expand(count, -1, -1), cond[rows].repeat_interleave(n_active, dim=0)]
            )
            predicted = self.unet(torch.cat([latents, latents]), t, encoder_hidden_states=context).sample
            uncond, conditional = predicted.chunk(2)
            guided.append(
                (uncond + self.settings.guidance_scale * (conditional - uncond)).unflatten(0, (-1, n_active))
            )
            for name, value in captured.items():
                kept.setdefault(name, []).append(value[count:].unflatten(0, (-1, n_active)))
        return torch.cat(guided), {name: torch.cat(parts) for name, parts in kept.items()}

    def compute(self, z: np.ndarray, c: np.ndarray, nsd_ids: Sequence[int]) -> np.ndarray:
        """Every space of a batch side by side: (n, n_columns) float32 (layout in ``self.layout``)."""
        s = self.settings
        strengths = list(s.zc_strengths)
        unet_run = next((strength for strength in strengths if np.isclose(strength, s.unet_strength)), None)
        if unet_run is None:
            strengths.append(s.unet_strength)  # denoised only for its block outputs
            unet_run = s.unet_strength
        n_steps = len(denoising_timesteps(self.scheduler, s.ddim_steps, unet_run))
        zc, unet = self.denoise(
            z, c, nsd_ids, strengths, record=(unet_run, step_indices(n_steps, s.unet_steps))
        )
        parts = {
            name: zc[strength].reshape(len(z), -1)
            for strength, name in zip(s.zc_strengths, zc_names(s.zc_strengths))
        }
        parts.update(unet)
        layout, start = {}, 0
        for name in s.spaces():
            width = parts[name].shape[1]
            shape = list(z.shape[1:]) if name.startswith("zc") else [width]
            layout[name] = {"start": start, "stop": start + width, "shape": shape}
            start += width
        self.layout = layout
        return np.concatenate([parts[name] for name in s.spaces()], axis=1).astype(np.float32)


def extract_encoding_shard(
    components,
    settings: EncodingFeatureSettings,
    features_dir: str | os.PathLike,
    nsd_ids: np.ndarray,
    out_path: str | os.PathLike,
    batch_size: int = 8,
    per_sample: bool | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Compute the encoding features of one shard's ``nsd_ids`` resumably and write ``out_path``.

    ``z`` and ``c`` are read from ``features_dir`` (the features stage); the shard's record
    (``.json`` beside it) holds the settings, the model and the column ``layout``.
    """
    from brainldm.features.extract import extract_shard
    from brainldm.features.store import load_features

    extractor = EncodingFeatureExtractor(components, settings, per_sample)

    def compute(ids: np.ndarray) -> np.ndarray:
        z = load_features(features_dir, "z", ids, dtype=np.float32)
        c = load_features(features_dir, "c", ids, dtype=np.float32)
        return extractor.compute(z, c, ids)

    probe_ids = np.asarray(nsd_ids[:1], dtype=np.int64)
    if len(probe_ids):  # the layout (column widths) of this model, for the record
        extractor.compute(
            load_features(features_dir, "z", probe_ids, dtype=np.float32),
            load_features(features_dir, "c", probe_ids, dtype=np.float32),
            probe_ids,
        )
    value_settings = asdict(settings)
    record = {
        "model": components.describe() if hasattr(components, "describe") else {},
        "value_settings": value_settings,
        "layout": extractor.layout,
        "per_sample": extractor.per_sample,
        "versions": _versions(),
    }
    return extract_shard(
        "encoding",
        compute,
        nsd_ids,
        out_path,
        batch_size,
        "float16",
        settings=value_settings,
        record=record,
        progress=progress,
    )


def _versions() -> dict:
    import diffusers

    return {"torch": torch.__version__, "diffusers": diffusers.__version__, "numpy": np.__version__}
