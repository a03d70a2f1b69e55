"""Tests for catalog/photos.py: every silhouette, texture and finish draws; what a spec says is visible."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from productlens.catalog.photos import (
    BACKGROUNDS,
    FINISHES,
    SILHOUETTES,
    TEXTURES,
    PhotoSpec,
    draw_photo,
    save_photos,
)

BASE = PhotoSpec("tote", "plain", "matte", (30, 40, 90), 0.84, 160, 160, seed=7)


def _object_mask(img: Image.Image) -> np.ndarray:
    """Pixels that differ clearly from every background colour (the product, not the floor shadow)."""
    a = np.asarray(img, dtype=np.int16)  # (h, w, 3)
    dist = np.min([np.abs(a - np.asarray(bg)).sum(axis=2) for bg in BACKGROUNDS], axis=0)
    return dist > 60


@pytest.mark.parametrize("name", sorted(SILHOUETTES))
def test_every_silhouette_draws_a_product_on_a_light_background(name):
    i = sorted(SILHOUETTES).index(name)
    spec = dataclasses.replace(
        BASE,
        silhouette=name,
        texture=TEXTURES[i % len(TEXTURES)],
        finish=FINISHES[i % len(FINISHES)],
        width=120,
        height=90,
    )
    img = draw_photo(spec)
    assert img.size == (120, 90) and img.mode == "RGB"
    corners = np.asarray(img)[[0, 0, -1, -1], [0, -1, 0, -1]]
    assert (corners.min(axis=1) > 200).all(), "the background should be light"
    mask = _object_mask(img)
    ys, xs = np.nonzero(mask)
    span = max((xs.max() - xs.min()) / 120, (ys.max() - ys.min()) / 90)
    assert span > 0.7, f"{name}: the product should fill much of the frame, spans {span:.2f}"


def test_size_is_visible_as_scale():
    small = _object_mask(draw_photo(dataclasses.replace(BASE, scale=0.5))).sum()
    large = _object_mask(draw_photo(dataclasses.replace(BASE, scale=0.97))).sum()
    assert large > 2.5 * small


def test_colour_is_the_fill():
    for colour in [(200, 30, 40), (40, 120, 60), (30, 29, 31)]:
        img = draw_photo(dataclasses.replace(BASE, silhouette="cushion", colour=colour))
        a = np.asarray(img)
        centre = a[60:100, 60:100].reshape(-1, 3)
        assert np.abs(np.median(centre, axis=0) - colour).max() < 25


@pytest.mark.parametrize("texture", [t for t in TEXTURES if t != "plain"])
def test_patterns_are_drawn_as_texture(texture):
    plain = np.asarray(draw_photo(dataclasses.replace(BASE, silhouette="cushion")), dtype=np.float32)
    filled = np.asarray(
        draw_photo(dataclasses.replace(BASE, silhouette="cushion", texture=texture)), dtype=np.float32
    )
    inner = (slice(30, 75), slice(30, 75))  # inside the cushion, away from its button
    spread = filled[inner].std(axis=(0, 1)).mean()
    assert spread > plain[inner].std(axis=(0, 1)).mean() + 10, f"{texture} should show as a texture"


@pytest.mark.parametrize("finish", [f for f in FINISHES if f != "matte"])
def test_materials_are_drawn_as_a_finish(finish):
    matte = np.asarray(draw_photo(dataclasses.replace(BASE, silhouette="cushion")), dtype=np.float32)
    other = np.asarray(draw_photo(dataclasses.replace(BASE, silhouette="cushion", finish=finish)), np.float32)
    assert np.abs(other - matte)[30:75, 30:75].mean() > 4, f"{finish} should look different from matte"


def test_drawing_is_deterministic_for_a_seed():
    a, b = draw_photo(BASE), draw_photo(BASE)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    c = draw_photo(dataclasses.replace(BASE, seed=8, texture="camo"))
    d = draw_photo(dataclasses.replace(BASE, seed=9, texture="camo"))
    assert not np.array_equal(np.asarray(c), np.asarray(d))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"silhouette": "spaceship"}, "unknown silhouette"),
        ({"texture": "paisley"}, "unknown texture"),
        ({"finish": "velvet"}, "unknown finish"),
        ({"width": 8}, "at least 16x16"),
        ({"scale": 1.5}, "scale in"),
    ],
)
def test_bad_specs_are_refused_with_a_clear_error(change, message):
    with pytest.raises(ValueError, match=message):
        draw_photo(dataclasses.replace(BASE, **change))


def test_save_photos_writes_decodable_jpegs_atomically(tmp_path: Path):
    specs = [
        dataclasses.replace(BASE, silhouette=s, width=90, height=120) for s in ("coat", "sneaker", "cap")
    ]
    paths = [str(tmp_path / f"{i}.jpg") for i in range(3)]
    assert save_photos(specs, paths) == 3
    for p in paths:
        with Image.open(p) as img:
            img.load()
            assert img.format == "JPEG" and img.size == (90, 120)
    with pytest.raises(ValueError, match="unknown silhouette"):
        save_photos([dataclasses.replace(BASE, silhouette="nope")], [str(tmp_path / "bad.jpg")])
    assert sorted(os.listdir(tmp_path)) == ["0.jpg", "1.jpg", "2.jpg"], "no partial or temp file may remain"
