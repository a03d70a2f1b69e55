"""Benchmark: productlens' downloader against the reference recipe's one-request-at-a-time loop.

In: 3,040 noisy ~100 KB JPEGs (generated once into --photos) served from 127.0.0.1 by `productlens
serve-images` in its own process with 50 ms added per request. Out: images/s of both, and their ratio.

    python bench/bench_download.py [--images 3040] [--baseline-images 200] [--latency 0.05]

The baseline is the Phi-3 CookBook's generate_dataset.py loop: requests.get (a new connection per image),
PIL open, save. It is measured on a subset (it takes over a minute for all 3,040). The server shares the
machine's cores with the client. Targets: >= 20x the baseline and >= 150 images/s on 2 cores.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from productlens.catalog.download import DownloadConfig, ImageJob, download_images


def make_photo(args: tuple[Path, int]) -> int:
    """One unique 512x512 JPEG of about 100 KB: a random colour gradient plus noise."""
    path, seed = args
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.0, 1.0, 512)[None, :, None]
    low, high = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    pixels = low + (high - low) * ramp + rng.normal(0, 12, (512, 512, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype("uint8")).save(buf, "JPEG", quality=90)
    path.write_bytes(buf.getvalue())
    return len(buf.getvalue())


def ensure_photos(folder: Path, count: int) -> float:
    """Generate the photos once (kept between runs); returns their mean size in KB."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    todo = [(images / f"{i}.jpg", i) for i in range(count) if not (images / f"{i}.jpg").exists()]
    if todo:
        print(f"generating {len(todo)} photos in {images} ...", flush=True)
        with ProcessPoolExecutor() as pool:
            list(pool.map(make_photo, todo, chunksize=64))
    return sum((images / f"{i}.jpg").stat().st_size for i in range(count)) / count / 1024


def start_server(folder: Path, latency: float) -> tuple[subprocess.Popen, str]:
    code = f"from productlens.catalog.server import serve; serve({str(folder)!r}, latency={latency})"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    return proc, proc.stdout.readline().strip()


def baseline(urls: list[str], out: Path) -> float:
    """The reference recipe: sequential GET, PIL open, save (what generate_dataset.py does per row)."""
    try:
        import requests

        get = requests.get
    except ImportError:  # requests is not a productlens dependency; httpx.get behaves the same here
        import httpx

        get = httpx.get
    start = time.perf_counter()
    for i, url in enumerate(urls):
        response = get(url)
        response.raise_for_status()
        Image.open(io.BytesIO(response.content)).save(out / f"{i}.jpg")
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=3040)
    p.add_argument("--baseline-images", type=int, default=200)
    p.add_argument("--latency", type=float, default=0.05, help="seconds the server adds to every request")
    p.add_argument("--concurrency", type=int, default=DownloadConfig.concurrency)
    p.add_argument("--photos", type=Path, default=Path("runs/bench_download/photos"))
    args = p.parse_args()

    size_kb = ensure_photos(args.photos, args.images)
    server, base_url = start_server(args.photos, args.latency)
    work = Path(tempfile.mkdtemp(prefix="bench-download-"))
    try:
        urls = [f"{base_url}/images/{i}.jpg" for i in range(args.images)]
        print(
            f"{args.images} photos, {size_kb:.0f} KB on average, {args.latency * 1000:.0f} ms latency, "
            f"server in its own process on this machine ({os.cpu_count()} cores shared)"
        )

        (work / "baseline").mkdir()
        n_base = min(args.baseline_images, args.images)
        base_s = baseline(urls[:n_base], work / "baseline")
        base_rate = n_base / base_s
        print(
            f"baseline (sequential requests.get + PIL save): {n_base} images in {base_s:.1f} s "
            f"= {base_rate:.1f}/s"
        )

        config = DownloadConfig(allow_private=True, concurrency=args.concurrency)
        start = time.perf_counter()
        results = download_images([ImageJob(str(i), u) for i, u in enumerate(urls)], work / "images", config)
        ours_s = time.perf_counter() - start
        ok = sum(r.status == "ok" for r in results)
        if ok != args.images:
            failures = {r.reason + ": " + r.detail for r in results if r.status != "ok"}
            sys.exit(f"only {ok} of {args.images} images arrived: {sorted(failures)[:5]}")
        rate = args.images / ours_s
        print(
            f"productlens (concurrency {args.concurrency}, verified, hashed, atomic writes): "
            f"{args.images} images in {ours_s:.1f} s = {rate:.1f}/s"
        )
        ratio = rate / base_rate
        print(
            f"ratio: {ratio:.1f}x  (targets: >= 20x -> {'met' if ratio >= 20 else 'MISSED'}; "
            f">= 150 images/s -> {'met' if rate >= 150 else 'MISSED'})"
        )
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
