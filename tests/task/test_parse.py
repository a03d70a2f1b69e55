"""parse_answer / parse_price on a table of nasty model answers; the parser must never raise."""

from __future__ import annotations

import random

import pytest
from price_table import PRICE_TABLE

from productlens.task.parse import ParsedAnswer, parse_answer, parse_price
from productlens.task.prompts import AnswerTemplate

N = None  # "could not be parsed"

# (raw model answer, expected title, expected category, expected price)
ANSWERS = [
    # the trained format
    ("Product: Medium Lola Bag, Category: CROSSBODY, Full Price: 2490.0", "Medium Lola Bag", "CROSSBODY", 2490.0),
    # commas inside the title; '&' and dots inside the category
    ("Product: Check Wool, Cashmere Scarf, Category: SCARVES, Full Price: 650.0",
     "Check Wool, Cashmere Scarf", "SCARVES", 650.0),
    ("Product: Cotton Gabardine Belted Bucket Hat, Category: HATS & GLOVES, Full Price: 450.0",
     "Cotton Gabardine Belted Bucket Hat", "HATS & GLOVES", 450.0),
    ("Product: Check Cashmere Cushion, Category: N.A., Full Price: 660.0", "Check Cashmere Cushion", "N.A.", 660.0),
    ("Product: Ultimate Glow Foundation – 40 Light Cool, Category: FACE, Full Price: 58.0",
     "Ultimate Glow Foundation – 40 Light Cool", "FACE", 58.0),
    # price spellings
    ("Product: Medium Lola Bag, Category: CROSSBODY, Full Price: $2,490", "Medium Lola Bag", "CROSSBODY", 2490.0),
    ("Product: Medium Lola Bag, Category: CROSSBODY, Full Price: 2.490,00", "Medium Lola Bag", "CROSSBODY", 2490.0),
    ("Product: Medium Lola Bag, Category: CROSSBODY, Full Price: USD 2490", "Medium Lola Bag", "CROSSBODY", 2490.0),
    ("Product: Medium Lola Bag, Category: CROSSBODY, Full Price: 2,490.00 USD", "Medium Lola Bag", "CROSSBODY", 2490.0),
    ("Product: Rose Clutch, Category: CLUTCHES, Full Price: 1,290.", "Rose Clutch", "CLUTCHES", 1290.0),
    ("Product: Check Swimsuit, Category: SWIMWEAR, Full Price: 490.0.", "Check Swimsuit", "SWIMWEAR", 490.0),
    # special tokens left in, before and after
    ("<|assistant|>\nProduct: Medium Lola Bag, Category: CROSSBODY, Full Price: 2490.0<|end|><|endoftext|>",
     "Medium Lola Bag", "CROSSBODY", 2490.0),
    ("Product: Medium Lola Bag<|end|>", "Medium Lola Bag", N, N),
    ("Product: A, Category: B, Full Price: 10.0<|end|>Product: Z, Category: Y, Full Price: 99.0",
     "A", "B", 10.0),
    ("Product: Mini Frances Bag, Category: TOP HANDLE</s>", "Mini Frances Bag", "TOP HANDLE", N),
    # reordered fields
    ("Full Price: 820.0, Category: SNEAKERS, Product: Suede Leather and Check Sneakers",
     "Suede Leather and Check Sneakers", "SNEAKERS", 820.0),
    ("Category: SHOULDER, Product: Micro Shield Sling Bag, Full Price: 1890.0", "Micro Shield Sling Bag",
     "SHOULDER", 1890.0),
    # odd case and spacing of labels; other separators between fields
    ("product: EKD Wool Cape, CATEGORY: PONCHOS & CAPES, full price: 2890.0", "EKD Wool Cape", "PONCHOS & CAPES", 2890.0),
    ("Product :  Wool Pea Coat ,Category:COATS,   Full   Price  :   2350.0", "Wool Pea Coat", "COATS", 2350.0),
    ("Product: Wool Pea Coat\nCategory: COATS\nFull Price: 2350.0\n", "Wool Pea Coat", "COATS", 2350.0),
    ("Product: Wool Pea Coat; Category: COATS | FullPrice: 2350.0", "Wool Pea Coat", "COATS", 2350.0),
    ("Product:\n  Wool Pea Coat\nCategory:\tCOATS\nFull_Price：2350", "Wool Pea Coat", "COATS", 2350.0),
    ("**Product:** Wool Pea Coat, **Category:** COATS, **Full Price:** 2350.0", "Wool Pea Coat", "COATS", 2350.0),
    ('Product: "Wool Pea Coat", Category: "COATS", Full Price: "2350.0"', "Wool Pea Coat", "COATS", 2350.0),
    # extra text before or after
    ("Sure! Here is what I see. Product: Check Cotton Shirt, Category: SHIRTS, Full Price: 590.0. Hope this helps!",
     "Check Cotton Shirt", "SHIRTS", 590.0),
    ("The image shows a bag.\nProduct: Medium Knight Bag, Category: SHOULDER, Full Price: 3190.0\nThis bag is nice.",
     "Medium Knight Bag", "SHOULDER", 3190.0),
    ("This product: looks like a scarf. Product: Check Cashmere Scarf, Category: SCARVES, Full Price: 590.0",
     "Check Cashmere Scarf", "SCARVES", 590.0),
    # cut off by max_new_tokens: text taken at face value, a label without digits is a failure
    ("Product: Medium Lola Bag, Category: CROSS", "Medium Lola Bag", "CROSS", N),
    ("Product: Medium Lola Bag, Category: CROSSBODY, Full Price: 24", "Medium Lola Bag", "CROSSBODY", 24.0),
    ("Product: Medium Lola Bag, Category: CROSSBODY, Full Price:", "Medium Lola Bag", "CROSSBODY", N),
    ("Product: Medium Lola Bag, Category: CROSSBODY, Full Pri", "Medium Lola Bag", "CROSSBODY, Full Pri", N),
    ("Product: Medium Lo", "Medium Lo", N, N),
    # missing fields / empty values / unreadable prices
    ("Product: Medium Lola Bag, Full Price: 2490.0", "Medium Lola Bag", N, 2490.0),
    ("Category: BAGS", N, "BAGS", N),
    ("Product: , Category: , Full Price: N.A.", N, N, N),
    ("Product: Medium Lola Bag, Category: CROSSBODY, Full Price: unknown", "Medium Lola Bag", "CROSSBODY", N),
    ("Product: Medium Lola Bag, Category: CROSSBODY, Full Price: 1.2.3", "Medium Lola Bag", "CROSSBODY", N),
    ("Medium Lola Bag, CROSSBODY, 2490.0", N, N, N),
    ("I cannot tell what this is.", N, N, N),
    ("", N, N, N),
    ("<|end|>", N, N, N),
    # repeated answer: the first one counts
    ("Product: A Bag, Category: BAGS, Full Price: 10.0, Product: B Bag, Category: TOTES, Full Price: 20.0",
     "A Bag", "BAGS", 10.0),
]  # fmt: skip


