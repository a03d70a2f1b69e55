"""Training throughput of productlens batching against the reference recipe's, on a tiny Phi-3-Vision.

Ours: length-grouped batches of 8, padded to the longest row of each batch (collate.py). Baseline (the
Phi-3 CookBook recipe): batch size 1, every row padded to one fixed length (the longest row of the set, so
nothing is cut). Same model, same products (synthetic catalog photos of mixed aspect ratios), same optimiser.
Prints real (non-padding) tokens per second, padding efficiency (real tokens / tokens computed) and the ratio.

    python bench/bench_train.py [--rows 256] [--batch-size 8] [--num-crops 16] [--image-size 112]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import datasets
import pandas as pd
import torch
from transformers import AutoModelForCausalLM, AutoProcessor

import productlens.phi3v  # noqa: F401
from productlens.catalog.schema import MISSING
from productlens.catalog.synth import write_catalog
from productlens.collate import SeededLengthGroupedSampler, TrainingCollator, example_lengths, product_of
from productlens.phi3v.processing import IGNORE_INDEX
from productlens.phi3v.tiny import save_tiny_model
from productlens.task.prompts import AnswerTemplate


def products(folder: Path, rows: int) -> datasets.Dataset:
    """A synthetic catalog as a prepared-style dataset: id, image (lazy), title, category, price."""
    write_catalog(folder, rows=rows, seed=1, photo_size=256, workers=1)
    table = pd.read_parquet(folder / "catalog.parquet")
    table = table[table["imageurl"] != MISSING]
    data = {
        "id": table["product_code"].astype(str).tolist(),
        "image": [str(folder / url) for url in table["imageurl"]],
        "title": table["title"].tolist(),
        "category": table["category3_code"].tolist(),
        "price": table["full_price"].astype(float).tolist(),
    }
    return datasets.Dataset.from_dict(data).cast_column("image", datasets.Image())


def pad_to(batch: dict, length: int, pad_id: int) -> dict:
    """One right-padded row -> the same row padded on to `length` (the recipe's fixed-length padding)."""
    extra = length - batch["input_ids"].shape[1]
    out = dict(batch)
    for key, value in (("input_ids", pad_id), ("attention_mask", 0), ("labels", IGNORE_INDEX)):
        out[key] = torch.nn.functional.pad(batch[key], (0, extra), value=value)  # [1, length]
    return out


def run(model, optimizer, batches) -> tuple[float, int, int]:
    """Train on the batches -> (seconds, real tokens, tokens computed)."""
    real = computed = 0
    started = time.perf_counter()
    for batch in batches:
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        real += int(batch["attention_mask"].sum())
        computed += batch["attention_mask"].numel()
    return time.perf_counter() - started, real, computed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-crops", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=112, help="crop side (112: 16 tokens per crop)")
    args = parser.parse_args()
    torch.manual_seed(0)
    template = AnswerTemplate()
    with tempfile.TemporaryDirectory() as tmp:
        dataset = products(Path(tmp) / "catalog", args.rows)
        texts = [
            f"{template.question} {template.render_answer(product_of(r))}"
            for r in dataset.remove_columns("image")
        ]
        folder = save_tiny_model(
            Path(tmp) / "model", texts, vocab_size=1000, image_size=args.image_size, num_crops=args.num_crops
        )
        processor = AutoProcessor.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        collate = TrainingCollator(processor, template)
        rows = [dataset[i] for i in range(len(dataset))]

        lengths = example_lengths(dataset, processor, template)
        order = list(SeededLengthGroupedSampler(args.batch_size, lengths, seed=0))
        ours = [
            collate([rows[i] for i in order[k : k + args.batch_size]])
            for k in range(0, len(order), args.batch_size)
        ]
        fixed = max(lengths)
        baseline = [pad_to(collate([row]), fixed, processor.pad_token_id) for row in rows]

        run(model, optimizer, ours[:1] + baseline[:2])  # warm-up
        results = {}
        for name, batches in (
            ("reference recipe (batch 1, fixed length)", baseline),
            ("productlens (grouped, dynamic)", ours),
        ):
            seconds, real, computed = run(model, optimizer, batches)
            results[name] = (real / seconds, real / computed, seconds)

    print(
        f"{len(rows)} products, image tokens vary with the photo's shape (num_crops {args.num_crops}); fixed length {fixed}"
    )
    print(f"{'batching':44s} {'real tokens/s':>14s} {'padding eff.':>13s} {'seconds':>8s}")
    for name, (speed, efficiency, seconds) in results.items():
        print(f"{name:44s} {speed:14.0f} {efficiency:13.1%} {seconds:8.2f}")
    (base_speed, base_eff, _), (our_speed, our_eff, _) = results.values()
    print(
        f"ratio (productlens / reference): {our_speed / base_speed:.2f}x tokens/s, padding efficiency {our_eff / base_eff:.2f}x"
    )


if __name__ == "__main__":
    main()
