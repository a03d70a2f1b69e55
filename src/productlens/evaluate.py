"""Generation-based evaluation: a model (or Predictor) over one split of a prepared dataset, scored against
constant baselines from the training split (and, on request, a nearest-neighbour baseline on image features).

In: a run/model folder and a `productlens prepare` folder. Out: predictions.jsonl, metrics.json and report.html
in the output folder, a table of headline metrics on the console, and W&B logs when a run is active.
Run: `productlens evaluate --model runs/quickstart --data data/prepared --split test`.
"""

from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from productlens.endpoint import Refused
from productlens.files import write_atomic
from productlens.predict import Constraints, Prediction, Predictor
from productlens.task.metrics import evaluate_split, price_errors, row_scores, score_predictions

THUMBNAIL_PX = 256  # photos in the W&B table are shrunk to this size
CONSTRAINED = (
    "constrained decoding: categories from the training split, a numeric price; the parse-failure rate is 0 "
    "by construction, so these figures are not those of a free run"
)


def evaluate(
    model: str | os.PathLike | Predictor,
    data_dir: str | os.PathLike,
    split: str = "test",
    out_dir: str | os.PathLike | None = None,
    *,
    adapter: str | os.PathLike | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    max_new_tokens: int | None = None,
    constrain: bool = False,
    nn_baseline: bool = False,
    wandb_run: Any = None,
    table_rows: int = 64,
    chunk: int = 64,
    progress: bool = True,
    endpoint: str | None = None,
    api_key: str | None = None,
    family: str | None = None,
) -> dict[str, Any]:
    """Predict every product of `split`, score it, write predictions.jsonl / metrics.json / report.html.

    `model`: a loaded Predictor, or what `Predictor.load` takes. `constrain`: category from the training
    split's categories, price a number. `nn_baseline`: also score copying the training product whose mean image
    feature is closest (cosine). Metrics go to `wandb_run`, or to the active W&B run if there is one.
    `endpoint`: score the model an OpenAI-compatible server serves instead (`model`: its served name or None).
    `family`: the model family, when the checkpoint's config.json does not say.
    Returns the metrics dict (as in metrics.json).
    """
    from tqdm import tqdm

    from productlens.catalog.prepare import load_prepared
    from productlens.report import write_report

    dataset = load_prepared(data_dir)
    for needed in (split, "train"):
        if needed not in dataset:
            raise ValueError(f"{data_dir} has splits {sorted(dataset)}; there is no {needed!r} split")
    rows = dataset[split]
    if limit is not None:
        rows = rows.select(range(min(limit, len(rows))))
    if len(rows) == 0:
        raise ValueError(f"the {split!r} split of {data_dir} is empty; nothing to evaluate")
    train_rows = dataset["train"].select_columns(["id", "title", "category", "price"]).to_list()

    if endpoint is not None:  # a served model: the same prompts and parser, scored the same way
        if constrain or nn_baseline:
            raise ValueError("--constrain and --nn-baseline need the model here; drop them with --endpoint")
        from productlens.endpoint import RemotePredictor

        predictor = RemotePredictor(endpoint, api_key, model=model, max_new_tokens=max_new_tokens)  # type: ignore[arg-type]
    else:
        predictor = _predictor(model, adapter, batch_size, max_new_tokens, family)
    if constrain:
        predictor = predictor.with_options(constraints=Constraints.from_training(train_rows))
    out = Path(out_dir) if out_dir is not None else _default_out(model, split)
    out.mkdir(parents=True, exist_ok=True)

    undecoded = _undecoded(rows)
    records: list[dict[str, Any]] = []
    predictions: list[Prediction] = []
    features: list[np.ndarray] = []
    with tqdm(total=len(rows), unit="product", desc=f"evaluate {split}", disable=not progress) as bar:
        for start in range(0, len(rows), chunk):
            part = undecoded[start : start + chunk]
            images = [_image(item) for item in part["image"]]
            predictions += [  # a photo an endpoint refused is scored as read wrong in every field
                p.as_failed() if isinstance(p, Refused) else p for p in predictor.predict(images, batch_size)
            ]
            if nn_baseline:
                features.append(predictor.image_features(images, batch_size))
            for i, item in enumerate(part["image"]):
                records.append(
                    {"id": str(part["id"][i]), "image_path": _image_path(item, part["id"][i], out)}
                )
            bar.update(len(images))

    truth = [
        {"title": r["title"], "category": r["category"], "price": float(r["price"])}
        for r in _plain_rows(rows)
    ]
    metrics: dict[str, Any] = {
        "split": split,
        "n": len(truth),
        "source": endpoint or (None if isinstance(model, Predictor) else str(model)),
        "constrained": constrain,
        "decoding": CONSTRAINED if constrain else "free",
        "seconds_per_product": float(np.mean([p.seconds for p in predictions])),
    }
    metrics.update(evaluate_split(truth, predictions, train_rows))
    neighbours = None
    if nn_baseline:
        neighbours = _nearest_neighbours(
            predictor, dataset["train"], np.concatenate(features), batch_size, chunk
        )
        guesses = [train_rows[j] for j in neighbours]
        metrics["baselines"]["nearest_neighbour"] = score_predictions(truth, guesses)

    scores = row_scores(truth, predictions)
    abs_errors = price_errors([t["price"] for t in truth], [p.price for p in predictions])["abs"]
    for i, (record, t, p, s) in enumerate(zip(records, truth, predictions, scores, strict=True)):
        record.update(
            truth=t,
            raw_text=p.raw_text,
            parsed={"title": p.title, "category": p.category, "price": p.price},
            failures=list(p.failures),
            errors={"price_abs_error": float(abs_errors[i]), **s},
            seconds=p.seconds,
        )
        if neighbours is not None:
            n = train_rows[neighbours[i]]
            record["nearest_neighbour"] = {k: n[k] for k in ("id", "title", "category", "price")}

    _write_jsonl(out / "predictions.jsonl", records)
    write_atomic(out / "metrics.json", json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    label = " (constrained decoding)" if constrain else ""
    write_report(out, records, metrics, title=f"productlens evaluation: {split} split{label}")
    _log_wandb(wandb_run, split, metrics, records, undecoded, table_rows)
    print_summary(metrics)
    return metrics


def _predictor(
    model: str | os.PathLike | Predictor,
    adapter: Any,
    batch_size: int,
    max_new_tokens: int | None,
    family: str | None = None,
) -> Predictor:
    options: dict[str, Any] = {"batch_size": batch_size}
    if max_new_tokens is not None:
        options["max_new_tokens"] = max_new_tokens
    if isinstance(model, Predictor):
        return model.with_options(**options)
    return Predictor.load(model, adapter=adapter, family=family, **options)


def _default_out(model: Any, split: str) -> Path:
    """<model folder>/eval-<split> for a local folder, else runs/eval-<split>."""
    if isinstance(model, str | os.PathLike) and Path(model).is_dir():
        return Path(model) / f"eval-{split}"
    return Path("runs") / f"eval-{split}"


def _undecoded(rows: Any) -> Any:
    """The split with its image column left as {bytes, path} (we decode, and keep the path for the report)."""
    import datasets

    return rows.cast_column("image", datasets.Image(decode=False))


def _plain_rows(rows: Any) -> list[dict[str, Any]]:
    return rows.select_columns(["title", "category", "price"]).to_list()


def _image(item: dict[str, Any]) -> Image.Image:
    """{bytes, path} -> RGB image."""
    if item.get("bytes"):
        with Image.open(io.BytesIO(item["bytes"])) as im:
            return im.convert("RGB")
    with Image.open(item["path"]) as im:
        return im.convert("RGB")


def _image_path(item: dict[str, Any], row_id: Any, out: Path) -> str | None:
    """A file the report can show: the dataset's own image file, or the embedded bytes saved under out/images."""
    path = item.get("path")
    if path and Path(path).is_file():
        return str(Path(path).resolve())
    if item.get("bytes"):
        folder = out / "images"
        folder.mkdir(exist_ok=True)
        with Image.open(io.BytesIO(item["bytes"])) as im:
            target = folder / f"{row_id}.{(im.format or 'img').lower()}"
        target.write_bytes(item["bytes"])
        return str(target.resolve())
    return None


def _nearest_neighbours(
    predictor: Predictor, train: Any, query: np.ndarray, batch_size: int, chunk: int
) -> list[int]:
    """For each query feature row: the index of the training product with the most similar image (cosine)."""
    undecoded = _undecoded(train)
    parts = []
    for start in range(0, len(train), chunk):
        images = [_image(item) for item in undecoded[start : start + chunk]["image"]]
        parts.append(predictor.image_features(images, batch_size))
    keys = np.concatenate(parts)  # [train, hidden]
    keys = keys / np.maximum(np.linalg.norm(keys, axis=1, keepdims=True), 1e-12)
    query = query / np.maximum(np.linalg.norm(query, axis=1, keepdims=True), 1e-12)
    return (query @ keys.T).argmax(axis=1).tolist()  # [query]


# ---- outputs ----------------------------------------------------------------------------------------------


def _write_jsonl(path: Path, records: Sequence[dict[str, Any]]) -> None:
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def _flat(prefix: str, value: Any) -> dict[str, float]:
    """Nested metrics -> {'prefix/a/b': number}; non-numbers (lists, None) are left out."""
    if isinstance(value, dict):
        out: dict[str, float] = {}
        for key, inner in value.items():
            out.update(_flat(f"{prefix}/{key}", inner))
        return out
    if isinstance(value, bool) or not isinstance(value, int | float):
        return {}
    return {prefix: float(value)}


def _log_wandb(
    run: Any,
    split: str,
    metrics: dict[str, Any],
    records: list[dict[str, Any]],
    undecoded: Any,
    table_rows: int,
) -> None:
    """Scalars (model and baselines) and a photo/truth/answer table, to `run` or the active W&B run."""
    wandb = sys.modules.get("wandb")  # an active run means wandb was imported; never import it just to look
    run = run if run is not None else getattr(wandb, "run", None)
    if run is None:
        return
    import wandb

    split = f"{split}-constrained" if metrics.get("constrained") else split  # kept apart from free runs
    scalars = _flat(
        f"{split}/model", {k: metrics["model"][k] for k in ("price", "category", "title", "failure_rate")}
    )
    scalars.update(_flat(f"{split}/baselines", metrics["baselines"]))
    columns = [
        "id",
        "photo",
        "truth",
        "raw_text",
        "title",
        "category",
        "price",
        "category_correct",
        "price_ape",
    ]
    table = wandb.Table(columns=columns)
    for i, record in enumerate(records[:table_rows]):
        photo = _image(undecoded[i]["image"])
        photo.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
        t, p = record["truth"], record["parsed"]
        table.add_data(
            record["id"],
            wandb.Image(photo),
            f"{t['title']} | {t['category']} | {t['price']}",
            record["raw_text"],
            p["title"],
            p["category"],
            p["price"],
            bool(record["errors"]["category_correct"]),
            record["errors"]["price_ape"],
        )
    run.log({**scalars, f"{split}/predictions": table})


def print_summary(metrics: dict[str, Any]) -> None:
    """A console table of the report's headline metrics: model beside each baseline."""
    from rich.console import Console
    from rich.table import Table

    from productlens.report import BASELINE_NAMES, HEADLINE

    baselines = metrics.get("baselines", {})
    nn = baselines.get("nearest_neighbour")
    title = f"{metrics.get('split', '')} split: {metrics.get('n', 0)} products"
    if metrics.get("constrained"):
        title += f"\n{CONSTRAINED}"
    table = Table(title=title)
    table.add_column("Metric")
    table.add_column("Model", justify="right")
    table.add_column("Baseline", justify="right")
    if nn:
        table.add_column("Nearest neighbour", justify="right")
    table.add_column("Baseline is")
    for label, group, key, base_name, kind, _ in HEADLINE:
        value = metrics["model"].get(group, {}).get(key)
        base = baselines.get(base_name, {}).get(key) if base_name else None
        cells = [label, _fmt(value, kind), _fmt(base, kind) if base_name else ""]
        if nn:
            cells.append(_fmt(nn.get(group, {}).get(key), kind))
        table.add_row(*cells, BASELINE_NAMES[base_name] if base_name else "")
    Console(stderr=True).print(table)


def _fmt(value: Any, kind: str) -> str:
    if value is None:
        return "-"
    if kind == "money":
        return f"{value:,.2f}"
    if kind == "pct":
        return f"{value:.1%}"
    return f"{value:.3f}"
