"""The model families side by side on their quickstart models: image tokens per photo at each family's default
cost knob, and training throughput (full fine-tuning, real tokens per second) through the family-generic collator,
with each family's speed as a ratio to Phi-3-V's (the baseline) measured in the same run.

Same products (synthetic catalog photos of mixed aspect ratios), same batch size and optimiser for every family, and
the quickstart's sizes (configs/quickstart.yaml: the same decoder widths for all, a vision tower of the same width)
in each family's own image geometry (patch size, merging, crops), so the image token counts show how each family
spends tokens on a photo and the speeds compare the architectures, not their sizes.

    python bench/bench_families.py [--rows 48] [--batch-size 4] [--families phi3v,qwen2_5_vl,smolvlm,gemma3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from PIL import Image

from productlens.catalog.schema import MISSING
from productlens.catalog.synth import write_catalog
from productlens.collate import product_of
from productlens.config import load_yaml
from productlens.families import get_family, names
from productlens.families.collate import FamilyCollator
from productlens.quickstart import split_preset, with_family
from productlens.task.prompts import AnswerTemplate


def products(folder: Path, rows: int) -> list[dict]:
    """Synthetic catalog rows with decoded photos: id, image, title, category, price."""
    write_catalog(folder, rows=rows, seed=1, photo_size=256, workers=1)
    table = pd.read_parquet(folder / "catalog.parquet")
    table = table[table["imageurl"] != MISSING]
    return [
        {
            "id": str(r.product_code),
            "image": Image.open(folder / r.imageurl).convert("RGB"),
            "title": r.title,
            "category": r.category3_code,
            "price": float(r.full_price),
        }
        for r in table.itertuples()
    ]


def measure(name: str, rows: list[dict], texts: list[str], batch_size: int, folder: Path) -> dict:
    """One family: tiny model -> image tokens per photo and training real tokens/s (after one warm-up step)."""
    family = get_family(name)
    settings, _ = split_preset(with_family(load_yaml("quickstart"), name))
    family.save_tiny(folder / name, texts, seed=0, vocab_size=settings.vocab_size, **settings.model)
    processor = family.load_processor(folder / name)
    model = family.load_model(folder / name).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    collate = FamilyCollator(family, processor, AnswerTemplate())
    batches = [collate(rows[k : k + batch_size]) for k in range(0, len(rows), batch_size)]
    image_tokens = [family.image_tokens(processor, *row["image"].size) for row in rows]

    def step(batch) -> None:
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    step(batches[0])  # warm-up
    started = time.perf_counter()
    for batch in batches:
        step(batch)
    seconds = time.perf_counter() - started
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    return {
        "family": name,
        "parameters": sum(p.numel() for p in model.parameters()),
        "image tokens/photo": statistics.mean(image_tokens),
        "min-max": f"{min(image_tokens)}-{max(image_tokens)}",
        "tokens/row": real / len(rows),
        "tokens/s": real / seconds,
        "s/step": seconds / len(batches),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--families", default=",".join(names()))
    args = parser.parse_args()
    torch.manual_seed(0)
    template = AnswerTemplate()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        rows = products(Path(tmp) / "catalog", args.rows)
        texts = [f"{template.question} {template.render_answer(product_of(r))}" for r in rows]
        for name in args.families.split(","):
            results.append(measure(name.strip(), rows, texts, args.batch_size, Path(tmp)))
    print(
        f"{len(rows)} products (photos 256 px, mixed aspect ratios), batch {args.batch_size}, full fine-tuning, CPU"
    )
    print(
        f"{'family':12s} {'params':>8s} {'img tok/photo':>14s} {'min-max':>8s} {'tokens/row':>11s} "
        f"{'tokens/s':>9s} {'s/step':>7s} {'vs phi3v':>9s}"
    )
    baseline = next((r["tokens/s"] for r in results if r["family"] == "phi3v"), None)
    for r in results:
        ratio = f"{r['tokens/s'] / baseline:8.2f}x" if baseline else "        -"
        print(
            f"{r['family']:12s} {r['parameters']:8d} {r['image tokens/photo']:14.1f} {r['min-max']:>8s} "
            f"{r['tokens/row']:11.1f} {r['tokens/s']:9.0f} {r['s/step']:7.3f} {ratio}"
        )


if __name__ == "__main__":
    main()
