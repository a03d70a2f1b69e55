"""Generated text -> {title, category, price}: finds the template's labels in whatever the model wrote.

In: raw decoded text (special tokens, extra chatter, odd case, cut-off answers all allowed) and the
`AnswerTemplate`. Out: a `ParsedAnswer`; never raises. Used by `productlens evaluate` and `predict`.

Rules (what counts as parsed):
- A field's value is the text after its label ("Full  price :" and "**Full Price**:" match "Full Price:") up to
  the next label, an end/special token (`<|end|>`, `<|endoftext|>`, `</s>`, ...) or a line break; trailing
  ", ; |" and whitespace are stripped, so titles with commas survive. Category and price values also end where
  another "Label:" follows a comma ("BAGS, Colour: red" -> "BAGS"). Fields may come in any order; a missing
  label or an empty value is a failure. If a label occurs several times, its first exact-case occurrence wins,
  else its first occurrence (so "the product: ..." chatter before "Product:" is not taken as the title).
- When a field's label is absent, its short forms count: the label's last word and the field's name ("Price:"
  for "Full Price:", "Title:" for "Product:"), so "Price: 2490" is a price, never the end of a category.
- An answer holding a JSON object with those labels or names as keys ({"product": ..., "price": 2490}) is read
  from the object.
- An answer cut off by max_new_tokens is taken at face value: "Category: CROSS" gives category "CROSS"
  (scored wrong later), "Full Price: 24" gives 24.0. The text alone cannot tell a cut "24" from a real one.
- Prices: the value up to a sentence end (". Hope this helps") is read by the one price rule in
  `productlens.prices`, which the catalog uses too; anything it rejects (".99", "2,490.00.00", "about 300")
  is a failure, never a guess.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache

from productlens.prices import read_price
from productlens.task.prompts import AnswerTemplate

# Chat/special tokens a decoder may leave in: <|end|>, <|endoftext|>, <|assistant|>, </s>, <s>, <unk>, <pad>.
_SPECIAL = re.compile(r"<\|[^|<>\s]{1,40}\|>|</?s>|<unk>|<pad>")
_STRIP = " \t\r\n,;|*"  # separators and markdown emphasis around a value
_QUOTES = {'"': '"', "'": "'", "“": "”", "‘": "’", "`": "`"}
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")
_OTHER_LABEL = re.compile(r"[,;|]\s*\**[A-Za-z][A-Za-z _-]{0,30}\**\s*[:：]")  # ", Colour:" ends a value


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
    """A price answer's value -> float by the one rule in `productlens.prices`; None if it is not one price.

    The text is taken up to a sentence end ("590.0. Hope this helps!" -> "590.0"), quotes and markdown around
    it are dropped, and the rest must be one price: "$2,490", "2.490,00", "2 490,00 EUR", "USD 2490" read;
    ".99", "2,490.00.00", "12 pcs" and "around 300, maybe 400" do not.
    """
    if not isinstance(text, str):
        return None
    value = _clean(_SENTENCE_END.split(text.strip(_STRIP), maxsplit=1)[0])
    try:
        return read_price(value)
    except ValueError:
        return None


def parse_answer(text: str, template: AnswerTemplate = AnswerTemplate()) -> ParsedAnswer:
    """Generated text -> ParsedAnswer (fields the template does not hold stay None and are not failures)."""
    if not isinstance(text, str):
        text = ""
    text = _SPECIAL.sub("\n", text)
    values = _from_json(text, template)
    if values is None:
        spans = _label_spans(text, template)
        values = {name: _value_text(text, spans, name) for _, name in template.fields}
    for name, raw in values.items():
        values[name] = _price(raw) if name == "price" else _clean(None if raw is None else str(raw))
    failures = tuple(name for name in template.names if values[name] is None)
    return ParsedAnswer(failures=failures, **values)


def _price(raw: object) -> float | None:
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        try:
            return read_price(raw)
        except ValueError:
            return None
    return parse_price(raw) if isinstance(raw, str) else None


def _aliases(label: str, name: str) -> tuple[str, ...]:
    """The short forms of a label: its last word and the field's name ("Full Price" -> "Price", "price")."""
    out = []
    for alias in (label.split()[-1], name):
        if alias.casefold() not in {label.casefold(), *(a.casefold() for a in out)}:
            out.append(alias)
    return tuple(out)


def _key(text: str) -> str:
    return re.sub(r"[^0-9a-z]", "", text.casefold())


def _from_json(text: str, template: AnswerTemplate) -> dict[str, object] | None:
    """The fields of the first JSON object in `text` whose keys name them, or None when there is none."""
    start = text.find("{")
    for _ in range(3):  # a few tries: "{" may also open non-JSON text
        if start < 0:
            return None
        try:
            found, _ = json.JSONDecoder().raw_decode(text, start)
        except ValueError:
            start = text.find("{", start + 1)
            continue
        if not isinstance(found, dict):
            return None
        keys = {_key(str(k)): v for k, v in found.items() if isinstance(v, str | int | float)}
        values: dict[str, object] = {}
        for label, name in template.fields:
            value = next((keys[k] for k in map(_key, (label, *_aliases(label, name))) if k in keys), None)
            values[name] = value
        return values if any(v is not None for v in values.values()) else None
    return None


@lru_cache(maxsize=32)
def _label_patterns(template: AnswerTemplate) -> tuple[tuple[str, str, re.Pattern, bool], ...]:
    """(field, label, pattern, is_alias) per template label and short form; words may be split by any spacing,
    '_' or '-', and markdown or quotes may close the label before its colon ("**Product**:", '"price":')."""
    out = []
    for label, name in template.fields:
        for alias, text in enumerate((label, *_aliases(label, name))):
            words = r"[\s_-]*".join(re.escape(word) for word in text.split())
            pattern = re.compile(rf"(?<![^\W_])({words})[*\"']*\s*[:：]", re.IGNORECASE)
            out.append((name, text, pattern, bool(alias)))
    return tuple(out)


def _label_spans(text: str, template: AnswerTemplate) -> dict[str, list[tuple[int, int, bool]]]:
    """field -> [(start, end, exact_case)] of every occurrence of its label (with colon) in text; a field
    whose label never occurs gets the occurrences of its short forms instead."""
    spans: dict[str, list[tuple[int, int, bool]]] = {name: [] for _, name in template.fields}
    short: dict[str, list[tuple[int, int, bool]]] = {name: [] for _, name in template.fields}
    for name, label, pattern, alias in _label_patterns(template):
        found = [(m.start(), m.end(), m.group(1) == label) for m in pattern.finditer(text)]
        (short if alias else spans)[name] += found
    return {name: found or sorted(short[name]) for name, found in spans.items()}


def _value_text(text: str, spans: dict[str, list[tuple[int, int, bool]]], name: str) -> str | None:
    """The text after the chosen label of `name`, up to the next label of any field or a line break."""
    found = spans[name]
    if not found:
        return None
    _, end, _ = next((s for s in found if s[2]), found[0])
    starts = [s for spans_of in spans.values() for s, _, _ in spans_of if s >= end]
    value = text[end : min(starts, default=len(text))].lstrip()
    value = value.split("\n", 1)[0]
    if name != "title" and (other := _OTHER_LABEL.search(value)):
        value = value[: other.start()]
    return value


def _clean(value: str | None) -> str | None:
    if value is None:
        return None
    value = " ".join(value.strip(_STRIP).split())
    if len(value) >= 2 and _QUOTES.get(value[0]) == value[-1]:
        value = value[1:-1].strip()
    return value or None
