"""Evaluation records + metrics -> one self-contained `report.html` (no external resources at all).

In: per-row records {id, image_path, truth, raw_text, parsed, failures} and `metrics.evaluate_split` output.
Out: report.html with headline metrics against baselines, a predicted-vs-true price plot, the category
confusion matrix, a per-category table and the best/worst examples with photos. Written by `productlens evaluate`.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

from productlens.files import write_atomic
from productlens.task.metrics import confusion_matrix, row_scores

# (label, metrics group, key, baseline name, format, higher is better)
HEADLINE: tuple[tuple[str, str, str, str | None, str, bool], ...] = (
    ("Price MAE", "price", "mae", "median_price", "money", False),
    ("Price MAPE", "price", "mape", "median_price", "pct", False),
    ("Price median APE", "price", "median_ape", "median_price", "pct", False),
    ("Price within 10%", "price", "within_10", "median_price", "pct", True),
    ("Price within 25%", "price", "within_25", "median_price", "pct", True),
    ("Price RMSLE", "price", "rmsle", "median_price", "num", False),
    ("Price parsed (coverage)", "price", "coverage", None, "pct", True),
    ("Category accuracy", "category", "accuracy", "majority_category", "pct", True),
    ("Category macro-F1", "category", "macro_f1", "majority_category", "num", True),
    ("Title exact match", "title", "exact_match", "common_title", "pct", True),
    ("Title token F1", "title", "token_f1", "common_title", "num", True),
    ("Title edit similarity", "title", "edit_similarity", "common_title", "num", True),
    ("Answers with a parse failure", "failure_rate", "any", None, "pct", False),
)
BASELINE_NAMES = {
    "median_price": "training median price",
    "majority_category": "majority training category",
    "common_title": "most common training title",
}
RAW_TEXT_CHARS = 600  # longer model answers are cut for display
IMAGE_FORMATS = ["JPEG", "PNG", "WEBP", "GIF"]  # what a thumbnail may be read from

CSS = """
:root { --ink:#1f2933; --muted:#616e7c; --line:#e4e7eb; --bg:#f7f8fa; --good:#1a7f37; --bad:#b42318; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif; color:var(--ink);
       background:var(--bg); }
