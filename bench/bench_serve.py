"""Load test of `productlens serve` on loopback: batching across requests on vs off, and the OpenAI-compatible
chat endpoint against /v1/predict, in the same run.

In: a tiny random Phi-3-V model (built in a temp folder) served by uvicorn on 127.0.0.1; N requests (one photo
each) from C concurrent clients. Out: requests/s, p50/p95 latency per mode and the ratios.
    python bench/bench_serve.py [--requests 200] [--clients 8] [--max-batch 8] [--max-wait-ms 20]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import multiprocessing
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import httpx

TEXTS = [
    "Product: Check Wool Scarf, Category: SCARVES, Full Price: 450.00",
    "Product: Kensington Heritage Trench Coat, Category: TRENCH COATS, Full Price: 2290.00",
]
SILHOUETTES = ("trench", "coat", "quilted", "puffer")


def photos(count: int, width: int, height: int) -> list[bytes]:
    """`count` different synthetic product photos of one size, as JPEG bytes."""
    from productlens.catalog.photos import PhotoSpec, draw_photo, encode_jpeg

    return [
        encode_jpeg(
            draw_photo(
                PhotoSpec(SILHOUETTES[i % 4], "check", "wool", (40 + 25 * i, 90, 160), 0.7, width, height, i)
            )
        )
        for i in range(count)
    ]


def load(
    url: str, requests: int, clients: int, images: list[bytes], max_seconds: float, chat: dict | None = None
) -> tuple[list[float], float]:
    """The load generator (run in its own process, so it does not share the server's interpreter)."""
    return asyncio.run(_load(url, requests, clients, images, max_seconds, chat))


def _post(http: httpx.AsyncClient, data: bytes, chat: dict | None) -> Any:
    """One photo to /v1/predict (multipart), or to /v1/chat/completions as a data URL when `chat` is given."""
    if chat is None:
        return http.post("/v1/predict", files={"file": ("photo.jpg", data, "image/jpeg")})
    url = "data:image/jpeg;base64," + base64.b64encode(data).decode()
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": chat["question"]}]
    body = {**chat["body"], "messages": [{"role": "user", "content": content}]}
    return http.post("/v1/chat/completions", json=body)


async def _load(
    url: str, requests: int, clients: int, images: list[bytes], max_seconds: float, chat: dict | None
) -> tuple[list[float], float]:
    """`clients` workers post one photo per request until `requests` are done or `max_seconds` pass.

    Returns each request's latency (seconds) and the wall time."""
    latencies: list[float] = []
    issued = 0
    deadline = time.perf_counter() + max_seconds

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal issued
        while issued < requests and time.perf_counter() < deadline:
            data = images[issued % len(images)]
            issued += 1
            began = time.perf_counter()
            response = await _post(http, data, chat)
            response.raise_for_status()
            latencies.append(time.perf_counter() - began)

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as http:
        (await _post(http, images[0], chat)).raise_for_status()  # warm-up
        began = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        return latencies, time.perf_counter() - began


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def run_mode(
    predictor,
    settings,
    args: argparse.Namespace,
    images: list[bytes],
    clients: ProcessPoolExecutor,
    chat: dict | None = None,
) -> dict:
    from productlens.serve.app import create_app, serve_in_thread

    app = create_app(predictor, settings, model_name="tiny-phi3v")
    with serve_in_thread(app) as url:
        job = clients.submit(load, url, args.requests, args.clients, images, args.max_seconds, chat)
        latencies, wall = job.result()
    sizes = app.state.batcher.batch_sizes[1:]  # without the warm-up call
    return {
        "done": len(latencies),
        "rps": len(latencies) / wall,
        "p50": 1000 * percentile(latencies, 50),
        "p95": 1000 * percentile(latencies, 95),
        "calls": len(sizes),
        "mean_batch": statistics.fmean(sizes) if sizes else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="requests per mode")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--max-batch", type=int, default=8, help="batching mode's max_batch")
    parser.add_argument("--max-wait-ms", type=float, default=20.0, help="batching mode's max_wait_ms")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="tokens generated per photo")
    parser.add_argument("--size", type=int, nargs=2, default=(96, 120), metavar=("W", "H"), help="photo size")
    parser.add_argument("--max-seconds", type=float, default=240.0, help="time cap per mode")
    args = parser.parse_args()

    from productlens.phi3v.tiny import save_tiny_model
    from productlens.predict import Predictor
    from productlens.serve.app import ServeSettings

    spawn = multiprocessing.get_context("spawn")  # a fresh interpreter: no torch, no server threads
    with tempfile.TemporaryDirectory() as tmp, ProcessPoolExecutor(1, mp_context=spawn) as clients:
        folder = save_tiny_model(Path(tmp) / "tiny-phi3v", TEXTS)
        predictor = Predictor.load(folder, max_new_tokens=args.max_new_tokens)
        images = photos(8, *args.size)
        batching = ServeSettings(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms)
        chat = {  # the request `productlens predict --endpoint` sends: greedy, the same token budget
            "question": predictor.template.question,
            "body": {"model": "tiny-phi3v", "max_tokens": args.max_new_tokens, "temperature": 0},
        }
        modes = {
            "batching off (max_batch=1)": (ServeSettings(max_batch=1, max_wait_ms=0), None),
            f"batching on (max_batch={args.max_batch}, {args.max_wait_ms:g} ms)": (batching, None),
            "chat completions, batching on": (batching, chat),
        }
        results = {
            name: run_mode(predictor, settings, args, images, clients, body)
            for name, (settings, body) in modes.items()
        }

    print(
        f"\nproductlens serve on loopback: {args.requests} requests (1 photo {args.size[0]}x{args.size[1]} each) "
        f"from {args.clients} clients; tiny random Phi-3-V, {args.max_new_tokens} new tokens, CPU"
    )
    print(f"{'mode':<40} {'done':>5} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'calls':>6} {'batch':>6}")
    for name, r in results.items():
        print(
            f"{name:<40} {r['done']:>5} {r['rps']:>7.2f} {r['p50']:>8.0f} {r['p95']:>8.0f} "
            f"{r['calls']:>6} {r['mean_batch']:>6.2f}"
        )
    off, on, chat_on = results.values()
    print(
        f"throughput ratio (on / off): {on['rps'] / off['rps']:.2f}x; p50 latency ratio: {on['p50'] / off['p50']:.2f}x"
    )
    print(
        f"chat completions / predict (both batching): throughput {chat_on['rps'] / on['rps']:.2f}x, "
        f"p50 {chat_on['p50'] / on['p50']:.2f}x, p95 {chat_on['p95'] / on['p95']:.2f}x"
    )


if __name__ == "__main__":
    main()