@pytest.mark.parametrize(("text", "title", "category", "price"), ANSWERS)
def test_nasty_answers(text, title, category, price):
    parsed = parse_answer(text)
    assert (parsed.title, parsed.category, parsed.price) == (title, category, price)
    expected_failures = tuple(
        n for n, v in (("title", title), ("category", category), ("price", price)) if v is None
    )
    assert parsed.failures == expected_failures


@pytest.mark.parametrize(("text", "expected"), PRICE_TABLE)
def test_the_shared_price_table_reads_as_in_the_catalog(text, expected):
    assert parse_price(text) == expected
    answer = parse_answer(f"Product: Medium Lola Bag, Category: CROSSBODY, Full Price: {text}")
    assert (answer.price, answer.category) == (expected, "CROSSBODY")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("590.0. Hope this helps!", 590.0),  # a sentence end closes the value
        ("1,290.", 1290.0),
        ('"2350.0"', 2350.0),
        ("0", 0.0),  # read (and scored as a wrong price); only a catalog refuses 0
        ("0.0", 0.0),
        ("$2,490 (approx.)", N),
        ("2490 or 2590", N),
    ],
)
def test_answer_only_price_values(text, expected):
    assert parse_price(text) == expected


# (answer in another shape, title, category, price): parsed, or failed cleanly; never "Price: 2490" in a category
SHAPES = [
    ("Product: Lola Bag, Category: BAGS, Price: 2490", "Lola Bag", "BAGS", 2490.0),
    ("Product: Lola Bag\nCategory: BAGS\nPrice: $2,490.00", "Lola Bag", "BAGS", 2490.0),
    ("Title: Lola Bag, Category: BAGS, Full Price: 2490.0", "Lola Bag", "BAGS", 2490.0),
    ("**Product**: Lola Bag\n**Category**: BAGS\n**Full Price**: 2490.0", "Lola Bag", "BAGS", 2490.0),
    ("- **Product:** Lola Bag\n- **Category:** BAGS\n- **Price:** 2490", "Lola Bag", "BAGS", 2490.0),
    ('{"product": "Lola Bag", "category": "BAGS", "full_price": 2490.0}', "Lola Bag", "BAGS", 2490.0),
    ('```json\n{"title": "Lola Bag", "category": "BAGS", "price": "2 490,00 EUR"}\n```', "Lola Bag", "BAGS", 2490.0),
    ('Sure: {"Product": "Lola Bag", "Category": "BAGS", "Price": 1e400}', "Lola Bag", "BAGS", N),
    ('{"product": "Lola Bag"', "Lola Bag", N, N),  # cut-off JSON: read by its labels
    ("Category: BAGS, Colour: red, Full Price: 2490.0", N, "BAGS", 2490.0),
    ("Category: BAGS Price: 2490", N, "BAGS", 2490.0),
    ("Category: BAGS, Price: about 2490", N, "BAGS", N),
]  # fmt: skip


