"""report.html from synthetic records: structure checked in Python, then rendered in headless Chromium."""

from __future__ import annotations

import random
import re
from pathlib import Path

from browser import chromium_page
from PIL import Image

from productlens.catalog.schema import Product
from productlens.report import HEADLINE, write_report
from productlens.task.metrics import evaluate_split, row_scores
from productlens.task.parse import parse_answer
from productlens.task.prompts import AnswerTemplate

CATEGORIES = ["BAGS", "HATS & GLOVES", "N.A.", "SNEAKERS", "COATS"]
XSS = "<script>alert('x')</script>"


def make_records(folder: Path, n: int = 30) -> tuple[list[dict], list[Product]]:
    """n records with small photos (JPEG, RGBA PNG); the last ones are bad predictions with broken photos."""
    rng = random.Random(0)
    template = AnswerTemplate()
    records, train = [], []
    for i in range(n):
        category = CATEGORIES[i % len(CATEGORIES)]
        truth = Product(id=str(80_000_000 + i), title=f"Check Wool Item {i}", category=category,
                        price=round(32 * (70000 / 32) ** rng.random(), 2))  # fmt: skip
        train.append(
            Product(id=f"t{i}", title=f"Train Item {i % 3}", category=CATEGORIES[i % 2], price=100.0 + i)
        )
        image_path: str | None = str(folder / f"{truth.id}.jpg")
        colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        if i % 2:
            Image.new("RGB", (64 + i, 48 + 2 * i), colour).save(image_path)
        else:
            image_path = str(folder / f"{truth.id}.png")
            Image.new("RGBA", (40 + 3 * i, 80), (*colour, 128)).save(image_path)
        if i < n - 4:  # decent answers of varying quality
            guess = Product(id=truth.id, title=truth.title if i % 3 else f"Wool Item {i}",
                            category=category if i % 4 else CATEGORIES[(i + 1) % len(CATEGORIES)],
                            price=round(truth.price * rng.uniform(0.6, 1.5), 2))  # fmt: skip
            raw = template.render_answer(guess) + "<|end|>"
        else:  # bad answers; two photos missing or unreadable; one answer tries to inject markup
            raw = {
                n - 4: f"Product: {XSS}, Category: SHOES",
                n - 3: "I do not know",
                n - 2: "Full Price: $12",
            }.get(i, "Product: A & B, Category: <b>BAGS</b>")
            if i == n - 3:
                image_path = str(folder / "missing.jpg")
            if i == n - 2:
                Path(image_path).write_bytes(b"not an image at all")
        parsed = parse_answer(raw)
        records.append({
            "id": truth.id,
            "image_path": image_path,
            "truth": {"title": truth.title, "category": truth.category, "price": truth.price},
            "raw_text": raw,
            "parsed": {"title": parsed.title, "category": parsed.category, "price": parsed.price},
            "failures": list(parsed.failures),
        })  # fmt: skip
    return records, train


def build(tmp_path: Path) -> tuple[Path, list[dict], dict]:
    images = tmp_path / "images"
    images.mkdir()
    records, train = make_records(images)
    truth = [r["truth"] for r in records]
    metrics = evaluate_split(truth, [r["parsed"] for r in records], train)
    path = write_report(tmp_path / "out", records, metrics, title="Synthetic & <test> report")
    return path, records, metrics


