"""The README's main job, for real: `productlens quickstart` generates a catalog, serves it on loopback,
prepares it, trains a tiny Phi-3-Vision from scratch on the CPU and must visibly learn on the held-out test
split: category accuracy >= 3x the majority class, price median APE <= 0.6x the training median's, title token
F1 >= 2x the most common title's. The CI run is the README's run, as is. It also leaves an offline W&B run (no key needed) whose history holds the losses, the
learning rate and the task metrics of every evaluation, read back from the .wandb file. Every other family's
quickstart runs whole at CI size."""

import json
import os
import subprocess
import sys

import pytest
from test_tracking import _records

from productlens.families import get_family
from productlens.quickstart import TARGETS, _wandb_offline_unless_set
from productlens.tracking import wandb_mode


def test_wandb_is_offline_unless_wandb_mode_says_otherwise(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "a-key")  # even with a key: the quickstart stays offline
    with _wandb_offline_unless_set(True):
        assert wandb_mode()[0] == "offline"
    assert "WANDB_MODE" not in os.environ
    with _wandb_offline_unless_set(False):  # report_to none: nothing set
        assert "WANDB_MODE" not in os.environ
    monkeypatch.setenv("WANDB_MODE", "online")
    with _wandb_offline_unless_set(True):
        assert wandb_mode()[0] == "online"


def test_quickstart_learns(tmp_path):
    out = tmp_path / "qs"
    command = [
        sys.executable,
        "-m",
        "productlens",
        "quickstart",
        "--out",
        str(out),
    ]  # the README's run, as is
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DIR")}
    env.update({"COLUMNS": "120", "NETRC": str(tmp_path / "no-netrc")})
    for name in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        env[name] = str(tmp_path / "wandb-home")
    run = subprocess.run(command, capture_output=True, text=True, timeout=1200, env=env)
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

    _check_the_wandb_run(out, run.stdout, metrics)


def _check_the_wandb_run(out, stdout, metrics):
    """The quickstart's offline W&B run: printed with its `wandb sync` command; losses, learning rate and the
    task metrics of each evaluation (the trainer's own numbers), a prediction table, the model artifact."""
    from pathlib import Path

    run_dir = Path(metrics["quickstart"]["wandb_run"])
    assert run_dir.parent == out / "wandb" and run_dir.name.startswith("offline-run-")
    assert f"wandb sync {run_dir}" in stdout
    records = _records(next(run_dir.glob("run-*.wandb")))
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run.project == "productlens-quickstart" and run.display_name == "quickstart"
    history = [
        {i.key or "/".join(i.nested_key): i.value_json for i in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    for key in ("train/loss", "train/learning_rate", "eval/loss", "eval/failure_rate"):
        assert any(key in h for h in history), key
    state = json.loads(next(out.glob("checkpoint-*/trainer_state.json")).read_text())
    evals = [e for e in state["log_history"] if "eval_category_accuracy" in e]
    assert len(evals) == 5  # 2500 steps, an evaluation every 500
    for name in ("category_accuracy", "price_median_ape", "title_token_f1"):
        logged = [
            (json.loads(h["train/global_step"]), json.loads(h[f"eval/{name}"]))
            for h in history
            if f"eval/{name}" in h
        ]
        expected = [(e["step"], e[f"eval_{name}"]) for e in evals]
        assert [s for s, _ in logged] == [s for s, _ in expected], name
        assert all(abs(a - b) < 1e-9 for (_, a), (_, b) in zip(logged, expected, strict=True)), name
    tables = [h for h in history if h.get("eval/predictions/_type") == '"table-file"']
    assert len(tables) == 5 and all(json.loads(t["eval/predictions/nrows"]) == 16 for t in tables)
    artifacts = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
    (model,) = [a for a in artifacts if a.type == "model"]
    assert {e.path for e in model.manifest.contents} >= {"model.safetensors", "config.json", "tokenizer.json"}


# Each other family's quickstart, CI-sized: a small catalog and 40 steps (its full run, which meets the targets,
# is recorded in bench/RESULTS.md: `productlens quickstart --family NAME`).
SHORT = ["quickstart.rows=400", "training.max_steps=40", "training.eval_steps=40", "training.save_steps=40"]
SHORT += ["training.logging_steps=10", "training.report_to=none", "data.eval_limit=16", "eval.sample_size=8"]


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl", "smolvlm", "gemma3"])
def test_each_family_runs_the_whole_quickstart(family, tmp_path):
    from productlens.quickstart import run_quickstart

    out = tmp_path / "qs"
    result = run_quickstart(out, "quickstart", SHORT, family=family)
    config = json.loads((out / "base" / "config.json").read_text())
    assert get_family(family).model_types == (config["model_type"],)  # a tiny model of that architecture
    state = json.loads(next(out.glob("checkpoint-40/trainer_state.json")).read_text())
    losses = [e["loss"] for e in state["log_history"] if "loss" in e]
    assert len(losses) == 4 and losses[-1] < 0.5 * losses[0], losses  # it learns
    assert any("eval_category_accuracy" in e for e in state["log_history"])  # generation-based evaluation
    records = (out / "predictions.jsonl").read_text().splitlines()
    assert len(records) == result.metrics["n"] > 20  # every test product generated for and scored
    assert [t.name for t in result.targets] == [t[0] for t in TARGETS]
    assert (out / "report.html").is_file() and (result.model_dir / "config.json").is_file()
    from productlens.predict import Predictor

    reloaded = Predictor.load(out, max_new_tokens=40)  # the run folder serves the other commands
    assert reloaded.family is get_family(family)
