"""Scores for predicted {title, category, price} against the truth, with constant baselines from training.

In: truth rows (Product or dicts) and predictions (ParsedAnswer or dicts), plus training rows for baselines.
Out: plain dicts of numbers (JSON/W&B-ready). Pure functions (numpy only); `productlens evaluate` calls them.

Parse failures never flatter a score: every metric is over ALL rows, and a failed field scores the worst a real
answer could score on that row, never better:
- price: a failure counts as a prediction of 0 (the Phi-3 CookBook's own fallback): absolute error = the true
  price, APE = 1.0, log error = log1p(true price), never "within x%". Every real answer's per-row error is capped
  at those values (an answer 3x off scores APE 1.0, not 2.0), so MAE, MAPE, median APE and RMSLE are "capped"
  figures: no answer, however wrong, scores worse than no answer, and none scores better.
- category: wrong for accuracy; for macro-F1 a failure counts as the wrong answer that lowers macro-F1 the most
  (a false positive of one of the labels, or a made-up label of its own), chosen row by row.
- title: 0 for exact match, token F1 and edit similarity (their minimum).
`coverage` and `failure_rate` say how often a field failed. `mae_parsed` / `median_ape_parsed` (uncapped, over
parsed rows alone) describe the answers given; they leave failures out, so they are diagnostics, not scores to
pick a model or a checkpoint by (`higher_is_better` does not know them).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

FIELDS = ("title", "category", "price")
NO_ANSWER = "(no answer)"  # the confusion matrix column for an unparsed category
WITHIN = (0.10, 0.25)  # the "within x% of the true price" shares reported


# how a metric's name ends -> whether a higher value is better (training's `eval_*` names included)
LOWER_IS_BETTER = ("loss", "mae", "ape", "rmsle", "failure_rate")
HIGHER_IS_BETTER = ("accuracy", "f1", "exact_match", "edit_similarity", "within_10", "within_25", "coverage")


def higher_is_better(name: str) -> bool | None:
    """'eval_category_accuracy' -> True, 'eval_price_median_ape' / 'eval_failure_rate' -> False; None: unknown."""
    if name.endswith("_parsed"):  # diagnostics that leave failures out
        return None
    if name.endswith(LOWER_IS_BETTER):
        return False
    if name.endswith(HIGHER_IS_BETTER):
        return True
    return None


# ---- rows -------------------------------------------------------------------------------------------------


def _get(row: Any, name: str) -> Any:
    return row.get(name) if isinstance(row, Mapping) else getattr(row, name, None)


def _rows(rows: Sequence[Any]) -> list[dict[str, Any]]:
    """Product / ParsedAnswer / dict -> {title, category, price} dicts, with None for anything missing."""
    out = []
    for row in rows:
        price = _get(row, "price")
        price = float(price) if _has_price(price) else None
        out.append({"title": _get(row, "title"), "category": _get(row, "category"), "price": price})
    return out


def _text_key(text: str) -> str:
    """How two texts are compared: case-folded, runs of whitespace collapsed."""
    return " ".join(str(text).split()).casefold()


# ---- price ------------------------------------------------------------------------------------------------


def _has_price(value: float | None) -> bool:
    return value is not None and math.isfinite(float(value))


def price_errors(
    true: Sequence[float], pred: Sequence[float | None], capped: bool = True
) -> dict[str, np.ndarray]:
    """Per-row price errors: {"abs", "ape", "log"} arrays; a missing prediction is scored as 0, and (`capped`)
    no error exceeds that of a missing prediction (abs <= true price, APE <= 1, |log| <= log1p(true price))."""
    y = np.asarray(true, dtype=float)
    if y.size and (not np.all(np.isfinite(y)) or np.any(y <= 0)):
        raise ValueError(
            "true prices must be finite and > 0; drop rows without a usable price before scoring"
        )
    p = np.array([max(float(v), 0.0) if _has_price(v) else 0.0 for v in pred], dtype=float)
    if p.shape != y.shape:
        raise ValueError(f"{y.size} true prices but {p.size} predictions; pass one prediction per row")
    err = {"abs": np.abs(p - y), "ape": np.abs(p - y) / y, "log": np.log1p(p) - np.log1p(y)}
    if capped:
        worst = {"abs": y, "ape": np.ones_like(y), "log": np.log1p(y)}  # what a missing prediction scores
        err = {k: np.clip(v, -worst[k], worst[k]) for k, v in err.items()}
    return err


def price_metrics(true: Sequence[float], pred: Sequence[float | None]) -> dict[str, float | None]:
    """MAE, MAPE, median APE, within 10%/25%, RMSLE over all rows (capped per row); coverage; uncapped MAE and
    median APE over parsed rows."""
    err = price_errors(true, pred)
    parsed = np.array([_has_price(v) for v in pred], dtype=bool)
    if not len(err["abs"]):
        return {}
    raw = price_errors(true, pred, capped=False)
    out = {
        "mae": float(err["abs"].mean()),
        "mape": float(err["ape"].mean()),
        "median_ape": float(np.median(err["ape"])),
        **{f"within_{round(x * 100)}": float(np.mean(err["ape"] <= x)) for x in WITHIN},
        "rmsle": float(np.sqrt(np.mean(err["log"] ** 2))),
        "coverage": float(parsed.mean()),
    }
    out["mae_parsed"] = float(raw["abs"][parsed].mean()) if parsed.any() else None
    out["median_ape_parsed"] = float(np.median(raw["ape"][parsed])) if parsed.any() else None
    return out


# ---- category ---------------------------------------------------------------------------------------------


def confusion_matrix(true: Sequence[str], pred: Sequence[str | None]) -> dict[str, Any]:
    """{"labels", "columns", "matrix"}: rows = true labels, columns = the same labels + NO_ANSWER.

    Labels are compared case- and space-insensitively and shown in their first spelling (truth first);
    they are ordered by true count (descending), then by name.
    """
    spelling: dict[str, str] = {}
    for label in [*true, *(p for p in pred if p is not None)]:
        spelling.setdefault(_text_key(label), label)
    counts = Counter(_text_key(t) for t in true)
    keys = sorted(spelling, key=lambda k: (-counts[k], spelling[k]))
    index = {k: i for i, k in enumerate(keys)}
    matrix = np.zeros((len(keys), len(keys) + 1), dtype=int)
    for t, p in zip(true, pred, strict=True):
        matrix[index[_text_key(t)], len(keys) if p is None else index[_text_key(p)]] += 1
    labels = [spelling[k] for k in keys]
    return {"labels": labels, "columns": [*labels, NO_ANSWER], "matrix": matrix.tolist()}


def category_metrics(true: Sequence[str], pred: Sequence[str | None]) -> dict[str, float]:
    """Accuracy and macro-F1 over the classes present in truth or prediction; a missing answer is wrong, for
    macro-F1 the wrong answer that lowers it most."""
    if not len(true):
        return {}
    cm = confusion_matrix(true, pred)
    matrix = np.asarray(cm["matrix"])  # (classes, classes + 1); last column = no answer
    tp = np.diag(matrix[:, :-1])
    fp = matrix[:, :-1].sum(axis=0) - tp
    fn = matrix.sum(axis=1) - tp
    made_up = 0  # classes of F1 0 that failures were counted as
    for true_class in np.repeat(np.arange(len(tp)), matrix[:, -1]):  # one entry per failure
        made_up, fp = _worst_wrong_answer(tp, fp, fn, made_up, int(true_class))
    f1 = 2 * tp / (2 * tp + fp + fn)  # every class occurs in truth or prediction, so never 0/0
    macro = f1.sum() / (len(tp) + made_up)
    return {"accuracy": float(tp.sum() / matrix.sum()), "macro_f1": float(macro), "n_classes": len(tp)}


def _worst_wrong_answer(
    tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, made_up: int, true_class: int
) -> tuple[int, np.ndarray]:
    """A failed category -> the wrong answer that lowers macro-F1 most: a false positive of another label, or a
    made-up label (one more class of F1 0). -> (made_up, fp) after counting it."""
    f1 = 2 * tp / (2 * tp + fp + fn)  # (classes,)
    classes = len(tp) + made_up
    with_fp = 2 * tp / (2 * tp + fp + 1 + fn)  # each label's F1 with one more false positive
    totals = (f1.sum() - f1 + with_fp) / classes  # macro-F1 if the failure had named label j
    totals[true_class] = np.inf  # naming the true label would be right, not a failure
    if f1.sum() / (classes + 1) <= totals.min():
        return made_up + 1, fp
    fp = fp.copy()
    fp[int(totals.argmin())] += 1
    return made_up, fp


# ---- title ------------------------------------------------------------------------------------------------


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions all cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def edit_similarity(true: str, pred: str | None) -> float:
    """1 - levenshtein / max length, on case-folded, space-collapsed text; 0 for a missing prediction."""
    if pred is None:
        return 0.0
    a, b = _text_key(true), _text_key(pred)
    longest = max(len(a), len(b))
    return 1.0 - levenshtein(a, b) / longest if longest else 1.0


def token_f1(true: str, pred: str | None) -> float:
    """SQuAD-style F1 over lower-cased word tokens (punctuation dropped); 0 for a missing prediction."""
    if pred is None:
        return 0.0
    t, p = re.findall(r"\w+", true.casefold()), re.findall(r"\w+", pred.casefold())
    if not t or not p:
        return float(t == p)
    common = sum((Counter(t) & Counter(p)).values())
    return 0.0 if common == 0 else 2 * common / (len(t) + len(p))


def exact_match(true: str, pred: str | None) -> float:
    """1.0 if equal after case-folding and collapsing spaces, else 0.0 (and for a missing prediction)."""
    return float(pred is not None and _text_key(true) == _text_key(pred))


def title_metrics(true: Sequence[str], pred: Sequence[str | None]) -> dict[str, float]:
    """Mean exact match, token F1 and edit similarity over all rows."""
    if not len(true):
        return {}
    pairs = list(zip(true, pred, strict=True))
    return {
        name: float(np.mean([fn(t, p) for t, p in pairs]))
        for name, fn in (
            ("exact_match", exact_match),
            ("token_f1", token_f1),
            ("edit_similarity", edit_similarity),
        )
    }


# ---- all together -----------------------------------------------------------------------------------------


def score_predictions(truth: Sequence[Any], preds: Sequence[Any]) -> dict[str, Any]:
    """Truth rows + predictions (same order) -> {n, price, category, title, failure_rate}."""
    if len(truth) != len(preds):
        raise ValueError(f"{len(truth)} truth rows but {len(preds)} predictions; pass one prediction per row")
    t, p = _rows(truth), _rows(preds)
    true = {name: [r[name] for r in t] for name in FIELDS}
    pred = {name: [r[name] for r in p] for name in FIELDS}
    missing = np.array([[v is None for v in pred[name]] for name in FIELDS], dtype=bool).reshape(3, len(p))
    rate = missing.mean(axis=1) if len(p) else np.zeros(3)  # (fields,)
    return {
        "n": len(t),
        "price": price_metrics(true["price"], pred["price"]),
        "category": category_metrics(true["category"], pred["category"]),
        "title": title_metrics(true["title"], pred["title"]),
        "failure_rate": {
            **{name: float(r) for name, r in zip(FIELDS, rate, strict=True)},
            "any": float(missing.any(axis=0).mean()) if len(p) else 0.0,
        },
    }


def row_scores(truth: Sequence[Any], preds: Sequence[Any]) -> list[dict[str, float]]:
    """Per row: category_correct, price_ape, title_token_f1, title_edit_similarity and a combined score in [0, 1].

    combined = mean(category correct, 1 - min(APE, 1), title token F1); used to rank best/worst examples.
    """
    t, p = _rows(truth), _rows(preds)
    ape = price_errors([r["price"] for r in t], [r["price"] for r in p])["ape"] if t else []
    out = []
    for tr, pr, e in zip(t, p, ape, strict=True):
        correct = float(pr["category"] is not None and _text_key(tr["category"]) == _text_key(pr["category"]))
        f1 = token_f1(tr["title"], pr["title"])
        out.append(
            {
                "category_correct": correct,
                "price_ape": float(e),
                "title_token_f1": f1,
                "title_edit_similarity": edit_similarity(tr["title"], pr["title"]),
                "combined": (correct + 1.0 - min(float(e), 1.0) + f1) / 3,
            }
        )
    return out


def baseline_predictions(train_rows: Sequence[Any], n: int) -> list[dict[str, Any]]:
    """n copies of {median training price, majority training category, most common training title}.

    Ties go to the value seen first in train_rows.
    """
    rows = _rows(train_rows)
    prices = [r["price"] for r in rows if r["price"] is not None]
    if not prices:
        raise ValueError("the training rows hold no price; baselines need the training split (with prices)")
    guess = {
        "title": Counter(r["title"] for r in rows).most_common(1)[0][0],
        "category": Counter(r["category"] for r in rows).most_common(1)[0][0],
        "price": float(np.median(prices)),
    }
    return [dict(guess) for _ in range(n)]


def per_category(truth: Sequence[Any], preds: Sequence[Any]) -> dict[str, dict[str, float]]:
    """True category -> {count, category_accuracy, price_median_ape, title_token_f1}, largest first."""
    t = _rows(truth)
    scores = row_scores(truth, preds)
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(t):
        groups.setdefault(r["category"], []).append(i)
    out = {}
    for category, idx in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        out[category] = {
            "count": len(idx),
            "category_accuracy": float(np.mean([scores[i]["category_correct"] for i in idx])),
            "price_median_ape": float(np.median([scores[i]["price_ape"] for i in idx])),
            "title_token_f1": float(np.mean([scores[i]["title_token_f1"] for i in idx])),
        }
    return out


def evaluate_split(truth: Sequence[Any], preds: Sequence[Any], train_rows: Sequence[Any]) -> dict[str, Any]:
    """-> {"model": score_predictions, "baselines": {median_price, majority_category, common_title}, "per_category"}.

    Each baseline is the constant training guess scored with the same functions on the same rows.
    """
    base = score_predictions(truth, baseline_predictions(train_rows, len(truth)))
    return {
        "model": score_predictions(truth, preds),
        "baselines": {
            "median_price": base["price"],
            "majority_category": base["category"],
            "common_title": base["title"],
        },
        "per_category": per_category(truth, preds),
    }
