"""JSON-schema constrained decoding through lm-format-enforcer: the answer is JSON that fits a schema.

In: a JSON schema and a tokenizer. Out: `JsonRule`, which says which token ids may come next after the tokens
generated so far (used per row by chat.py). The library does the parsing; this module only feeds it our tokenizer
(its own transformers integration does not import under transformers 5).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any

PRODUCT_SCHEMA: dict[str, Any] = {  # what `response_format: json_object` answers
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 120},
        "category": {"type": "string", "maxLength": 60},
        "price": {"type": "number"},
    },
    "required": ["title", "category", "price"],
    "additionalProperties": False,
}


def check_schema(schema: Any) -> dict[str, Any]:
    """A JSON schema the library can enforce -> the schema; ValueError saying what is wrong otherwise."""
    from lmformatenforcer import JsonSchemaParser

    if not isinstance(schema, dict) or not schema:
        raise ValueError(
            "the JSON schema must be a non-empty object, e.g. {'type': 'object', 'properties': ...}"
        )
    try:
        JsonSchemaParser(schema)
    except Exception as exc:  # the library raises pydantic and key errors for schemas it cannot read
        raise ValueError(f"the JSON schema cannot be enforced ({type(exc).__name__}: {exc})") from None
    return schema


class JsonRule:
    """One answer under one schema: `allowed(generated_ids)` -> the ids that keep the text valid JSON for it.

    On top of the library: a number ends after MAX_NUMBER characters (the library sets no bound, so a model
    could write digits until max_tokens and leave the JSON unfinished)."""

    def __init__(
        self, schema: dict[str, Any], tokenizer: Any, vocab_size: int, stop_ids: Sequence[int]
    ) -> None:
        from lmformatenforcer import JsonSchemaParser, TokenEnforcer

        data = _tokenizer_data(tokenizer, vocab_size, tuple(stop_ids))
        self.enforcer = TokenEnforcer(data, JsonSchemaParser(schema))
        self.enforcer.root_parser.config.max_consecutive_whitespaces = 1  # no runs of spaces between values
        self.decode = data.decoder
        self.numeric = {t for t, text, _ in data.regular_tokens if text[:1] in NUMBER_CHARS}

    def allowed(self, generated: Sequence[int]) -> list[int]:
        # the enforcer keys its states by the whole sequence; a marker stands in for the prompt
        ids = self.enforcer.get_allowed_tokens([-1, *generated]).allowed_tokens
        text = self.decode(list(generated))
        tail = NUMBER_TAIL.search(text)
        outside_strings = (text.count('"') - text.count('\\"')) % 2 == 0
        if tail and len(tail.group()) >= MAX_NUMBER and outside_strings:
            return [t for t in ids if t not in self.numeric] or ids
        return ids


MAX_NUMBER = 16  # characters of one JSON number
NUMBER_CHARS = frozenset("-+.0123456789eE")
NUMBER_TAIL = re.compile(r"[-+.0-9eE]+$")


@functools.lru_cache(maxsize=4)
def _tokenizer_data(tokenizer: Any, vocab_size: int, stop_ids: tuple[int, ...]) -> Any:
    """Every regular token's text (as it reads after other text, and whether it starts a word), built once."""
    from lmformatenforcer import TokenEnforcerTokenizerData

    special = set(tokenizer.all_special_ids) | set(stop_ids)
    zero = tokenizer.encode("0", add_special_tokens=False)[-1]
    known = min(len(tokenizer), vocab_size)
    ids = [t for t in range(known) if t not in special]
    after_zero = tokenizer.batch_decode([[zero, t] for t in ids])
    alone = tokenizer.batch_decode([[t] for t in ids])
    # Left out: byte tokens of a partial UTF-8 character (the decoder turns them and the byte tokens around them,
    # a '"' among them, into U+FFFD, so the text would not be the JSON the library checked) and control
    # characters (not allowed raw inside JSON strings; between values a space is enough).
    regular = [
        (t, a[1:], len(a) - 1 > len(b))
        for t, a, b in zip(ids, after_zero, alone, strict=True)
        if "\ufffd" not in a and all(ch >= " " for ch in a)
    ]

    def decode(tokens: list[int]) -> str:
        return tokenizer.decode(tokens).rstrip("\ufffd")

    return TokenEnforcerTokenizerData(regular, decode, list(stop_ids), False, vocab_size)
