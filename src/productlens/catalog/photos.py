"""Draw one catalog-style product photo: a `PhotoSpec` (silhouette, pattern, material finish, colour, scale,
size) in, a PIL image of the product on a light background out; `save_photos` writes a batch as JPEGs.

Run through `productlens synth` (catalog/synth.py chooses the attributes from the product's title and price).
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

RGB = tuple[int, int, int]

JPEG_QUALITY = 88
LINE_WIDTH = 0.022  # default detail line width, as a fraction of the object's box (geometric mean side)
OUTLINE_WIDTH = 0.012  # body outline width, same unit
SHADOW_ALPHA = 70  # darkness of the soft floor shadow (0-255)
SHADOW_DOWNSCALE = 8  # the shadow is drawn this many times smaller, then blurred and upsampled
JITTER = 0.03  # random offset of the object's centre, as a fraction of the frame
BACKGROUNDS: tuple[RGB, ...] = ((248, 248, 246), (244, 241, 236), (238, 240, 243), (242, 239, 233))
FIXED_COLOURS: dict[str, RGB] = {
    "metal": (198, 166, 94),
    "sole": (245, 243, 238),
    "lens": (26, 28, 33),
    "light": (243, 239, 231),
    "ink": (33, 30, 30),
    "red": (170, 35, 40),
}


@dataclass(frozen=True)
class PhotoSpec:
    """What one photo shows. Names are keys of SILHOUETTES, TEXTURES and FINISHES."""

    silhouette: str
    texture: str  # the pattern fill: plain, check, vintage_check, stripe, monogram, argyle, camo
    finish: str  # the material's look: leather, suede, wool, cashmere, cotton, twill, nylon, silk, ...
    colour: RGB
    scale: float  # the object's box as a fraction of the frame (it fits in scale*width x scale*height)
    width: int
    height: int
    seed: int


# ---- silhouettes: shapes in the unit box (x right, y down), drawn in order ---------------------------------
# ("poly", role, points) | ("ellipse"/"rect", role, box[, radius]) | ("line", role, points[, width])
# | ("arc"/"chord", role, box, start, end[, width]). Roles: "body" fills the mask (textured), "cut" clears it;
# "seam" and "trim" are lines drawn on the texture (clipped to the body); every other role is drawn on top
# in its colour: "dark" (a deep shade of the fill), "metal", "sole", "lens", "light", "ink".
Shape = tuple


@dataclass(frozen=True)
class Silhouette:
    aspect: float  # width / height of the object's box
    shapes: tuple[Shape, ...]


def _mirror(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    return [(1 - x, y) for x, y in points]


def _dots(role: str, xs: tuple[float, ...], ys: tuple[float, ...], r: float) -> tuple[Shape, ...]:
    return tuple(("ellipse", role, (x - r, y - r, x + r, y + r)) for x in xs for y in ys)


def _hlines(
    role: str, ys: tuple[float, ...], x0: float, x1: float, w: float = LINE_WIDTH
) -> tuple[Shape, ...]:
    return tuple(("line", role, [(x0, y), (x1, y)], w) for y in ys)


def _vlines(
    role: str, xs: tuple[float, ...], y0: float, y1: float, w: float = LINE_WIDTH
) -> tuple[Shape, ...]:
    return tuple(("line", role, [(x, y0), (x, y1)], w) for x in xs)


# fmt: off
_QUILT = tuple(("line", "seam", [(t, 0), (t + 1, 1)], 0.012) for t in np.arange(-1, 1.01, 0.2)) + tuple(
    ("line", "seam", [(t + 1, 0), (t, 1)], 0.012) for t in np.arange(-1, 1.01, 0.2))
_SHIRT = [(0.38, 0.02), (0.62, 0.02), (0.80, 0.08), (0.97, 0.62), (1, 0.72), (0.90, 0.74), (0.86, 0.66),
          (0.76, 0.32), (0.76, 1), (0.24, 1), (0.24, 0.32), (0.14, 0.66), (0.10, 0.74), (0, 0.72),
          (0.03, 0.62), (0.20, 0.08)]
_COLLAR = [(0.38, 0.02), (0.50, 0.15), (0.42, 0.19), (0.34, 0.05)]
_TEE = [(0.36, 0), (0.64, 0), (0.80, 0.04), (1, 0.30), (0.86, 0.44), (0.76, 0.33), (0.76, 1), (0.24, 1),
        (0.24, 0.33), (0.14, 0.44), (0, 0.30), (0.20, 0.04)]
_POLO_COLLAR = [(0.38, 0.0), (0.50, 0.08), (0.46, 0.14), (0.33, 0.05)]
_KNIT = [(0.34, 0.0), (0.66, 0.0), (0.86, 0.06), (0.99, 0.88), (0.85, 0.90), (0.79, 0.30), (0.80, 1),
         (0.20, 1), (0.21, 0.30), (0.15, 0.90), (0.01, 0.88), (0.14, 0.06)]
_SLEEVE = [(0.24, 0.14), (0.04, 0.26), (0, 0.86), (0.15, 0.88), (0.22, 0.40)]
# fmt: on

# fmt: off
SILHOUETTES: dict[str, Silhouette] = {
    "trench": Silhouette(0.66, (
        ("poly", "body", [(0.36, 0), (0.64, 0), (0.90, 0.08), (1, 0.66), (0.88, 0.68), (0.80, 0.34),
                          (0.88, 1), (0.12, 1), (0.20, 0.34), (0.12, 0.68), (0, 0.66), (0.10, 0.08)]),
        ("line", "seam", [(0.36, 0), (0.50, 0.30), (0.64, 0)], 0.03),
        ("line", "seam", [(0.50, 0.30), (0.50, 1)]),
        ("line", "seam", [(0.12, 0.10), (0.30, 0.06)], 0.03),
        ("line", "seam", [(0.88, 0.10), (0.70, 0.06)], 0.03),
        ("rect", "dark", (0.18, 0.42, 0.82, 0.48)),
        ("rect", "metal", (0.45, 0.41, 0.55, 0.49)),
        *_dots("dark", (0.40, 0.60), (0.20, 0.28, 0.36, 0.56, 0.66), 0.022),
    )),
    "coat": Silhouette(0.62, (
        ("poly", "body", [(0.38, 0), (0.62, 0), (0.90, 0.08), (1, 0.74), (0.88, 0.76), (0.82, 0.30),
                          (0.82, 1), (0.18, 1), (0.18, 0.30), (0.12, 0.76), (0, 0.74), (0.10, 0.08)]),
        ("line", "seam", [(0.38, 0), (0.46, 0.16), (0.41, 0.19), (0.50, 0.34)], 0.03),
        ("line", "seam", [(0.62, 0), (0.54, 0.16), (0.59, 0.19), (0.50, 0.34)], 0.03),
        ("line", "seam", [(0.50, 0.34), (0.50, 1)]),
        *_hlines("seam", (0.62,), 0.23, 0.38, 0.03),
        *_hlines("seam", (0.62,), 0.62, 0.77, 0.03),
        *_dots("dark", (0.5,), (0.42, 0.55, 0.68, 0.81), 0.025),
    )),
    "quilted": Silhouette(1.15, (
        ("poly", "body", [(0.34, 0), (0.66, 0), (0.68, 0.08), (0.84, 0.12), (1, 0.80), (0.86, 0.84),
                          (0.76, 0.40), (0.76, 1), (0.24, 1), (0.24, 0.40), (0.14, 0.84), (0, 0.80),
                          (0.16, 0.12), (0.32, 0.08)]),
        *_QUILT,
        ("rect", "dark", (0.34, 0, 0.66, 0.10)),
        ("line", "metal", [(0.5, 0.10), (0.5, 1)], 0.02),
    )),
    "puffer": Silhouette(0.9, (
        ("ellipse", "body", (0.32, 0, 0.68, 0.26)),
        ("poly", "body", _SLEEVE),
        ("poly", "body", _mirror(_SLEEVE)),
        ("rect", "body", (0.20, 0.12, 0.80, 0.36), 0.09),
        ("rect", "body", (0.18, 0.32, 0.82, 0.56), 0.09),
        ("rect", "body", (0.17, 0.52, 0.83, 0.77), 0.09),
        ("rect", "body", (0.16, 0.73, 0.84, 1.0), 0.09),
        ("ellipse", "dark", (0.41, 0.05, 0.59, 0.2)),
        *_hlines("seam", (0.34, 0.54, 0.75), 0.0, 1.0, 0.02),
        *_hlines("seam", (0.45, 0.65), 0.0, 0.2, 0.02),
        *_hlines("seam", (0.45, 0.65), 0.8, 1.0, 0.02),
        ("line", "metal", [(0.5, 0.2), (0.5, 1)], 0.02),
    )),
    "cape": Silhouette(1.05, (
        ("poly", "body", [(0.40, 0), (0.60, 0), (0.68, 0.06), (0.97, 0.80), (1, 0.94), (0.75, 0.99),
                          (0.5, 1), (0.25, 0.99), (0, 0.94), (0.03, 0.80), (0.32, 0.06)]),
        ("rect", "dark", (0.37, 0, 0.63, 0.08)),
        ("line", "seam", [(0.5, 0.08), (0.5, 1)]),
        *_vlines("seam", tuple(np.linspace(0.08, 0.88, 11)), 0.93, 1.0),
        *_dots("dark", (0.5,), (0.2, 0.32, 0.44), 0.02),
    )),
    "shirt": Silhouette(1.0, (
        ("poly", "body", _SHIRT),
        ("poly", "light", _COLLAR),
        ("poly", "light", _mirror(_COLLAR)),
        ("line", "seam", [(0.5, 0.15), (0.5, 1)], 0.025),
        *_dots("light", (0.5,), (0.28, 0.42, 0.56, 0.70, 0.84), 0.014),
        ("rect", "seam", (0.28, 0.30, 0.42, 0.44)),
        ("line", "seam", [(0.88, 0.64), (0.99, 0.60)], 0.03),
        ("line", "seam", [(0.12, 0.64), (0.01, 0.60)], 0.03),
    )),
    "tshirt": Silhouette(1.25, (
        ("poly", "body", _TEE),
        ("ellipse", "cut", (0.40, -0.09, 0.60, 0.09)),
        ("arc", "seam", (0.37, -0.12, 0.63, 0.12), 0, 180, 0.03),
        ("line", "seam", [(0.88, 0.42), (0.98, 0.30)], 0.03),
        ("line", "seam", [(0.12, 0.42), (0.02, 0.30)], 0.03),
    )),
    "polo": Silhouette(1.25, (
        ("poly", "body", _TEE),
        ("poly", "light", _POLO_COLLAR),
        ("poly", "light", _mirror(_POLO_COLLAR)),
        ("rect", "seam", (0.47, 0.08, 0.53, 0.30)),
        *_dots("light", (0.5,), (0.15, 0.24), 0.014),
        ("line", "light", [(0.88, 0.42), (0.98, 0.30)], 0.035),
        ("line", "light", [(0.12, 0.42), (0.02, 0.30)], 0.035),
    )),
    "sweater": Silhouette(0.95, (
        ("poly", "body", _KNIT),
        ("ellipse", "cut", (0.39, -0.1, 0.61, 0.08)),
        ("arc", "seam", (0.36, -0.13, 0.64, 0.11), 0, 180, 0.035),
        *_hlines("seam", (0.91,), 0.20, 0.80, 0.03),
        *_vlines("seam", tuple(np.linspace(0.23, 0.77, 14)), 0.92, 1.0, 0.012),
        ("line", "seam", [(0.16, 0.82), (0.01, 0.80)], 0.03),
        ("line", "seam", [(0.84, 0.82), (0.99, 0.80)], 0.03),
    )),
    "hoodie": Silhouette(0.9, (
        ("ellipse", "body", (0.30, 0.0, 0.70, 0.34)),
        ("poly", "body", [(x, 0.16 + 0.84 * y) for x, y in _KNIT]),
        ("ellipse", "dark", (0.38, 0.05, 0.62, 0.26)),
        ("line", "seam", [(0.32, 0.66), (0.68, 0.66), (0.74, 0.88), (0.26, 0.88), (0.32, 0.66)]),
        ("line", "light", [(0.45, 0.26), (0.44, 0.44)], 0.015),
        ("line", "light", [(0.55, 0.26), (0.56, 0.44)], 0.015),
        *_hlines("seam", (0.93,), 0.20, 0.80, 0.03),
    )),
    "dress": Silhouette(0.62, (
        ("poly", "body", [(0.34, 0), (0.42, 0), (0.50, 0.08), (0.58, 0), (0.66, 0), (0.72, 0.12),
                          (0.67, 0.38), (1, 1), (0, 1), (0.33, 0.38), (0.28, 0.12)]),
        ("rect", "dark", (0.32, 0.37, 0.68, 0.42)),
        *(("line", "seam", [(0.5 + d * 0.05, 0.42), (0.5 + d * 0.22, 1)], 0.015) for d in range(-2, 3)),
    )),
    "skirt": Silhouette(0.95, (
        ("poly", "body", [(0.22, 0.08), (0.78, 0.08), (1, 1), (0, 1)]),
        ("rect", "dark", (0.21, 0, 0.79, 0.1)),
        *(("line", "seam", [(0.5 + d * 0.07, 0.1), (0.5 + d * 0.125, 1)], 0.015) for d in range(-4, 5)),
    )),
    "trousers": Silhouette(0.52, (
        ("poly", "body", [(0.1, 0), (0.9, 0), (0.95, 0.30), (1, 1), (0.58, 1), (0.5, 0.30), (0.42, 1),
                          (0, 1), (0.05, 0.30)]),
        ("rect", "dark", (0.1, 0, 0.9, 0.06)),
        ("line", "seam", [(0.5, 0.06), (0.5, 0.26)], 0.025),
        ("line", "seam", [(0.26, 0.1), (0.22, 1)], 0.015),
        ("line", "seam", [(0.74, 0.1), (0.78, 1)], 0.015),
    )),
    "shorts": Silhouette(1.1, (
        ("poly", "body", [(0.1, 0), (0.9, 0), (0.95, 0.4), (1, 0.96), (0.62, 1), (0.5, 0.36), (0.38, 1),
                          (0, 0.96), (0.05, 0.4)]),
        ("rect", "dark", (0.1, 0, 0.9, 0.1)),
        ("line", "seam", [(0.5, 0.1), (0.5, 0.34)], 0.025),
        ("line", "seam", [(0.02, 0.89), (0.39, 0.93)], 0.025),
        ("line", "seam", [(0.98, 0.89), (0.61, 0.93)], 0.025),
    )),
    "swimsuit": Silhouette(0.55, (
        ("poly", "body", [(0.24, 0), (0.33, 0), (0.40, 0.22), (0.60, 0.22), (0.67, 0), (0.76, 0),
                          (0.82, 0.30), (0.76, 0.55), (0.86, 0.80), (0.62, 0.96), (0.5, 1), (0.38, 0.96),
                          (0.14, 0.80), (0.24, 0.55), (0.18, 0.30)]),
        ("line", "seam", [(0.40, 0.22), (0.5, 0.34), (0.60, 0.22)], 0.025),
    )),
    "crossbody": Silhouette(0.9, (
        ("rect", "body", (0.08, 0.46, 0.92, 1.0), 0.07),
        ("line", "dark", [(0.13, 0.50), (0.50, 0.0), (0.87, 0.50)], 0.04),
        ("line", "seam", [(0.08, 0.47), (0.92, 0.47), (0.92, 0.68), (0.5, 0.80), (0.08, 0.68), (0.08, 0.47)]),
        ("ellipse", "metal", (0.45, 0.74, 0.55, 0.84)),
    )),
    "tote": Silhouette(1.0, (
        ("poly", "body", [(0.12, 0.32), (0.88, 0.32), (1, 1), (0, 1)]),
        ("arc", "dark", (0.20, 0.02, 0.46, 0.62), 180, 360, 0.05),
        ("arc", "dark", (0.54, 0.02, 0.80, 0.62), 180, 360, 0.05),
        *_hlines("seam", (0.38,), 0.1, 0.9, 0.02),
    )),
    "tophandle": Silhouette(1.1, (
        ("poly", "body", [(0.18, 0.36), (0.82, 0.36), (0.97, 1), (0.03, 1)]),
        ("arc", "dark", (0.28, 0.0, 0.72, 0.72), 180, 360, 0.08),
        ("line", "seam", [(0.17, 0.38), (0.83, 0.38), (0.86, 0.58), (0.14, 0.58), (0.17, 0.38)]),
        ("rect", "metal", (0.43, 0.53, 0.57, 0.64)),
    )),
    "shoulder": Silhouette(1.3, (
        ("chord", "body", (0.0, -0.45, 1.0, 1.0), 0, 180),
        ("arc", "dark", (0.18, 0.0, 0.82, 0.62), 180, 360, 0.04),
        ("arc", "seam", (0.08, -0.30, 0.92, 0.86), 20, 160, 0.02),
        ("rect", "metal", (0.46, 0.30, 0.54, 0.40)),
    )),
    "clutch": Silhouette(1.9, (
        ("rect", "body", (0.0, 0.12, 1.0, 0.96), 0.05),
        ("line", "seam", [(0.0, 0.13), (0.5, 0.62), (1.0, 0.13)], 0.03),
        ("ellipse", "metal", (0.46, 0.56, 0.54, 0.70)),
    )),
    "sneaker": Silhouette(2.1, (
        ("poly", "body", [(0.02, 0.62), (0.06, 0.46), (0.22, 0.38), (0.40, 0.20), (0.56, 0.05), (0.72, 0.02),
                          (0.82, 0.12), (0.88, 0.40), (0.98, 0.56), (1, 0.74), (0.02, 0.76)]),
        ("rect", "sole", (0.0, 0.70, 1.0, 0.94), 0.06),
        ("line", "dark", [(0.01, 0.90), (0.99, 0.90)], 0.04),
        *(("line", "light", [(0.36 + 0.05 * i, 0.28 - 0.05 * i), (0.46 + 0.05 * i, 0.34 - 0.05 * i)], 0.03)
          for i in range(4)),
        ("line", "seam", [(0.30, 0.60), (0.50, 0.40), (0.80, 0.55)], 0.03),
    )),
    "boot": Silhouette(0.85, (
        ("poly", "body", [(0.14, 0), (0.50, 0), (0.52, 0.50), (0.60, 0.58), (0.86, 0.66), (0.98, 0.74),
                          (1, 0.90), (0.04, 0.90), (0.06, 0.60), (0.12, 0.50)]),
        ("rect", "dark", (0.02, 0.88, 1.0, 0.95), 0.02),
        ("rect", "dark", (0.04, 0.88, 0.26, 1.0)),
        ("line", "seam", [(0.20, 0.02), (0.20, 0.56)], 0.02),
        ("rect", "dark", (0.13, 0, 0.51, 0.05)),
    )),
    "buckethat": Silhouette(1.6, (
        ("poly", "body", [(0.30, 0.06), (0.70, 0.06), (0.78, 0.56), (0.22, 0.56)]),
        ("ellipse", "body", (0.29, 0.0, 0.71, 0.14)),
        ("poly", "body", [(0.22, 0.50), (0.78, 0.50), (1, 0.88), (0.86, 0.98), (0.14, 0.98), (0, 0.88)]),
        ("rect", "dark", (0.23, 0.44, 0.77, 0.54)),
        ("line", "seam", [(0.06, 0.86), (0.20, 0.90), (0.80, 0.90), (0.94, 0.86)], 0.02),
    )),
    "cap": Silhouette(1.45, (
        ("chord", "body", (0.0, 0.06, 0.74, 1.2), 180, 360),
        ("poly", "body", [(0.50, 0.50), (0.98, 0.62), (1, 0.74), (0.50, 0.66)]),
        ("ellipse", "dark", (0.33, 0.02, 0.41, 0.10)),
        ("arc", "seam", (0.18, 0.06, 0.56, 1.2), 180, 270, 0.02),
        ("line", "seam", [(0.37, 0.07), (0.37, 0.63)], 0.02),
    )),
    "cardcase": Silhouette(1.45, (
        ("rect", "light", (0.14, 0.0, 0.64, 0.22)),
        ("rect", "body", (0.0, 0.10, 1.0, 0.92), 0.06),
        *_hlines("seam", (0.34, 0.48, 0.62), 0.06, 0.94, 0.025),
    )),
    "wallet": Silhouette(1.3, (
        ("rect", "body", (0.0, 0.08, 1.0, 0.92), 0.08),
        ("line", "seam", [(0.5, 0.08), (0.5, 0.92)], 0.03),
        ("rect", "metal", (0.66, 0.44, 0.84, 0.56)),
    )),
    "belt": Silhouette(3.0, (
        ("rect", "body", (0.12, 0.30, 1.0, 0.70), 0.1),
        ("rect", "metal", (0.0, 0.10, 0.24, 0.90)),
        ("rect", "light", (0.06, 0.28, 0.18, 0.72)),
        ("line", "metal", [(0.1, 0.5), (0.30, 0.5)], 0.07),
        *_dots("dark", (0.55, 0.65, 0.75, 0.85), (0.5,), 0.03),
    )),
    "sunglasses": Silhouette(2.6, (
        ("ellipse", "body", (0.0, 0.08, 0.46, 0.92)),
        ("ellipse", "body", (0.54, 0.08, 1.0, 0.92)),
        ("rect", "body", (0.40, 0.22, 0.60, 0.38)),
        ("ellipse", "lens", (0.05, 0.19, 0.41, 0.81)),
        ("ellipse", "lens", (0.59, 0.19, 0.95, 0.81)),
    )),
    "scarf": Silhouette(0.5, (
        ("poly", "body", [(0.10, 0.0), (0.60, 0.0), (0.58, 0.92), (0.08, 0.92)]),
        ("poly", "body", [(0.40, 0.06), (0.90, 0.06), (0.92, 0.92), (0.42, 0.92)]),
        ("line", "seam", [(0.42, 0.08), (0.44, 0.90)], 0.02),
        *_vlines("dark", tuple(np.linspace(0.10, 0.56, 9)), 0.92, 1.0, 0.02),
        *_vlines("dark", tuple(np.linspace(0.44, 0.90, 9)), 0.92, 1.0, 0.02),
    )),
    "silkscarf": Silhouette(1.0, (
        ("poly", "body", [(0.5, 0), (1, 0.5), (0.5, 1), (0, 0.5)]),
        ("line", "trim", [(0.5, 0.07), (0.93, 0.5), (0.5, 0.93), (0.07, 0.5), (0.5, 0.07)], 0.045),
    )),
    "fragrance": Silhouette(0.72, (
        ("rect", "body", (0.06, 0.32, 0.94, 1.0), 0.06),
        ("rect", "body", (0.38, 0.24, 0.62, 0.34)),
        ("rect", "dark", (0.28, 0.0, 0.72, 0.26), 0.03),
        ("rect", "light", (0.26, 0.54, 0.74, 0.78)),
        *_hlines("ink", (0.62, 0.70), 0.34, 0.66, 0.02),
    )),
    "foundation": Silhouette(0.45, (
        ("rect", "body", (0.04, 0.34, 0.96, 1.0), 0.1),
        ("rect", "dark", (0.30, 0.16, 0.70, 0.36)),
        ("line", "dark", [(0.5, 0.16), (0.5, 0.04), (0.9, 0.04)], 0.08),
        ("rect", "light", (0.04, 0.62, 0.96, 0.76)),
    )),
    "lipstick": Silhouette(0.34, (
        ("poly", "body", [(0.22, 0.36), (0.22, 0.08), (0.78, 0.0), (0.78, 0.36)]),
        ("rect", "ink", (0.06, 0.44, 0.94, 1.0), 0.08),
        ("rect", "metal", (0.10, 0.34, 0.90, 0.46)),
    )),
    "cushion": Silhouette(1.0, (
        ("poly", "body", [(0, 0), (0.5, 0.07), (1, 0), (0.93, 0.5), (1, 1), (0.5, 0.93), (0, 1), (0.07, 0.5)]),
        ("line", "trim", [(0.05, 0.05), (0.5, 0.11), (0.95, 0.05), (0.89, 0.5), (0.95, 0.95), (0.5, 0.89),
                          (0.05, 0.95), (0.11, 0.5), (0.05, 0.05)], 0.02),
        ("ellipse", "dark", (0.46, 0.46, 0.54, 0.54)),
    )),
    "blanket": Silhouette(1.05, (
        ("rect", "body", (0.0, 0.06, 1.0, 0.36), 0.06),
        ("rect", "body", (0.04, 0.32, 0.96, 0.62), 0.06),
        ("rect", "body", (0.0, 0.58, 1.0, 0.88), 0.06),
        *_hlines("seam", (0.34, 0.60), 0.0, 1.0, 0.025),
        *_vlines("dark", tuple(np.linspace(0.04, 0.96, 16)), 0.88, 0.99, 0.015),
    )),
}
# fmt: on

CLIPPED_ROLES = ("seam", "trim")


# ---- colours --------------------------------------------------------------------------------------------
def _mix(a: RGB, b: RGB, t: float) -> RGB:
    return tuple(round(x + (y - x) * t) for x, y in zip(a, b, strict=True))  # type: ignore[return-value]


def _luma(c: RGB) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


def _shade(c: RGB, t: float) -> RGB:
    """A deeper tone of c (or, for near-black c, a lighter one) at strength t."""
    return _mix(c, (245, 240, 230), t * 0.6) if _luma(c) < 50 else _mix(c, (12, 10, 10), t)


def _role_colour(role: str, fill: RGB) -> RGB:
    if role in ("seam", "dark"):
        return _shade(fill, 0.55 if role == "seam" else 0.7)
    if role == "trim":
        return _mix(fill, FIXED_COLOURS["light"], 0.75)
    return FIXED_COLOURS[role]


# ---- patterns: uint8 palette indices, built as a tile and repeated --------------------------------------
def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    return np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]


def _tile_check(p: int, vintage: bool) -> np.ndarray:
    y, x = _grid(p, p)
    band_x, band_y = x < 0.36 * p, y < 0.36 * p
    idx = np.where(band_x & band_y, 1, np.where(band_x | band_y, 3, 0)).astype(np.uint8)
    thin = (np.abs(x - 0.68 * p) < max(1.0, 0.045 * p)) | (np.abs(y - 0.68 * p) < max(1.0, 0.045 * p))
    idx[thin] = 2
    if vintage:
        red = (np.abs(x - 0.86 * p) < max(1.0, 0.03 * p)) | (np.abs(y - 0.86 * p) < max(1.0, 0.03 * p))
        idx[red] = 4
    return idx


def _tile_stripe(p: int) -> np.ndarray:
    y, _ = _grid(p, 1)
    return (y < 0.45 * p).astype(np.uint8)


def _tile_monogram(p: int) -> np.ndarray:
    y, x = _grid(2 * p, p)
    v = np.abs((y % p) - p / 2)
    shift = (y >= p).astype(np.float32)  # half-drop: odd rows shift by half a period
    u = np.abs(((x + shift * p / 2) % p) - p / 2)
    d = u + v
    ring = (d < 0.34 * p) & (d > 0.2 * p)
    dot = d < 0.07 * p
    return (ring | dot).astype(np.uint8)


def _tile_argyle(p: int) -> np.ndarray:
    q = int(p * 1.4)
    y, x = _grid(2 * q, 2 * p)
    fu, fv = (x % p) / p - 0.5, (y % q) / q - 0.5
    inside = np.abs(fu) + np.abs(fv) < 0.5
    alt = ((x // p + y // q) % 2).astype(np.uint8)
    idx = np.where(inside, np.where(alt == 1, 1, 3), 0).astype(np.uint8)
    line = (np.abs(((x / p + y / q) % 1) - 0.5) < 0.03) | (np.abs(((x / p - y / q) % 1) - 0.5) < 0.03)
    idx[line] = 2
    return idx


def _pattern(texture: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray | None:
    """Palette indices (h, w) uint8 for the texture, or None for a plain fill."""
    side = min(h, w)
    if texture == "plain":
        return None
    if texture == "camo":
        p = max(4, side // 5)
        small = rng.random((h // p + 2, w // p + 2), dtype=np.float32)
        field = np.asarray(Image.fromarray(small, "F").resize((w, h), Image.Resampling.BICUBIC))  # (h, w)
        return np.digitize(field, np.asarray([0.3, 0.55, 0.78], np.float32)).astype(np.uint8)
    if texture in ("check", "vintage_check"):
        tile = _tile_check(max(6, side // 4), texture == "vintage_check")
    elif texture == "stripe":
        tile = _tile_stripe(max(4, side // 8))
    elif texture == "monogram":
        tile = _tile_monogram(max(6, side // 6))
    elif texture == "argyle":
        tile = _tile_argyle(max(6, side // 4))
    else:
        raise ValueError(f"unknown texture {texture!r}; use one of {', '.join(TEXTURES)}")
    th, tw = tile.shape
    off_y, off_x = int(rng.integers(th)), int(rng.integers(tw))
    reps = ((h + off_y) // th + 1, (w + off_x) // tw + 1)
    return np.tile(tile, reps)[off_y : off_y + h, off_x : off_x + w]


def _palette(texture: str, c: RGB) -> list[RGB]:
    light = FIXED_COLOURS["light"]
    if texture == "vintage_check":
        return [c, FIXED_COLOURS["ink"], light, _shade(c, 0.45), FIXED_COLOURS["red"]]
    if texture == "check":
        return [c, _shade(c, 0.5), light if _luma(c) < 170 else FIXED_COLOURS["ink"], _shade(c, 0.25)]
    if texture == "stripe":
        return [c, light if _luma(c) < 150 else (30, 40, 72)]
    if texture == "monogram":
        return [c, _mix(c, light, 0.55) if _luma(c) < 140 else _shade(c, 0.5)]
    if texture == "argyle":
        return [c, _shade(c, 0.45), light, _mix(c, light, 0.4)]
    return [c, _shade(c, 0.3), _shade(c, 0.55), _mix(c, (95, 100, 55), 0.5)]  # camo


TEXTURES = ("plain", "check", "vintage_check", "stripe", "monogram", "argyle", "camo")


# ---- finishes: how the material looks (shading multiplied in, highlights screened in) ---------------------
def _field(rng: np.random.Generator, w: int, h: int, cell: int, lo: int, hi: int) -> Image.Image:
    """Smooth random L image (h, w) with values in [lo, hi]: noise on a grid of `cell` px, upsampled."""
    gw, gh = max(2, w // cell + 2), max(2, h // cell + 2)
    small = rng.integers(lo, hi + 1, size=(gh, gw), dtype=np.uint8)
    return Image.fromarray(small, "L").resize((w, h), Image.Resampling.BILINEAR)


def _profile(n: int, centre: float, width: float, peak: float) -> np.ndarray:
    t = np.arange(n, dtype=np.float32) / max(1, n - 1)
    return (peak * np.exp(-(((t - centre) / width) ** 2))).astype(np.uint8)  # (n,)


def _sheen_x(w: int, h: int, centre: float, width: float, peak: float) -> Image.Image:
    row = _profile(w, centre, width, peak)[None, :]  # (1, w)
    return Image.fromarray(row, "L").resize((w, h), Image.Resampling.NEAREST)


def _bands_y(w: int, h: int, period: float, peak: float) -> Image.Image:
    t = np.arange(h, dtype=np.float32)
    col = (peak * np.clip(np.sin(2 * np.pi * t / period), 0, 1) ** 2).astype(np.uint8)[:, None]  # (h, 1)
    return Image.fromarray(col, "L").resize((w, h), Image.Resampling.NEAREST)


def _diagonal_waves(w: int, h: int, period: float, peak: float) -> Image.Image:
    sw, sh = max(2, w // 8), max(2, h // 8)
    y, x = _grid(sh, sw)
    wave = np.clip(np.sin(2 * np.pi * (x + y) * 8 / period), 0, 1) ** 3  # (sh, sw)
    return Image.fromarray((peak * wave).astype(np.uint8), "L").resize((w, h), Image.Resampling.BILINEAR)


def _lines_tile(w: int, h: int, period: int, diagonal: bool, dark: int) -> Image.Image:
    y, x = _grid(period, period)
    on = (
        ((x + y) % period < period / 3)
        if diagonal
        else ((x % period < period / 2) ^ (y % period < period / 2))
    )
    tile = np.where(on, dark, 255).astype(np.uint8)  # (period, period)
    return Image.fromarray(np.tile(tile, (h // period + 1, w // period + 1))[:h, :w], "L")


def _scales(w: int, h: int, cell: int) -> Image.Image:
    y, x = _grid(h, w)
    row = y // cell
    groove = ((y % cell) < max(1, cell // 6)) | (
        ((x + (row % 2) * cell / 2) % (cell * 1.4)) < max(1, cell // 6)
    )
    return Image.fromarray(np.where(groove, 120, 255).astype(np.uint8), "L")


def _sparkles(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    img = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(img)
    r = max(1, min(w, h) // 90)
    for x, y in zip(rng.integers(0, w, w * h // 700), rng.integers(0, h, w * h // 700), strict=True):
        draw.ellipse((x - r, y - r, x + r, y + r), fill=255)
    return img


def _finish(tex: Image.Image, finish: str, rng: np.random.Generator) -> Image.Image:
    w, h = tex.size
    side = min(w, h)
    mul: list[Image.Image] = []  # L layers multiplied in (255 = unchanged)
    scr: list[Image.Image] = []  # L layers screened in (0 = unchanged)
    if finish == "leather":
        mul.append(_field(rng, w, h, 3, 215, 255))
        scr.append(_sheen_x(w, h, 0.3, 0.12, 120))
    elif finish == "acetate":
        scr.append(_sheen_x(w, h, 0.25, 0.06, 160))
    elif finish == "metal":
        scr.append(_sheen_x(w, h, 0.4, 0.25, 150))
        mul.append(_sheen_x(w, h, 0.9, 0.2, 0).point(lambda v: 255 - v))
    elif finish == "suede":
        mul.append(_field(rng, w, h, 4, 185, 225))
    elif finish == "wool":
        mul.append(_field(rng, w, h, max(4, side // 12), 175, 255))
        mul.append(_field(rng, w, h, 2, 215, 255))
    elif finish == "cashmere":
        scr.append(Image.new("L", (w, h), 45))
        mul.append(_field(rng, w, h, max(4, side // 6), 225, 255))
    elif finish == "cotton":
        mul.append(_lines_tile(w, h, 4, False, 215))
    elif finish == "twill":
        mul.append(_lines_tile(w, h, max(6, side // 50), True, 185))
    elif finish == "nylon":
        scr.append(_bands_y(w, h, max(8, side / 5), 130))
    elif finish == "silk":
        scr.append(_diagonal_waves(w, h, max(16, side / 1.5), 150))
    elif finish == "shearling":
        mul.append(_field(rng, w, h, 3, 140, 255))
        scr.append(Image.new("L", (w, h), 60))
    elif finish == "boucle":
        mul.append(_field(rng, w, h, max(3, side // 40), 150, 255))
    elif finish == "croc":
        mul.append(_scales(w, h, max(6, side // 14)))
        scr.append(_sheen_x(w, h, 0.35, 0.15, 90))
    elif finish == "crystal":
        scr.append(_sparkles(rng, w, h))
        scr.append(_sheen_x(w, h, 0.5, 0.3, 50))
    elif finish == "glass":
        scr.append(Image.new("L", (w, h), 70))
        scr.append(_sheen_x(w, h, 0.22, 0.05, 200))
    elif finish != "matte":
        raise ValueError(f"unknown finish {finish!r}; use one of {', '.join(FINISHES)}")
    for layer in mul:
        tex = ImageChops.multiply(tex, Image.merge("RGB", (layer, layer, layer)))
    for layer in scr:
        tex = ImageChops.screen(tex, Image.merge("RGB", (layer, layer, layer)))
    return tex


FINISHES = ("matte", "leather", "acetate", "metal", "suede", "wool", "cashmere", "cotton", "twill", "nylon")
FINISHES += ("silk", "shearling", "boucle", "croc", "crystal", "glass")


# ---- the photo ------------------------------------------------------------------------------------------
def _scaled(geom, box: tuple[int, int, int, int]) -> list:
    x0, y0, bw, bh = box
    if isinstance(geom[0], tuple | list):
        return [(x0 + x * bw, y0 + y * bh) for x, y in geom]
    gx0, gy0, gx1, gy1 = geom
    return [x0 + gx0 * bw, y0 + gy0 * bh, x0 + gx1 * bw, y0 + gy1 * bh]


def _px(width: float, unit: float) -> int:
    return max(1, round(width * unit))


def _draw_shape(draw: ImageDraw.ImageDraw, shape: Shape, box, unit: float, fill=None, outline=None) -> None:
    """Draw one shape scaled into box (x0, y0, w, h): filled with `fill`, or just its edge in `outline`."""
    kind, _role, geom, *rest = shape
    xy = _scaled(geom, box)
    paint = {"outline": outline, "width": _px(OUTLINE_WIDTH, unit)} if outline else {"fill": fill}
    if kind == "poly":
        draw.polygon(xy, **paint)
    elif kind == "ellipse":
        draw.ellipse(xy, **paint)
    elif kind == "rect":
        draw.rounded_rectangle(xy, radius=(rest[0] if rest else 0) * unit, **paint)
    elif kind == "chord":
        draw.chord(xy, rest[0], rest[1], **paint)
    elif kind == "line":
        draw.line(xy, fill=outline or fill, width=_px(rest[0] if rest else LINE_WIDTH, unit), joint="curve")
    elif kind == "arc":
        width = _px(rest[2] if len(rest) > 2 else LINE_WIDTH, unit)
        draw.arc(xy, rest[0], rest[1], fill=outline or fill, width=width)
    else:
        raise ValueError(f"unknown shape kind {kind!r}")


def _object_box(spec: PhotoSpec, aspect: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(x0, y0, width, height) of the object's box in the frame: fits in scale*frame, jittered centre."""
    bw = min(spec.scale * spec.width, spec.scale * spec.height * aspect)
    bh = bw / aspect
    cx = spec.width / 2 + rng.uniform(-JITTER, JITTER) * spec.width
    cy = spec.height / 2 + rng.uniform(-JITTER, JITTER) * spec.height
    x0 = int(np.clip(cx - bw / 2, 0, spec.width - bw))
    y0 = int(np.clip(cy - bh / 2, 0, spec.height - bh))
    return x0, y0, max(2, int(bw)), max(2, int(bh))


