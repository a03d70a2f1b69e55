"""Photos per second of `productlens synth` at 800x800: the process pool (all cores) against a single-process
loop over the same photos, measured in the same run.

    python bench/bench_synth.py [--photos 300] [--workers N]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path

from productlens.catalog.synth import photo_spec, render_photos, synth_catalog

SIDE = 800


def _specs(n: int) -> list:
    _, attrs = synth_catalog(n, seed=0)
    return [dataclasses.replace(photo_spec(a), width=SIDE, height=SIDE) for a in attrs.to_dict("records")]


def _rate(specs: list, workers: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        paths = [Path(tmp) / f"{i}.jpg" for i in range(len(specs))]
        start = time.perf_counter()
        render_photos(specs, paths, workers=workers)
        return len(specs) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=300)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    specs = _specs(args.photos)
    baseline = _rate(specs, workers=1)
    pooled = _rate(specs, workers=args.workers)
    print(f"{len(specs)} photos at {SIDE}x{SIDE} (drawn + JPEG-encoded + written)")
    print(f"baseline, single-process loop: {baseline:7.1f} photos/s")
    print(f"process pool, {args.workers} workers:    {pooled:7.1f} photos/s")
    print(f"ratio: {pooled / baseline:.2f}x")


if __name__ == "__main__":
    main()
