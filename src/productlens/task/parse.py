"""Generated text -> {title, category, price}: finds the template's labels in whatever the model wrote.

In: raw decoded text (special tokens, extra chatter, odd case, cut-off answers all allowed) and the
`AnswerTemplate`. Out: a `ParsedAnswer`; never raises. Used by `productlens evaluate` and `predict`.

Rules (what counts as parsed):
- A field's value is the text after its label ("Full  price :" matches "Full Price:") up to the next label,
  an end/special token (`<|end|>`, `<|endoftext|>`, `</s>`, ...) or a line break; trailing ", ; |" and
  whitespace are stripped, so titles with commas survive. Fields may come in any order; a missing label or an
  empty value is a failure. If a label occurs several times, its first exact-case occurrence wins, else its
  first occurrence (so "the product: ..." chatter before "Product:" is not taken as the title).
- An answer cut off by max_new_tokens is taken at face value: "Category: CROSS" gives category "CROSS"
  (scored wrong later), "Full Price: 24" gives 24.0. The text alone cannot tell a cut "24" from a real one;
  a price label with no digits after it is a failure.
- Prices: see `parse_price`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache

from productlens.prices import read_separated
from productlens.task.prompts import AnswerTemplate

# Chat/special tokens a decoder may leave in: <|end|>, <|endoftext|>, <|assistant|>, </s>, <s>, <unk>, <pad>.
_SPECIAL = re.compile(r"<\|[^|<>\s]{1,40}\|>|</?s>|<unk>|<pad>")
_STRIP = " \t\r\n,;|*"  # separators and markdown emphasis around a value
_QUOTES = {'"': '"', "'": "'", "“": "”", "‘": "’", "`": "`"}
# A number: digits with optional separators between digit runs. Thousands separators may also be an
# apostrophe (Swiss) or a (narrow) no-break space (French); a plain space is not (too ambiguous).
_NUMBER = re.compile(r"\d+(?:[.,'\u00a0\u202f]\d+)*")


@dataclass(frozen=True)
class ParsedAnswer:
    """What could be read from one generated answer; `failures` names the template fields that could not."""

    title: str | None = None
    category: str | None = None
    price: float | None = None
    failures: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        """{title, category, price, failures} with plain types (JSON-ready)."""
        return {
            "title": self.title,
            "category": self.category,
            "price": self.price,
            "failures": list(self.failures),
        }


def parse_price(text: str) -> float | None:
    """First number in `text` -> float, whatever the currency marks around it; None if there is none.

    Separator rule: with both '.' and ',' present, the last one is the decimal point and the others group
    thousands ("2,490.00", "2.490,00"). With one kind only, it groups thousands when the digits read as
    thousands groups: every separator is followed by exactly 3 digits and the first group has 1-3 digits not
    starting with 0 ("$2,490", "2.490", "1,234,567" -> 2490, 2490, 1234567). Otherwise a single separator is
    the decimal point ("2490.0", "24,5", "0.125", "2490.000") and a repeated one makes the number unreadable
    ("1.2.3" -> None). Apostrophes and no-break spaces always group thousands ("2'490"); a plain space ends
    the number ("2 490" -> 2.0).
    """
    if not isinstance(text, str):
        return None
    match = _NUMBER.search(text)
    if match is None:
        return None
    token = re.sub(r"['\u00a0\u202f]", "", match.group())
    value = read_separated(token, strict=False)
    return value if value is not None and math.isfinite(value) else None


def parse_answer(text: str, template: AnswerTemplate = AnswerTemplate()) -> ParsedAnswer:
    """Generated text -> ParsedAnswer (fields the template does not hold stay None and are not failures)."""
    if not isinstance(text, str):
        text = ""
    text = _SPECIAL.sub("\n", text)
    spans = _label_spans(text, template)
    values: dict[str, str | float | None] = {}
    for _, name in template.fields:
        raw = _value_text(text, spans, name)
        values[name] = parse_price(raw) if name == "price" else _clean(raw)
    failures = tuple(name for name in template.names if values[name] is None)
    return ParsedAnswer(failures=failures, **values)


@lru_cache(maxsize=32)
def _label_patterns(template: AnswerTemplate) -> tuple[tuple[str, str, re.Pattern], ...]:
    """(field, label, pattern) per template field; words may be split by any spacing, '_' or '-'."""
    out = []
    for label, name in template.fields:
        words = r"[\s_-]*".join(re.escape(word) for word in label.split())
        out.append((name, label, re.compile(rf"(?<![^\W_])({words})\s*[:：]", re.IGNORECASE)))
    return tuple(out)


def _label_spans(text: str, template: AnswerTemplate) -> dict[str, list[tuple[int, int, bool]]]:
    """field -> [(start, end, exact_case)] of every occurrence of its label (with colon) in text."""
    spans: dict[str, list[tuple[int, int, bool]]] = {}
    for name, label, pattern in _label_patterns(template):
        spans[name] = [(m.start(), m.end(), m.group(1) == label) for m in pattern.finditer(text)]
    return spans


def _value_text(text: str, spans: dict[str, list[tuple[int, int, bool]]], name: str) -> str | None:
    """The text after the chosen label of `name`, up to the next label of any field or a line break."""
    found = spans[name]
    if not found:
        return None
    _, end, _ = next((s for s in found if s[2]), found[0])
    starts = [s for spans_of in spans.values() for s, _, _ in spans_of if s >= end]
    value = text[end : min(starts, default=len(text))].lstrip()
    return value.split("\n", 1)[0]


def _clean(value: str | None) -> str | None:
    if value is None:
        return None
    value = " ".join(value.strip(_STRIP).split())
    if len(value) >= 2 and _QUOTES.get(value[0]) == value[-1]:
        value = value[1:-1].strip()
    return value or None
