"""The catalog's shape: the reference catalog's 17 columns and dtypes, the column mapping for any catalog,
and the `Product` record every later stage passes around.

In: nothing (definitions). Out: `REFERENCE_COLUMNS`, `ColumnMap`, `Product`.
"""

from __future__ import annotations

from dataclasses import dataclass

# DBQ/Burberry.Product.prices.United.States, in its column order, with pandas dtypes.
REFERENCE_COLUMNS: dict[str, str] = {
    "website_name": "string",
    "competence_date": "string",
    "country_code": "string",
    "currency_code": "string",
    "brand": "string",
    "category1_code": "string",
    "category2_code": "string",
    "category3_code": "string",
    "product_code": "int64",
    "title": "string",
    "itemurl": "string",
    "imageurl": "string",
    "full_price": "float64",
    "price": "float64",
    "full_price_eur": "float64",
    "price_eur": "float64",
    "flg_discount": "int64",
}

MISSING = "N.A."  # the reference catalog's marker for "no value" (imageurl, category2/3)


@dataclass(frozen=True)
class ColumnMap:
    """Which catalog columns hold the fields productlens reads. The default is the reference catalog's."""

    image: str = "imageurl"  # a URL, a local path, or an embedded image (bytes / {"bytes", "path"})
    title: str = "title"
    category: str = "category3_code"
    price: str = "full_price"
    id: str = "product_code"


@dataclass(frozen=True)
class Product:
    """One product as the task sees it: the fields to predict, and where its photo lies on disk."""

    id: str
    title: str
    category: str
    price: float
    image_path: str | None = None
