"""AnswerTemplate: the CookBook answer format, custom templates, presets from dicts, clear errors."""

from __future__ import annotations

import re

import pytest
import yaml

from productlens.catalog.schema import Product
from productlens.task.parse import parse_answer
from productlens.task.prompts import AnswerTemplate

LOLA = Product(id="80595081", title="Medium Lola Bag", category="CROSSBODY", price=2490, image_path=None)


def test_default_is_the_cookbook_format():
    template = AnswerTemplate()
    assert template.question == "What is shown in this image?"
    assert template.render_answer(LOLA) == "Product: Medium Lola Bag, Category: CROSSBODY, Full Price: 2490.0"
    assert template.names == ("title", "category", "price")


@pytest.mark.parametrize(
    ("price", "text"), [(2490, "2490.0"), (32.5, "32.5"), (70000.0, "70000.0"), (1234.56, "1234.56")]
)
def test_price_is_rendered_as_float_repr(price, text):
    product = Product(id="1", title="T", category="C", price=price)
    assert AnswerTemplate().render_answer(product).endswith(f"Full Price: {text}")


def test_custom_fields_order_and_labels():
    template = AnswerTemplate(question="Describe the item.", fields=(("Price", "price"), ("Name", "title")))
    assert template.render_answer(LOLA) == "Price: 2490.0, Name: Medium Lola Bag"
    assert template.names == ("price", "title")


def test_render_then_parse_round_trips_for_odd_titles():
    product = Product(id="2", title="Check Wool, Cashmere Scarf", category="HATS & GLOVES", price=1150.0)
    for template in (AnswerTemplate(), AnswerTemplate(fields=(("Category", "category"), ("Item", "title")))):
        parsed = parse_answer(template.render_answer(product), template)
        assert parsed.failures == ()
        for name in template.names:
            assert getattr(parsed, name) == getattr(product, name)


def test_from_dict_accepts_yaml_shapes_and_round_trips():
    preset = yaml.safe_load(
        """
        question: What product is this?
        fields:
          - [Name, title]
          - {label: Type, field: category}
        """
    )
    template = AnswerTemplate.from_dict(preset)
    assert template.question == "What product is this?"
    assert template.fields == (("Name", "title"), ("Type", "category"))
    assert AnswerTemplate.from_dict(template.to_dict()) == template
    assert AnswerTemplate.from_dict({"fields": {"Title": "title", "Cost": "price"}}).fields == (
        ("Title", "title"),
        ("Cost", "price"),
    )
    assert AnswerTemplate.from_dict({}) == AnswerTemplate()
    hash(template)  # frozen and hashable even when built from YAML lists


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"fields": [["Colour", "color"]]}, "unknown answer field 'color'"),
        ({"fields": []}, "at least one"),
        ({"fields": [["Product", "title"], ["product", "category"]]}, "unique"),
        ({"fields": [["Product", "title"], ["Name", "title"]]}, "unique"),
        ({"fields": [["Full: Price", "price"]]}, "contain no ':'"),
        ({"fields": [["", "price"]]}, "non-empty"),
        ({"fields": [["Product"]]}, "[label, field]"),
        ({"fields": "title"}, "list of [label, field]"),
        ({"question": "  "}, "non-empty string"),
        ({"questions": "typo"}, "unknown answer template key"),
        (["Product", "title"], "must be a mapping"),
    ],
)
def test_bad_templates_get_clear_errors(data, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        AnswerTemplate.from_dict(data)


def test_non_finite_price_is_refused():
    with pytest.raises(ValueError, match="drop or fix it"):
        AnswerTemplate().render_answer(Product(id="9", title="T", category="C", price=float("nan")))
