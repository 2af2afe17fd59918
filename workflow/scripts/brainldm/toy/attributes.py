"""The toy world's planted attributes: the values each stimulus draws its object from.

A module of its own so that readers of the attributes (the toy semantic classifier, in the
evaluation env) need none of the toy world's writers (its surface transforms need nilearn).
"""

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 70, 220),
    "yellow": (235, 215, 40),
    "white": (245, 245, 245),
}
SIZES = {"small": 0.16, "large": 0.3}  # object radius as a fraction of the image side
POSITIONS = {
    "left": (0.3, 0.5),
    "right": (0.7, 0.5),
    "top": (0.5, 0.3),
    "bottom": (0.5, 0.7),
    "centre": (0.5, 0.5),
}
BACKGROUNDS = {"gray": (128, 128, 128), "dark": (30, 30, 40), "sand": (200, 180, 140)}

ATTRIBUTE_VALUES = {
    "shape": SHAPES,
    "colour": tuple(COLOURS),
    "size": tuple(SIZES),
    "position": tuple(POSITIONS),
    "background": tuple(BACKGROUNDS),
}
