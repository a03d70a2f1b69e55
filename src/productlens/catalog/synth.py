"""Synthetic look-alike of DBQ/Burberry.Product.prices.United.States: a row count, seed and brand in; the 17
reference columns (plus the generator's attributes per row) out, and with `write_catalog` a folder holding
catalog.parquet, catalog.csv, attributes.parquet and one drawn photo per product in images/.

    productlens synth --rows 3040 --out data/synth --photo-size 224

Price model. Each product is a product type (drawn as its own silhouette) in a material (drawn as a finish:
leather sheen, wool mottling, nylon bands...), a pattern (drawn as a texture fill: check, stripe, monogram...),
a size (drawn as the object's scale) and an audience (kids' pieces are drawn smaller), so that

    price = retail_round(clip(BASE[type] * MATERIAL[m] * PATTERN[p] * SIZE[s] * AUDIENCE[a] * exp(e), 32, 70000))
    e ~ Normal(0, PRICE_NOISE_SIGMA), one draw per model (its colour variants share title and price)

Every factor but e is visible in the photo; e is the catalog's unexplainable share (about 10-15% of the
log-price variance). retail_round gives round figures: whole dollars below 100 (58), tens below 1,000
(820), hundreds less ten below 10,000 (2,490) and multiples of 500 above. Colour never changes the price.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import unicodedata
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from productlens.catalog.photos import PhotoSpec, save_photos
from productlens.catalog.schema import MISSING, REFERENCE_COLUMNS
from productlens.files import atomic_path

DEFAULT_ROWS = 3040
DEFAULT_BRAND = "NORTHGATE"
COMPETENCE_DATE = "2023-11-17"
COUNTRY_CODE, CURRENCY_CODE = "USA", "USD"
EUR_RATE = 0.9225  # USD -> EUR, one fixed rate (the reference catalog's)
PRICE_MIN, PRICE_MAX = 32.0, 70000.0
PRICE_NOISE_SIGMA = 0.3
TITLE_MIN_CHARS = 8  # shorter titles name their material (the reference catalog's titles have 8-71)
MATERIAL_IN_TITLE = 0.9  # share of titles that name the material (it is drawn either way)
NO_PHOTO_SHARE = 0.02  # rows whose imageurl is N.A.
VARIANTS = {1: 0.78, 2: 0.15, 3: 0.07}  # colour variants per model (codes 10 apart, same title and price)
LEGACY_SHARE = 0.01  # fashion models with an old code (26M range)
CODE_RANGES = {"fashion": (80_000_001, 80_999_991), "beauty": (40_000_001, 40_999_991)}
CODE_RANGES["legacy"] = (26_000_001, 26_999_991)
CHECK_BUCKET = 0.12  # checked pieces also listed under the "THE CHECK" bucket (category3 kept)
BEST_SELLERS = 0.03  # pieces listed under "BEST SELLERS" (category3 kept)
CATEGORY_NOISE = 0.065  # models filed under a menu bucket whose category3 is N.A./VIEW ALL/NEW ARRIVALS
NOISE_BUCKETS = {  # (category2, category3) -> weight; "{own}" = the model's own category2
    ("NEW IN", "NEW ARRIVALS"): 0.3,
    ("ALL GIFTS", MISSING): 0.2,
    ("{gifts}", MISSING): 0.15,
    ("{own}", "VIEW ALL"): 0.2,
    ("RUNWAY", "VIEW ALL"): 0.05,
    (MISSING, MISSING): 0.1,
}
KIDS_CATEGORY2 = {"unisex": {"GIRL": 0.4, "BOY": 0.4, "BABY": 0.2}, "girl": {"GIRL": 0.8, "BABY": 0.2}}
PHOTO_SIZES = {(800, 800): 0.3, (1000, 1000): 0.2, (600, 800): 0.15, (750, 1000): 0.1, (900, 600): 0.1}
PHOTO_SIZES |= {(800, 1000): 0.1, (1200, 900): 0.05}
SCALE_JITTER = 0.03
CHUNK = 16  # photos per pool task
MIN_PHOTO_SIDE = 32

# word -> (price multiplier, drawn finish); "" words are not written in titles
MATERIALS: dict[str, tuple[float, str]] = {
    "Cotton": (1.0, "cotton"),
    "Stretch Cotton": (0.95, "cotton"),
    "Cotton Piqué": (1.0, "cotton"),
    "Cotton Canvas": (0.9, "cotton"),
    "Cotton Gabardine": (1.15, "twill"),
    "Nylon": (0.9, "nylon"),
    "Wool": (1.2, "wool"),
    "Wool Cashmere": (1.45, "cashmere"),
    "Cashmere": (1.8, "cashmere"),
    "Cashmere Silk": (1.7, "silk"),
    "Bouclé": (1.35, "boucle"),
    "Silk": (1.5, "silk"),
    "Leather": (1.6, "leather"),
    "Suede": (1.45, "suede"),
    "Shearling": (2.4, "shearling"),
    "Alligator": (9.0, "croc"),
    "Crystal Embellished": (5.0, "crystal"),
    "Acetate": (1.0, "acetate"),
    "Metal": (1.2, "metal"),
    "Glass": (1.0, "glass"),
    "Satin": (1.0, "acetate"),
}
# word -> (price multiplier, drawn texture)
PATTERNS: dict[str, tuple[float, str]] = {
    "": (1.0, "plain"),
    "Check": (1.1, "check"),
    "Vintage Check": (1.2, "vintage_check"),
    "Stripe": (1.0, "stripe"),
    "Monogram": (1.25, "monogram"),
    "Argyle": (1.05, "argyle"),
    "Camouflage Print": (1.1, "camo"),
}
# word -> (price multiplier, drawn scale: the object's box as a fraction of the frame)
SIZES: dict[str, tuple[float, float]] = {
    "": (1.0, 0.84),
    "Mini": (0.6, 0.50),
    "Small": (0.8, 0.62),
    "Medium": (1.0, 0.74),
    "Large": (1.2, 0.86),
    "Oversized": (1.3, 0.97),
}
# audience -> (price multiplier, drawn scale or None to use the size's)
AUDIENCES: dict[str, tuple[float, float | None]] = {"adult": (1.0, None), "kids": (0.4, 0.58)}
FRAGRANCE_ML = {"Small": "30ml", "Medium": "50ml", "Large": "100ml", "Oversized": "150ml"}
COLOURS: dict[str, tuple[tuple[int, int, int], float]] = {  # name -> (rgb, weight)
    "Archive Beige": ((205, 178, 138), 4),
    "Black": ((30, 29, 31), 4),
    "Navy": ((32, 42, 74), 2),
    "Camel": ((186, 137, 84), 2),
    "Charcoal": ((64, 64, 68), 1.5),
    "Burgundy": ((112, 28, 42), 1),
    "Olive": ((96, 100, 56), 1),
    "Dusty Pink": ((214, 158, 164), 1),
    "Sky Blue": ((138, 178, 214), 1),
    "Forest Green": ((32, 78, 52), 1),
    "Rust": ((168, 82, 42), 1),
    "Honey": ((212, 162, 72), 1),
    "Bright Red": ((182, 32, 38), 1),
    "Grey Melange": ((150, 150, 152), 1),
}
VARIANT_COLOUR_STEP = 5  # colour-palette step between a model's variants (distinct for up to 3 variants)

_BAG_PATTERNS = {"": 5, "Check": 3, "Vintage Check": 1, "Monogram": 2}
_BAG_SIZES = {"Mini": 2, "Small": 3, "Medium": 3, "Large": 1.5}
_MOSTLY_ONE_SIZE = {"": 9, "Oversized": 1}


@dataclass(frozen=True)
class ProductType:
    """One kind of product: its silhouette, base price, categories and title vocabulary (word -> weight)."""

    silhouette: str
    base: float  # USD before the material/pattern/size/audience multipliers
    category3: str
    category2: Mapping[str, float]
    audience: Mapping[str, float]  # WOMAN / MAN / KIDS -> weight
    nouns: Mapping[str, float]  # may hold "{line}" (a model name from `lines`)
    materials: Mapping[str, float]
    patterns: Mapping[str, float] = field(default_factory=lambda: {"": 1})
    sizes: Mapping[str, float] = field(default_factory=lambda: {"": 1})
    weight: float = 1.0  # share of models
    kids_category3: str | None = None
    kids_category2: str = "unisex"
    family: str = "fashion"  # product-code range
    lines: tuple[str, ...] = ()
    title: str = "{size} {pattern} {material} {noun}"
    and_form: float = 0.0  # probability of "Check and Leather ..." titles
    colours: Mapping[str, tuple[tuple[int, int, int], float]] | None = None  # own palette, named in titles
    variants: bool = True


_ADULT = {"WOMAN": 0.5, "MAN": 0.5}
_SHADES_FACE = {
    "10 Fair Cool": ((238, 208, 182), 1),
    "20 Light Neutral": ((226, 190, 160), 1),
    "40 Light Cool": ((214, 176, 148), 1),
    "60 Medium Warm": ((190, 145, 105), 1),
    "80 Tan Neutral": ((160, 115, 80), 1),
    "100 Deep Warm": ((110, 72, 48), 1),
}
_SHADES_LIPS = {
    "10 Rosewood": ((150, 70, 80), 1),
    "20 Poppy Red": ((190, 35, 40), 1),
    "30 Nude Beige": ((200, 150, 125), 1),
    "40 Plum": ((100, 35, 65), 1),
    "50 Coral": ((230, 110, 90), 1),
}
_TINTS = {
    "Amber": ((200, 140, 60), 1),
    "Blush": ((226, 168, 176), 1),
    "Smoke": ((110, 110, 118), 1),
    "Sea": ((100, 160, 185), 1),
    "Gold": ((205, 170, 90), 1),
}

# fmt: off
PRODUCT_TYPES: dict[str, ProductType] = {
    "trench": ProductType(
        "trench", 2290, "TRENCH COATS", {"TRENCH COATS": 3, "OUTERWEAR": 2}, {"WOMAN": 5, "MAN": 4, "KIDS": 1},
        {"Trench Coat": 4, "Long Trench Coat": 2, "Short Trench Coat": 1, "Heritage Trench Coat": 1},
        {"Cotton Gabardine": 6, "Cotton": 2, "Wool": 1, "Nylon": 1, "Leather": 0.4},
        {"": 6, "Check": 2, "Vintage Check": 1}, _MOSTLY_ONE_SIZE, weight=6, kids_category3="TRENCH COATS",
    ),
    "coat": ProductType(
        "coat", 1690, "COATS", {"OUTERWEAR": 1}, {"WOMAN": 4.5, "MAN": 4.5, "KIDS": 1},
        {"Coat": 3, "Pea Coat": 2, "Car Coat": 2, "Tailored Coat": 1},
        {"Wool": 4, "Wool Cashmere": 2, "Cashmere": 1, "Bouclé": 1, "Shearling": 0.4},
        {"": 5, "Check": 2, "Vintage Check": 0.5}, _MOSTLY_ONE_SIZE, weight=5, kids_category3="COATS",
    ),
    "quilted": ProductType(
        "quilted", 1290, "QUILTED JACKETS", {"OUTERWEAR": 1}, _ADULT,
        {"Quilted Jacket": 3, "Cropped Quilted Jacket": 1, "Diamond Quilted Jacket": 1},
        {"Nylon": 6, "Cotton": 1, "Leather": 0.3}, {"": 4, "Check": 2, "Monogram": 1}, _MOSTLY_ONE_SIZE, weight=4,
    ),
    "puffer": ProductType(
        "puffer", 1590, "PUFFER JACKETS", {"OUTERWEAR": 1}, {"WOMAN": 4, "MAN": 4, "KIDS": 2},
        {"Puffer Jacket": 3, "Hooded Puffer Jacket": 2, "Puffer Coat": 1},
        {"Nylon": 6, "Cotton": 0.5}, {"": 4, "Check": 2, "Monogram": 1}, _MOSTLY_ONE_SIZE, weight=4,
        kids_category3="PUFFER JACKETS",
    ),
    "cape": ProductType(
        "cape", 1290, "PONCHOS & CAPES", {"OUTERWEAR": 1}, {"WOMAN": 7, "MAN": 3},
        {"Cape": 3, "Jacquard Cape": 1, "Poncho": 1}, {"Wool": 3, "Wool Cashmere": 2, "Cashmere": 1},
        {"Check": 3, "": 1, "Monogram": 1, "Vintage Check": 1}, weight=2,
    ),
    "shirt": ProductType(
        "shirt", 620, "SHIRTS", {"CLOTHING": 1}, {"WOMAN": 4, "MAN": 4.5, "KIDS": 1.5},
        {"Shirt": 4, "Oxford Shirt": 1, "Twill Shirt": 1, "Blouse": 1},
        {"Cotton": 4, "Stretch Cotton": 2, "Silk": 1, "Wool": 0.5},
        {"": 3, "Check": 3, "Vintage Check": 2, "Stripe": 2, "Monogram": 0.5}, _MOSTLY_ONE_SIZE, weight=7,
        kids_category3="TOPS",
    ),
    "tshirt": ProductType(
        "tshirt", 430, "POLOS & T-SHIRTS", {"CLOTHING": 1}, {"WOMAN": 4, "MAN": 4.5, "KIDS": 1.5},
        {"T-shirt": 4, "Logo T-shirt": 1, "Relaxed T-shirt": 1}, {"Cotton": 6, "Stretch Cotton": 1},
        {"": 3, "Monogram": 2, "Check": 1, "Stripe": 1, "Camouflage Print": 1}, _MOSTLY_ONE_SIZE, weight=6,
        kids_category3="TOPS",
    ),
    "polo": ProductType(
        "polo", 520, "POLOS & T-SHIRTS", {"CLOTHING": 1}, {"WOMAN": 3, "MAN": 5.5, "KIDS": 1.5},
        {"Polo Shirt": 4, "Slim Fit Polo Shirt": 1}, {"Cotton Piqué": 6, "Cotton": 1},
        {"": 3, "Check": 1, "Stripe": 1, "Monogram": 1}, weight=3, kids_category3="TOPS",
    ),
    "sweater": ProductType(
        "sweater", 820, "KNITWEAR", {"KNITWEAR": 1, "CLOTHING": 1}, {"WOMAN": 4.5, "MAN": 4, "KIDS": 1.5},
        {"Sweater": 3, "Cardigan": 2, "Roll-neck Sweater": 1, "Crew-neck Sweater": 1},
        {"Wool": 4, "Cashmere": 2, "Wool Cashmere": 1, "Cotton": 1},
        {"": 3, "Argyle": 1.5, "Check": 1, "Stripe": 1}, _MOSTLY_ONE_SIZE, weight=6,
        kids_category3="KNITWEAR & SWEATSHIRTS",
    ),
    "hoodie": ProductType(
        "hoodie", 850, "SWEATSHIRTS", {"CLOTHING": 1}, {"WOMAN": 3.5, "MAN": 4.5, "KIDS": 2},
        {"Hoodie": 3, "Zip Hoodie": 1, "Oversized Hoodie": 0.5}, {"Cotton": 6, "Cashmere": 0.5},
        {"": 2, "Check": 1, "Monogram": 2, "Camouflage Print": 1}, weight=3,
        kids_category3="KNITWEAR & SWEATSHIRTS",
    ),
    "dress": ProductType(
        "dress", 1190, "DRESSES", {"CLOTHING": 1}, {"WOMAN": 8.5, "KIDS": 1.5},
        {"Dress": 3, "Shirt Dress": 1, "Slip Dress": 1, "Midi Dress": 1, "Pleated Dress": 1},
        {"Silk": 2, "Cotton": 2, "Wool": 1, "Stretch Cotton": 1, "Crystal Embellished": 0.12},
        {"": 3, "Check": 2, "Stripe": 1, "Vintage Check": 0.5}, weight=5, kids_category3="DRESSES & JUMPSUITS",
        kids_category2="girl",
    ),
    "skirt": ProductType(
        "skirt", 820, "SKIRTS", {"CLOTHING": 1}, {"WOMAN": 8.5, "KIDS": 1.5},
        {"Skirt": 2, "Pleated Skirt": 2, "A-line Skirt": 1, "Kilt": 1},
        {"Wool": 3, "Cotton": 2, "Silk": 1, "Leather": 0.5}, {"Check": 3, "": 2, "Vintage Check": 1},
        weight=3, kids_category3="SKIRTS", kids_category2="girl",
    ),
    "trousers": ProductType(
        "trousers", 720, "TROUSERS & SHORTS", {"CLOTHING": 1}, {"WOMAN": 4, "MAN": 4.5, "KIDS": 1.5},
        {"Trousers": 3, "Tailored Trousers": 2, "Jogging Pants": 1, "Wide-leg Trousers": 1},
        {"Wool": 3, "Cotton": 3, "Stretch Cotton": 1}, {"": 4, "Check": 1, "Stripe": 1}, weight=4,
        kids_category3="TROUSERS & SHORTS",
    ),
    "shorts": ProductType(
        "shorts", 520, "TROUSERS & SHORTS", {"CLOTHING": 1}, {"WOMAN": 3, "MAN": 5, "KIDS": 2},
        {"Shorts": 3, "Chino Shorts": 1, "Bermuda Shorts": 1}, {"Cotton": 3, "Nylon": 1},
        {"": 3, "Check": 2, "Camouflage Print": 1, "Stripe": 1}, weight=2, kids_category3="TROUSERS & SHORTS",
    ),
    "swimsuit": ProductType(
        "swimsuit", 450, "SWIMWEAR", {"SWIMWEAR": 2, "CLOTHING": 1}, {"WOMAN": 8, "KIDS": 2},
        {"Swimsuit": 3, "Halterneck Swimsuit": 1}, {"Nylon": 1}, {"Check": 3, "": 1, "Stripe": 1}, weight=2,
        kids_category3="SWIMWEAR", kids_category2="girl",
    ),
    "crossbody": ProductType(
        "crossbody", 1490, "CROSSBODY", {"BAGS": 1}, {"WOMAN": 7, "MAN": 3},
        {"{line} Bag": 3, "Crossbody Bag": 2, "Sling Bag": 1, "Camera Bag": 1, "Messenger Bag": 1},
        {"Leather": 6, "Suede": 1, "Nylon": 1, "Cotton Canvas": 1, "Alligator": 0.1},
        _BAG_PATTERNS, _BAG_SIZES, weight=7, lines=("Wren", "Ada", "Rowan"), and_form=0.3,
    ),
    "tote": ProductType(
        "tote", 1290, "TOTES", {"BAGS": 1}, {"WOMAN": 6, "MAN": 4}, {"Tote": 4, "{line} Tote": 2, "Shopper Tote": 1},
        {"Leather": 3, "Cotton Canvas": 2, "Nylon": 1}, _BAG_PATTERNS,
        {"Small": 2, "Medium": 3, "Large": 2, "Oversized": 1}, weight=5, lines=("Arden", "Holborn"), and_form=0.3,
    ),
    "tophandle": ProductType(
        "tophandle", 1690, "TOP HANDLE", {"BAGS": 1}, {"WOMAN": 9, "MAN": 1},
        {"{line} Bag": 3, "Top Handle Bag": 2, "Bowling Bag": 1},
        {"Leather": 6, "Suede": 1, "Alligator": 0.2}, _BAG_PATTERNS, _BAG_SIZES, weight=4,
        lines=("Hollis", "Sloane"), and_form=0.2,
    ),
    "shoulder": ProductType(
        "shoulder", 1490, "SHOULDER", {"BAGS": 1}, {"WOMAN": 9, "MAN": 1},
        {"Shoulder Bag": 3, "Hobo Bag": 1, "{line} Shoulder Bag": 2},
        {"Leather": 5, "Suede": 1, "Nylon": 1, "Alligator": 0.1}, _BAG_PATTERNS, _BAG_SIZES, weight=4,
        lines=("Mercer", "Vale"),
    ),
    "clutch": ProductType(
        "clutch", 890, "CLUTCHES", {"BAGS": 1}, {"WOMAN": 1}, {"Clutch": 3, "Chain Clutch": 1, "Envelope Clutch": 1},
        {"Leather": 3, "Suede": 1, "Silk": 1, "Crystal Embellished": 0.3}, {"": 4, "Check": 1, "Monogram": 1},
        weight=2,
    ),
    "sneaker": ProductType(
        "sneaker", 560, "SNEAKERS", {"SHOES": 1}, {"WOMAN": 4, "MAN": 4.5, "KIDS": 1.5},
        {"Sneakers": 4, "Low-top Sneakers": 1, "Runner Sneakers": 1},
        {"Leather": 4, "Suede": 1, "Cotton Canvas": 2, "Nylon": 1},
        {"": 3, "Check": 3, "Vintage Check": 1, "Monogram": 1, "Camouflage Print": 0.5}, weight=6,
        kids_category3="SNEAKERS", and_form=0.4,
    ),
    "boot": ProductType(
        "boot", 890, "BOOTS", {"SHOES": 1}, {"WOMAN": 5.5, "MAN": 4.5},
        {"Boots": 2, "Chelsea Boots": 2, "Ankle Boots": 1, "Combat Boots": 1}, {"Leather": 5, "Suede": 2},
        {"": 6, "Check": 1}, weight=3,
    ),
    "buckethat": ProductType(
        "buckethat", 440, "HATS & GLOVES", {"ACCESSORIES": 1}, {"WOMAN": 4, "MAN": 4.5, "KIDS": 1.5},
        {"Bucket Hat": 3, "Belted Bucket Hat": 1},
        {"Cotton": 2, "Cotton Gabardine": 1, "Cotton Canvas": 1, "Nylon": 1, "Wool": 1},
        {"Check": 3, "": 1, "Monogram": 1, "Vintage Check": 1}, weight=3, kids_category3="HATS & GLOVES",
    ),
    "cap": ProductType(
        "cap", 390, "HATS & GLOVES", {"ACCESSORIES": 1}, {"WOMAN": 3, "MAN": 7}, {"Baseball Cap": 3, "Cap": 1},
        {"Cotton": 3, "Wool": 1, "Nylon": 1}, {"": 2, "Check": 2, "Monogram": 1}, weight=2,
    ),
    "cardcase": ProductType(
        "cardcase", 260, "WALLETS & CARD CASES", {"SMALL LEATHER GOODS": 1, "ACCESSORIES": 1},
        {"WOMAN": 4, "MAN": 6}, {"Card Case": 3, "Card Holder": 1},
        {"Leather": 5, "Cotton Canvas": 1, "Alligator": 0.1}, {"Check": 3, "": 2, "Monogram": 1, "Vintage Check": 1},
        weight=4, and_form=0.4,
    ),
    "wallet": ProductType(
        "wallet", 390, "WALLETS & CARD CASES", {"SMALL LEATHER GOODS": 1, "ACCESSORIES": 1},
        {"WOMAN": 4, "MAN": 6}, {"Wallet": 2, "Bifold Wallet": 2, "Continental Wallet": 1}, {"Leather": 1},
        {"": 3, "Check": 2, "Monogram": 1}, {"": 3, "Small": 1}, weight=3, and_form=0.3,
    ),
    "belt": ProductType(
        "belt", 330, "BELTS", {"ACCESSORIES": 1}, {"WOMAN": 4, "MAN": 6},
        {"Belt": 3, "Reversible Belt": 1, "Buckle Belt": 1}, {"Leather": 1}, {"": 4, "Check": 1, "Monogram": 1},
        weight=2,
    ),
    "sunglasses": ProductType(
        "sunglasses", 390, "SUNGLASSES", {"EYEWEAR": 1, "ACCESSORIES": 1}, _ADULT,
        {"Sunglasses": 2, "Square Frame Sunglasses": 2, "Pilot Sunglasses": 1, "Cat-eye Frame Sunglasses": 1},
        {"Acetate": 4, "Metal": 2}, {"": 4, "Check": 1}, {"": 4, "Oversized": 1}, weight=3, family="beauty",
    ),
    "scarf": ProductType(
        "scarf", 440, MISSING, {"CASHMERE SCARVES": 1}, _ADULT,
        {"Scarf": 4, "Reversible Scarf": 1, "Fringed Scarf": 1},
        {"Cashmere": 5, "Wool Cashmere": 1, "Cashmere Silk": 1},
        {"Check": 4, "": 2, "Vintage Check": 1, "Monogram": 1, "Stripe": 0.5}, _MOSTLY_ONE_SIZE, weight=4,
    ),
    "silkscarf": ProductType(
        "silkscarf", 290, MISSING, {"SILK SCARVES": 1}, {"WOMAN": 8, "MAN": 2},
        {"Square Scarf": 2, "Scarf": 2, "Bandana": 1}, {"Silk": 1},
        {"Monogram": 2, "Check": 2, "Stripe": 1, "Camouflage Print": 1, "": 1}, {"": 4, "Small": 1}, weight=2,
    ),
    "fragrance": ProductType(
        "fragrance", 130, "FRAGRANCES", {"BEAUTY": 1, "FRAGRANCE": 1}, {"WOMAN": 6, "MAN": 4},
        {"Eau de Parfum": 3, "Eau de Toilette": 2, "Parfum": 1}, {"Glass": 1},
        sizes={"Small": 1, "Medium": 2, "Large": 2, "Oversized": 0.5}, weight=4, family="beauty",
        lines=("Meridian", "Harbour", "Solstice", "Ember", "Tide", "Lumen"), title="{line} {noun} {ml}",
        colours=_TINTS, variants=False,
    ),
    "foundation": ProductType(
        "foundation", 60, "FACE", {"BEAUTY": 1}, {"WOMAN": 1}, {"Foundation": 3, "Skin Tint": 1}, {"Glass": 1},
        weight=1.5, family="beauty", lines=("Ultimate Glow", "Second Skin", "Velvet Matte"),
        title="{line} {noun} – {colour}", colours=_SHADES_FACE, variants=False,
    ),
    "lipstick": ProductType(
        "lipstick", 42, "LIPS", {"BEAUTY": 1}, {"WOMAN": 1}, {"Lipstick": 3, "Lip Velvet": 1}, {"Satin": 1},
        weight=1.5, family="beauty", lines=("Kisses", "Petal", "Lacquer"), title="{line} {noun} – {colour}",
        colours=_SHADES_LIPS, variants=False,
    ),
    "cushion": ProductType(
        "cushion", 400, MISSING, {"HOME": 1, MISSING: 1}, {"WOMAN": 6, "MAN": 4}, {"Cushion": 1},
        {"Cashmere": 2, "Wool": 2, "Cotton": 1}, {"Check": 3, "": 1, "Monogram": 1}, weight=1,
    ),
    "blanket": ProductType(
        "blanket", 850, MISSING, {"HOME": 1, MISSING: 1}, {"WOMAN": 6, "MAN": 4}, {"Blanket": 2, "Throw": 1},
        {"Cashmere": 1, "Wool": 2}, {"Check": 3, "": 1, "Vintage Check": 1}, weight=1,
    ),
}
# fmt: on

_COLOUR_RGB = {
    name: rgb
    for palette in (COLOURS, _TINTS, _SHADES_FACE, _SHADES_LIPS)
    for name, (rgb, _) in palette.items()
}
ATTRIBUTE_COLUMNS = ("product_type", "material", "pattern", "size", "audience")  # what drives the price


# ---- text ------------------------------------------------------------------------------------------------
@lru_cache(maxsize=65536)
def slugify_title(title: str) -> str:
    """The reference site's URL slug for a title: lower case, accents stripped, '–' dropped, ' and ' removed
    gluing its neighbours, spaces to '-'. "Suede Leather and Check Sneakers" -> "suede-leathercheck-sneakers"."""
    text = unicodedata.normalize("NFKD", title)
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).lower().replace("–", " ")
    text = re.sub(r"\s+", " ", text).strip().replace(" and ", "")
    text = re.sub(r"[^a-z0-9 -]", "", text)
    return re.sub(r"\s+", "-", text.strip())


def brand_domain(brand: str) -> str:
    """The brand's web domain label: lower case letters and digits only ("North Gate" -> "northgate")."""
    return re.sub(r"[^a-z0-9]", "", brand.lower())


