"""The one price rule on the shared table (also run through the catalog and the answer parser), the separator
rule underneath it, and why productlens does not use the `price-parser` library."""

import pytest
from price_table import PRICE_TABLE

from productlens.prices import read_price, read_separated


@pytest.mark.parametrize(("text", "value"), PRICE_TABLE)
def test_the_shared_table(text, value):
    if value is None:
        with pytest.raises(ValueError, match=r"missing|not a|ambiguous"):
            read_price(text)
    else:
        assert read_price(text) == value


@pytest.mark.parametrize(("number", "value"), [(2490, 2490.0), (12.5, 12.5), (0, 0.0)])
def test_numbers_are_taken_as_they_are(number, value):
    from decimal import Decimal

    assert read_price(number) == read_price(Decimal(str(number))) == value


@pytest.mark.parametrize("number", [10**400, float("inf"), -1, float("nan"), None, True])
def test_numbers_that_are_not_prices(number):
    with pytest.raises(ValueError, match=r"not a finite|not a positive|missing"):
        read_price(number)


@pytest.mark.parametrize(
    ("digits", "value"),
    [
        ("2490", 2490.0),
        ("2,490.00", 2490.0),
        ("2.490,00", 2490.0),
        ("1,290", 1290.0),
        ("1.290.000", 1290000.0),
        ("12,5", 12.5),
        ("0.500", 0.5),  # a leading 0 cannot start a thousands group
        ("1290.000", 1290.0),  # four digits before: decimal
        ("1.2.3", None),
        ("12,34,567", None),
    ],
)
def test_rule(digits, value):
    assert read_separated(digits) == value


def test_mixed_separators_are_checked_only_when_strict():
    assert read_separated("1.29,0.0") is None
    assert read_separated("1.29,0.0", strict=False) == 1290.0
