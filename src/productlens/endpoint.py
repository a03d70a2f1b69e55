"""Prediction through any OpenAI-compatible server (`vllm serve` of a productlens export, or `productlens serve`):
photos in, the same `Prediction`s as a local `Predictor` out, read from the answers by the same parser.

In: the server's URL (and API key), PIL images. Out: `Prediction`s, in order. Requests run `concurrency` at a
time; 429s, 5xx answers and dropped connections are retried with backoff (honouring Retry-After). A photo the
server refuses (400, 413, 415, 422) becomes that photo's `Refused`; anything else the server refuses stops the run.
Used by `productlens predict --endpoint` and `productlens evaluate --endpoint`.
"""

from __future__ import annotations

import asyncio
import base64
import io
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from PIL import Image

from productlens.predictor import Prediction
from productlens.task.parse import parse_answer
from productlens.task.prompts import AnswerTemplate

RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
PHOTO_STATUSES = frozenset({400, 413, 415, 422})  # the server refused this request's content, not the run


class EndpointError(RuntimeError):
    """The server refused a request (a 4xx) or kept failing after every retry."""


class PhotoRefused(EndpointError):
    """The server refused one photo's request (400, 413, 415, 422): that photo's error, not the run's."""


@dataclass(frozen=True)
class Refused:
    """Stands in a prediction list for a photo the server refused: `error` says what it answered."""

    error: str

    def as_failed(self) -> Prediction:
        """A Prediction that read nothing (scored as every field failed)."""
        return Prediction(None, None, None, "", ("title", "category", "price"))


class RemotePredictor:
    """A Predictor stand-in that asks an OpenAI-compatible server: `predict(images) -> [Prediction]`.

    Each photo is one chat request (the photo as a PNG data URL, then the template's question), answered
    greedily in at most `max_new_tokens` tokens, exactly the prompt a local Predictor builds.
    """

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        model: str | None = None,
        template: AnswerTemplate = AnswerTemplate(),
        max_new_tokens: int | None = None,
        concurrency: int = 8,
        retries: int = 5,
        timeout_s: float = 300.0,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(
                f"--endpoint {url!r}: give the server's http(s) URL, e.g. http://127.0.0.1:8000/v1"
            )
        if concurrency < 1 or retries < 0:
            raise ValueError("concurrency must be at least 1 and retries 0 or more")
        base = url.rstrip("/")
        self.base_url = base if base.endswith("/v1") else f"{base}/v1"
        self.api_key, self.template = api_key, template
        self.max_new_tokens = max_new_tokens or 96  # the local Predictor's default
        self.concurrency, self.retries, self.timeout_s = concurrency, retries, timeout_s
        self._model = model

    @property
    def model(self) -> str:
        """The served model's name: the one given, else the first the server lists at /v1/models."""
        if self._model is None:
            response = self._call(lambda client: client.get("/models"))
            models = [m.get("id") for m in response.get("data", []) if isinstance(m, dict)]
            if not models:
                raise EndpointError(f"{self.base_url}/models lists no model; pass --model NAME")
            self._model = str(models[0])
        return self._model

    def predict(
        self, images: Sequence[Image.Image], batch_size: int | None = None
    ) -> list[Prediction | Refused]:
        """Photos -> one Prediction (or Refused) each, in order (`batch_size` is ignored: the server batches)."""
        if not images:
            return []
        model = self.model
        return asyncio.run(self._predict_all(list(images), model))

    # ---- requests -----------------------------------------------------------------------------------------

    def _client_options(self) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        return {"base_url": self.base_url, "headers": headers, "timeout": self.timeout_s}

    def _call(self, send: Any) -> dict[str, Any]:
        async def once() -> dict[str, Any]:
            async with httpx.AsyncClient(**self._client_options()) as client:
                return await self._with_retries(lambda: send(client))

        return asyncio.run(once())

    async def _predict_all(self, images: list[Image.Image], model: str) -> list[Prediction | Refused]:
        gate = asyncio.Semaphore(self.concurrency)
        limits = httpx.Limits(max_connections=self.concurrency)
        async with httpx.AsyncClient(**self._client_options(), limits=limits) as client:

            async def one(image: Image.Image) -> Prediction | Refused:
                body = self._request(image, model)
                async with gate:
                    began = time.perf_counter()
                    try:
                        answer = await self._with_retries(lambda: client.post("/chat/completions", json=body))
                    except PhotoRefused as exc:
                        return Refused(str(exc))
                    seconds = time.perf_counter() - began
                text = _content(answer)
                parsed = parse_answer(text, self.template)
                return Prediction(parsed.title, parsed.category, parsed.price, text, parsed.failures, seconds)

            return list(await asyncio.gather(*(one(im) for im in images)))

    def _request(self, image: Image.Image, model: str) -> dict[str, Any]:
        buffer = io.BytesIO()
        image.convert("RGB").save(
            buffer, "PNG"
        )  # lossless: the server sees the pixels a local Predictor sees
        url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
        content = [
            {"type": "image_url", "image_url": {"url": url}},
            {"type": "text", "text": self.template.question},
        ]
        return {
            "model": model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": self.max_new_tokens,
            "temperature": 0.0,
        }

    async def _with_retries(self, send: Any) -> dict[str, Any]:
        """Send until a 2xx (its JSON), retrying 429/5xx and connection errors; EndpointError otherwise."""
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = await send()
            except httpx.TransportError as exc:
                if last:
                    raise EndpointError(
                        f"cannot reach {self.base_url} ({type(exc).__name__}: {exc}); is the server running?"
                    ) from None
                await asyncio.sleep(_backoff(attempt))
                continue
            if response.is_success:
                return response.json()
            if response.status_code in RETRY_STATUSES and not last:
                await asyncio.sleep(_backoff(attempt, response.headers.get("retry-after")))
                continue
            hint = " (pass --api-key)" if response.status_code == 401 else ""
            error = PhotoRefused if response.status_code in PHOTO_STATUSES else EndpointError
            raise error(
                f"{response.request.method} {response.request.url} answered {response.status_code}{hint}: "
                f"{_message(response)}"
            )
        raise AssertionError("unreachable")


def _backoff(attempt: int, retry_after: str | None = None) -> float:
    """Seconds to wait before retry `attempt` + 1: Retry-After when the server gives one, else 0.5 s doubling."""
    if retry_after is not None:
        try:
            return min(max(float(retry_after), 0.0), 60.0)
        except ValueError:
            pass
    return min(0.5 * 2**attempt, 30.0) * (0.5 + random.random() / 2)


def _content(answer: dict[str, Any]) -> str:
    try:
        content = answer["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise EndpointError(f"the server's answer is not a chat completion: {str(answer)[:200]}") from None
    return content or ""


def _message(response: httpx.Response) -> str:
    try:
        error = response.json().get("error")
    except ValueError:
        return response.text[:300]
    if isinstance(error, dict):
        return str(error.get("message"))
    return str(error)
