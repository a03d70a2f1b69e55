"""Metrics on small cases computed by hand (the arithmetic is in the comments), failures scored as wrong."""

from __future__ import annotations

import math

import numpy as np
import pytest

from productlens.catalog.schema import Product
from productlens.task.metrics import (
    NO_ANSWER,
    baseline_predictions,
    category_metrics,
    confusion_matrix,
    edit_similarity,
    evaluate_split,
    exact_match,
    levenshtein,
    per_category,
    price_metrics,
    row_scores,
    score_predictions,
    title_metrics,
    token_f1,
)
from productlens.task.parse import ParsedAnswer

approx = pytest.approx


# ---- price ------------------------------------------------------------------------------------------------


def test_price_metrics_by_hand_with_a_missing_prediction():
    true = [100.0, 200.0, 400.0, 50.0]
    pred = [108.0, 150.0, None, 50.0]  # the None is scored as a prediction of 0
    m = price_metrics(true, pred)
    # abs errors 8, 50, 400, 0 -> MAE 458 / 4
    assert m["mae"] == approx(114.5)
    # APE 0.08, 0.25, 1.0, 0.0 -> mean 1.33 / 4; median of [0, .08, .25, 1] = (.08 + .25) / 2
    assert m["mape"] == approx(0.3325)
    assert m["median_ape"] == approx(0.165)
    assert m["within_10"] == approx(0.5)  # 0.08 and 0.0
    assert m["within_25"] == approx(0.75)  # 0.08, 0.25 (boundary counts) and 0.0
    # log1p differences: ln(109/101), ln(151/201), ln(1/401), 0
    logs = [math.log(109 / 101), math.log(151 / 201), math.log(1 / 401), 0.0]
    assert m["rmsle"] == approx(math.sqrt(sum(x * x for x in logs) / 4))
    assert m["coverage"] == approx(0.75)
    # parsed rows only: abs 8, 50, 0 -> 58 / 3; APE median of [.08, .25, 0] = .08
    assert m["mae_parsed"] == approx(58 / 3)
    assert m["median_ape_parsed"] == approx(0.08)


def test_price_metrics_perfect_and_all_missing():
    perfect = price_metrics([32.0, 70000.0], [32.0, 70000.0])
    assert (
        perfect["mae"] == 0
        and perfect["rmsle"] == 0
        and perfect["within_10"] == 1
        and perfect["coverage"] == 1
    )
    none = price_metrics([32.0, 70000.0], [None, float("nan")])  # NaN counts as missing
    assert none["mae"] == approx((32 + 70000) / 2)
    assert none["mape"] == 1.0 and none["median_ape"] == 1.0 and none["within_25"] == 0.0
    assert none["coverage"] == 0.0 and none["mae_parsed"] is None and none["median_ape_parsed"] is None


def test_over_prediction_is_capped_at_what_a_failure_scores():
    # predicting 3x the price: APE 2.0 and abs error 20, capped at a missing answer's 1.0 and 10 (the true
    # price); the parsed-rows diagnostics keep the real error; negative predictions clip to 0
    m = price_metrics([10.0], [30.0])
    assert m["mape"] == approx(1.0) and m["mae"] == approx(10.0) and m["within_25"] == 0.0
    assert m["mae_parsed"] == approx(20.0) and m["median_ape_parsed"] == approx(2.0)
    assert m["rmsle"] == approx(math.log(31 / 11))  # log1p(30) - log1p(10) < log1p(10): not capped
    assert price_metrics([10.0], [1000.0])["rmsle"] == approx(math.log(11))  # log(1001/11) capped at log(11)
    assert price_metrics([10.0], [-5.0])["mape"] == approx(1.0)


