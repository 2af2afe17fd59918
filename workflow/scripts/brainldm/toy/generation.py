"""Text-to-image with the toy model: the check that its generations show their captions'
attributes (recorded in the shipped weights' manifest by :mod:`brainldm.toy.training`)."""

from __future__ import annotations

import numpy as np
import torch

from brainldm.toy.model import toy_pipeline


def tokenize(tokenizer, texts: list[str]) -> torch.Tensor:
    """Token ids of ``texts``, padded to the tokenizer's length: (len(texts), length) int64."""
    return tokenizer(
        texts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


@torch.no_grad()
def generation_matches(
    vae,
    text_encoder,
    unet,
    tokenizer,
    net,
    captions: list,
    attributes: list,
    seed: int = 0,
    ddim_steps: int = 10,
    guidance_scale: float = 5.0,
) -> dict[str, float]:
    """Text-to-image check: how often images generated from captions show their attributes.

    For each image, one DDIM generation (``ddim_steps``, guidance ``guidance_scale`` against the
    empty prompt) from the mean text embedding of its captions, as the features stage computes
    ``c``; the semantic classifier ``net`` reads the generated image.

    Returns
    -------
    {attribute: fraction of images whose generated image shows the captions' value}
    """

    from brainldm.toy.semantic import predict_attributes

    pipe = toy_pipeline(vae, text_encoder, tokenizer, unet)
    pipe.set_progress_bar_config(disable=True)
    empty = text_encoder(tokenize(tokenizer, [""]))[0]
    images = []
    for i, image_captions in enumerate(captions):
        c = text_encoder(tokenize(tokenizer, list(image_captions)))[0].mean(0, keepdim=True)
        out = pipe(
            prompt_embeds=c,
            negative_prompt_embeds=empty,
            num_inference_steps=ddim_steps,
            guidance_scale=guidance_scale,
            generator=torch.Generator().manual_seed(seed + i),
            output_type="np",
        ).images
        images.append((np.clip(out[0], 0, 1) * 255).round().astype(np.uint8))
    predicted = predict_attributes(net, images)
    return {
        name: round(float(np.mean([p[name] == a[name] for p, a in zip(predicted, attributes)])), 4)
        for name in predicted[0]
    }
