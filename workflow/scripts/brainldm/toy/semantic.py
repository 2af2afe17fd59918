"""The toy world's semantic feature space: a small classifier of the planted attributes.

The toy's analogue of the Inception/CLIP features of the paper's evaluation. A 3-layer CNN
(:class:`ToySemanticNet`) reads a 64 x 64 RGB image and predicts each planted attribute
(:data:`brainldm.toy.attributes.ATTRIBUTE_VALUES`: shape, colour, size, position, background). It is
trained by :mod:`brainldm.toy.training` on the stimuli outside the shared (test) set, mirrored,
with blur, shifts, noise and brightness changes so that it also reads blurry reconstructions;
its weights ship in ``workflow/toy_model/semantic.safetensors``.

- :class:`ToySemanticExtractor` (identification feature ``toy_semantic``): the predicted
  probabilities of the toy's semantic attributes, shape and colour (the ones its ventral voxels
  respond to, :func:`brainldm.toy.world.semantic_features`), concatenated: (n, 9) float32.
- :func:`predict_attributes` and :func:`attribute_matches`: how often a reconstruction's
  predicted attributes equal the seen image's planted ones, per method (rule
  ``match_toy_attributes``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from brainldm.evaluation.batches import load_png
from brainldm.evaluation.extractors import FeatureExtractor
from brainldm.toy.attributes import ATTRIBUTE_VALUES

INPUT_SIZE = 64
#: Attributes that make the toy's semantic feature space (those of its ventral voxels).
SEMANTIC_ATTRIBUTES = ("shape", "colour")


class ToySemanticNet(torch.nn.Module):
    """(n, 3, 64, 64) float in [0, 1] -> {attribute: (n, n_values) logits}."""

    def __init__(self, width: int = 16, hidden: int = 64):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, width, 3, stride=2, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1),
            torch.nn.ReLU(),
            torch.nn.Flatten(),
            torch.nn.Linear(2 * width * (INPUT_SIZE // 8) ** 2, hidden),
            torch.nn.ReLU(),
        )
        self.heads = torch.nn.ModuleDict(
            {name: torch.nn.Linear(hidden, len(values)) for name, values in ATTRIBUTE_VALUES.items()}
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.body(x)
        return {name: head(h) for name, head in self.heads.items()}


def images_to_input(images: Sequence) -> torch.Tensor:
    """(H, W, 3) uint8 images -> (n, 3, 64, 64) float32 in [0, 1] (bilinear resize if needed)."""
    from PIL import Image

    arrays = []
    for image in images:
        array = np.asarray(image)
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
            raise ValueError(f"toy_semantic: images must be (H, W, 3) uint8, got {array.dtype} {array.shape}")
        if array.shape[:2] != (INPUT_SIZE, INPUT_SIZE):
            array = np.asarray(Image.fromarray(array).resize((INPUT_SIZE, INPUT_SIZE), Image.BILINEAR))
        arrays.append(array)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div(255.0)


#: Blur factors of :func:`augment`, drawn uniformly (so half of the images stay sharp).
BLUR_FACTORS = (1, 1, 2, 4)


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random blur (down- and upsampling by a factor of :data:`BLUR_FACTORS`), shifts of up to
    2 px, brightness and pixel noise, per image."""
    n = len(x)
    out = torch.empty_like(x)
    factors = torch.randint(0, len(BLUR_FACTORS), (n,), generator=generator)
    shifts = torch.randint(-2, 3, (n, 2), generator=generator)
    for i in range(n):
        f = BLUR_FACTORS[int(factors[i])]
        xi = x[i : i + 1]
        if f > 1:
            xi = torch.nn.functional.interpolate(
                torch.nn.functional.avg_pool2d(xi, f), scale_factor=f, mode="bilinear", align_corners=False
            )
        out[i] = torch.roll(xi[0], shifts=(int(shifts[i, 0]), int(shifts[i, 1])), dims=(1, 2))
    gain = 1.0 + 0.15 * (torch.rand(n, 1, 1, 1, generator=generator) - 0.5)
    noise = 0.04 * torch.randn(x.shape, generator=generator)
    return (out * gain + noise).clamp(0, 1)


