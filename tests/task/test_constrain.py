"""Constrained decoding automaton over a made-up vocabulary: every answer it lets through parses, within budget."""

from __future__ import annotations

import random
import string

import pytest
import torch

from productlens.task.constrain import AnswerGrammar, Constraints, TemplateConstraint
from productlens.task.parse import parse_answer
from productlens.task.prompts import AnswerTemplate

CATEGORIES = ("BAG", "BAGS", "CROSSBODY", "SCARVES", "SHOES")


def make_grammar(template, constraints):
    """The automaton over a made-up vocabulary: characters, a few words, two stop tokens (ids 0, 1)."""
    chars = list(string.ascii_letters + string.digits + " .,:;-'<\n")
    words = [
        " Product",
        ":",
        " Category",
        ", ",
        " Full",
        " Price",
        " BAG",
        "BAGS",
        "S",
        " 12",
        "49",
        ".0",
        "é",
    ]
    pieces = ["", "", *chars, *words]
    first = [p[1:] if p.startswith(" ") else p for p in pieces]  # a decoder strips the first leading space
    return AnswerGrammar(template, constraints, pieces, first, [0, 1])


def run_grammar(grammar, budgets, trials=60, seed=0):
    """Random logits through TemplateConstraint, greedy; -> decoded answers (2 rows per trial)."""
    gen, rnd, out = torch.Generator().manual_seed(seed), random.Random(seed), []
    for _ in range(trials):
        budget = rnd.choice(budgets)
        processor = TemplateConstraint(grammar, 0, budget)
        ids = torch.zeros((2, 0), dtype=torch.long)
        for _ in range(budget):
            scores = processor(ids, torch.randn(2, len(grammar.pieces), generator=gen))
            ids = torch.cat([ids, scores.argmax(-1, keepdim=True)], dim=1)
        for row in ids.tolist():
            end = next((k for k, t in enumerate(row) if t in (0, 1)), len(row))
            out.append(
                "".join(
                    grammar.first_pieces[t] if k == 0 else grammar.pieces[t] for k, t in enumerate(row[:end])
                )
            )
    return out


@pytest.mark.parametrize(
    "fields",
    [
        (("Product", "title"), ("Category", "category"), ("Full Price", "price")),
        (("Full Price", "price"), ("Product", "title"), ("Category", "category")),  # category last
    ],
)
def test_grammar_always_finishes_a_parseable_answer_within_budget(fields):
    template = AnswerTemplate(fields=fields)
    grammar = make_grammar(template, Constraints(CATEGORIES, price=True, price_digits=5))
    need = grammar.need_from[0]  # the longest possible answer, in tokens
    for text in run_grammar(grammar, budgets=[need, need + 7, need + 40]):
        parsed = parse_answer(text, template)
        assert parsed.category in CATEGORIES and parsed.price is not None and parsed.title, text
        assert parsed.price < 10**5 and "\n" not in text


def test_grammar_with_too_small_a_budget_still_follows_the_template():
    grammar = make_grammar(AnswerTemplate(), Constraints(CATEGORIES, price=True))
    assert grammar.need_from[0] > 30
    for text in run_grammar(grammar, budgets=[12, 30], trials=20):
        state = grammar.start(0)
        for ch in text:  # every answer is a prefix of one the grammar accepts
            state = grammar.step(state, ch)
            assert state is not None, text


def test_constraints_refuse_bad_settings():
    with pytest.raises(ValueError, match="non-empty"):
        Constraints(categories=("BAG", ""))
    with pytest.raises(ValueError, match="price_digits"):
        Constraints(price=True, price_digits=0)
    c = Constraints.from_training([{"category": "B", "price": 2490.0}, {"category": "A", "price": 5.0}])
    assert c.categories == ("A", "B") and c.price and c.price_digits == 5
