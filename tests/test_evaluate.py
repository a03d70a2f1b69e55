"""evaluate on a tiny random Phi-3-V and a small prepared dataset (same layout as `productlens prepare`):
predictions.jsonl, metrics.json with baselines, report.html, the nearest-neighbour baseline, constrained
decoding, W&B logging in offline mode, and the CLI."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from productlens.cli import app
from productlens.evaluate import evaluate
from productlens.phi3v.tiny import save_tiny_model
from productlens.predict import Predictor

CATEGORIES = ["BAGS", "SCARVES", "SHOES"]
FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "image": datasets.Image(),
        "title": datasets.Value("string"),
        "category": datasets.Value("string"),
        "price": datasets.Value("float64"),
    }
)


def photo(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    size = (int(rng.integers(80, 260)), int(rng.integers(80, 260)))
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """prepared/dataset: train 12 products; test = copies of train products 0, 4, 8, 10, 11 (same photo and
    fields), so a nearest-neighbour baseline on image features must score 100%."""
    root = tmp_path_factory.mktemp("prepared")
    (root / "images").mkdir()
    train = {name: [] for name in FEATURES}
    for i in range(12):
        path = root / "images" / f"{i}.jpg"
        photo(i).save(path)
        train["id"].append(f"p{i}")
        train["image"].append(str(path))
        train["title"].append(f"Check Item {i}")
        train["category"].append(CATEGORIES[i % 3])
        train["price"].append(100.0 * (i + 1))
    picks = [0, 4, 8, 10, 11]
    test = {name: [train[name][i] for i in picks] for name in FEATURES}
    test["id"] = [f"t{i}" for i in picks]
    validation = {name: values[:2] for name, values in train.items()}
    splits = {"train": train, "validation": validation, "test": test}
    dd = datasets.DatasetDict(
        {s: datasets.Dataset.from_dict(c, features=FEATURES) for s, c in splits.items()}
    )
    dd.save_to_disk(str(root / "dataset"))
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    texts = [
        "Product: Check Item 3, Category: SCARVES, Full Price: 400.0",
        "What is shown in this image?",
    ] * 10
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model", texts, vocab_size=400)


@pytest.fixture(scope="module")
def predictor(model_dir):
    return Predictor.load(model_dir, max_new_tokens=16)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_writes_predictions_metrics_and_report(predictor, data_dir, tmp_path):
    metrics = evaluate(predictor, data_dir, "test", tmp_path, batch_size=2, progress=False)
    records = read_jsonl(tmp_path / "predictions.jsonl")
    assert [r["id"] for r in records] == ["t0", "t4", "t8", "t10", "t11"]
    first = records[0]
    assert first["truth"] == {"title": "Check Item 0", "category": "BAGS", "price": 100.0}
    assert set(first["parsed"]) == {"title", "category", "price"} and isinstance(first["raw_text"], str)
    assert first["errors"]["price_abs_error"] == pytest.approx(
        abs((first["parsed"]["price"] or 0.0) - 100.0)
    )  # a missing price is scored as 0
    assert Image.open(first["image_path"]).size == photo(0).size  # the report can show the photo
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    assert on_disk["n"] == 5 and on_disk["split"] == "test"
    assert set(on_disk["baselines"]) == {"median_price", "majority_category", "common_title"}
    # median training price 650 against 100, 500, 900, 1100, 1200; the 550 off on 100 is capped at 100 (a
    # missing answer's error), so that no answer scores worse than none
    assert on_disk["baselines"]["median_price"]["mae"] == pytest.approx(np.mean([100, 150, 250, 450, 550]))
    assert set(on_disk["per_category"]) == set(CATEGORIES)
    assert on_disk["model"]["failure_rate"]["any"] == 1.0  # a random model answers nothing readable
    html = (tmp_path / "report.html").read_text()
    assert "Headline metrics" in html and "data:image/jpeg;base64," in html


def test_answers_match_the_predictor_on_the_same_photos(predictor, data_dir, tmp_path):
    evaluate(predictor, data_dir, "test", tmp_path, batch_size=3, progress=False)
    records = read_jsonl(tmp_path / "predictions.jsonl")
    direct = predictor.predict([Image.open(data_dir / "images" / f"{i}.jpg") for i in (0, 4, 8, 10, 11)])
    assert [r["raw_text"] for r in records] == [p.raw_text for p in direct]


def test_limit_constrain_and_nearest_neighbour(predictor, data_dir, tmp_path):
    metrics = evaluate(
        predictor.with_options(max_new_tokens=60),
        data_dir,
        "test",
        tmp_path,
        limit=4,
        constrain=True,
        nn_baseline=True,
        progress=False,
    )
    records = read_jsonl(tmp_path / "predictions.jsonl")
    assert len(records) == 4 and metrics["n"] == 4 and metrics["constrained"]
    assert all(r["parsed"]["category"] in CATEGORIES and r["parsed"]["price"] is not None for r in records)
    nn = metrics["baselines"]["nearest_neighbour"]
    assert nn["category"]["accuracy"] == 1.0 and nn["title"]["exact_match"] == 1.0 and nn["price"]["mae"] == 0
    assert [r["nearest_neighbour"]["id"] for r in records] == ["p0", "p4", "p8", "p10"]


def test_logs_to_an_active_wandb_run(predictor, data_dir, tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = wandb.init(project="productlens-test", dir=str(tmp_path))
    try:
        evaluate(predictor, data_dir, "test", tmp_path / "eval", limit=2, progress=False)
        summary = dict(run.summary)
    finally:
        wandb.finish()
    assert summary["test/model/category/accuracy"] >= 0.0
    assert "test/baselines/median_price/mae" in summary and "test/predictions" in summary
    assert list(tmp_path.glob("wandb/offline-run-*"))


def test_bad_split_says_which_exist(predictor, data_dir, tmp_path):
    with pytest.raises(ValueError, match=r"splits \['test', 'train', 'validation'\]"):
        evaluate(predictor, data_dir, "dev", tmp_path, progress=False)


def test_cli_evaluate(model_dir, data_dir, tmp_path):
    runner = CliRunner()
    out = tmp_path / "eval"
    args = ["evaluate", "--model", str(model_dir), "--data", str(data_dir), "--out", str(out)]
    result = runner.invoke(app, [*args, "--limit", "2", "--max-new-tokens", "8"])
    assert result.exit_code == 0, result.output
    assert len(read_jsonl(out / "predictions.jsonl")) == 2 and (out / "report.html").is_file()
    assert "Category accuracy" in result.output  # the console table
    missing = runner.invoke(app, ["evaluate", "--model", str(model_dir), "--data", str(tmp_path / "none")])
    assert missing.exit_code == 2 and "productlens prepare" in missing.output


def test_constrained_results_are_labelled_wherever_shown(predictor, data_dir, tmp_path, monkeypatch, capsys):
    """--constrain makes the failure rate 0 by construction: metrics.json, the console table, report.html and
    W&B say so, and W&B keeps constrained figures apart from free-run ones."""
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = wandb.init(project="productlens-test", dir=str(tmp_path))
    try:
        out = tmp_path / "eval"
        evaluate(predictor.with_options(max_new_tokens=60), data_dir, "test", out, limit=2, constrain=True,
                 progress=False)  # fmt: skip
        summary = dict(run.summary)
    finally:
        wandb.finish()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["constrained"] is True and metrics["decoding"].startswith("constrained")
    assert "constrained decoding" in capsys.readouterr().err
    html = (out / "report.html").read_text()
    assert "constrained decoding" in html and "0 by construction" in html
    assert "test-constrained/model/category/accuracy" in summary
    assert not any(key.startswith("test/") for key in summary)


def test_a_free_run_is_labelled_free(predictor, data_dir, tmp_path, capsys):
    evaluate(predictor, data_dir, "test", tmp_path, limit=1, progress=False)
    assert json.loads((tmp_path / "metrics.json").read_text())["decoding"] == "free"
    assert "constrained" not in capsys.readouterr().err
    assert "constrained decoding" not in (tmp_path / "report.html").read_text()
