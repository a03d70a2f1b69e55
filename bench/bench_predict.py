"""Batched generation against one photo at a time, same Predictor, same photos, same run: photos per second.

In: nothing (a tiny random Phi-3-V is written to a temp folder). Out: both rates and their ratio on stdout.
Run: `python bench/bench_predict.py [--images 64] [--batch-size 16] [--max-new-tokens 32]`
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from productlens.phi3v.tiny import save_tiny_model
from productlens.predict import Predictor

TEXTS = [
    "Product: Medium Lola Bag, Category: CROSSBODY, Full Price: 2490.0",
    "What is shown in this image?",
] * 10


def photos(n: int, seed: int = 0) -> list[Image.Image]:
    """n random photos of catalog-like sizes (portrait, landscape, square)."""
    rng = np.random.default_rng(seed)
    sizes = [(400, 600), (600, 400), (500, 500), (300, 800)]
    return [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        for w, h in (sizes[i % 4] for i in range(n))
    ]


def rate(predictor: Predictor, images: list[Image.Image], batch_size: int) -> tuple[float, list[str]]:
    """-> (photos per second, answers)."""
    start = time.perf_counter()
    answers = [p.raw_text for p in predictor.predict(images, batch_size=batch_size)]
    return len(images) / (time.perf_counter() - start), answers


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        model = save_tiny_model(Path(folder) / "tiny", TEXTS, vocab_size=400)
        predictor = Predictor.load(model, max_new_tokens=args.max_new_tokens)
    images = photos(args.images)
    rate(predictor, images[:4], args.batch_size)  # warm-up
    one, one_answers = rate(predictor, images, 1)
    batched, batched_answers = rate(predictor, images, args.batch_size)
    same = sum(a == b for a, b in zip(one_answers, batched_answers, strict=True))
    print(f"threads={torch.get_num_threads()} images={args.images} max_new_tokens={args.max_new_tokens}")
    print(f"one at a time     : {one:8.1f} photos/s")
    print(f"batch of {args.batch_size:<9d}: {batched:8.1f} photos/s")
    print(f"ratio             : {batched / one:8.2f}x  (identical answers: {same}/{args.images})")


if __name__ == "__main__":
    main()