def test_price_input_errors():
    with pytest.raises(ValueError, match="must be finite and > 0"):
        price_metrics([0.0, 10.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="one prediction per row"):
        price_metrics([10.0, 20.0], [10.0])
    assert price_metrics([], []) == {}


# ---- category ---------------------------------------------------------------------------------------------


def test_category_metrics_by_hand():
    true = ["A", "A", "B", "C"]
    pred = ["A", "B", "B", None]
    m = category_metrics(true, pred)
    assert m["accuracy"] == approx(0.5)  # rows 1 and 3 right
    # A: tp 1, fp 0, fn 1 -> 2/3; B: tp 1, fp 1, fn 0 -> 2/3; C: tp 0, fp 0, fn 1 -> 0. The failed row counts as
    # the worst wrong answer: "A" or "B" would give (1/2 + 2/3 + 0) / 3 = 7/18, a made-up label (4/3) / 4 = 1/3
    assert m["macro_f1"] == approx(1 / 3)
    assert m["n_classes"] == 3
    cm = confusion_matrix(true, pred)
    assert cm["labels"] == ["A", "B", "C"]  # by true count, then name
    assert cm["columns"] == ["A", "B", "C", NO_ANSWER]
    assert cm["matrix"] == [[1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]]


def test_category_classes_seen_only_in_predictions_count_for_macro_f1():
    # A: tp 1, fn 1 -> 2/3; D (predicted only): fp 1 -> 0; mean 1/3
    m = category_metrics(["A", "A"], ["A", "D"])
    assert m["macro_f1"] == approx(1 / 3) and m["accuracy"] == approx(0.5)
    assert confusion_matrix(["A", "A"], ["A", "D"]) == {
        "labels": ["A", "D"],
        "columns": ["A", "D", NO_ANSWER],
        "matrix": [[1, 1, 0], [0, 0, 0]],
    }


def test_category_comparison_ignores_case_and_spacing():
    cm = confusion_matrix(["HATS & GLOVES", "N.A."], ["hats  &  gloves ", "N.A."])
    assert cm["labels"] == ["HATS & GLOVES", "N.A."]  # the truth's spelling is shown
    assert category_metrics(["HATS & GLOVES", "N.A."], ["hats  &  gloves ", "N.A."])["accuracy"] == 1.0


# ---- title ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "distance"),
    [("kitten", "sitting", 3), ("flaw", "lawn", 2), ("", "abc", 3), ("abc", "", 3), ("same", "same", 0),
     ("ab", "ba", 2), ("Bag", "bag", 1)],
)  # fmt: skip
def test_levenshtein(a, b, distance):
    assert levenshtein(a, b) == distance


def test_title_similarities_by_hand():
    # "medium lola bag" (15) vs "medium lola bags" (16): one insertion -> 1 - 1/16
    assert edit_similarity("Medium Lola Bag", "medium  lola bags") == approx(0.9375)
    assert edit_similarity("", "") == 1.0 and edit_similarity("Bag", None) == 0.0
    # tokens [check, wool, scarf] vs [wool, check, cape]: 2 common -> P = R = 2/3 -> F1 2/3
    assert token_f1("Check Wool Scarf", "wool check cape") == approx(2 / 3)
    # repeated tokens count once per match: [a, a, b] vs [a, a, a] -> 2 common -> 2*2/(3+3)
    assert token_f1("a a b", "a a a") == approx(2 / 3)
    assert token_f1("Check Wool, Cashmere Scarf", "check wool cashmere scarf") == 1.0  # punctuation dropped
    assert token_f1("Rose Clutch", "Wool Cape") == 0.0 and token_f1("Rose", None) == 0.0
    assert token_f1("Rose", "...") == 0.0
    assert exact_match(" Medium  Lola Bag", "medium lola bag") == 1.0
    assert exact_match("Medium Lola Bag", "Medium Lola") == 0.0 and exact_match("x", None) == 0.0


def test_title_metrics_average_over_all_rows():
    m = title_metrics(["Rose Clutch", "Wool Cape"], ["rose clutch", None])
    # row 1 perfect, row 2 missing -> every mean is 1/2
    assert m == {"exact_match": 0.5, "token_f1": 0.5, "edit_similarity": 0.5}