main { max-width:1180px; margin:0 auto; padding:28px 24px 60px; }
h1 { font-size:26px; margin:0 0 4px; } h2 { font-size:19px; margin:34px 0 10px; }
.sub { color:var(--muted); margin:0 0 18px; }
section { background:#fff; border:1px solid var(--line); border-radius:10px; padding:16px 20px; margin-top:18px; }
section h2 { margin-top:0; }
table { border-collapse:collapse; font-variant-numeric:tabular-nums; }
table.headline { width:100%; }
th, td { padding:6px 10px; border-bottom:1px solid var(--line); text-align:right; }
th:first-child, td:first-child { text-align:left; }
thead th { color:var(--muted); font-weight:600; font-size:13px; }
td.good { color:var(--good); font-weight:600; } td.bad { color:var(--bad); font-weight:600; }
.note { color:var(--muted); font-size:13px; }
.constrained { background:#fff4e5; border:1px solid #f5c16c; border-radius:8px; padding:8px 12px; }
.plot img { max-width:100%; height:auto; }
.scroll { overflow:auto; }
.pair { display:grid; grid-template-columns:repeat(auto-fit,minmax(440px,1fr)); gap:18px; align-items:start; }
.pair section { margin-top:18px; }
table.cm td, table.cm th { padding:3px 6px; font-size:12px; border:1px solid #fff; text-align:center; }
table.cm th.col { writing-mode:vertical-rl; transform:rotate(180deg); text-align:left; white-space:nowrap; }
table.cm th.row { text-align:right; white-space:nowrap; }
table.cm td.diag { outline:2px solid #1f2933; outline-offset:-2px; }
.cards { display:grid; grid-template-columns:repeat(auto-fill,minmax(260px,1fr)); gap:14px; }
.card { border:1px solid var(--line); border-radius:8px; overflow:hidden; background:#fff; }
.card .photo { height:200px; display:flex; align-items:center; justify-content:center; background:#f0f2f5; }
.card .photo img { max-width:100%; max-height:200px; }
.card .missing { color:var(--muted); font-size:13px; }
.card .body { padding:10px 12px; font-size:13px; }
.card .label { color:var(--muted); font-size:11px; text-transform:uppercase; letter-spacing:.04em; margin-top:6px; }
.card pre { white-space:pre-wrap; word-break:break-word; margin:2px 0 0; font:12px/1.4 ui-monospace,monospace;
            background:var(--bg); padding:6px; border-radius:4px; }
.chips span { display:inline-block; margin:6px 4px 0 0; padding:1px 7px; border-radius:10px; background:var(--bg); }
.chips .ok { color:var(--good); } .chips .ko { color:var(--bad); }
"""


def write_report(
    out_dir: Path,
    records: Sequence[dict[str, Any]],
    metrics: dict[str, Any],
    title: str = "productlens evaluation",
    n_examples: int = 8,
    thumb_px: int = 192,
) -> Path:
    """Records + evaluate_split metrics -> out_dir/report.html (written atomically); returns its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scores = row_scores([r["truth"] for r in records], [r["parsed"] for r in records]) if records else []
    order = sorted(range(len(records)), key=lambda i: scores[i]["combined"], reverse=True)
    best = order[:n_examples]
    worst = [i for i in reversed(order) if i not in best][:n_examples]  # no overlap when rows are few
    model = metrics.get("model", {})
    body = [
        f"<h1>{escape(title)}</h1>",
        f'<p class="sub">{len(records)} products scored. A parse failure scores as the worst answer (a missing '
        "price as a prediction of 0); each price error is capped at that, so no answer scores worse than none.</p>",
        _constrained_note(metrics),
        '<div class="pair">',
        _headline(model, metrics.get("baselines", {})),
        _price_plot(records, scores),
        "</div>",
        _confusion(records),
        _per_category(metrics.get("per_category", {})),
        _examples("examples-best", f"Best {len(best)} predictions", records, scores, best, thumb_px),
        _examples("examples-worst", f"Worst {len(worst)} predictions", records, scores, worst, thumb_px),
    ]
    page = (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head>\n<body><main>\n"
        + "\n".join(body)
        + "\n</main></body></html>\n"
    )
    path = out_dir / "report.html"
    return write_atomic(path, page)


def _constrained_note(metrics: dict[str, Any]) -> str:
    """A banner for constrained decoding (its failure rate is 0 by construction), else nothing."""
    if not metrics.get("constrained"):
        return ""
    return (
        '<p class="constrained"><strong>Constrained decoding</strong>: answers were forced into the template '
        "(categories from the training split, a numeric price), so the parse-failure rate is 0 by construction. "
        "Compare with a free run before reading these figures as the model's own.</p>"
    )


# ---- formatting -------------------------------------------------------------------------------------------


def _fmt(value: Any, kind: str) -> str:
    """money: 1,234.50; pct: 87.5%; num: 0.123; '—' for a missing value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if kind == "money":
        return f"{value:,.2f}"
    if kind == "pct":
        return f"{value:.1%}"
    if kind == "int":
        return f"{value:d}"
    return f"{value:.3f}"


def _section(section_id: str, heading: str, inner: str) -> str:
    return f'<section id="{section_id}"><h2>{escape(heading)}</h2>\n{inner}\n</section>'


# ---- headline ---------------------------------------------------------------------------------------------


def _headline(model: dict[str, Any], baselines: dict[str, Any]) -> str:
    rows = []
    for label, group, key, base_name, kind, higher in HEADLINE:
        value = model.get(group, {}).get(key)
        base = baselines.get(base_name, {}).get(key) if base_name else None
        verdict = ""
        if value is not None and base is not None and value != base:
            verdict = "good" if (value > base) == higher else "bad"
        which = f'<br><span class="note">vs {escape(BASELINE_NAMES[base_name])}</span>' if base_name else ""
        rows.append(
            f"<tr><td>{escape(label)}{which}</td><td class='{verdict}'>{_fmt(value, kind)}</td>"
            f"<td>{_fmt(base, kind)}</td></tr>"
        )
    table = (
        '<table class="headline"><thead><tr><th>Metric</th><th>Model</th><th>Baseline</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
        '<p class="note">Green: the model beats its baseline; red: it does not. Baselines are constant guesses '
        "from the training split, scored on the same rows.</p>"
    )
    return _section("headline", "Headline metrics", table)


# ---- price plot -------------------------------------------------------------------------------------------


def _price_plot(records: Sequence[dict[str, Any]], scores: list[dict[str, float]]) -> str:
    from matplotlib.figure import Figure  # no pyplot: no global state; PNG output goes through Agg

    pairs = [  # (true, predicted, category right)
        (float(r["truth"]["price"]), float(r["parsed"]["price"]), s["category_correct"] == 1.0)
        for r, s in zip(records, scores, strict=True)
        if r["parsed"].get("price") is not None and float(r["parsed"]["price"]) > 0
    ]
    left_out = len(records) - len(pairs)
    fig = Figure(figsize=(6.4, 5.2), dpi=110, layout="constrained")
    ax = fig.subplots()
    for ok, color, name in ((True, "#2563eb", "category right"), (False, "#dc2626", "category wrong")):
        xs = [t for t, _, c in pairs if c == ok]
        ys = [p for _, p, c in pairs if c == ok]
        if xs:
            ax.scatter(xs, ys, s=18, alpha=0.7, color=color, label=name, edgecolors="none")
    values = [v for t, p, _ in pairs for v in (t, p)] or [1.0, 10.0]
    lo, hi = min(values) / 1.5, max(values) * 1.5
    ax.plot([lo, hi], [lo, hi], color="#1f2933", lw=1, label="y = x")
    ax.set(
        xscale="log",
        yscale="log",
        xlim=(lo, hi),
        ylim=(lo, hi),
        xlabel="true price",
        ylabel="predicted price",
    )
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="upper left", frameon=False)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    note = f"{left_out} of {len(records)} rows have no positive parsed price and are not plotted."
    inner = (
        f'<div class="plot"><img id="price-scatter" alt="predicted versus true price, log axes" '
        f'src="data:image/png;base64,{data}"></div><p class="note">{escape(note)}</p>'
    )
    return _section("price-plot", "Predicted versus true price", inner)


# ---- category tables --------------------------------------------------------------------------------------


def _confusion(records: Sequence[dict[str, Any]]) -> str:
    if not records:
        return _section("confusion", "Category confusion matrix", '<p class="note">No rows.</p>')
    cm = confusion_matrix(
        [r["truth"]["category"] for r in records], [r["parsed"].get("category") for r in records]
    )
    head = "".join(f'<th class="col">{escape(c)}</th>' for c in cm["columns"])
    rows = []
    for i, (label, counts) in enumerate(zip(cm["labels"], cm["matrix"], strict=True)):
        total = sum(counts)
        if not total:
            continue  # a label only ever predicted: its column is enough
        cells = []
        for j, n in enumerate(counts):
            alpha = n / total
            style = f"background:rgba(37,99,235,{alpha:.2f});color:{'#fff' if alpha > 0.55 else '#1f2933'}"
            cells.append(f'<td class="{"diag" if i == j else ""}" style="{style}">{n or ""}</td>')
        rows.append(f'<tr><th class="row">{escape(label)}</th>{"".join(cells)}</tr>')
    table = (
        f'<div class="scroll"><table class="cm"><thead><tr><th class="row">true \\ predicted</th>{head}</tr>'
        f"</thead><tbody>{''.join(rows)}</tbody></table></div>"
        '<p class="note">Rows: true category; columns: predicted (also labels never true). Shade: share of the row.</p>'
    )
    return _section("confusion", "Category confusion matrix", table)


def _per_category(per_category: dict[str, dict[str, Any]]) -> str:
    rows = "".join(
        f"<tr><td>{escape(str(cat))}</td><td>{_fmt(v.get('count'), 'int')}</td>"
        f"<td>{_fmt(v.get('category_accuracy'), 'pct')}</td><td>{_fmt(v.get('price_median_ape'), 'pct')}</td>"
        f"<td>{_fmt(v.get('title_token_f1'), 'num')}</td></tr>"
        for cat, v in per_category.items()
    )
    table = (
        '<table class="per-category"><thead><tr><th>True category</th><th>Rows</th><th>Category accuracy</th>'
        f"<th>Price median APE</th><th>Title token F1</th></tr></thead><tbody>{rows}</tbody></table>"
    )
    return _section("per-category", "Per category", table)


# ---- examples ---------------------------------------------------------------------------------------------


def _examples(
    section_id: str,
    heading: str,
    records: Sequence[dict[str, Any]],
    scores: list[dict[str, float]],
    indices: list[int],
    thumb_px: int,
) -> str:
    cards = "".join(_card(records[i], scores[i], thumb_px) for i in indices)
    return _section(section_id, heading, f'<div class="cards">{cards}</div>')


def _card(record: dict[str, Any], score: dict[str, float], thumb_px: int) -> str:
    uri = _thumbnail(record.get("image_path"), thumb_px)
    photo = (
        f'<img alt="product photo" src="{uri}">'
        if uri
        else '<span class="missing">image not available</span>'
    )
    truth = record["truth"]
    truth_text = f"{truth['title']} | {truth['category']} | {_fmt(float(truth['price']), 'money')}"
    raw = str(record.get("raw_text") or "")
    if len(raw) > RAW_TEXT_CHARS:
        raw = raw[:RAW_TEXT_CHARS] + "…"
    ok = score["category_correct"] == 1.0
    failures = record.get("failures") or []
    chips = [
        f'<span class="{"ok" if ok else "ko"}">category {"✓" if ok else "✗"}</span>',
        f"<span>price error {_fmt(score['price_ape'], 'pct')}</span>",
        f"<span>title F1 {_fmt(score['title_token_f1'], 'num')}</span>",
        *(f'<span class="ko">no {escape(str(f))}</span>' for f in failures),
    ]
    return (
        f'<div class="card"><div class="photo">{photo}</div><div class="body">'
        f'<div class="note">#{escape(str(record.get("id", "")))} · score {_fmt(score["combined"], "num")}</div>'
        f'<div class="label">Truth</div><pre>{escape(truth_text)}</pre>'
        f'<div class="label">Model answer</div><pre>{escape(raw) or "(empty)"}</pre>'
        f'<div class="chips">{"".join(chips)}</div></div></div>'
    )


def _thumbnail(path: Any, thumb_px: int) -> str | None:
    """Image file -> 'data:image/jpeg;base64,...' at most thumb_px on a side; None if it cannot be read."""
    if not path:
        return None
    from PIL import Image, ImageOps

    try:
        with Image.open(path, formats=IMAGE_FORMATS) as im:
            im.draft("RGB", (thumb_px, thumb_px))  # JPEG: decode at reduced scale
            im = ImageOps.exif_transpose(im)
            if im.mode in ("RGBA", "LA", "P"):
                im = im.convert("RGBA")
                flat = Image.new("RGBA", im.size, "white")
                im = Image.alpha_composite(flat, im)
            im = im.convert("RGB")
            im.thumbnail((thumb_px, thumb_px))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=82)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
