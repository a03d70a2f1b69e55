"""Constrained decoding for the answer template: the labels are forced, the category is one of a known list and
the price a plain number, while the title stays free (and is cut short in time for the rest to fit).

In: an `AnswerTemplate`, `Constraints` and the tokenizer's token texts. Out: a transformers `LogitsProcessor`
(`TemplateConstraint`) that the `Predictor` passes to `generate`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import LogitsProcessor

from productlens.task.prompts import FIELD_SEPARATOR, LABEL_SEPARATOR, AnswerTemplate


@dataclass(frozen=True)
class Constraints:
    """Constrained decoding: the answer follows the template's labels; optionally the category is one of
    `categories` and the price a plain number. Title text stays free but is cut short in time for the rest."""

    categories: tuple[str, ...] | None = None  # None: the category is free text
    price: bool = False  # True: the price is digits with an optional decimal part
    price_digits: int = 9  # most digits before the decimal point
    price_decimals: int = 2  # most digits after it (0: whole numbers only)

    def __post_init__(self) -> None:
        if self.categories is not None:
            cats = tuple(dict.fromkeys(str(c) for c in self.categories))
            if not cats or any(not c.strip() or "\n" in c for c in cats):
                raise ValueError(
                    "constrained categories must be a non-empty list of non-empty one-line names"
                )
            object.__setattr__(self, "categories", cats)
        if self.price_digits < 1 or self.price_decimals < 0:
            raise ValueError("Constraints.price_digits must be >= 1 and price_decimals >= 0")

    @classmethod
    def from_training(cls, rows: Iterable[Any]) -> Constraints:
        """Training rows ({category, price}) -> their categories, and prices with one more digit than any seen."""
        rows = list(rows)
        if not rows:
            raise ValueError("no training rows to take categories and prices from")
        categories = tuple(sorted({str(r["category"]) for r in rows}))
        digits = len(str(int(max(float(r["price"]) for r in rows)))) + 1
        return cls(categories=categories, price=True, price_digits=digits)


# ---- constrained decoding ---------------------------------------------------------------------------------
#
# The answer is read as a character automaton over the template, e.g. for the reference template
#   lit "Product: " -> free (title) -> lit ", Category: " -> choice (categories + ", Full Price: ") -> num -> end
# A state is a small hashable tuple; each token's text ("piece") is fed through the automaton character by
# character. For every state the tokens that may follow are cached with the tokens each then still needs, so
# a step is one lookup (and, inside the free title, one comparison with the tokens left).

# Never inside a free value: a line break ends a value for the parser, ':' could spell a label, '<' a special
# token (both would cut the value short), and U+FFFD is a token that spells only part of a character.
FREE_FORBIDDEN = frozenset("\n\r:<\ufffd")
State = tuple


class AnswerGrammar:
    """The template (+ Constraints) as a character automaton, and per-state token masks for one tokenizer."""

    def __init__(
        self,
        template: AnswerTemplate,
        constraints: Constraints,
        pieces: Sequence[str],
        first_pieces: Sequence[str],
        stop_ids: Sequence[int],
    ) -> None:
        self.constraints = constraints
        parts: list[tuple] = []
        for i, (label, name) in enumerate(template.fields):
            parts.append(("lit", (FIELD_SEPARATOR if i else "") + label + LABEL_SEPARATOR))
            if name == "category" and constraints.categories:
                parts.append(("choice",))
            elif name == "price" and constraints.price:
                parts.append(("num",))
            else:
                parts.append(("free",))
        parts.append(("end",))
        self.parts = parts
        # a choice takes the literal after it into its targets ("CROSSBODY, Full Price: "), so that a category
        # that is a prefix of another ("BAG" / "BAGS") is told apart by what follows
        self.targets: dict[int, tuple[str, ...]] = {}
        for i, part in enumerate(parts):
            if part[0] == "choice":
                after = parts[i + 1][1] if parts[i + 1][0] == "lit" else ""
                self.targets[i] = tuple(c + after for c in constraints.categories or ())
        self.remaining: dict[int, dict[str, int]] = {}  # choice -> prefix -> most characters still to come
        for i, targets in self.targets.items():
            table: dict[str, int] = {}
            for t in targets:
                for k in range(len(t) + 1):
                    table[t[:k]] = max(table.get(t[:k], 0), len(t) - k)
            self.remaining[i] = table
        self.need_from = [0] * len(parts)
        for i in reversed(range(len(parts))):
            self.need_from[i] = self.need(self.start(i))
        self.pieces = list(pieces)
        self.first_pieces = list(first_pieces)
        self.stop_ids = [int(s) for s in stop_ids]
        self._kmp: dict[tuple[str, int, str], int] = {}
        self._cache: dict[tuple[State, bool], tuple[np.ndarray, np.ndarray]] = {}
        self._by_first = {
            first: _index_by_first(p) for first, p in ((False, self.pieces), (True, self.first_pieces))
        }

    # -- the automaton --

    def _after(self, i: int) -> int:
        """The part after part i (a choice also consumes the literal it holds)."""
        return i + 2 if self.parts[i][0] == "choice" and self.parts[i + 1][0] == "lit" else i + 1

    def start(self, i: int) -> State:
        kind = self.parts[i][0]
        if kind == "lit":
            return ("lit", i, 0)
        if kind == "free":
            return ("free", i, 0, False)  # (.., chars of the next literal matched, a title character seen)
        if kind == "choice":
            return ("choice", i, "")
        if kind == "num":
            return ("num", i, 0, False, 0)  # (.., digits before the point, point seen, digits after)
        return ("end", i)

    def step(self, state: State, ch: str) -> State | None:
        """One character -> the next state, or None if the answer cannot contain it here."""
        kind, i = state[0], state[1]
        if kind == "lit":
            text, off = self.parts[i][1], state[2]
            if ch != text[off]:
                return None
            return self.start(i + 1) if off + 1 == len(text) else ("lit", i, off + 1)
        if kind == "free":
            if not state[3]:  # a value starts with a letter or digit (so it never parses as empty)
                return ("free", i, 0, True) if ch.isalnum() else None
            nxt = self.parts[i + 1]
            if nxt[0] != "lit":
                return None if ch in FREE_FORBIDDEN or not ch.isprintable() else state
            text, k = nxt[1], state[2]
            if not ch.isprintable() and ch != text[k]:
                return None
            if (ch in FREE_FORBIDDEN or any(c in FREE_FORBIDDEN for c in text[:k])) and ch != text[k]:
                return None  # a forbidden character only as part of the next literal, which then must go on
            k = self._match(text, k, ch)
            return self.start(i + 2) if k == len(text) else ("free", i, k, True)
        if kind == "choice":
            prefix = state[2] + ch
            if prefix not in self.remaining[i]:
                return None
            if self._after(i) == i + 2 and self.remaining[i][prefix] == 0:
                return self.start(i + 2)
            return ("choice", i, prefix)
        if kind == "num":
            _, _, whole, point, frac = state
            if "0" <= ch <= "9":
                if not point:
                    return ("num", i, whole + 1, False, 0) if whole < self.constraints.price_digits else None
                return ("num", i, whole, True, frac + 1) if frac < self.constraints.price_decimals else None
            if ch == "." and whole and not point and self.constraints.price_decimals:
                return ("num", i, whole, True, 0)
            if self._complete_number(state) and self.parts[i + 1][0] == "lit":
                return self.step(self.start(i + 1), ch)
            return None
        return None

    def _complete_number(self, state: State) -> bool:
        _, _, whole, point, frac = state
        return whole > 0 and (not point or frac > 0)

    def _match(self, text: str, k: int, ch: str) -> int:
        """Knuth-Morris-Pratt: chars of `text` matched at the end of the free value, after one more char."""
        key = (text, k, ch)
        if key not in self._kmp:
            seen = text[:k] + ch
            self._kmp[key] = next(n for n in range(len(seen), -1, -1) if seen.endswith(text[:n]))
        return self._kmp[key]

    def accepts_end(self, state: State) -> bool:
        kind, i = state[0], state[1]
        if kind == "end":
            return True
        if self._after(i) >= len(self.parts) or self.parts[self._after(i)][0] != "end":
            return False
        if kind == "free":
            return state[3]
        if kind == "choice":
            return state[2] in (self.constraints.categories or ())
        return kind == "num" and self._complete_number(state)

    def need(self, state: State) -> int:
        """Most tokens needed to finish the answer from `state` (one per character, plus the stop token);
        for a free value, the fewest (it may end at once)."""
        kind, i = state[0], state[1]
        if kind == "end":
            return 1
        if kind == "lit":
            return len(self.parts[i][1]) - state[2] + self.need_from[i + 1]
        if kind == "free":
            nxt = self.parts[i + 1]
            rest = (
                len(nxt[1]) - state[2] + self.need_from[i + 2] if nxt[0] == "lit" else self.need_from[i + 1]
            )
            return rest + (0 if state[3] else 1)
        if kind == "choice":
            return self.remaining[i][state[2]] + self.need_from[self._after(i)]
        _, _, whole, point, frac = state
        c = self.constraints
        point_left = 0 if point or not c.price_decimals else 1
        return (c.price_digits - whole) + point_left + (c.price_decimals - frac) + self.need_from[i + 1]

    # -- tokens --

    def state_after(self, ids: Iterable[int], state: State | None = None, first: bool = True) -> State | None:
        """Feed generated token ids from `state` (default: the start); None once the answer cannot go on."""
        state = self.start(0) if state is None else state
        for t in ids:
            text = (self.first_pieces if first else self.pieces)[t] if t < len(self.pieces) else ""
            first = False
            for ch in text:
                state = self.step(state, ch)
                if state is None:
                    return None
        return state

    def options(self, state: State, first: bool) -> tuple[np.ndarray, np.ndarray]:
        """(token ids that may follow `state`, tokens each then still needs to finish the answer); cached.

        `first`: no token generated yet (token texts read without the leading space a decoder strips there).
        """
        key = (state, first)
        if key not in self._cache:
            pieces_by_first = self._by_first[first]
            ids, needs = [], []
            for ch, candidates in pieces_by_first.items():
                if self.step(state, ch) is None:
                    continue
                for t in candidates:
                    after = self.state_after([t], state, first)
                    if after is not None:
                        ids.append(t)
                        needs.append(self.need(after))
            if self.accepts_end(state):
                ids += self.stop_ids
                needs += [0] * len(self.stop_ids)
            self._cache[key] = (np.array(ids, dtype=np.int64), np.array(needs, dtype=np.int32))
        return self._cache[key]


def _index_by_first(pieces: Sequence[str]) -> dict[str, list[int]]:
    """First character -> ids of the tokens whose text starts with it (empty texts are left out)."""
    out: dict[str, list[int]] = {}
    for t, text in enumerate(pieces):
        if text:
            out.setdefault(text[0], []).append(t)
    return out


def token_pieces(decode: Any, vocab_size: int, known: int, context: list[int]) -> tuple[list[str], list[str]]:
    """Every token's text, as it reads after other text and as it reads first (decoders strip a leading
    space there). `decode(list_of_id_lists) -> list[str]` skips special tokens; ids >= `known` are empty."""
    base = decode([context])[0]
    ids = range(known)
    inside = decode([[*context, t] for t in ids])
    first = decode([[t] for t in ids])
    pieces = [s[len(base) :] if s.startswith(base) else "" for s in inside]
    pad = [""] * (vocab_size - known)
    return pieces + pad, list(first) + pad


class TemplateConstraint(LogitsProcessor):
    """Masks every token that would break the answer grammar, for one `generate` call on left-padded prompts."""

    def __init__(self, grammar: AnswerGrammar, prompt_length: int, max_new_tokens: int) -> None:
        self.grammar = grammar
        self.prompt_length = prompt_length
        self.max_new_tokens = max_new_tokens
        self._rows: dict[int, tuple[int, State | None, bool]] = {}  # row -> (tokens fed, state, finished)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        # input_ids: (batch, prompt + new); scores: (batch, vocab)
        new = input_ids[:, self.prompt_length :].tolist()
        tokens_left = self.max_new_tokens - (input_ids.shape[1] - self.prompt_length)
        stops = set(self.grammar.stop_ids)
        for row, ids in enumerate(new):
            fed, state, done = self._rows.get(row, (0, self.grammar.start(0), False))
            for t in ids[fed:]:
                if done or t in stops:
                    done = True
                elif state is not None:
                    state = self.grammar.state_after([t], state, first=fed == 0)
                fed += 1
            self._rows[row] = (fed, state, done)
            if done:
                continue  # generate pads finished rows itself
            keep = np.array([s for s in stops if s < scores.shape[1]], dtype=np.int64)
            if state is not None:  # (None cannot happen under this mask; the answer then just ends)
                ids, needs = self.grammar.options(state, first=fed == 0)
                if state[0] == "free" and len(ids):
                    # Only a free value (the title) looks at the budget: it must end in time for the rest,
                    # which then needs no more than it has. With too small a budget it ends as soon as it can.
                    ids = ids[needs <= max(tokens_left - 1, int(needs.min()))]
                if len(ids):  # else a dead end (a character no token spells): stop here
                    keep = ids
            kept = torch.from_numpy(keep).to(scores.device)
            masked = torch.full_like(scores[row], float("-inf"))
            masked[kept] = scores[row, kept]
            scores[row] = masked
        return scores