def test_report_structure(tmp_path):
    path, records, metrics = build(tmp_path)
    page = path.read_text(encoding="utf-8")
    assert path.name == "report.html" and [p.name for p in path.parent.iterdir()] == [
        "report.html"
    ]  # no temp left

    # self-contained: no URL to fetch anywhere, no scripts or stylesheets to load
    assert not re.search(r"https?://", page)
    assert not re.search(r"<(script|link|iframe)\b", page, re.IGNORECASE)
    sources = re.findall(r'src="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/") for s in sources)

    # data is escaped: titles, categories, model text and the report title
    assert XSS not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "<b>BAGS</b>" not in page and "&lt;b&gt;BAGS&lt;/b&gt;" in page
    assert "HATS &amp; GLOVES" in page and "<title>Synthetic &amp; &lt;test&gt; report</title>" in page

    # headline table: every metric row, model and baseline numbers as formatted in the report
    headline = re.search(r'<section id="headline">.*?</section>', page, re.DOTALL).group()
    assert headline.count("<tr>") == len(HEADLINE) + 1
    model, base = metrics["model"], metrics["baselines"]
    assert f"{model['price']['mae']:,.2f}" in headline and f"{base['median_price']['mae']:,.2f}" in headline
    assert f"{model['category']['accuracy']:.1%}" in headline
    assert f"{base['majority_category']['accuracy']:.1%}" in headline
    assert (
        f"{model['title']['token_f1']:.3f}" in headline
        and f"{base['common_title']['token_f1']:.3f}" in headline
    )

    # plot, confusion matrix, per-category table
    assert page.count('id="price-scatter"') == 1 and 'src="data:image/png;base64,' in page
    confusion = re.search(r'<section id="confusion">.*?</section>', page, re.DOTALL).group()
    assert all(f">{c.replace('&', '&amp;')}</th>" in confusion for c in CATEGORIES)
    per_cat = re.search(r'<section id="per-category">.*?</section>', page, re.DOTALL).group()
    assert per_cat.count("<tr>") == len(metrics["per_category"]) + 1

    # best and worst 8 by combined score, each with its photo or a placeholder
    scores = [
        s["combined"] for s in row_scores([r["truth"] for r in records], [r["parsed"] for r in records])
    ]
    order = sorted(range(len(records)), key=lambda i: scores[i], reverse=True)
    for section, expected in (("examples-best", order[:8]), ("examples-worst", order[::-1][:8])):
        html = re.search(rf'<section id="{section}">.*?</section>', page, re.DOTALL).group()
        assert re.findall(r'<div class="note">#(\d+)', html) == [records[i]["id"] for i in expected]
    assert page.count('<div class="card">') == 16
    assert page.count("data:image/jpeg;base64,") == 14 and page.count("image not available") == 2


def test_report_renders_in_chromium(tmp_path):
    path, _, _ = build(tmp_path)
    requested: list[str] = []
    with chromium_page() as page:
        page.on("request", lambda request: requested.append(request.url))
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(path.as_uri(), wait_until="load")
        images = page.evaluate(
            "Array.from(document.images).map(i => ({w: i.naturalWidth, h: i.naturalHeight, ok: i.complete}))"
        )
        assert len(images) == 15  # the plot + 14 product photos
        assert all(i["ok"] and i["w"] > 0 and i["h"] > 0 for i in images)
        plot = page.locator("#price-scatter")
        assert plot.evaluate("i => i.naturalWidth") > 300 and plot.bounding_box()["height"] > 200
        assert page.locator("table.headline tbody tr").count() == len(HEADLINE)
        assert page.locator("table.cm tbody tr").count() == len(CATEGORIES)
        assert page.locator("#examples-worst .card").count() == 8
        assert page.locator("#examples-worst .missing").count() == 2
        assert page.title() == "Synthetic & <test> report"
        shot = tmp_path / "report.png"
        page.screenshot(path=str(shot), full_page=True)
    assert not errors
    assert all(url.startswith(("file:", "data:")) for url in requested), requested
    assert shot.stat().st_size > 10_000
    with Image.open(shot) as im:
        assert im.width == 1280 and im.height > 1500  # the whole page, not just the viewport


def test_report_with_nothing_parsed_and_no_rows(tmp_path):
    records, train = make_records(tmp_path, n=6)
    for r in records:
        r["parsed"] = {"title": None, "category": None, "price": None}
        r["failures"] = ["title", "category", "price"]
    metrics = evaluate_split([r["truth"] for r in records], [r["parsed"] for r in records], train)
    page = write_report(tmp_path / "a", records, metrics).read_text()
    assert "6 of 6 rows have no positive parsed price" in page and "0.0%" in page
    empty = write_report(tmp_path / "b", [], {}).read_text()
    assert 'id="headline"' in empty and "—" in empty and 'id="price-scatter"' in empty
