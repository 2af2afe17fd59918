"""Train the toy world's Stable Diffusion and semantic classifier; write the weights that ship.

One command retrains everything (about 12 minutes of one free CPU core) and writes the folder that
``workflow/toy_model/`` holds::

    PYTHONPATH=workflow/scripts nice python3 -m brainldm.toy.training --out workflow/toy_model

What it does, on the toy world of ``--toy-seed`` (0) at the default toy sizes, using only the
images outside the shared (test) set and their captions:

1. the VAE (:func:`brainldm.toy.model.fit_vae`, warm-started as a pooling autoencoder),
   rounded to float16 as shipped; ``scaling_factor`` = 1 / std of its latents;
2. text encoder and U-Net together as a text-to-image latent diffusion model: noise-prediction
   loss (MSE) on the VAE's scaled posterior samples noised at uniform timesteps of SD v1.4's
   schedule, conditioned on ``c`` as the features stage computes it (the text encoder's last
   hidden state averaged over the image's captions). A fraction ``p_uncond`` of the samples is
   conditioned on the empty prompt's embedding instead (caption dropout, so that classifier-free
   guidance works); a fraction ``p_centred`` on ``c`` minus its batch mean, times a random
   factor in ``centred_scale``: the paper's decoder (no intercept on standardised voxels)
   predicts only c's deviation from its training mean, shrunk, and the toy U-Net has to read that
   as well as a text's own ``c``. AdamW at a constant rate after a linear warm-up; the shipped
   weights are an exponential moving average (``ema_decay``, warmed up);
3. the semantic classifier (:func:`brainldm.toy.semantic.train_semantic`) on the same images
   and ``semantic_extra_images`` newly rendered ones (:func:`rendered_stimuli`).

Everything is seeded and runs for fixed step counts on ``--threads`` torch threads (1): the same
command on the same CPU kind gives the same bytes. Checkpoints (``--checkpoints``, every
``checkpoint_every`` steps) let a killed run resume where it stopped with the same result.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from brainldm.core.atomic import atomic_path
from brainldm.features.sd_model import sd_v1_4_configs
from brainldm.toy.generation import generation_matches, tokenize
from brainldm.toy.model import (
    MANIFEST,
    SHIPPED_WEIGHTS,
    WEIGHT_FILES,
    fit_vae,
    images_to_tensor,
    new_toy_components,
    pixcorr,
    sha256_of,
    toy_component_configs,
    toy_vocabulary,
    vae_roundtrip,
    write_tokenizer_files,
)
from brainldm.toy.stimuli import caption_corpus
from brainldm.toy.training_data import ToyTrainingData, rendered_stimuli
from brainldm.toy.world import ToyParams, toy_stimuli

log = logging.getLogger(__name__)

DEFAULT_CHECKPOINTS = Path("resources/toy/training_checkpoints")
#: How this module is run; the manifest's ``command`` starts with it (:func:`command_line`).
PROG = "python3 -m brainldm.toy.training"


@dataclass(frozen=True)
class TrainingSettings:
    """Everything that sets the trained weights (recorded in the manifest)."""

    seed: int = 0
    vae_steps: int = 240
    ldm_steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 100
    ema_decay: float = 0.995
    p_uncond: float = 0.1
    p_centred: float = 0.45
    centred_scale: tuple[float, float] = (0.25, 1.0)
    grad_clip: float = 1.0
    semantic_steps: int = 2000
    semantic_extra_images: int = 2000
    checkpoint_every: int = 100
    threads: int = 1

    def key(self) -> dict:
        """Settings a checkpoint must share to be resumed: all but the checkpoint interval and
        the LDM's step count (the learning rate is constant after the warm-up, so training to
        N steps and then on to M gives the same weights as training to M at once)."""
        values = asdict(self)
        values.pop("checkpoint_every")
        values.pop("ldm_steps")
        values["centred_scale"] = list(values["centred_scale"])
        return values


def to_float16_and_back(module: torch.nn.Module) -> None:
    """Round ``module``'s weights to float16 in place (as shipped), keeping float32 tensors."""
    with torch.no_grad():
        for tensor in module.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(tensor.half().float())


