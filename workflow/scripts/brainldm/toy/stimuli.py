"""The toy world's stimuli: one object of a shape, colour, size and position on a background,
drawn as an image and described by COCO-style captions written from its attributes."""

from __future__ import annotations

import numpy as np

from brainldm.toy.attributes import ATTRIBUTE_VALUES, BACKGROUNDS, COLOURS, POSITIONS, SIZES

SYNONYMS = {
    "circle": ["circle", "disk", "round shape"],
    "square": ["square", "box", "block"],
    "triangle": ["triangle", "three sided shape", "wedge"],
    "cross": ["cross", "plus sign", "cross shape"],
    "red": ["red", "crimson", "scarlet"],
    "green": ["green", "emerald", "grassy green"],
    "blue": ["blue", "navy", "azure"],
    "yellow": ["yellow", "golden", "lemon"],
    "white": ["white", "snowy", "pale"],
    "small": ["small", "little", "tiny"],
    "large": ["large", "big", "huge"],
    "left": ["on the left", "at the left side", "to the left"],
    "right": ["on the right", "at the right side", "to the right"],
    "top": ["at the top", "near the top", "up high"],
    "bottom": ["at the bottom", "near the bottom", "down low"],
    "centre": ["in the centre", "in the middle", "at the center"],
    "gray": ["gray background", "grey backdrop", "plain gray scene"],
    "dark": ["dark background", "black backdrop", "night scene"],
    "sand": ["sandy background", "beige backdrop", "desert scene"],
}
TEMPLATES = (
    "a {size} {colour} {shape} {position} on a {background}",
    "there is a {colour} {shape} {position}, {size}, over a {background}",
    "{size} {shape} coloured {colour} sits {position} of a {background}",
    "an image of a {colour} {shape} {position} with a {background}",
    "a {background} with one {size} {colour} {shape} {position}",
)


def draw_attributes(n_images: int, rng: np.random.Generator) -> list[dict[str, str]]:
    """Random attributes (shape, colour, size, position, background) for each image."""
    return [
        {key: str(rng.choice(values)) for key, values in ATTRIBUTE_VALUES.items()} for _ in range(n_images)
    ]


def render_image(attributes: dict[str, str], size: int, rng: np.random.Generator) -> np.ndarray:
    """Draw one stimulus: (size, size, 3) uint8."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    image = np.empty((size, size, 3), dtype=np.float64)
    image[:] = BACKGROUNDS[attributes["background"]]
    # A gentle shading and pixel noise keep backgrounds from being perfectly flat.
    image += 25.0 * (yy - 0.5)[..., None] + rng.normal(0.0, 6.0, size=image.shape)
    cx, cy = POSITIONS[attributes["position"]]
    radius = SIZES[attributes["size"]]
    dx, dy = xx - cx, yy - cy
    shape = attributes["shape"]
    if shape == "circle":
        inside = dx**2 + dy**2 <= radius**2
    elif shape == "square":
        inside = (np.abs(dx) <= radius * 0.85) & (np.abs(dy) <= radius * 0.85)
    elif shape == "triangle":
        inside = (dy <= radius * 0.8) & (dy >= -radius) & (np.abs(dx) <= (dy + radius) * 0.6)
    else:
        arm = radius * 0.3
        inside = ((np.abs(dx) <= arm) & (np.abs(dy) <= radius)) | (
            (np.abs(dy) <= arm) & (np.abs(dx) <= radius)
        )
    image[inside] = COLOURS[attributes["colour"]]
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def write_captions(attributes: dict[str, str], rng: np.random.Generator, n_captions: int = 5) -> list[str]:
    """``n_captions`` paraphrased captions of one image, each naming all its attributes."""
    captions = []
    for template in TEMPLATES[:n_captions]:
        words = {key: str(rng.choice(SYNONYMS[value])) for key, value in attributes.items()}
        caption = template.format(**words)
        captions.append(caption[0].upper() + caption[1:] + ".")
    return captions


def caption_corpus() -> list[str]:
    """Every word the toy captions can use: the templates' own words and every synonym.

    A vocabulary learnt from these covers the captions of any toy seed.
    """
    texts = [" ".join(template.replace("{", " ").replace("}", " ").split()) for template in TEMPLATES]
    texts = [" ".join(w for w in text.split() if w not in ATTRIBUTE_VALUES) + " ." for text in texts]
    return texts + [phrase for phrases in SYNONYMS.values() for phrase in phrases]