def retail_round(price: np.ndarray) -> np.ndarray:
    """Round raw prices to retail figures (58, 820, 2490, 12500) within [PRICE_MIN, PRICE_MAX]."""
    p = np.clip(np.asarray(price, dtype=np.float64), PRICE_MIN, PRICE_MAX)
    tens = np.round(p / 10) * 10
    out = np.where(p < 100, np.round(p), tens)
    out = np.where(tens >= 1000, np.round(p / 100) * 100 - 10, out)  # 2,490; 998 -> 990, not 1,000
    out = np.where(p >= 10000, np.round(p / 500) * 500, out)
    return np.clip(out, PRICE_MIN, PRICE_MAX)


# ---- rows ------------------------------------------------------------------------------------------------
def _pick(rng: np.random.Generator, weights: Mapping, n: int) -> np.ndarray:
    """n draws of the keys of `weights` (object array), with the given relative weights."""
    keys = np.empty(len(weights), dtype=object)
    for j, key in enumerate(weights):  # element-wise, so that tuple keys stay whole
        keys[j] = key
    p = np.asarray(list(weights.values()), dtype=np.float64)
    return keys[rng.choice(len(keys), size=n, p=p / p.sum())]


def _allocate_codes(rng: np.random.Generator, counts: np.ndarray, family: str) -> np.ndarray:
    """First product code of each model (variants follow at +10, +20): unique, 8 digits, ending in 1."""
    lo, hi = CODE_RANGES[family]
    slots = (hi - lo) // 10 + 1
    free = slots - int(counts.sum())
    if free < 0:
        raise ValueError(
            f"{int(counts.sum())} {family} products do not fit the {family} code range; ask for fewer rows"
        )
    order = rng.permutation(len(counts))
    gaps = rng.multinomial(free, np.full(len(counts) + 1, 1 / (len(counts) + 1)))[: len(counts)]
    start = np.cumsum(counts[order] + gaps) - counts[order]
    codes = np.empty(len(counts), dtype=np.int64)
    codes[order] = lo + 10 * start
    return codes


