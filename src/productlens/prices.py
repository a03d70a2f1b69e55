"""The one price rule, shared by the catalog (`prepare`) and the answer parser (`task.parse`): a price (text or
number) in, its value out, or a `ValueError` saying why it is not read. Ambiguous text is rejected, never guessed.

The rule for text (the whole text must be one price):
- A currency may stand before or after the number: an ISO 4217 code (USD, eur), a symbol ($ € £ ¥ ₹ ...) with an
  optional letter prefix (US$, HK$), or kr, zł, Rs, RM, Rp, Fr. Anything else around the number is not a price
  ("12 pcs", "1.5k", "about 300", "1e3"), nor is a number without a leading digit (".99").
- Spaces (also no-break and narrow no-break) and apostrophes only ever group thousands: 1-3 digits, then groups of
  exactly three ("1 290", "2 490,00 EUR", "1'290.50"); any other spacing is ambiguous ("1290 1390", "12 5").
- '.' and ',' follow `read_separated`: with both, the last one is the decimal mark and the other must group
  thousands ("2,490.00", "2.490,00"); one kind repeated groups thousands ("1,290,000"); a single one groups
  thousands when exactly three digits follow 1-3 digits not starting with "0" ("1,290", "1.290"), else it is the
  decimal mark ("12,5", "0.500"). Anything else is ambiguous ("2,490.00.00", "1.290,00.00", "1.2.3").
- A trailing ",-" or ".-" means no cents ("1.290,-").
Numbers (int, float, Decimal) are taken as they are. Every price must be finite and not negative (the catalog
also refuses 0: a product has a price; a model that answers 0 is read, and scored, as saying 0).

Why not the `price-parser` library: it is built to pull a price out of scraped text, so it guesses where this rule
must refuse ("1290 1390" -> 12901390, "12 5" -> 125, "1.5k" -> 1.5, "12 pcs" -> 12, "0.500" -> 500,
"-5" -> 5, "1e400" -> 1).
"""

from __future__ import annotations

import math
import numbers
import re
from decimal import Decimal

from productlens.catalog.schema import MISSING

# Active ISO 4217 codes (and RMB, the common name of CNY).
_CODES = """AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BRL BSD BTN BWP BYN BZD CAD CDF
    CHF CLP CNY COP CRC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD GNF GTQ GYD HKD HNL
    HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS KHR KMF KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL
    MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR RMB
    RON RSD RUB RWF SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TND TOP TRY TTD TWD TZS
    UAH UGX USD UYU UZS VES VND VUV WST XAF XCD XCG XOF XPF YER ZAR ZMW ZWG"""
CURRENCY_CODES = frozenset(_CODES.split())
_CURRENCY = r"(?:[A-Z]{0,2}[$€£¥₩₹₽₺₪₫฿₱₦₴₸₡₲₵₭₮₼₾]|kr|zł|Rs|RM|Rp|Fr|[A-Za-z]{3})"
_GROUP = "'’ \u00a0\u202f\u2009"  # characters that only ever group thousands
_PRICE = re.compile(
    rf"(?:(?P<pre>{_CURRENCY})\s*)?(?P<num>[+-]?\d(?:[\d.,{_GROUP}]*\d)?)(?P<dash>[.,]-)?(?:\s*(?P<post>{_CURRENCY}))?"
)


def read_price(value: object) -> float:
    """A price -> its value (>= 0); raises ValueError saying why ("missing", "not a price", "ambiguous ...",
    "not a finite price", "not a positive price") for anything the rule above does not read."""
    if value is None or isinstance(value, bool):
        raise ValueError("missing")
    if isinstance(value, numbers.Real | Decimal):
        try:
            number = float(value)  # type: ignore[arg-type]
        except (OverflowError, ValueError, TypeError):
            raise ValueError(f"not a finite price: {str(value)[:40]}") from None
        if math.isnan(number):
            raise ValueError("missing")
    else:
        text = str(value).strip()
        if not text or text.upper() == MISSING:
            raise ValueError("missing")
        match = _PRICE.fullmatch(text)
        if match is None or (match["pre"] and match["post"]) or not _known(match["pre"] or match["post"]):
            raise ValueError(f"not a price: {text[:80]!r}")
        number = _read_number(match["num"].lstrip("+-"), text)
        if match["num"].startswith("-"):
            number = -number
    if not math.isfinite(number):
        raise ValueError(f"not a finite price: {str(value)[:40]}")
    if number < 0:
        raise ValueError(f"not a positive price: {str(value)[:80]!r}")
    return number


def _known(currency: str | None) -> bool:
    return (
        currency is None or len(currency) != 3 or not currency.isalpha() or currency.upper() in CURRENCY_CODES
    )


def _read_number(num: str, text: str) -> float:
    parts = re.split(f"[{_GROUP}]", num)
    if (
        len(parts) > 1
    ):  # grouped by spaces or apostrophes: 1-3 digits, groups of 3, then perhaps a decimal part
        *groups, last = parts
        tail = re.fullmatch(r"(\d{3})(?:[.,](\d+))?", last)
        head_ok = groups[0].isdigit() and len(groups[0]) <= 3 and not groups[0].startswith("0")
        if not (head_ok and all(len(g) == 3 and g.isdigit() for g in groups[1:]) and tail):
            raise ValueError(f"ambiguous spacing in {text[:80]!r}")
        if tail[2] is not None and len(tail[2]) == 3:
            raise ValueError(f"ambiguous separators in {text[:80]!r}")
        return float("".join(groups) + tail[1] + (f".{tail[2]}" if tail[2] else ""))
    value = read_separated(num)
    if value is None:
        raise ValueError(f"ambiguous separators in {text[:80]!r}")
    return value


def read_separated(digits: str, *, strict: bool = True) -> float | None:
    """'2,490.00' / '2.490,00' / '1,290' / '12,5' -> 2490.0 / 2490.0 / 1290.0 / 12.5; None if unreadable.

    In: a run of digits with '.' / ',' separators (no sign, spaces or currency). With both '.' and ',' the last one
    is the decimal mark and the other groups thousands (checked unless `strict=False`). One kind repeated groups
    thousands ("1,290,000"). A single separator groups thousands when exactly three digits follow 1-3 digits not
    starting with "0" ("1,290", "1.290"); otherwise it is the decimal mark ("12,5", "0.500", "1290.000").
    Separators that break these rules give None ("1.2.3").
    """
    seps = [c for c in digits if c in ".,"]
    if not seps:
        return float(digits)
    if len(set(seps)) == 2:
        decimal = seps[-1]
        thousands = "," if decimal == "." else "."
        whole, _, frac = digits.rpartition(decimal)
        if strict and (decimal in whole or not _grouped(whole, thousands)):
            return None
        return float(whole.replace(thousands, "").replace(decimal, "") + "." + frac)
    sep = seps[0]
    if len(seps) > 1:
        return float(digits.replace(sep, "")) if _grouped(digits, sep) else None
    whole, _, frac = digits.partition(sep)
    return float(whole + frac) if _grouped(digits, sep) else float(f"{whole}.{frac}")


def _grouped(part: str, sep: str) -> bool:
    """True if `part` reads as thousands groups: 1-3 digits (not starting with "0"), then groups of three."""
    head, *groups = part.split(sep)
    return 1 <= len(head) <= 3 and not head.startswith("0") and all(len(g) == 3 for g in groups)