def _save_checkpoint(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _load_checkpoint(path: Path, key: dict, stage: str):
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("key") != key:
        log.warning("%s: checkpoint %s was made with other settings; starting %s over", stage, path, stage)
        return None
    return state


def train_vae_stage(vae, data: ToyTrainingData, settings: TrainingSettings, checkpoints: Path) -> dict:
    """Fit (or resume) the VAE, round it to float16; returns the record with its scaling factor."""
    key = {
        "stage": "vae",
        "seed": settings.seed,
        "vae_steps": settings.vae_steps,
        "threads": settings.threads,
        "n_images": len(data.images),
    }
    path = checkpoints / "vae.pt"
    state = _load_checkpoint(path, key, "VAE fit")
    if state is None:
        record = fit_vae(vae, data.images, seed=settings.seed, steps=settings.vae_steps)
        _save_checkpoint(path, {"key": key, "vae": vae.state_dict(), "record": record})
    else:
        vae.load_state_dict(state["vae"])
        record = state["record"]
        log.info("VAE fit: resumed from %s", path)
    vae.eval().requires_grad_(False)
    to_float16_and_back(vae)
    with torch.no_grad():
        x = images_to_tensor(data.images)
        generator = torch.Generator().manual_seed(settings.seed + 1)
        latents = torch.cat(
            [vae.encode(x[i : i + 64]).latent_dist.sample(generator=generator) for i in range(0, len(x), 64)]
        )
    scaling_factor = float(f"{1.0 / float(latents.std()):.5g}")
    vae.register_to_config(scaling_factor=scaling_factor)
    generator = torch.Generator().manual_seed(settings.seed + 2)
    record["pixcorr_train_images"] = round(
        float(np.mean(pixcorr(data.images, vae_roundtrip(vae, data.images, generator)))), 4
    )
    record["pixcorr_holdout_images"] = round(
        float(np.mean(pixcorr(data.holdout_images, vae_roundtrip(vae, data.holdout_images, generator)))), 4
    )
    record["scaling_factor"] = scaling_factor
    log.info("VAE: %s", record)
    return record


def train_ldm_stage(
    vae,
    text_encoder,
    unet,
    tokenizer,
    data: ToyTrainingData,
    settings: TrainingSettings,
    checkpoints: Path,
    progress: bool = True,
) -> dict:
    """Train text encoder and U-Net together (or resume); leaves the EMA weights in them.

    See the module docstring for the loss, caption dropout and the centred conditioning.
    """
    from diffusers import DDIMScheduler
    from tqdm import tqdm

    s = settings
    scheduler = DDIMScheduler(**sd_v1_4_configs()["scheduler"])
    with torch.no_grad():
        posterior = vae.encode(images_to_tensor(data.images)).latent_dist
        latent_mean, latent_std = posterior.mean.clone(), posterior.std.clone()
    scale = vae.config.scaling_factor
    n_captions = {len(c) for c in data.captions}
    if len(n_captions) != 1:
        raise ValueError(
            f"toy training: every image needs the same number of captions, got {sorted(n_captions)}"
        )
    n_captions = n_captions.pop()
    caption_ids = tokenize(tokenizer, [c for captions in data.captions for c in captions]).reshape(
        len(data.captions), n_captions, -1
    )
    empty_ids = tokenize(tokenizer, [""])
    hidden = text_encoder.config.hidden_size

    trained = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(trained, lr=s.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / s.warmup_steps)
    )
    ema = {
        "unet": {k: v.detach().clone() for k, v in unet.state_dict().items()},
        "text_encoder": {k: v.detach().clone() for k, v in text_encoder.state_dict().items()},
    }
    generator = torch.Generator().manual_seed(s.seed + 30)
    key = {"stage": "ldm", **s.key()}
    path = checkpoints / "ldm.pt"
    start, losses = 0, []
    state = _load_checkpoint(path, key, "LDM training")
    if state is not None and state["step"] > s.ldm_steps:
        log.warning(
            "LDM training: checkpoint %s is at step %d, past %d; starting over",
            path,
            state["step"],
            s.ldm_steps,
        )
        state = None
    if state is not None:
        unet.load_state_dict(state["unet"])
        text_encoder.load_state_dict(state["text_encoder"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        generator.set_state(state["generator"])
        ema, start, losses = state["ema"], state["step"], state["losses"]
        log.info("LDM training: resumed from %s at step %d", path, start)

    unet.train().requires_grad_(True)
    text_encoder.train().requires_grad_(True)
    bar = tqdm(total=s.ldm_steps, initial=start, desc="toy LDM", disable=not progress)
    for step in range(start, s.ldm_steps):
        index = torch.randint(len(data.images), (s.batch_size,), generator=generator)
        latents = (
            latent_mean[index]
            + latent_std[index] * torch.randn(latent_mean[index].shape, generator=generator)
        ) * scale
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(
            0, scheduler.config.num_train_timesteps, (s.batch_size,), generator=generator
        )
        noisy = scheduler.add_noise(latents, noise, timesteps)
        c = text_encoder(caption_ids[index].reshape(-1, caption_ids.shape[-1]))[0]
        c = c.reshape(s.batch_size, n_captions, -1, hidden).mean(1)
        empty = text_encoder(empty_ids)[0].expand_as(c)
        draw = torch.rand(s.batch_size, generator=generator)[:, None, None]
        factor = (
            s.centred_scale[0]
            + (s.centred_scale[1] - s.centred_scale[0])
            * torch.rand(s.batch_size, generator=generator)[:, None, None]
        )
        centred = factor * (c - c.mean(0, keepdim=True))
        condition = torch.where(
            draw < s.p_uncond, empty, torch.where(draw < s.p_uncond + s.p_centred, centred, c)
        )
        prediction = unet(noisy, timesteps, condition).sample
        loss = torch.nn.functional.mse_loss(prediction, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, s.grad_clip)
        optimizer.step()
        schedule.step()
        decay = min(s.ema_decay, (1 + step) / (10 + step))  # the usual warm-up of the average
        with torch.no_grad():
            for name, module in (("unet", unet), ("text_encoder", text_encoder)):
                for k, v in module.state_dict().items():
                    if v.is_floating_point():
                        ema[name][k].mul_(decay).add_(v.detach(), alpha=1 - decay)
                    else:
                        ema[name][k].copy_(v)
        losses.append(float(loss.detach()))
        bar.update(1)
        done = step + 1
        if done % s.checkpoint_every == 0 or done == s.ldm_steps:
            log.info(
                "toy LDM: step %d/%d, mean loss of the last 100 steps %.4f",
                done,
                s.ldm_steps,
                float(np.mean(losses[-100:])),
            )
            _save_checkpoint(
                path,
                {
                    "key": key,
                    "step": done,
                    "unet": unet.state_dict(),
                    "text_encoder": text_encoder.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(),
                    "generator": generator.get_state(),
                    "ema": ema,
                    "losses": losses,
                },
            )
    bar.close()
    unet.load_state_dict(ema["unet"])
    text_encoder.load_state_dict(ema["text_encoder"])
    for module in (unet, text_encoder):
        module.eval().requires_grad_(False)
        to_float16_and_back(module)
    per_100 = [round(float(np.mean(losses[i : i + 100])), 4) for i in range(0, len(losses), 100)]
    return {"steps": s.ldm_steps, "mean_loss_per_100_steps": per_100}


def train_toy_weights(
    out_dir: str | Path,
    settings: TrainingSettings = TrainingSettings(),
    params: ToyParams = ToyParams(),
    checkpoints: str | Path = DEFAULT_CHECKPOINTS,
    command: str = "",
    progress: bool = True,
) -> dict:
    """Train VAE, text encoder, U-Net and semantic classifier; write a toy weights folder.

    Parameters
    ----------
    out_dir : path
        The weights folder (``manifest.json`` and the files of
        :data:`brainldm.toy.model.WEIGHT_FILES`), written to a temporary sibling, then renamed.
    settings : TrainingSettings
    params : ToyParams
        The toy world whose non-test images are used (default: the toy config's).
    checkpoints : path
        Folder of resumable checkpoints.
    command : str
        The command line, recorded in the manifest.

    Returns
    -------
    dict
        The manifest.
    """
    from transformers import CLIPTokenizer

    from brainldm.toy.semantic import predict_attributes, train_semantic

    out_dir, checkpoints = Path(out_dir), Path(checkpoints)
    checkpoints.mkdir(parents=True, exist_ok=True)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        data = ToyTrainingData.from_params(params)
        vocab, merges = toy_vocabulary([caption_corpus()])
        configs = toy_component_configs(vocab, params.image_size)
        parts = new_toy_components(configs, settings.seed)
        write_tokenizer_files(checkpoints / "tokenizer", vocab, merges, configs["sizes"]["max_length"])
        tokenizer = CLIPTokenizer.from_pretrained(checkpoints / "tokenizer")

        vae_record = train_vae_stage(parts["vae"], data, settings, checkpoints)
        ldm_record = train_ldm_stage(
            parts["vae"],
            parts["text_encoder"],
            parts["unet"],
            tokenizer,
            data,
            settings,
            checkpoints,
            progress=progress,
        )
        extra_attributes, extra_images = rendered_stimuli(
            settings.semantic_extra_images, params.image_size, settings.seed
        )
        net, semantic_record = train_semantic(
            np.concatenate([data.images, extra_images]),
            data.attributes + extra_attributes,
            seed=settings.seed + 40,
            steps=settings.semantic_steps,
        )
        semantic_record["n_images"] = len(data.images) + len(extra_images)
        predicted = predict_attributes(net, list(data.holdout_images))
        semantic_record["holdout_accuracy"] = {
            name: round(
                float(np.mean([p[name] == t[name] for p, t in zip(predicted, data.holdout_attributes)])), 4
            )
            for name in predicted[0]
        }
        log.info("semantic classifier: %s", semantic_record)
        holdout_captions = [
            captions
            for i, captions in enumerate(toy_stimuli(params).captions)
            if i not in set(data.nsd_ids.tolist())
        ]
        ldm_record["holdout_generation_match"] = generation_matches(
            parts["vae"],
            parts["text_encoder"],
            parts["unet"],
            tokenizer,
            net,
            holdout_captions,
            data.holdout_attributes,
            seed=settings.seed,
        )
        log.info(
            "text-to-image from held-out captions, attributes matched: %s",
            ldm_record["holdout_generation_match"],
        )

        from safetensors.torch import save_file

        with atomic_path(out_dir) as tmp:
            tmp.mkdir(parents=True)
            for role, module in (
                ("vae", parts["vae"]),
                ("text_encoder", parts["text_encoder"]),
                ("unet", parts["unet"]),
                ("semantic", net),
            ):
                tensors = {
                    k: (v.half() if v.is_floating_point() else v).contiguous()
                    for k, v in module.state_dict().items()
                }
                save_file(tensors, tmp / WEIGHT_FILES[role])
            write_tokenizer_files(tmp / "tokenizer", vocab, merges, configs["sizes"]["max_length"])
            for name in ("special_tokens_map.json", "tokenizer_config.json"):
                (tmp / "tokenizer" / name).unlink()
            import diffusers
            import transformers

            manifest = {
                "what": "trained weights of the brainldm toy Stable Diffusion and its semantic classifier",
                "command": command,
                "toy": {**asdict(params), "grid": list(params.grid)},
                "n_train_images": int(len(data.images)),
                "settings": settings.key()
                | {"ldm_steps": settings.ldm_steps, "checkpoint_every": settings.checkpoint_every},
                "configs": configs,
                "vae_scaling_factor": vae_record["scaling_factor"],
                "vae": vae_record,
                "ldm": ldm_record,
                "semantic": semantic_record,
                "dtype_stored": "float16",
                "versions": {
                    "torch": torch.__version__,
                    "diffusers": diffusers.__version__,
                    "transformers": transformers.__version__,
                },
                "sha256": {name: sha256_of(tmp / name) for name in WEIGHT_FILES.values()},
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            if out_dir.exists():
                import shutil

                shutil.rmtree(out_dir)
    finally:
        torch.set_num_threads(previous_threads)
    return manifest


def command_line(argv: list[str]) -> str:
    """The command the manifest records for a run with arguments ``argv``."""
    return " ".join([PROG, *(shlex.quote(a) for a in argv)])


def main(argv: list[str] | None = None) -> None:
    defaults = TrainingSettings()
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=SHIPPED_WEIGHTS, help="weights folder to write (default: the shipped one)"
    )
    parser.add_argument("--checkpoints", type=Path, default=DEFAULT_CHECKPOINTS, help="resumable checkpoints")
    parser.add_argument(
        "--toy-seed", type=int, default=ToyParams().seed, help="seed of the toy world trained on"
    )
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of the training")
    parser.add_argument("--vae-steps", type=int, default=defaults.vae_steps)
    parser.add_argument("--ldm-steps", type=int, default=defaults.ldm_steps)
    parser.add_argument("--semantic-steps", type=int, default=defaults.semantic_steps)
    parser.add_argument("--threads", type=int, default=defaults.threads)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = TrainingSettings(
        seed=args.seed,
        vae_steps=args.vae_steps,
        ldm_steps=args.ldm_steps,
        semantic_steps=args.semantic_steps,
        threads=args.threads,
    )
    command = command_line(sys.argv[1:] if argv is None else argv)
    manifest = train_toy_weights(
        args.out,
        settings,
        ToyParams(seed=args.toy_seed),
        args.checkpoints,
        command=command,
        progress=not args.no_progress,
    )
    print(json.dumps({k: manifest[k] for k in ("vae", "semantic", "sha256")}, indent=2))


if __name__ == "__main__":
    main()
