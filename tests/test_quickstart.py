"""The README's main job, for real: `productlens quickstart` generates a catalog, serves it on loopback,
prepares it, trains a tiny Phi-3-Vision from scratch on the CPU and must visibly learn on the held-out test
split: category accuracy >= 3x the majority class, price median APE <= 0.6x the training median's, title token
F1 >= 2x the most common title's. The CI run trains half as many steps as the README's default (CI_SETTINGS);
both meet the targets."""

import json
import os
import subprocess
import sys

from productlens.quickstart import TARGETS

# The suite's quickstart: half the catalog and half the steps of configs/quickstart.yaml (about 3 minutes on
# two cores instead of about 7); `productlens quickstart` without --set is the README's run.
CI_SETTINGS = [
    "quickstart.rows=6000",
    "training.max_steps=2500",
    "training.eval_steps=500",
    "training.save_steps=500",
]


def test_quickstart_learns(tmp_path):
    out = tmp_path / "qs"
    command = [sys.executable, "-m", "productlens", "quickstart", "--out", str(out)]
    for setting in CI_SETTINGS:
        command += ["--set", setting]
    run = subprocess.run(
        command, capture_output=True, text=True, timeout=1200, env={**os.environ, "COLUMNS": "120"}
    )
    assert run.returncode == 0, run.stderr[-4000:]
    assert run.stdout.count("PASS") == 3 and "FAIL" not in run.stdout, run.stdout[-3000:]

    metrics = json.loads((out / "metrics.json").read_text())
    targets = metrics["quickstart"]["targets"]
    assert metrics["quickstart"]["passed"] and [t["name"] for t in targets] == [t[0] for t in TARGETS]
    for (name, group, key, baseline, factor, higher), target in zip(TARGETS, targets, strict=True):
        value, base = metrics["model"][group][key], metrics["baselines"][baseline][key]
        assert (target["value"], target["baseline"]) == (value, base)
        assert value >= factor * base if higher else value <= factor * base, name

    # the numbers are the predictions' own: re-score predictions.jsonl from scratch
    from productlens.catalog.prepare import load_prepared
    from productlens.task.metrics import evaluate_split

    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    data = load_prepared(out / "data")
    assert len(records) == len(data["test"]) > 100
    assert [r["truth"]["title"] for r in records] == data["test"]["title"]
    train_rows = data["train"].select_columns(["title", "category", "price"]).to_list()
    rescored = evaluate_split([r["truth"] for r in records], [r["parsed"] for r in records], train_rows)
    assert rescored["model"]["category"]["accuracy"] == metrics["model"]["category"]["accuracy"]
    assert rescored["model"]["price"]["median_ape"] == metrics["model"]["price"]["median_ape"]
    assert rescored["model"]["title"]["token_f1"] == metrics["model"]["title"]["token_f1"]

    # a model folder the other commands load: official layout + processor, trained from the random base
    model_dir = out / "model"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"):
        assert (model_dir / name).is_file(), name
    assert (out / "report.html").read_text().count("<img") >= 8
    from productlens.predict import Predictor

    predictor = Predictor.load(str(model_dir), max_new_tokens=40)
    first = data["test"][0]
    (prediction,) = predictor.predict([first["image"].convert("RGB")])
    assert prediction.raw_text == records[0]["raw_text"]  # the saved model is the one that was scored
    assert prediction.category == records[0]["parsed"]["category"]