# ---- together ---------------------------------------------------------------------------------------------

TRUTH = [
    Product(id="1", title="Medium Lola Bag", category="BAGS", price=2000.0),
    Product(id="2", title="Check Wool Scarf", category="SCARVES", price=400.0),
    Product(id="3", title="Rose Clutch", category="BAGS", price=1000.0),
]
PREDS = [
    ParsedAnswer(title="Medium Lola Bag", category="BAGS", price=1000.0),  # APE .5
    {"title": "Wool Check Cape", "category": "BAGS", "price": None},  # missing price: APE 1
    ParsedAnswer(title=None, category=None, price=3000.0, failures=("title", "category")),  # APE 2
]


def test_score_predictions_mixes_records_and_reports_failures():
    s = score_predictions(TRUTH, PREDS)
    assert s["n"] == 3
    assert s["failure_rate"] == {
        "title": approx(1 / 3),
        "category": approx(1 / 3),
        "price": approx(1 / 3),
        "any": approx(2 / 3),  # rows 2 and 3 miss something, row 1 nothing
    }
    assert s["category"]["accuracy"] == approx(1 / 3)
    # APE .5, 1, 2 (capped at 1) -> mean 2.5/3, median 1
    assert s["price"]["mape"] == approx(2.5 / 3) and s["price"]["median_ape"] == 1.0
    # token F1: 1, 2/3 (check, wool of 3 each), 0 -> mean 5/9
    assert s["title"]["token_f1"] == approx(5 / 9)
    with pytest.raises(ValueError, match="one prediction per row"):
        score_predictions(TRUTH, PREDS[:2])


def test_row_scores_by_hand():
    rows = row_scores(TRUTH, PREDS)
    # row 1: category 1, 1 - .5, F1 1 -> 2.5/3; row 2: 0, 1 - 1, 2/3 -> (2/3)/3; row 3: 0, 1 - min(2, 1), 0 -> 0
    assert [r["combined"] for r in rows] == approx([2.5 / 3, 2 / 9, 0.0])
    assert [r["price_ape"] for r in rows] == approx([0.5, 1.0, 1.0])  # 2.0 capped at a failure's 1.0
    assert [r["category_correct"] for r in rows] == [1.0, 0.0, 0.0]


def test_per_category_breakdown():
    pc = per_category(TRUTH, PREDS)
    assert list(pc) == ["BAGS", "SCARVES"]  # largest first
    # BAGS rows 1 and 3: category 1, 0; APE .5, 2 (capped at 1) -> median .75; F1 1, 0
    assert pc["BAGS"] == {
        "count": 2,
        "category_accuracy": 0.5,
        "price_median_ape": 0.75,
        "title_token_f1": 0.5,
    }
    assert pc["SCARVES"] == {
        "count": 1,
        "category_accuracy": 0.0,
        "price_median_ape": 1.0,
        "title_token_f1": approx(2 / 3),
    }


def test_baselines_are_training_constants():
    train = [
        {"title": "Rose Clutch", "category": "SCARVES", "price": 10.0},
        {"title": "Wool Cape", "category": "BAGS", "price": 30.0},
        {"title": "Wool Cape", "category": "BAGS", "price": 20.0},
        {"title": "Rose Clutch", "category": "SCARVES", "price": 1000.0},
        {"title": "Check Scarf", "category": "COATS", "price": float("nan")},  # ignored for the median
    ]
    guesses = baseline_predictions(train, 3)
    # median of 10, 20, 30, 1000 = 25; ties go to the first seen: SCARVES, Rose Clutch
    assert guesses == [{"title": "Rose Clutch", "category": "SCARVES", "price": 25.0}] * 3
    with pytest.raises(ValueError, match="no price"):
        baseline_predictions([{"title": "x", "category": "y", "price": None}], 1)


