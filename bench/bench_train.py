"""Training throughput of productlens batching against the reference recipe's, on a tiny Phi-3-Vision.

Ours: length-grouped batches of 8, each padded to its longest row (collate.py), 8 accumulation steps. Baseline:
what the Phi-3 CookBook training script does, batch size 1 with 64 gradient-accumulation steps, each row padded on
its own (so no padding at all). Both take one optimizer step per 64 products: same model, same products
(synthetic catalog photos of mixed aspect ratios), same optimiser. Prints real (non-padding) tokens per second,
padding efficiency (real tokens / tokens computed) and the ratio.

    python bench/bench_train.py [--rows 256] [--batch-size 8] [--per-step 64] [--num-crops 16] [--image-size 112]
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
from productlens.collate import SeededLengthGroupedSampler, product_of
from productlens.families import get_family
from productlens.families.collate import FamilyCollator, example_lengths
from productlens.phi3v.tiny import save_tiny_model
from productlens.task.prompts import AnswerTemplate

PHI3V = get_family("phi3v")


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


def reference_batches(rows: list[dict], collate: FamilyCollator) -> list[dict]:
    """The recipe's batches: one row each, padded on its own (to its own length, so not at all)."""
    return [collate([row]) for row in rows]


def run(model, optimizer, batches, accumulation: int) -> tuple[float, int, int, int]:
    """Train on the batches, one optimizer step per `accumulation` batches -> (seconds, real tokens, tokens
    computed, optimizer steps)."""
    real = computed = steps = 0
    started = time.perf_counter()
    for k, batch in enumerate(batches, start=1):
        loss = model(**batch).loss / accumulation
        loss.backward()
        if k % accumulation == 0 or k == len(batches):
            optimizer.step()
            optimizer.zero_grad()
            steps += 1
        real += int(batch["attention_mask"].sum())
        computed += batch["attention_mask"].numel()
    return time.perf_counter() - started, real, computed, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--per-step", type=int, default=64, help="products per optimizer step (the recipe's 64)"
    )
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
        collate = FamilyCollator(PHI3V, processor, template)
        rows = [dataset[i] for i in range(len(dataset))]

        lengths = example_lengths(PHI3V, processor, template, dataset)
        order = list(SeededLengthGroupedSampler(args.batch_size, lengths, seed=0))
        ours = [
            collate([rows[i] for i in order[k : k + args.batch_size]])
            for k in range(0, len(order), args.batch_size)
        ]
        baseline = reference_batches(rows, collate)

        run(model, optimizer, ours[:1] + baseline[:2], 1)  # warm-up
        results = {}
        for name, batches, accumulation in (
            (f"reference recipe (batch 1, {args.per_step} accumulation)", baseline, args.per_step),
            (
                f"productlens (grouped {args.batch_size}, {args.per_step // args.batch_size} accumulation)",
                ours,
                args.per_step // args.batch_size,
            ),
        ):
            seconds, real, computed, steps = run(model, optimizer, batches, accumulation)
            results[name] = (real / seconds, real / computed, seconds, steps)

    print(
        f"{len(rows)} products, image tokens vary with the photo's shape (num_crops {args.num_crops}); "
        f"{args.per_step} products per optimizer step"
    )
    print(f"{'batching':48s} {'real tokens/s':>14s} {'padding eff.':>13s} {'seconds':>8s} {'steps':>6s}")
    for name, (speed, efficiency, seconds, steps) in results.items():
        print(f"{name:48s} {speed:14.0f} {efficiency:13.1%} {seconds:8.2f} {steps:6d}")
    (base_speed, base_eff, *_), (our_speed, our_eff, *_) = results.values()
    print(
        f"ratio (productlens / reference): {our_speed / base_speed:.2f}x tokens/s, "
        f"padding efficiency {our_eff / base_eff:.2f}x"
    )


if __name__ == "__main__":
    main()
