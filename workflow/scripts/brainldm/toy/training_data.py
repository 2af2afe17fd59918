"""The toy world's training data: the images outside the shared (test) set and their captions,
and newly rendered stimuli for the semantic classifier (:mod:`brainldm.toy.training`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from brainldm.toy.stimuli import draw_attributes, render_image
from brainldm.toy.world import ToyParams, toy_stimuli


@dataclass
class ToyTrainingData:
    """The training images (outside the shared set) of a toy world and their captions."""

    params: ToyParams
    nsd_ids: np.ndarray
    images: np.ndarray
    captions: list
    attributes: list
    holdout_images: np.ndarray
    holdout_attributes: list = field(default_factory=list)

    @classmethod
    def from_params(cls, params: ToyParams) -> "ToyTrainingData":
        world = toy_stimuli(params)
        test = np.isin(np.arange(params.n_images), world.shared_nsd_ids)
        train_ids = np.flatnonzero(~test)
        return cls(
            params,
            train_ids,
            world.images[train_ids],
            [world.captions[i] for i in train_ids],
            [world.attributes[i] for i in train_ids],
            world.images[test],
            [world.attributes[i] for i in np.flatnonzero(test)],
        )


def rendered_stimuli(n_images: int, image_size: int, seed: int) -> tuple[list[dict], np.ndarray]:
    """``n_images`` new toy stimuli drawn like the toy world's, from their own seed stream (never
    the test images): more examples of the planted attributes for the semantic classifier, as
    Inception learnt from ImageNet rather than from NSD's test images."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7]))
    attributes = draw_attributes(n_images, rng)
    images = (
        np.stack([render_image(a, image_size, rng) for a in attributes])
        if n_images
        else np.zeros((0, image_size, image_size, 3), np.uint8)
    )
    return attributes, images