def _check_args(n: int, brand: str, image_base_url: str | None) -> None:
    if not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"rows must be a positive integer, got {n!r}")
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9 &.'-]{0,39}", brand or ""):
        raise ValueError(
            f"brand must start with a letter and hold letters, digits, spaces or &.'- ; got {brand!r}"
        )
    if image_base_url is not None and not re.match(r"https?://[^/\s]+", image_base_url):
        raise ValueError(
            f"image_base_url must be an http(s) URL such as http://127.0.0.1:8000; got {image_base_url!r}"
        )


def _draw_models(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Enough models (with 1-3 colour variants each) for exactly n rows: their type and visible attributes,
    audience and categories. One entry per model; arrays of equal length."""
    types = _pick(rng, {t: pt.weight for t, pt in PRODUCT_TYPES.items()}, n)  # at most n models
    counts = _pick(rng, VARIANTS, n).astype(np.int64)
    counts[[not PRODUCT_TYPES[t].variants for t in types]] = 1
    m = int(np.searchsorted(np.cumsum(counts), n) + 1)  # models needed to reach n rows
    counts = counts[:m]
    counts[-1] -= int(counts.sum()) - n
    keys = ("material", "pattern", "size", "noun", "line", "colour", "category1", "category2", "category3")
    models = {"type": types[:m], "count": counts} | {k: np.empty(m, dtype=object) for k in keys}
    for t, pt in PRODUCT_TYPES.items():
        sel = np.flatnonzero(models["type"] == t)
        k = len(sel)
        if not k:
            continue
        models["material"][sel] = _pick(rng, pt.materials, k)
        models["pattern"][sel] = _pick(rng, pt.patterns, k)
        models["size"][sel] = _pick(rng, pt.sizes, k)
        models["noun"][sel] = _pick(rng, pt.nouns, k)
        models["line"][sel] = _pick(rng, dict.fromkeys(pt.lines, 1), k) if pt.lines else ""
        models["colour"][sel] = _pick(rng, {c: w for c, (_, w) in (pt.colours or COLOURS).items()}, k)
        cat1 = _pick(rng, pt.audience, k)
        kids = cat1 == "KIDS"
        models["category1"][sel] = cat1
        models["size"][sel[kids]] = ""  # kids' pieces come in one size, drawn small
        models["category2"][sel] = _pick(rng, pt.category2, k)
        models["category2"][sel[kids]] = _pick(rng, KIDS_CATEGORY2[pt.kids_category2], int(kids.sum()))
        models["category3"][sel] = np.where(kids, pt.kids_category3 or pt.category3, pt.category3)
    models["audience"] = np.where(models["category1"] == "KIDS", "kids", "adult").astype(object)
    _file_under_menus(rng, models)
    return models


def _file_under_menus(rng: np.random.Generator, models: dict[str, np.ndarray]) -> None:
    """Move some models under menu buckets: category3 kept (THE CHECK, BEST SELLERS) or replaced by the
    catalog's category noise (N.A., VIEW ALL, NEW ARRIVALS); marks the latter in models["category_noise"]."""
    m = len(models["type"])
    checked = np.isin(models["pattern"], ["Check", "Vintage Check"]) & (rng.random(m) < CHECK_BUCKET)
    models["category2"][checked] = "THE CHECK"
    models["category2"][rng.random(m) < BEST_SELLERS] = "BEST SELLERS"
    noisy = rng.random(m) < CATEGORY_NOISE
    for i, (c2, c3) in zip(np.flatnonzero(noisy), _pick(rng, NOISE_BUCKETS, int(noisy.sum())), strict=True):
        gifts = {"WOMAN": "GIFTS FOR HER", "MAN": "GIFTS FOR HIM"}.get(models["category1"][i], "ALL GIFTS")
        models["category2"][i] = {"{own}": models["category2"][i], "{gifts}": gifts}.get(c2, c2)
        models["category3"][i] = c3
    models["category_noise"] = noisy


def _prices(rng: np.random.Generator, models: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(retail price, log noise) per model: the price model of the module docstring."""
    noise = rng.normal(0.0, PRICE_NOISE_SIGMA, len(models["type"]))
    raw = np.asarray([PRODUCT_TYPES[t].base for t in models["type"]])
    raw = raw * np.asarray([MATERIALS[x][0] for x in models["material"]])
    raw = raw * np.asarray([PATTERNS[x][0] for x in models["pattern"]])
    raw = raw * np.asarray([SIZES[x][0] for x in models["size"]])
    raw = raw * np.asarray([AUDIENCES[x][0] for x in models["audience"]])
    return retail_round(raw * np.exp(noise)), noise


def _title(pt: ProductType, size: str, pattern: str, material: str, noun: str, line: str, colour: str) -> str:
    text = pt.title.format(
        size=size,
        pattern=pattern,
        material=material,
        noun=noun.format(line=line),
        line=line,
        colour=colour,
        ml=FRAGRANCE_ML.get(size, ""),
    )
    return " ".join(text.split())


def _titles(rng: np.random.Generator, models: dict[str, np.ndarray]) -> np.ndarray:
    """`[Size] [Pattern] [Material] [Noun]` per model; some name no material, some read "Check and Leather"."""
    m = len(models["type"])
    show_material = rng.random(m) < MATERIAL_IN_TITLE
    and_form = rng.random(m)
    material_first = rng.random(m) < 0.5
    titles = np.empty(m, dtype=object)
    for i in range(m):
        pt = PRODUCT_TYPES[models["type"][i]]
        words = [models[k][i] for k in ("size", "pattern", "material", "noun", "line", "colour")]
        size, pattern, material, noun, line, colour = words
        shown = material if show_material[i] else ""
        if pattern and shown and and_form[i] < pt.and_form:
            pattern, shown = (f"{shown} and {pattern}" if material_first[i] else f"{pattern} and {shown}"), ""
        titles[i] = _title(pt, size, pattern, shown, noun, line, colour)
        if len(titles[i]) < TITLE_MIN_CHARS:  # "Cap" -> "Cotton Cap"
            titles[i] = _title(pt, size, pattern, material, noun, line, colour)
    return titles


def _codes(rng: np.random.Generator, models: dict[str, np.ndarray]) -> np.ndarray:
    """First product code of each model, from its family's range (a few fashion models get legacy codes)."""
    m = len(models["type"])
    family = np.asarray([PRODUCT_TYPES[t].family for t in models["type"]], dtype=object)
    family[(family == "fashion") & (rng.random(m) < LEGACY_SHARE)] = "legacy"
    first = np.empty(m, dtype=np.int64)
    for fam in CODE_RANGES:
        sel = np.flatnonzero(family == fam)
        if len(sel):
            first[sel] = _allocate_codes(rng, models["count"][sel], fam)
    return first


def synth_catalog(
    n: int = DEFAULT_ROWS, seed: int = 0, brand: str = DEFAULT_BRAND, image_base_url: str | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """n catalog rows (REFERENCE_COLUMNS, in order, with their dtypes) and, aligned with them, the generator's
    attributes per row (product_code, ATTRIBUTE_COLUMNS, colour, what the photo draws, the log price noise).
    imageurl is `{image_base_url}/images/{code}.jpg`, or `images/{code}.jpg` without a base URL. Deterministic
    for a seed."""
    _check_args(n, brand, image_base_url)
    rng = np.random.default_rng(seed)
    models = _draw_models(rng, n)
    price, noise = _prices(rng, models)
    titles = _titles(rng, models)
    first = _codes(rng, models)
    photo = _pick(rng, PHOTO_SIZES, len(first))

    counts = models["count"]
    r = np.repeat(np.arange(len(first)), counts)  # (n,) model of each row
    variant = np.arange(n) - np.repeat(np.cumsum(counts) - counts, counts)  # (n,) 0, 1, 2 within a model
    code = first[r] + 10 * variant
    mt = models["type"][r]
    colour = models["colour"][r].copy()
    for i in np.flatnonzero(variant):  # variants take other colours of the palette
        names = list(PRODUCT_TYPES[mt[i]].colours or COLOURS)
        colour[i] = names[(names.index(colour[i]) + VARIANT_COLOUR_STEP * variant[i]) % len(names)]
    no_photo = rng.random(n) < NO_PHOTO_SHARE
    base = (image_base_url.rstrip("/") + "/") if image_base_url else ""
    imageurl = [
        MISSING if x else f"{base}images/{c}.jpg" for x, c in zip(no_photo, code.tolist(), strict=True)
    ]
    domain = brand_domain(brand)
    itemurl = [
        f"https://us.{domain}.com/{slugify_title(t)}-p{c}"
        for t, c in zip(titles[r], code.tolist(), strict=True)
    ]
    eur = np.round(price[r] * EUR_RATE, 2)
    rows = pd.DataFrame(
        {
            "website_name": brand.title(),
            "competence_date": COMPETENCE_DATE,
            "country_code": COUNTRY_CODE,
            "currency_code": CURRENCY_CODE,
            "brand": brand.upper(),
            "category1_code": models["category1"][r],
            "category2_code": models["category2"][r],
            "category3_code": models["category3"][r],
            "product_code": code,
            "title": titles[r],
            "itemurl": itemurl,
            "imageurl": imageurl,
            "full_price": price[r],
            "price": price[r],
            "full_price_eur": eur,
            "price_eur": eur,
            "flg_discount": 0,
        }
    ).astype(REFERENCE_COLUMNS)

    audience = models["audience"][r]
    size_scale = np.asarray([SIZES[x][1] for x in models["size"][r]])
    scale = np.where(audience == "kids", AUDIENCES["kids"][1], size_scale)
    scale = np.minimum(1.0, scale * rng.uniform(1 - SCALE_JITTER, 1 + SCALE_JITTER, n))
    attributes = pd.DataFrame(
        {
            "product_code": code,
            "product_type": mt,
            "material": models["material"][r],
            "pattern": models["pattern"][r],
            "size": models["size"][r],
            "audience": audience,
            "colour": colour,
            "colour_rgb": ["#{:02x}{:02x}{:02x}".format(*_COLOUR_RGB[c]) for c in colour],
            "silhouette": [PRODUCT_TYPES[t].silhouette for t in mt],
            "texture": [PATTERNS[p][1] for p in models["pattern"][r]],
            "finish": [MATERIALS[x][1] for x in models["material"][r]],
            "scale": scale,
            "photo_width": [photo[i][0] for i in r],
            "photo_height": [photo[i][1] for i in r],
            "photo_seed": (seed % 2**31) * 1_000_003 + code,
            "has_photo": ~no_photo,
            "price_noise": noise[r],
            "category_noise": models["category_noise"][r],
        }
    ).astype({c: "string" for c in ("product_type", "material", "pattern", "size", "audience", "colour")})
    return rows, attributes


def synth_rows(
    n: int = DEFAULT_ROWS, seed: int = 0, brand: str = DEFAULT_BRAND, image_base_url: str | None = None
) -> pd.DataFrame:
    """n catalog rows with the reference columns and dtypes (see synth_catalog). Deterministic for a seed."""
    return synth_catalog(n, seed, brand, image_base_url)[0]


# ---- photos and files ------------------------------------------------------------------------------------
def photo_spec(attr: Mapping, photo_size: int | None = None) -> PhotoSpec:
    """The PhotoSpec of one attributes row; photo_size caps the longer side (aspect ratio kept)."""
    w, h = int(attr["photo_width"]), int(attr["photo_height"])
    if photo_size is not None:
        k = min(1.0, photo_size / max(w, h))
        w, h = max(MIN_PHOTO_SIDE // 2, round(w * k)), max(MIN_PHOTO_SIDE // 2, round(h * k))
    rgb = attr["colour_rgb"]
    return PhotoSpec(
        silhouette=str(attr["silhouette"]),
        texture=str(attr["texture"]),
        finish=str(attr["finish"]),
        colour=(int(rgb[1:3], 16), int(rgb[3:5], 16), int(rgb[5:7], 16)),
        scale=float(attr["scale"]),
        width=w,
        height=h,
        seed=int(attr["photo_seed"]),
    )


def render_photos(
    specs: list[PhotoSpec],
    paths: list[Path],
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Draw and write each photo (JPEG, atomic) over a process pool of `workers` (default: all cores; 1 = in
    this process). progress(done, total) is called after each chunk. Returns the number written.

    The pool starts workers with forkserver (safe when the caller has threads), so a script that calls this
    with workers > 1 needs the usual `if __name__ == "__main__":` guard."""
    total = len(specs)
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    chunks = [(specs[i : i + CHUNK], [str(p) for p in paths[i : i + CHUNK]]) for i in range(0, total, CHUNK)]
    done = 0
    if progress:
        progress(0, total)
    if workers == 1 or len(chunks) < 2:
        for chunk in chunks:
            done += save_photos(*chunk)
            if progress:
                progress(done, total)
        return done
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["__main__", "productlens.catalog.photos"])
    with ProcessPoolExecutor(max_workers=min(workers, len(chunks)), mp_context=ctx) as pool:
        for fut in as_completed([pool.submit(save_photos, *chunk) for chunk in chunks]):
            done += fut.result()
            if progress:
                progress(done, total)
    return done


def write_catalog(
    out_dir: str | os.PathLike,
    rows: int = DEFAULT_ROWS,
    seed: int = 0,
    brand: str = DEFAULT_BRAND,
    image_base_url: str | None = None,
    photo_size: int | None = None,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write a synthetic catalog folder: images/{product_code}.jpg (none for N.A. imageurls), then
    catalog.parquet, catalog.csv (same rows) and attributes.parquet. Returns the folder.

    imageurl is `{image_base_url}/images/{code}.jpg` when a base URL is given, else `images/{code}.jpg`
    (relative to the folder). photo_size caps each photo's longer side. Old numbered photos in images/ that
    the new catalog does not list are removed, so the folder always matches its catalog.
    """
    if photo_size is not None and photo_size < MIN_PHOTO_SIDE:
        raise ValueError(
            f"photo_size must be at least {MIN_PHOTO_SIDE} px (or None for full size), got {photo_size}"
        )
    table, attrs = synth_catalog(rows, seed, brand, image_base_url)
    out = Path(out_dir)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)

    keep = attrs[attrs["has_photo"]]
    specs = [photo_spec(a, photo_size) for a in keep.to_dict("records")]
    paths = [images / f"{code}.jpg" for code in keep["product_code"].tolist()]
    render_photos(specs, paths, workers, progress)
    wanted = {p.name for p in paths}
    for old in images.iterdir():
        stale_photo = old.suffix == ".jpg" and old.stem.isdigit() and old.name not in wanted
        if stale_photo or (old.name.startswith(".") and old.name.endswith(".tmp")):
            old.unlink(missing_ok=True)

    with atomic_path(out / "catalog.parquet") as tmp:
        table.to_parquet(tmp, index=False)
    with atomic_path(out / "catalog.csv") as tmp:
        table.to_csv(tmp, index=False)
    with atomic_path(out / "attributes.parquet") as tmp:
        attrs.to_parquet(tmp, index=False)
    return out


def read_catalog_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Read a catalog.csv written by write_catalog back with the reference dtypes ("N.A." stays a string)."""
    return pd.read_csv(path, dtype=REFERENCE_COLUMNS, keep_default_na=False)