def test_evaluate_split_scores_baselines_the_same_way():
    train = [
        Product(id=str(i), title="Medium Lola Bag", category="BAGS", price=p)
        for i, p in enumerate([500, 1500])
    ]
    out = evaluate_split(TRUTH, PREDS, train)
    assert set(out) == {"model", "baselines", "per_category"}
    assert out["model"] == score_predictions(TRUTH, PREDS)
    # baseline guesses 1000.0 for everything: abs errors 1000, 600 (capped at the true 400), 0 -> MAE 1400/3
    assert out["baselines"]["median_price"]["mae"] == approx(1400 / 3)
    assert out["baselines"]["median_price"]["coverage"] == 1.0
    assert out["baselines"]["majority_category"]["accuracy"] == approx(2 / 3)  # BAGS is right twice
    assert out["baselines"]["common_title"]["exact_match"] == approx(1 / 3)
    assert np.isclose(out["per_category"]["BAGS"]["price_median_ape"], 0.75)


# ---- failures never flatter a score -----------------------------------------------------------------------

ALTERNATIVES = {  # real answers a row could have given instead of failing, from perfect to wildly off
    "price": [None, 0.0, 1.0, 50.0, 99.0, 100.0, 150.0, 300.0, 1000.0, 1e6],
    "category": ["BAGS", "SCARVES", "SHOES", "HATS", "A MADE-UP LABEL"],
    "title": ["Medium Lola Bag", "lola", "Check Wool Scarf", "x", ""],
}


def _metrics_of(truth, preds):
    from productlens.tracking import flatten_scores

    return flatten_scores(score_predictions(truth, preds))


@pytest.mark.parametrize("seed", range(4))
def test_a_failure_never_scores_better_than_any_real_answer(seed):
    """Every metric's direction respected: a row that fails scores no better than the same row answered with
    any real value, for every field and every metric (failures elsewhere in the set included)."""
    from productlens.task.metrics import higher_is_better

    rng = np.random.default_rng(seed)
    categories = ["BAGS", "SCARVES", "SHOES", "HATS"]
    titles = ["Medium Lola Bag", "Check Wool Scarf", "Rose Clutch", "Wool Cape"]
    truth = [
        {"title": str(rng.choice(titles)), "category": str(rng.choice(categories)), "price": float(p)}
        for p in rng.uniform(20, 400, 9)
    ]
    preds = [
        {
            "title": str(rng.choice(titles)),
            "category": str(rng.choice(categories)),
            "price": float(t["price"] * rng.choice([0.5, 1.0, 1.1, 3.0])),
        }
        for t in truth
    ]
    preds[int(rng.integers(0, 9))]["category"] = None  # another failure in the set
    checked = set()
    for row in range(len(truth)):
        for field, options in ALTERNATIVES.items():
            failed = [dict(p) for p in preds]
            failed[row][field] = None
            fail = _metrics_of(truth, failed)
            for value in options:
                if value is None:
                    continue
                answered = [dict(p) for p in preds]
                answered[row][field] = value
                real = _metrics_of(truth, answered)
                for name, score in fail.items():
                    higher = higher_is_better(name)
                    if higher is None:  # the *_parsed diagnostics leave failures out by definition
                        continue
                    checked.add(name)
                    better = score > real[name] + 1e-12 if higher else score < real[name] - 1e-12
                    assert not better, (name, field, value, score, real[name])
    assert {"price_mape", "price_mae", "price_rmsle", "category_macro_f1", "title_token_f1"} <= checked


def test_a_failed_category_counts_as_the_most_damaging_wrong_answer():
    # truth A, B, C, D; answers A, (fail), D, C. Answering "A" for row 2 gives A: 2/3, others 0 -> 1/6;
    # a made-up label would give (1 + 0 + 0 + 0 + 0) / 5 = 1/5; the failure takes the lower: 1/6
    m = category_metrics(["A", "B", "C", "D"], ["A", None, "D", "C"])
    assert m["macro_f1"] == approx(1 / 6) and m["accuracy"] == approx(0.25)
