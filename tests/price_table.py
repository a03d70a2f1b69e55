"""THE price table: one rule (productlens.prices), tested on these rows in the catalog (tests/catalog/test_prepare.py)
and in the answer parser (tests/task/test_parse.py). (text, value), value None: rejected (ambiguous or not a price)."""

PRICE_TABLE = [
    # plain numbers and currencies before or after
    ("2490", 2490.0),
    ("2490.0", 2490.0),
    ("24.99", 24.99),
    ("USD 2490", 2490.0),
    ("2490 USD", 2490.0),
    ("usd 2490", 2490.0),
    ("$2,490", 2490.0),
    ("US$ 2,490", 2490.0),
    ("¥45,100", 45100.0),
    ("EUR 1.290,00", 1290.0),
    ("€ 1.290,-", 1290.0),  # ",-": no cents
    ("CHF 1'290.50", 1290.5),
    # '.' and ',': the last of both is the decimal mark; a single one + exactly 3 digits groups thousands
    ("$1,290.00", 1290.0),
    ("2,490.00 USD", 2490.0),
    ("1.290,00", 1290.0),
    ("1,290", 1290.0),
    ("1.290", 1290.0),
    ("1,290,000", 1290000.0),
    ("1,234,567.89", 1234567.89),
    ("12.345.678,9", 12345678.9),
    ("12,5", 12.5),
    ("1,29", 1.29),
    ("0.500", 0.5),  # "0" cannot start a thousands group
    ("0.125", 0.125),
    ("1290.000", 1290.0),  # four digits before: decimal
    ("1,0000", 1.0),
    # spaces and apostrophes group thousands, and only in groups of three: read the same in both places
    ("1 290", 1290.0),
    ("2 490,00 EUR", 2490.0),
    ("1 290,00 €", 1290.0),
    ("2\u202f490,50 €", 2490.5),
    ("1 290 000", 1290000.0),
    ("1290 1390", None),  # two numbers
    ("12 5", None),
    ("1 29", None),
    # not a price, or ambiguous: rejected, never guessed
    (".99", None),
    ("2,490.00.00", None),
    ("1.290,00.00", None),
    ("1.290.00", None),
    ("1,2,3", None),
    ("1.2.3", None),
    ("12,34,567", None),
    ("1.29,0.0", None),
    ("1.5k", None),
    ("12 pcs", None),
    ("12 PCS", None),
    ("12 apples", None),
    ("1e3", None),
    ("abc", None),
    ("about 300", None),
    ("around 300 dollars, maybe 400", None),
    ("$ 12 USD", None),  # a currency on both sides
    ("N.A.", None),
    ("", None),
    ("-5", None),
    ("9" * 400, None),  # not finite
]
