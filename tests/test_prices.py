"""The shared separator rule: thousands groups, the decimal mark, and where strict and lenient reading differ."""

import pytest

from productlens.prices import read_separated


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