@pytest.mark.parametrize(("text", "title", "category", "price"), SHAPES)
def test_other_answer_shapes(text, title, category, price):
    parsed = parse_answer(text)
    assert (parsed.title, parsed.category, parsed.price) == (title, category, price)
    assert parsed.category is None or ":" not in parsed.category


def test_custom_template_labels_are_used():
    template = AnswerTemplate(fields=(("Name", "title"), ("Cost", "price")))
    parsed = parse_answer("Name: Rose Clutch, Cost: 1,290 USD, Category: BAGS", template)
    # category is not in this template: it stays None and is not a failure; its label is not a boundary either
    assert parsed == ParsedAnswer(title="Rose Clutch", category=None, price=1290.0, failures=())
    missing = parse_answer("Name: Rose Clutch", template)
    assert missing.failures == ("price",)
    # the default labels mean nothing to this template, but "Price:" is a short form of its field name
    assert parse_answer("Product: Rose Clutch, Full Price: 10.0", template).failures == ("title",)
    assert parse_answer("Product: Rose Clutch, Cost price 10", template).failures == ("title", "price")


def test_as_dict_is_plain():
    parsed = parse_answer("Product: Rose Clutch, Category: CLUTCHES")
    assert parsed.as_dict() == {
        "title": "Rose Clutch",
        "category": "CLUTCHES",
        "price": None,
        "failures": ["price"],
    }


def test_never_raises_on_random_text():
    rng = random.Random(0)
    pieces = ["Product:", "Category:", "Full Price:", "<|end|>", "2,490", "N.A.", " Bag"]
    alphabet = [*"Product:Category:Full Price:,.$€ 0123456789\n\t<|>end_/s\"'*:：", *pieces]
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80)))
        parsed = parse_answer(text)
        assert isinstance(parsed, ParsedAnswer)
        assert parsed.price is None or parsed.price >= 0
        for value in (parsed.title, parsed.category):
            assert value is None or (value == value.strip(" ,;|*") and value and "\n" not in value)
    huge = parse_answer("Product: " + "Check, " * 50_000 + "Category: " + "9," * 50_000)
    assert huge.title.startswith("Check, Check") and huge.price is None
    for junk in (None, 12, b"Product: x", ["Product: x"]):
        assert parse_answer(junk).failures == ("title", "category", "price")  # type: ignore[arg-type]
