"""Tests for catalog/synth.py: the rows look like the reference catalog's, the price follows what the photo
shows, and write_catalog / `productlens synth` write a consistent folder."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from productlens.catalog.photos import BACKGROUNDS, PhotoSpec, draw_photo
from productlens.catalog.schema import MISSING, REFERENCE_COLUMNS
from productlens.catalog.synth import (
    ATTRIBUTE_COLUMNS,
    EUR_RATE,
    MATERIALS,
    PATTERNS,
    PRODUCT_TYPES,
    photo_spec,
    read_catalog_csv,
    slugify_title,
    synth_catalog,
    synth_rows,
    write_catalog,
)
from productlens.cli import app

MENU_LABELS = {MISSING, "VIEW ALL", "NEW ARRIVALS"}


@pytest.fixture(scope="module")
def catalog() -> tuple[pd.DataFrame, pd.DataFrame]:
    return synth_catalog(3040, seed=0)


@pytest.fixture(scope="module")
def rows(catalog) -> pd.DataFrame:
    return catalog[0]


@pytest.fixture(scope="module")
def attrs(catalog) -> pd.DataFrame:
    return catalog[1]


# ---- schema and value patterns -------------------------------------------------------------------------
def test_columns_dtypes_and_order_equal_the_reference(rows):
    assert len(rows) == 3040
    assert list(rows.columns) == list(REFERENCE_COLUMNS)
    assert {c: str(t) for c, t in rows.dtypes.items()} == REFERENCE_COLUMNS
    assert not rows.isna().any().any()


def test_constant_columns(rows):
    assert set(rows["website_name"]) == {"Northgate"}
    assert set(rows["brand"]) == {"NORTHGATE"}
    assert set(rows["country_code"]) == {"USA"} and set(rows["currency_code"]) == {"USD"}
    (date,) = set(rows["competence_date"])
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", date)


def test_categories_match_the_reference_taxonomy(rows):
    assert set(rows["category1_code"]) == {"WOMAN", "MAN", "KIDS"}
    cat2 = set(rows["category2_code"])
    assert 22 <= len(cat2) <= 30
    assert {MISSING, "NEW IN", "ALL GIFTS", "BAGS", "SHOES", "OUTERWEAR", "CASHMERE SCARVES"} <= cat2
    cat3 = set(rows["category3_code"])
    assert {MISSING, "VIEW ALL", "NEW ARRIVALS", "CROSSBODY", "SNEAKERS", "HATS & GLOVES"} <= cat3
    lengths = rows["category3_code"].str.len()
    assert lengths.min() >= 3 and lengths.max() <= 28


def test_category3_mostly_follows_the_product_type(rows, attrs):
    keys = [attrs["product_type"], attrs["audience"]]
    majority = rows.groupby(keys)["category3_code"].transform(lambda s: s.mode().iloc[0])
    agreement = (rows["category3_code"] == majority).mean()
    assert 0.9 <= agreement < 0.98, "category3 follows the product type, apart from a small noise share"
    noise = attrs["category_noise"].to_numpy()
    assert 0.04 <= noise.mean() <= 0.09
    assert rows.loc[noise, "category3_code"].isin(MENU_LABELS).all()
    assert rows["category3_code"].value_counts(normalize=True).iloc[0] < 0.12, "no class dominates"


def test_product_codes(rows):
    code = rows["product_code"].to_numpy()
    assert code.dtype == np.int64 and rows["product_code"].is_unique
    assert ((code >= 10_000_000) & (code < 100_000_000)).all() and (code % 10 == 1).all()
    prefix = code // 1_000_000
    assert (prefix == 80).mean() > 0.8 and (prefix == 40).sum() > 50
    assert ((code >= 26_000_000) & (code < 30_000_000)).sum() >= 3, "a few old codes in the 26M range"


def test_colour_variants_share_title_and_price_with_codes_10_apart(rows, attrs):
    nxt = rows.shift(-1)
    pairs = (nxt["product_code"] - rows["product_code"] == 10) & (nxt["title"] == rows["title"])
    assert pairs.sum() > 100
    assert (nxt.loc[pairs, "full_price"] == rows.loc[pairs, "full_price"]).all()
    assert (attrs["colour"].shift(-1)[pairs] != attrs["colour"][pairs]).all(), "variants differ in colour"
    assert rows["title"].duplicated().any()


@pytest.mark.parametrize(
    ("title", "slug"),
    [
        ("Suede Leather and Check Sneakers", "suede-leathercheck-sneakers"),
        ("Check and Leather Card Case", "checkleather-card-case"),
        ("Medium Lola Bag", "medium-lola-bag"),
        ("Check Bouclé Collarless Jacket", "check-boucle-collarless-jacket"),
        (
            "Vintage Check Trim Cotton Piqué Polo Shirt Dress",
            "vintage-check-trim-cotton-pique-polo-shirt-dress",
        ),
        ("Ultimate Glow Foundation – 40 Light Cool", "ultimate-glow-foundation-40-light-cool"),
        ("EKD Roll-neck Sweater", "ekd-roll-neck-sweater"),
    ],
)
def test_slugify_title_follows_the_reference_rules(title, slug):
    assert slugify_title(title) == slug


def test_itemurls_use_the_slug_rules(rows):
    expected = [
        f"https://us.northgate.com/{slugify_title(t)}-p{c}"
        for t, c in zip(rows["title"], rows["product_code"], strict=True)
    ]
    assert rows["itemurl"].tolist() == expected
    anded = rows["title"].str.contains(" and ")
    assert anded.sum() > 20, "titles exercise the ' and ' rule"
    assert not rows.loc[anded, "itemurl"].str.contains("-and-").any()
    assert rows["title"].str.contains("é").any() and rows["title"].str.contains("–").any()
    assert rows["itemurl"].str.fullmatch(r"https://us\.northgate\.com/[a-z0-9-]+-p\d{8}").all()


def test_brand_is_configurable():
    df = synth_rows(50, seed=1, brand="Ash & Vale")
    assert set(df["brand"]) == {"ASH & VALE"} and set(df["website_name"]) == {"Ash & Vale"}
    assert df["itemurl"].str.startswith("https://us.ashvale.com/").all()


def test_imageurls(rows):
    missing = rows["imageurl"] == MISSING
    assert 0.005 <= missing.mean() <= 0.04
    local = [f"images/{c}.jpg" for c in rows.loc[~missing, "product_code"]]
    assert rows.loc[~missing, "imageurl"].tolist() == local
    served = synth_rows(3040, seed=0, image_base_url="http://127.0.0.1:8765/")
    assert ((served["imageurl"] == MISSING) == missing).all()
    url = served.loc[~missing, "imageurl"]
    assert (url == "http://127.0.0.1:8765/" + rows.loc[~missing, "imageurl"]).all()


def test_prices(rows):
    price = rows["full_price"]
    assert (rows["price"] == price).all() and (rows["flg_discount"] == 0).all()
    eur = np.round(price.to_numpy() * EUR_RATE, 2)
    assert np.array_equal(rows["full_price_eur"].to_numpy(), eur)
    assert np.array_equal(rows["price_eur"].to_numpy(), eur)
    assert price.min() >= 32 and price.max() <= 70000
    assert 700 <= price.median() <= 1400
    assert price.mean() > price.median() and price.max() > 10 * price.median(), "right-skewed"
    mid = price[(price >= 100) & (price < 1000)]
    high = price[(price >= 1000) & (price < 10000)]
    assert (mid % 10 == 0).all() and (high % 100 == 90).all(), "round retail figures"


def test_titles_follow_size_pattern_material_type(rows, attrs):
    title = rows["title"]
    assert title.str.len().min() >= 8 and title.str.len().max() <= 71
    fashion = ~attrs["product_type"].isin(["fragrance", "foundation", "lipstick"])
    sized = fashion & (attrs["size"] != "")
    assert all(t.startswith(s + " ") for t, s in zip(title[sized], attrs["size"][sized], strict=True))
    patterned = attrs["pattern"] != ""
    assert all(p in t for t, p in zip(title[patterned], attrs["pattern"][patterned], strict=True))
    named = [m in t for t, m in zip(title[fashion], attrs["material"][fashion], strict=True)]
    assert 0.8 <= np.mean(named) < 1.0, "most titles name the material"
    assert title[attrs["product_type"] == "fragrance"].str.fullmatch(r".+ \d+ml").all()


def test_price_is_mostly_explained_by_visible_attributes(rows, attrs):
    y = np.log(rows["full_price"].to_numpy())
    x = pd.get_dummies(attrs[list(ATTRIBUTE_COLUMNS)].astype(str)).to_numpy(np.float64)  # (n, one-hots)
    beta, *_ = np.linalg.lstsq(x, y, rcond=None)
    r2 = 1 - ((y - x @ beta) ** 2).sum() / ((y - y.mean()) ** 2).sum()
    assert 0.6 <= r2 <= 0.95, f"R^2 = {r2:.3f}"


def test_rows_are_deterministic_for_a_seed():
    a_rows, a_attrs = synth_catalog(400, seed=3)
    b_rows, b_attrs = synth_catalog(400, seed=3)
    pd.testing.assert_frame_equal(a_rows, b_rows)
    pd.testing.assert_frame_equal(a_attrs, b_attrs)
    assert not synth_rows(400, seed=4)["title"].equals(a_rows["title"])


def test_100k_rows_work():
    df = synth_rows(100_000, seed=1)
    assert len(df) == 100_000 and df["product_code"].is_unique
    assert {c: str(t) for c, t in df.dtypes.items()} == REFERENCE_COLUMNS


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": 0}, "positive integer"),
        ({"brand": ""}, "brand must"),
        ({"image_base_url": "ftp://example.com"}, "http"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        synth_rows(**({"n": 10} | kwargs))


def test_different_categories_have_distinct_silhouettes_at_low_resolution():
    """A tiny model sees ~112 px photos: product types of different category3 must differ in shape."""
    masks = {}
    for name, pt in PRODUCT_TYPES.items():
        img = draw_photo(PhotoSpec(pt.silhouette, "plain", "matte", (30, 30, 30), 0.84, 112, 112, seed=1))
        a = np.asarray(img, dtype=np.int16)
        masks[name] = np.min([np.abs(a - np.asarray(bg)).sum(axis=2) for bg in BACKGROUNDS], axis=0) > 60
    for a, pa in PRODUCT_TYPES.items():
        for b, pb in PRODUCT_TYPES.items():
            if a < b and pa.category3 != pb.category3:
                iou = (masks[a] & masks[b]).sum() / (masks[a] | masks[b]).sum()
                assert iou < 0.9, f"{a} and {b} look alike (IoU {iou:.2f})"


# ---- files ------------------------------------------------------------------------------------------------
def _seed_with_missing_photo(n: int) -> int:
    return next(s for s in range(100) if (synth_rows(n, seed=s)["imageurl"] == MISSING).any())


def test_write_catalog_writes_rows_csv_attributes_and_one_photo_per_product(tmp_path: Path):
    n = 40
    seed = _seed_with_missing_photo(n)
    out = write_catalog(tmp_path / "synth", rows=n, seed=seed, photo_size=160, workers=2)
    table = pd.read_parquet(out / "catalog.parquet")
    pd.testing.assert_frame_equal(table, synth_rows(n, seed=seed))
    pd.testing.assert_frame_equal(read_catalog_csv(out / "catalog.csv"), table)
    attrs = pd.read_parquet(out / "attributes.parquet")
    assert attrs["product_code"].tolist() == table["product_code"].tolist()

    has_photo = table["imageurl"] != MISSING
    assert (~has_photo).any()
    assert sorted(os.listdir(out / "images")) == sorted(table.loc[has_photo, "imageurl"].str[7:])
    ratios = set()
    for rel in table.loc[has_photo, "imageurl"]:
        with Image.open(out / rel) as img:
            img.load()
            assert img.format == "JPEG" and img.mode == "RGB" and max(img.size) <= 160
            ratios.add(round(img.width / img.height, 2))
    assert len(ratios) >= 3, "photos come in varied aspect ratios"
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_rewriting_a_folder_is_deterministic_and_drops_stale_photos(tmp_path: Path):
    out = tmp_path / "synth"
    write_catalog(out, rows=12, seed=2, photo_size=64, workers=1, image_base_url="http://127.0.0.1:9/")
    first = {p.name: p.read_bytes() for p in (out / "images").iterdir()}
    write_catalog(out, rows=12, seed=2, photo_size=64, workers=1, image_base_url="http://127.0.0.1:9/")
    assert {p.name: p.read_bytes() for p in (out / "images").iterdir()} == first
    table = pd.read_parquet(out / "catalog.parquet")
    assert table["imageurl"].str.startswith("http://127.0.0.1:9/images/").all()

    write_catalog(out, rows=5, seed=3, photo_size=64, workers=1)
    table = pd.read_parquet(out / "catalog.parquet")
    listed = {u[len("images/") :] for u in table["imageurl"] if u != MISSING}
    assert set(os.listdir(out / "images")) == listed


def test_write_catalog_refuses_tiny_photos(tmp_path: Path):
    with pytest.raises(ValueError, match="photo_size"):
        write_catalog(tmp_path, rows=3, photo_size=8)


def test_cli_synth(tmp_path: Path):
    out = tmp_path / "cli"
    args = ["synth", "--rows", "24", "--out", str(out), "--photo-size", "96", "--workers", "1", "--seed", "4"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "24 rows" in result.output and str(out) in result.output
    table = pd.read_parquet(out / "catalog.parquet")
    assert len(table) == 24
    photos = len(os.listdir(out / "images"))
    assert photos == (table["imageurl"] != MISSING).sum() and f"{photos} photos" in result.output

    bad = CliRunner().invoke(app, ["synth", "--rows", "3", "--out", str(out), "--brand", "!!"])
    assert bad.exit_code == 2 and "brand must" in bad.output


def test_photo_specs_follow_the_attributes(attrs):
    """The photo draws what the attributes say (and, through them, what title and price say)."""
    row = attrs.iloc[0].to_dict()
    spec = photo_spec(row, photo_size=100)
    assert spec.silhouette == PRODUCT_TYPES[row["product_type"]].silhouette
    assert spec.texture == PATTERNS[row["pattern"]][1] and spec.finish == MATERIALS[row["material"]][1]
    assert max(spec.width, spec.height) == 100
    kids = attrs["audience"] == "kids"
    assert attrs.loc[kids, "scale"].max() < attrs.loc[~kids & (attrs["size"] == ""), "scale"].min()
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.width = 10
