"""The whole pipeline on a laptop CPU: a synthetic catalog served on loopback, prepared, a tiny model of one family
(Phi-3-Vision by default) trained from scratch, evaluated on the held-out test split. In: a preset
(configs/quickstart.yaml), optionally a family (its `quickstart.families` entry is merged over the preset) and an
output folder. Out: that folder as a run folder (model/, metrics.json, report.html, predictions.jsonl, wandb/: an
offline W&B run unless WANDB_MODE says otherwise) plus the targets it must reach, printed beside their baselines.

    productlens quickstart --out runs/quickstart
    productlens quickstart --family qwen2_5_vl --out runs/quickstart-qwen
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from productlens.config import from_dict, load_yaml, merge, parse_overrides
from productlens.files import write_atomic

console = Console()


@dataclass(frozen=True)
class QuickstartSettings:
    """The `quickstart:` section of the preset: catalog, tokenizer and tiny-model sizes."""

    family: str = "phi3v"
    rows: int = 12000
    seed: int = 0
    photo_size: int = 128
    vocab_size: int = 1000
    model: dict[str, Any] = field(
        default_factory=dict
    )  # the family's save_tiny options (text:, vision:, ...)
    families: dict[str, Any] = field(default_factory=dict)  # family -> preset overrides for `--family`
    test_batch_size: int = 64
    max_new_tokens: int = 40


@dataclass(frozen=True)
class Target:
    """One thing the quickstart must show: the model beats a constant baseline by `factor`."""

    name: str
    value: float
    baseline: float
    factor: float
    higher_is_better: bool

    @property
    def goal(self) -> float:
        return self.factor * self.baseline

    @property
    def passed(self) -> bool:
        return self.value >= self.goal if self.higher_is_better else self.value <= self.goal

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "goal": self.goal, "passed": self.passed}


# (name, metrics group, key, baseline, factor, higher is better)
TARGETS: tuple[tuple[str, str, str, str, float, bool], ...] = (
    ("Category accuracy", "category", "accuracy", "majority_category", 3.0, True),
    ("Price median APE", "price", "median_ape", "median_price", 0.6, False),
    ("Title token F1", "title", "token_f1", "common_title", 2.0, True),
)


@dataclass(frozen=True)
class QuickstartResult:
    """What a quickstart run produced and whether it reached its targets."""

    out_dir: Path
    model_dir: Path
    metrics: dict[str, Any]
    targets: tuple[Target, ...]
    seconds: dict[str, float]

    @property
    def passed(self) -> bool:
        return all(t.passed for t in self.targets)


def check_targets(metrics: dict[str, Any]) -> tuple[Target, ...]:
    """evaluate_split metrics -> the three targets (category x3, price median APE x0.6, title F1 x2)."""
    model, baselines = metrics["model"], metrics["baselines"]
    return tuple(
        Target(name, float(model[group][key]), float(baselines[base][key]), factor, higher)
        for name, group, key, base, factor, higher in TARGETS
    )


def with_family(raw: dict[str, Any], family: str | None) -> dict[str, Any]:
    """A quickstart preset mapping -> the same for `family`: its `quickstart.families` entry (a preset of its own:
    quickstart sizes, training settings) merged over the preset. No family: the preset as it is."""
    if not family:
        return raw
    from productlens.families import get_family

    name = get_family(family).name
    section = raw.get("quickstart") or {}
    entries, default = section.get("families") or {}, section.get("family", "phi3v")
    if name not in entries and name != default:
        known = ", ".join(sorted({default, *entries}))
        raise ValueError(f"the quickstart preset has no settings for family {name}; it has: {known}")
    entry = entries.get(name, {})
    out = merge(merge(raw, entry), {"quickstart": {"family": name}})
    if "model" in (entry.get("quickstart") or {}):  # another architecture: its own tiny-model options only
        out["quickstart"]["model"] = entry["quickstart"]["model"]
    return out


def split_preset(raw: dict[str, Any]) -> tuple[QuickstartSettings, dict[str, Any]]:
    """A quickstart preset mapping -> (its quickstart: section, the training preset without it)."""
    raw = dict(raw)
    section = raw.pop("quickstart", None) or {}
    allowed = {f.name for f in dataclasses.fields(QuickstartSettings)}
    unknown = set(section) - allowed
    if unknown:
        raise ValueError(
            f"unknown quickstart setting(s) {sorted(unknown)}; allowed: {', '.join(sorted(allowed))}"
        )
    return QuickstartSettings(**section), raw


def run_quickstart(
    out: str | os.PathLike = "runs/quickstart",
    preset: str | os.PathLike = "quickstart",
    overrides: Sequence[str] = (),
    family: str | None = None,
) -> QuickstartResult:
    """Synthesise, serve, prepare, train from scratch, evaluate on the test split; -> QuickstartResult.
    `family`: a tiny model of that family (default: the preset's, Phi-3-V)."""
    raw = with_family(load_yaml(preset), family)  # the family's settings first: --set overrides win
    settings, training_preset = split_preset(merge(raw, parse_overrides(overrides)))
    out = Path(out).resolve()
    _fresh_folder(out)
    seconds: dict[str, float] = {}
    started = time.monotonic()

    console.rule("1/4 synthetic catalog, served on loopback and prepared")
    data_dir = _catalog(out, settings)
    seconds["catalog"] = time.monotonic() - started

    console.rule(f"2/4 a tiny {settings.family} model, random weights, tokenizer from the training texts")
    mark = time.monotonic()
    base_dir = _tiny_model(out, data_dir, settings, training_preset)
    seconds["model"] = time.monotonic() - mark

    console.rule("3/4 training from scratch")
    mark = time.monotonic()
    from productlens.train import train

    config = from_dict(
        merge(
            training_preset,
            {
                "model": {"path": str(base_dir)},
                "data": {"path": str(data_dir)},
                "training": {"output_dir": str(out)},
            },
        )
    )
    tracked = _reports_to_wandb(config.training.get("report_to"))
    with _wandb_offline_unless_set(tracked):
        result = train(config)
    seconds["train"] = time.monotonic() - mark

    console.rule("4/4 evaluation on the held-out test split")
    mark = time.monotonic()
    from productlens.evaluate import evaluate

    metrics = evaluate(
        out,
        data_dir,
        "test",
        out_dir=out,
        batch_size=settings.test_batch_size,
        max_new_tokens=settings.max_new_tokens,
    )
    seconds["evaluate"] = time.monotonic() - mark
    seconds["total"] = time.monotonic() - started

    targets = check_targets(metrics)
    metrics["quickstart"] = {
        "targets": [t.as_dict() for t in targets],
        "passed": all(t.passed for t in targets),
        "seconds": seconds,
        "train_steps": result.global_step,
    }
    wandb_run = _wandb_run_folder(out) if tracked else None
    if wandb_run is not None:
        metrics["quickstart"]["wandb_run"] = str(wandb_run)
    write_atomic(out / "metrics.json", json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    print_targets(targets, seconds)
    if wandb_run is not None:
        print_wandb(wandb_run)
    return QuickstartResult(out, result.model_dir or out / "model", metrics, targets, seconds)


def _reports_to_wandb(report_to: Any) -> bool:
    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    return "wandb" in names or "all" in names


@contextmanager
def _wandb_offline_unless_set(tracked: bool) -> Iterator[None]:
    """W&B offline for the quickstart (a run folder to look at or `wandb sync`), unless WANDB_MODE is set."""
    if not tracked or os.environ.get("WANDB_MODE"):
        yield
        return
    os.environ["WANDB_MODE"] = "offline"
    try:
        yield
    finally:
        os.environ.pop("WANDB_MODE", None)


def _wandb_run_folder(out: Path) -> Path | None:
    """The W&B run the training left (OUT/wandb/offline-run-* or run-*; WANDB_DIR moves it): the newest."""
    root = Path(os.environ.get("WANDB_DIR") or out) / "wandb"
    runs = sorted(
        (p for p in root.glob("*run-*") if p.is_dir() and not p.is_symlink()), key=lambda p: p.stat().st_mtime
    )
    return runs[-1] if runs else None


def print_wandb(run: Path) -> None:
    """Where the W&B run is, and how to upload an offline one."""
    console.print(
        f"W&B run (losses, learning rate, task metrics, prediction tables, model): {run}", soft_wrap=True
    )
    if run.name.startswith("offline-"):
        console.print(f"upload it with: wandb sync {run}", soft_wrap=True)


def _fresh_folder(out: Path) -> None:
    """An empty output folder; a previous quickstart there is replaced, anything else is left alone."""
    if out.exists() and any(out.iterdir()):
        if not (out / "config.yaml").is_file() and not (out / "catalog").is_dir():
            raise FileExistsError(f"{out} is not empty and is not a quickstart folder; choose another --out")
        console.print(f"replacing the previous quickstart in {out}")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def _catalog(out: Path, settings: QuickstartSettings) -> Path:
    from tqdm import tqdm

    from productlens.catalog.prepare import prepare_catalog
    from productlens.catalog.server import ImageServer
    from productlens.catalog.synth import write_catalog

    catalog_dir, data_dir = out / "catalog", out / "data"
    catalog_dir.mkdir(parents=True)
    with (
        ImageServer(catalog_dir) as server,
        tqdm(total=settings.rows, unit="photo", desc="draw photos") as bar,
    ):

        def progress(done: int, total: int) -> None:
            bar.update(done - bar.n)

        write_catalog(
            catalog_dir,
            rows=settings.rows,
            seed=settings.seed,
            image_base_url=server.base_url,
            photo_size=settings.photo_size,
            progress=progress,
        )
        bar.close()
        console.print(f"catalog: {settings.rows} rows, photos served at {server.base_url}/images/")
        result = prepare_catalog(
            catalog_dir / "catalog.parquet", data_dir, seed=settings.seed, allow_private=True, progress=True
        )
    console.print(result.summary())
    return data_dir


def _tiny_model(out: Path, data_dir: Path, settings: QuickstartSettings, preset: dict[str, Any]) -> Path:
    from productlens.catalog.prepare import load_prepared
    from productlens.collate import product_of
    from productlens.families import get_family
    from productlens.task.prompts import AnswerTemplate

    template = AnswerTemplate.from_dict(preset["task"]) if preset.get("task") else AnswerTemplate()
    train_rows = (
        load_prepared(data_dir)["train"].select_columns(["id", "title", "category", "price"]).to_list()
    )
    # The tokenizer learns from the questions and answers with the prices left out, so that a price is spelled
    # digit by digit, as the real Phi-3 tokenizer does ("2490.0" -> 2 4 9 0 . 0): digits are shared by all
    # prices, where one token per price would leave most prices a handful of examples.
    texts = [
        f"{template.question} {template.render_answer(product_of(row)).replace(repr(float(row['price'])), '')}"
        for row in train_rows
    ]
    family = get_family(settings.family)
    base_dir = family.save_tiny(
        out / "base", texts, seed=settings.seed, vocab_size=settings.vocab_size, **settings.model
    )
    console.print(f"tiny model (untrained) in {base_dir}")
    return base_dir


def print_targets(targets: Sequence[Target], seconds: dict[str, float]) -> None:
    """The three targets beside their baselines, PASS/FAIL each, and where the time went."""
    table = Table(title="Did it learn? (test split, against constant baselines from the training split)")
    for column in ("target", "model", "baseline", "needed", "result"):
        table.add_column(column, justify="left" if column == "target" else "right")
    for t in targets:
        sign = ">=" if t.higher_is_better else "<="
        verdict = "[green]PASS[/green]" if t.passed else "[red]FAIL[/red]"
        table.add_row(
            t.name, f"{t.value:.3f}", f"{t.baseline:.3f}", f"{sign} {t.goal:.3f} ({t.factor:g}x)", verdict
        )
    console.print(table)
    times = ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
    console.print(f"time: {times}")
