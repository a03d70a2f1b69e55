"""The task's text: the question asked about a photo and the answer a product should produce.

In: a `Product` (and an `AnswerTemplate`, default = the Phi-3 CookBook's format). Out: the question and the
answer text, e.g. `Product: Medium Lola Bag, Category: CROSSBODY, Full Price: 2490.0`.
Used by `productlens prepare` / `train` (targets) and, through parse.py, by `evaluate` / `predict`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from productlens.catalog.schema import Product

FIELD_NAMES: tuple[str, ...] = ("title", "category", "price")  # the Product attributes a template may use
FIELD_SEPARATOR = ", "  # between "Label: value" pairs in a rendered answer
LABEL_SEPARATOR = ": "  # between a label and its value


@dataclass(frozen=True)
class AnswerTemplate:
    """The question, and which Product fields the answer lists, in order, under which labels."""

    question: str = "What is shown in this image?"
    fields: tuple[tuple[str, str], ...] = (
        ("Product", "title"),
        ("Category", "category"),
        ("Full Price", "price"),
    )

    def __post_init__(self) -> None:
        fields = tuple(tuple(pair) for pair in self.fields)  # YAML gives lists; keep the record hashable
        object.__setattr__(self, "fields", fields)
        if not isinstance(self.question, str) or not self.question.strip():
            raise ValueError(
                "AnswerTemplate.question must be a non-empty string, e.g. 'What is shown in this image?'"
            )
        if not fields:
            raise ValueError(
                "AnswerTemplate.fields is empty; list at least one (label, field) pair, e.g. ('Product', 'title')"
            )
        for pair in fields:
            if len(pair) != 2 or not all(isinstance(x, str) for x in pair):
                raise ValueError(
                    f"AnswerTemplate.fields entries must be (label, field) string pairs; got {pair!r}"
                )
            label, name = pair
            if name not in FIELD_NAMES:
                raise ValueError(
                    f"unknown answer field {name!r} (label {label!r}); choose from {', '.join(FIELD_NAMES)}"
                )
            if not label.strip() or any(ch in label for ch in ":,\n"):
                raise ValueError(
                    f"answer label {label!r} must be non-empty and contain no ':', ',' or line break"
                )
        for what, values in (
            ("labels", [p[0].casefold() for p in fields]),
            ("fields", [p[1] for p in fields]),
        ):
            if len(set(values)) != len(values):
                raise ValueError(
                    f"AnswerTemplate {what} must be unique (case-insensitive for labels); got {fields!r}"
                )

    @property
    def names(self) -> tuple[str, ...]:
        """The Product attributes the answer holds, in answer order."""
        return tuple(name for _, name in self.fields)

    def render_answer(self, product: Product) -> str:
        """Product -> answer text, e.g. 'Product: Medium Lola Bag, Category: CROSSBODY, Full Price: 2490.0'."""
        return FIELD_SEPARATOR.join(
            f"{label}{LABEL_SEPARATOR}{_render_value(product, name)}" for label, name in self.fields
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AnswerTemplate:
        """Build from a preset mapping: {question: str, fields: [[label, field], ...] or {label: field}}."""
        if not isinstance(data, Mapping):
            raise ValueError(
                f"an answer template must be a mapping with 'question' and/or 'fields'; got {data!r}"
            )
        unknown = set(data) - {"question", "fields"}
        if unknown:
            raise ValueError(
                f"unknown answer template key(s) {sorted(unknown)}; allowed: 'question', 'fields'"
            )
        kwargs: dict[str, Any] = {}
        if "question" in data:
            kwargs["question"] = data["question"]
        if "fields" in data:
            fields = data["fields"]
            if isinstance(fields, Mapping):
                fields = list(fields.items())
            if not isinstance(fields, list | tuple):
                raise ValueError(
                    f"answer template 'fields' must be a list of [label, field] pairs; got {fields!r}"
                )
            kwargs["fields"] = tuple(_pair(item) for item in fields)
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """The inverse of `from_dict` (plain lists, ready for YAML/JSON)."""
        return {"question": self.question, "fields": [list(pair) for pair in self.fields]}


def _pair(item: Any) -> tuple[str, str]:
    if isinstance(item, Mapping) and set(item) == {"label", "field"}:
        return (item["label"], item["field"])
    if isinstance(item, list | tuple) and len(item) == 2:
        return (item[0], item[1])
    raise ValueError(f"answer template field {item!r} must be [label, field] or {{label: ..., field: ...}}")


def _render_value(product: Product, name: str) -> str:
    value = getattr(product, name)
    if name != "price":
        return str(value)
    price = float(value)
    if not math.isfinite(price):
        raise ValueError(
            f"product {product.id!r} has price {value!r}; drop or fix it before building answers"
        )
    return repr(price)  # the CookBook's rendering: 2490 -> '2490.0'