def _floor_shadow(canvas: Image.Image, box: tuple[int, int, int, int], colour: RGB) -> None:
    """A soft ellipse under the object, drawn small in its band of the frame, blurred and upsampled."""
    x0, y0, bw, bh = box
    k = SHADOW_DOWNSCALE
    left, right = max(0, x0 - k * 4), min(canvas.width, x0 + bw + k * 4)
    top, bottom = max(0, round(y0 + 0.9 * bh) - k * 4), min(canvas.height, y0 + bh + k * 4)
    if right - left < k or bottom - top < k:
        return
    small = Image.new("L", ((right - left) // k + 1, (bottom - top) // k + 1), 0)
    ellipse = (x0 + 0.05 * bw - left, y0 + 0.95 * bh - top, x0 + 0.95 * bw - left, y0 + 1.03 * bh - top + k)
    ImageDraw.Draw(small).ellipse([v / k for v in ellipse], fill=SHADOW_ALPHA)
    mask = small.filter(ImageFilter.GaussianBlur(1.5)).resize(
        (right - left, bottom - top), Image.Resampling.BILINEAR
    )
    canvas.paste(colour, (left, top, right, bottom), mask)


def draw_photo(spec: PhotoSpec) -> Image.Image:
    """Draw the product described by `spec`: an RGB image of spec.width x spec.height."""
    try:
        sil = SILHOUETTES[spec.silhouette]
    except KeyError:
        raise ValueError(
            f"unknown silhouette {spec.silhouette!r}; use one of {', '.join(SILHOUETTES)}"
        ) from None
    if spec.width < 16 or spec.height < 16 or not 0.1 <= spec.scale <= 1.0:
        raise ValueError(f"photo must be at least 16x16 px with scale in [0.1, 1]; got {spec}")
    rng = np.random.default_rng(spec.seed)
    bg = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    canvas = Image.new("RGB", (spec.width, spec.height), bg)
    x0, y0, bw, bh = _object_box(spec, sil.aspect, rng)
    unit = math.sqrt(bw * bh)

    _floor_shadow(canvas, (x0, y0, bw, bh), _shade(bg, 0.5))

    # body mask and texture in the object's box
    local = (0, 0, bw, bh)
    mask = Image.new("L", (bw, bh), 0)
    mdraw = ImageDraw.Draw(mask)
    for shape in sil.shapes:
        if shape[1] in ("body", "cut"):
            _draw_shape(mdraw, shape, local, unit, fill=255 if shape[1] == "body" else 0)
    idx = _pattern(spec.texture, bh, bw, rng)
    if idx is None:
        tex = Image.new("RGB", (bw, bh), spec.colour)
    else:
        tex = Image.fromarray(idx, "P")
        tex.putpalette([v for c in _palette(spec.texture, spec.colour) for v in c])
        tex = tex.convert("RGB")
    tex = _finish(tex, spec.finish, rng)
    tdraw = ImageDraw.Draw(tex)
    for shape in sil.shapes:
        if shape[1] in CLIPPED_ROLES:
            _draw_shape(tdraw, shape, local, unit, fill=_role_colour(shape[1], spec.colour))
    canvas.paste(tex, (x0, y0), mask)

    # outline of the body, then the overlay details
    draw = ImageDraw.Draw(canvas)
    box = (x0, y0, bw, bh)
    edge = _shade(spec.colour, 0.6)
    for shape in sil.shapes:
        if shape[1] == "body":
            _draw_shape(draw, shape, box, unit, outline=edge)
    for shape in sil.shapes:
        if shape[1] not in ("body", "cut", *CLIPPED_ROLES):
            _draw_shape(draw, shape, box, unit, fill=_role_colour(shape[1], spec.colour))
    return canvas


def encode_jpeg(image: Image.Image, quality: int = JPEG_QUALITY) -> bytes:
    """JPEG bytes of an RGB image."""
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def save_photos(specs: list[PhotoSpec], paths: list[str], quality: int = JPEG_QUALITY) -> int:
    """Draw each spec and write it as a JPEG to the matching path, atomically (temp file + os.replace).

    Returns the number of photos written. Top-level so that process pools can run it on a chunk.
    """
    for spec, path in zip(specs, paths, strict=True):
        data = encode_jpeg(draw_photo(spec), quality)
        target = Path(path)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
    return len(specs)
