"""The one separator rule for prices, shared by the catalog (`prepare`) and the answer parser (`task.parse`).

In: a run of digits with '.' / ',' separators (no sign, no spaces, no currency). Out: its value, or None where the
separators break the rule. Callers decide what surrounds the number and what a None means to them.
"""

from __future__ import annotations


def read_separated(digits: str, *, strict: bool = True) -> float | None:
    """'2,490.00' / '2.490,00' / '1,290' / '12,5' -> 2490.0 / 2490.0 / 1290.0 / 12.5; None if unreadable.

    With both '.' and ',' the last one is the decimal mark and the other groups thousands (checked unless
    `strict=False`). One kind repeated groups thousands ("1,290,000"). A single separator groups thousands when
    exactly three digits follow 1-3 digits not starting with "0" ("1,290", "1.290"); otherwise it is the decimal
    mark ("12,5", "0.500", "1290.000"). Separators that break these rules give None ("1.2.3").
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