def mirrored(
    x: torch.Tensor, targets: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The images mirrored left-right, with ``left`` and ``right`` swapped in their positions
    (every toy shape is left-right symmetric): twice the training images."""
    positions = ATTRIBUTE_VALUES["position"]
    swap = torch.arange(len(positions))
    swap[positions.index("left")], swap[positions.index("right")] = (
        positions.index("right"),
        positions.index("left"),
    )
    flipped = {name: (swap[t] if name == "position" else t) for name, t in targets.items()}
    return (torch.cat([x, x.flip(-1)]), {name: torch.cat([targets[name], flipped[name]]) for name in targets})


def train_semantic(
    images: np.ndarray,
    attributes: Sequence[dict],
    seed: int,
    steps: int = 1500,
    batch_size: int = 32,
    lr: float = 2e-3,
) -> tuple[ToySemanticNet, dict]:
    """Train :class:`ToySemanticNet` on ``images`` (n, H, W, 3) uint8 and their attributes.

    Seeded Adam steps on augmented batches (:func:`mirrored` images, :func:`augment`),
    cross-entropy summed over the attributes. Returns the network (eval mode) and a record
    (steps, first and last loss).
    """
    targets = {
        name: torch.tensor([values.index(a[name]) for a in attributes])
        for name, values in ATTRIBUTE_VALUES.items()
    }
    x_all, targets = mirrored(images_to_input(images), targets)
    torch.manual_seed(seed)
    net = ToySemanticNet()
    generator = torch.Generator().manual_seed(seed + 1)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    losses = []
    net.train()
    for _ in range(steps):
        index = torch.randint(len(x_all), (batch_size,), generator=generator)
        logits = net(augment(x_all[index], generator))
        loss = sum(torch.nn.functional.cross_entropy(logits[name], targets[name][index]) for name in logits)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    net.eval().requires_grad_(False)
    return net, {
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "first_loss": losses[0] if losses else None,
        "last_loss": float(np.mean(losses[-20:])) if losses else None,
    }


@torch.no_grad()
def predict_probabilities(
    net: ToySemanticNet, images: Sequence, batch_size: int = 64
) -> dict[str, np.ndarray]:
    """{attribute: (n, n_values) float32 probabilities} of (H, W, 3) uint8 images or PNG paths."""
    parts: dict[str, list[np.ndarray]] = {name: [] for name in ATTRIBUTE_VALUES}
    for start in range(0, len(images), batch_size):
        batch = [
            load_png(im) if isinstance(im, (str, Path)) else im for im in images[start : start + batch_size]
        ]
        for name, logits in net(images_to_input(batch)).items():
            parts[name].append(torch.softmax(logits, dim=1).numpy().astype(np.float32))
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}


def predict_attributes(net: ToySemanticNet, images: Sequence, batch_size: int = 64) -> list[dict[str, str]]:
    """The most probable value of every attribute for each image."""
    probabilities = predict_probabilities(net, images, batch_size)
    n = len(next(iter(probabilities.values())))
    return [
        {name: ATTRIBUTE_VALUES[name][int(np.argmax(p[i]))] for name, p in probabilities.items()}
        for i in range(n)
    ]


def load_semantic_net(weights_dir: str | Path | None = None) -> ToySemanticNet:
    """The trained classifier from a toy weights folder (default: the shipped one), sha256 checked."""
    from brainldm.toy.model import SHIPPED_WEIGHTS, load_state, read_manifest

    weights_dir = SHIPPED_WEIGHTS if weights_dir is None else Path(weights_dir)
    read_manifest(weights_dir, roles=("semantic",))
    net = ToySemanticNet()
    net.load_state_dict(load_state(weights_dir, "semantic"), strict=True)
    return net.eval().requires_grad_(False)


class ToySemanticExtractor(FeatureExtractor):
    """Identification feature ``toy_semantic``: predicted shape and colour probabilities, (n, 9)."""

    names = ("toy_semantic",)

    def __init__(self, weights_dir: str | Path | None = None):
        self.net = load_semantic_net(weights_dir)

    def extract(self, images):
        probabilities = predict_probabilities(self.net, images)
        return {"toy_semantic": np.concatenate([probabilities[name] for name in SEMANTIC_ATTRIBUTES], axis=1)}


MATCH_COLUMNS = ("method", "attribute", "match", "chance", "n_images", "n_samples")


def attribute_matches(truth: Sequence[dict], predicted: dict[str, list[list[dict]]]) -> list[dict]:
    """How often reconstructions' predicted attributes equal the seen images' planted ones.

    Parameters
    ----------
    truth : list (n_images) of dict
        Planted attributes of the seen images.
    predicted : {method: list (n_images) of list (n_samples) of dict}
        Predicted attributes of every sample of every image.

    Returns
    -------
    rows : list of dict with keys :data:`MATCH_COLUMNS`
        ``match``: fraction of (image, sample) pairs whose value equals the seen image's;
        ``chance``: the fraction expected if the predictions did not depend on the seen image,
        sum over values of (frequency among the seen images) x (frequency among the predictions).
    """
    rows = []
    for method, per_image in predicted.items():
        if len(per_image) != len(truth):
            raise ValueError(f"{method}: predictions for {len(per_image)} images, {len(truth)} seen")
        for name, values in ATTRIBUTE_VALUES.items():
            pairs = [(t[name], s[name]) for t, samples in zip(truth, per_image) for s in samples]
            seen = np.array([values.index(a) for a, _ in pairs])
            guess = np.array([values.index(b) for _, b in pairs])
            chance = float(
                np.sum(
                    np.bincount(seen, minlength=len(values))
                    / len(seen)
                    * np.bincount(guess, minlength=len(values))
                    / len(guess)
                )
            )
            rows.append(
                {
                    "method": method,
                    "attribute": name,
                    "match": float(np.mean(seen == guess)),
                    "chance": chance,
                    "n_images": len(truth),
                    "n_samples": len(pairs) // max(len(truth), 1),
                }
            )
    return rows


def match_reconstructions(
    net: ToySemanticNet,
    truth: Sequence[dict],
    originals: np.ndarray,
    nsd_ids: Sequence[int],
    files: dict,
    methods: Sequence[str],
    samples_per_method: dict[str, int],
) -> list[dict]:
    """:func:`attribute_matches` of one subject's reconstructions, with the originals first.

    Parameters
    ----------
    net : the trained classifier (:func:`load_semantic_net`)
    truth : planted attributes of the test images, rows in ``nsd_ids`` order
    originals : (n_images, H, W, 3) uint8, the seen images (method ``original``: the classifier's
        own accuracy, the ceiling of every method)
    files : {(nsdId, method, sample): PNG path} (``brainldm.reconstruction.outputs.read_manifests``)
    """
    nsd_ids = [int(n) for n in nsd_ids]
    predicted = {"original": [[p] for p in predict_attributes(net, list(originals))]}
    for method in methods:
        k = samples_per_method[method]
        keys = [(n, method, s) for n in nsd_ids for s in range(k)]
        missing = [key for key in keys if key not in files]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} {method} reconstructions are missing (first: nsdId "
                f"{missing[0][0]}, sample {missing[0][2]}); outputs of rule reconstruct_images"
            )
        flat = predict_attributes(net, [files[key] for key in keys])
        predicted[method] = [flat[i * k : (i + 1) * k] for i in range(len(nsd_ids))]
    return attribute_matches(truth, predicted)
