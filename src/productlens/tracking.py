"""Experiment tracking for a training run: Weights & Biases set-up (online, or offline when there is no key or
no network, said on the console), generation-based evaluation on a fixed validation sample with a prediction
table per evaluation, and the final model as an artifact. Used by `productlens train` (see train.py).
"""

from __future__ import annotations

import math
import netrc
import os
import re
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from rich.console import Console
from transformers import TrainerCallback

from productlens.config import EvalConfig, WandbConfig
from productlens.task.metrics import evaluate_split, row_scores
from productlens.task.prompts import AnswerTemplate

console = Console(stderr=True, soft_wrap=True)  # no line breaks inside paths
WANDB_HOST = "https://api.wandb.ai"
THUMBNAIL_PX = 256  # photos in the prediction table are shrunk to this size
PROBE_TIMEOUT_S = 3.0  # how long to wait for the W&B server before going offline


def wandb_mode(environ: Mapping[str, str] = os.environ) -> tuple[str, str]:
    """-> (mode, reason): 'online' with an API key and a reachable server, else 'offline'; WANDB_MODE wins."""
    explicit = environ.get("WANDB_MODE")
    if explicit:
        return explicit, f"WANDB_MODE={explicit}"
    server = urlparse(environ.get("WANDB_BASE_URL", WANDB_HOST))
    host = server.hostname or "api.wandb.ai"
    if not _has_api_key(host, environ):
        return "offline", "no W&B API key (set WANDB_API_KEY or run `wandb login`)"
    try:
        port = server.port or (80 if server.scheme == "http" else 443)
        socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
    except OSError as error:
        return "offline", f"{host} is not reachable ({error.__class__.__name__})"
    return "online", "API key found and the W&B server is reachable"


def _has_api_key(host: str, environ: Mapping[str, str]) -> bool:
    if environ.get("WANDB_API_KEY"):
        return True
    path = environ.get("NETRC") or os.path.expanduser("~/.netrc")
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def start_wandb(settings: WandbConfig, output_dir: Path, config: dict[str, Any]) -> Any:
    """Open the W&B run (main process only) that transformers' WandbCallback then reuses; -> the run."""
    import wandb

    mode, reason = wandb_mode()
    folder = Path(os.environ.get("WANDB_DIR") or output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    if mode == "offline":
        console.print(
            f"[yellow]W&B offline[/yellow]: {reason}. The run is kept in {folder}/wandb; "
            f"upload it later with `wandb sync {folder}/wandb/offline-run-*`."
        )
    else:
        console.print(f"W&B {mode}: {reason}.")
    run = wandb.init(
        project=settings.project,
        entity=settings.entity,
        name=settings.name or output_dir.name,
        dir=str(folder),
        mode=mode,
        config=config,
    )
    # the same x-axis as transformers' callback, so the tables line up with the losses
    run.define_metric("train/global_step")
    run.define_metric("*", step_metric="train/global_step", step_sync=True)
    return run


def log_model_artifact(folder: Path, kind: str, metadata: Mapping[str, Any] | None = None) -> None:
    """Log a saved model folder (adapter or merged model) as a W&B artifact of the active run, if any."""
    import wandb

    if wandb.run is None:
        return
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{wandb.run.name or wandb.run.id}-{kind}")
    artifact = wandb.Artifact(name=name, type="model", metadata=dict(metadata or {}))
    artifact.add_dir(str(folder))
    wandb.run.log_artifact(artifact, aliases=["final", "latest"])


def finish_wandb() -> None:
    """Close the active W&B run (flushes an offline run to disk)."""
    import wandb

    if wandb.run is not None:
        wandb.finish()


def flatten_scores(scores: Mapping[str, Any]) -> dict[str, float]:
    """metrics.score_predictions output -> {'category_accuracy': .., 'price_median_ape': .., ...} (numbers only)."""
    out: dict[str, float] = {}
    for section in ("price", "category", "title"):
        for key, value in scores.get(section, {}).items():
            if isinstance(value, int | float) and key != "n_classes" and math.isfinite(value):
                out[f"{section}_{key}"] = float(value)
    out["failure_rate"] = float(scores.get("failure_rate", {}).get("any", 0.0))
    return out


class GenerationEvalCallback(TrainerCallback):
    """Generates answers for a fixed validation sample and scores them with the task's metrics.

    The trainer calls `run` inside its evaluation (so the metrics join eval_loss and can pick the best
    checkpoint); `on_evaluate` then logs the photo / truth / prediction table to W&B.
    """

    def __init__(
        self,
        sample: Sequence[Mapping[str, Any]],
        train_rows: Sequence[Mapping[str, Any]],
        template: AnswerTemplate,
        settings: EvalConfig,
        table_rows: int,
    ) -> None:
        self.sample = [dict(row) for row in sample]  # {id, image (PIL), title, category, price}
        self.train_rows = list(train_rows)
        self.template = template
        self.settings = settings
        self.table_rows = table_rows
        self.last: list[dict[str, Any]] | None = None  # the latest records, until logged

    def run(self, model: Any, processor: Any, family: Any = None) -> dict[str, float]:
        """Model (in memory) -> task metrics on the sample, e.g. {'category_accuracy': 0.4, ...}."""
        from productlens.predict import Predictor

        predictor = Predictor(
            model,
            processor,
            template=self.template,
            family=family,
            max_new_tokens=self.settings.max_new_tokens,
            batch_size=self.settings.batch_size,
        )
        was_training = model.training
        model.eval()
        try:
            predictions = predictor.predict([row["image"] for row in self.sample])
        finally:
            model.train(was_training)
        scores = evaluate_split(self.sample, predictions, self.train_rows)
        per_row = row_scores(self.sample, predictions)
        self.last = [
            {"row": row, "prediction": pred, "score": score}
            for row, pred, score in zip(self.sample, predictions, per_row, strict=True)
        ]
        return flatten_scores(scores["model"])

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        records, self.last = self.last, None
        if records and state.is_world_process_zero and "wandb" in args.report_to:
            log_prediction_table(records[: self.table_rows], self.template, state.global_step)


def log_prediction_table(records: Sequence[Mapping[str, Any]], template: AnswerTemplate, step: int) -> None:
    """One W&B table: photo, true answer, generated answer, parsed fields and per-row errors."""
    import wandb

    if wandb.run is None:
        return
    from productlens.catalog.schema import Product

    table = wandb.Table(
        columns=[
            "id",
            "photo",
            "truth",
            "prediction",
            "title",
            "category",
            "price",
            "category_correct",
            "price_ape",
            "title_token_f1",
            "failures",
        ]
    )
    for record in records:
        row, pred, score = record["row"], record["prediction"], record["score"]
        photo = row["image"].convert("RGB")
        photo.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
        truth = template.render_answer(
            Product(str(row["id"]), row["title"], row["category"], float(row["price"]))
        )
        table.add_data(
            str(row["id"]),
            wandb.Image(photo),
            truth,
            pred.raw_text,
            pred.title,
            pred.category,
            pred.price,
            bool(score["category_correct"]),
            score["price_ape"],
            score["title_token_f1"],
            ", ".join(pred.failures),
        )
    wandb.log({"eval/predictions": table, "train/global_step": step})
