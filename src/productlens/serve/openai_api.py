"""OpenAI-compatible chat API over the Predictor: POST /v1/chat/completions (text and image_url parts, max_tokens,
temperature, top_p, stop, n=1, stream, response_format json_object / json_schema) and GET /v1/models.

In: the app's batcher (shared with /v1/predict), `ServeSettings` and the model's name. Out: a FastAPI router whose
answers, streams and errors follow OpenAI's format, so the official `openai` client works against it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from productlens.chat import ChatJob, ChatResult
from productlens.serve import app as core
from productlens.task.structured import PRODUCT_SCHEMA, check_schema

log = logging.getLogger(__name__)
MAX_TOKENS = 4096  # the most max_tokens a request may ask for


# ---- request schema -----------------------------------------------------------------------------------------


class ImageURL(BaseModel):
    url: str = Field(description="data:image/...;base64,... or an http(s) URL")
    detail: str | None = None  # accepted and ignored (the processor decides the crops)


class Part(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text", "image_url"]
    text: str | None = None
    image_url: ImageURL | None = None


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str | list[Part] | None = None


class ChatRequest(BaseModel):
    """The body of POST /v1/chat/completions (parameters not listed are ignored, as other servers do)."""

    model_config = ConfigDict(extra="ignore")
    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = 1
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None


# ---- errors -------------------------------------------------------------------------------------------------


class OpenAIError(Exception):
    """An error answered as OpenAI does: {"error": {"message", "type", "param", "code"}} with its status."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict[str, Any]:
        kind = {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error"}.get(
            self.status, "server_error" if self.status >= 500 else "invalid_request_error"
        )
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


# The server's own 4xx codes -> OpenAI's (which answers every bad input with 400) and an error code.
BAD_INPUT_CODES = {413: "request_too_large", 415: "invalid_image", 422: "invalid_request"}


def _from_bad_input(exc: core.BadInput, param: str | None = None) -> OpenAIError:
    status = 400 if exc.status in BAD_INPUT_CODES else exc.status
    return OpenAIError(status, exc.message, param, BAD_INPUT_CODES.get(exc.status))


# ---- the router ---------------------------------------------------------------------------------------------


def create_router(batcher: Any, predictor: Any, settings: core.ServeSettings, model_name: str) -> APIRouter:
    """POST /v1/chat/completions and GET /v1/models, answering through `batcher` (items: ChatJob)."""
    router = APIRouter()
    created = int(time.time())

    def models_body() -> dict[str, Any]:
        return {"id": model_name, "object": "model", "created": created, "owned_by": "productlens"}

    @router.get("/v1/models", summary="The model this server serves (OpenAI format)")
    async def models(request: Request) -> JSONResponse:
        try:
            _authorize(request, settings)
        except OpenAIError as exc:
            return exc.response()
        return JSONResponse({"object": "list", "data": [models_body()]})

    @router.get("/v1/models/{name:path}", summary="One model (OpenAI format)")
    async def model(name: str, request: Request) -> JSONResponse:
        try:
            _authorize(request, settings)
            if name != model_name:
                raise OpenAIError(
                    404, f"the model {name!r} does not exist; this server serves {model_name!r}"
                )
        except OpenAIError as exc:
            return exc.response()
        return JSONResponse(models_body())

    @router.post("/v1/chat/completions", summary="Chat completion with photos (OpenAI format)")
    async def chat_completions(request: Request) -> Any:
        started = time.perf_counter()
        try:
            _authorize(request, settings)
            async with asyncio.timeout(settings.request_timeout_s):
                body = await _read_body(request, settings)
                chat = _parse(body)
                if chat.model != model_name:
                    raise OpenAIError(
                        404,
                        f"the model {chat.model!r} does not exist; this server serves {model_name!r} "
                        "(see GET /v1/models)",
                        "model",
                        "model_not_found",
                    )
                job = await _job(chat, predictor, settings)
                if chat.stream:
                    return _stream(chat, job, batcher, model_name)
                [done] = await _submit(batcher, job)
        except OpenAIError as exc:
            return exc.response()
        except TimeoutError:
            return OpenAIError(
                504, f"no answer within {settings.request_timeout_s:g} s; the server is busy, try again later"
            ).response()
        result: ChatResult = done.result
        log.debug("chat completion in %.3f s", time.perf_counter() - started)
        return JSONResponse(
            {
                "id": f"chatcmpl-{uuid.uuid4().hex}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model_name,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": result.text},
                        "finish_reason": result.finish_reason,
                        "logprobs": None,
                    }
                ],
                "usage": _usage(result),
            }
        )

    return router


def _authorize(request: Request, settings: core.ServeSettings) -> None:
    if settings.token is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), settings.token.encode()):
        raise OpenAIError(
            401,
            "this server needs a token: pass api_key=TOKEN to the client (the header `Authorization: Bearer "
            "TOKEN`; the --token or PRODUCTLENS_TOKEN the server was started with)",
            code="invalid_api_key",
        )


async def _read_body(request: Request, settings: core.ServeSettings) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > settings.max_request_bytes:
        raise _from_bad_input(core.BadInput(413, core._too_large_body(settings)))
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise OpenAIError(400, f"send the request as application/json, not {kind or '(no Content-Type)'!r}")
    try:
        return await Request(request.scope, core._limited(request.receive, settings.max_request_bytes)).body()
    except core._BodyTooLarge:
        raise _from_bad_input(core.BadInput(413, core._too_large_body(settings))) from None


def _parse(body: bytes) -> ChatRequest:
    try:
        chat = ChatRequest.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        if first["type"] == "json_invalid":
            raise OpenAIError(400, f"the body is not valid JSON ({first['msg']})") from None
        param = ".".join(str(x) for x in first.get("loc", ()))
        raise OpenAIError(400, core._describe(exc.errors()), param or None) from None
    if chat.n != 1:
        raise OpenAIError(400, f"n={chat.n}: this server returns one choice per request; send n=1", "n")
    return chat


async def _job(chat: ChatRequest, predictor: Any, settings: core.ServeSettings) -> ChatJob:
    """The request -> a ChatJob: the prompt from the model family's chat template (photos first in each message,
    as vLLM orders them), the decoded photos and the generation settings."""
    turns, images = [], []
    for i, message in enumerate(chat.messages):
        parts = (
            [Part(type="text", text=message.content)] if isinstance(message.content, str) else message.content
        )
        texts, photos = [], 0
        for j, part in enumerate(parts or []):
            where = f"messages.{i}.content.{j}"
            if part.type == "text":
                if part.text is None:
                    raise OpenAIError(400, f"{where} is a text part without `text`", where)
                texts.append(part.text)
                continue
            if part.image_url is None:
                raise OpenAIError(400, f"{where} is an image_url part without `image_url`", where)
            if message.role != "user":
                raise OpenAIError(400, f"{where}: only user messages may hold images", where)
            if len(images) == settings.max_images:
                raise OpenAIError(400, core._too_many(settings), where, "request_too_large")
            images.append(await _image(part.image_url.url, settings, where))
            photos += 1
        turns.append((message.role, texts, photos))
    prompt = predictor.family.chat_prompt(predictor.processor, turns)
    stop = (chat.stop,) if isinstance(chat.stop, str) else tuple(chat.stop or ())
    if len(stop) > 4 or not all(stop):
        raise OpenAIError(400, "give up to 4 non-empty stop strings", "stop")
    temperature = chat.temperature
    if temperature is None:
        temperature = predictor.temperature if predictor.do_sample else 0.0
    return ChatJob(
        prompt=prompt,
        images=images,
        max_new_tokens=chat.max_completion_tokens or chat.max_tokens or predictor.max_new_tokens,
        temperature=temperature,
        top_p=chat.top_p if chat.top_p is not None else 1.0,
        stop=stop,
        json_schema=_schema(chat.response_format),
    )


def _schema(response_format: dict[str, Any] | None) -> dict[str, Any] | None:
    """response_format -> the JSON schema to enforce (json_object: {title, category, price}), or None for text."""
    kind = (response_format or {}).get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return PRODUCT_SCHEMA
    if kind == "json_schema":
        spec = response_format.get("json_schema") if response_format else None
        schema = spec.get("schema") if isinstance(spec, dict) else None
        try:
            return check_schema(schema)
        except ValueError as exc:
            raise OpenAIError(
                400,
                f"{exc}; send response_format={{'type': 'json_schema', 'json_schema': {{'name': ..., "
                "'schema': {...}}}}}",
                "response_format",
            ) from None
    raise OpenAIError(
        400, f"response_format type {kind!r} is not one of text, json_object, json_schema", "response_format"
    )


async def _image(url: str, settings: core.ServeSettings, where: str) -> Image.Image:
    """A data: URL (base64) or an http(s) URL -> verified RGB image; the same checks as /v1/predict."""
    try:
        if url.startswith("data:"):
            head, _, payload = url.partition(",")
            if not head.endswith(";base64"):
                raise OpenAIError(
                    400, f"{where}: a data URL must be base64 (data:image/jpeg;base64,...)", where
                )
            if len(payload) * 3 // 4 > settings.max_image_bytes:
                raise core.BadInput(413, core._too_large_image(where, len(payload) * 3 // 4, settings))
            try:
                data = base64.b64decode(payload, validate=True)
            except (binascii.Error, ValueError):
                raise OpenAIError(400, f"{where}: the data URL is not valid base64", where) from None
            return await asyncio.to_thread(core._decode, data, where, settings)
        return await core._fetch(url, settings)
    except core.BadInput as exc:
        raise _from_bad_input(exc, where) from None


async def _submit(batcher: Any, job: ChatJob) -> list[Any]:
    try:
        return await batcher.submit([job])
    except Exception as exc:  # the model failed: a 500 in OpenAI's format
        log.exception("the model failed on a chat request")
        raise OpenAIError(500, str(core.ModelFailed(exc))) from exc


def _usage(result: ChatResult) -> dict[str, int]:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }


def _stream(chat: ChatRequest, job: ChatJob, batcher: Any, model_name: str) -> StreamingResponse:
    """Server-sent events: a role chunk, content chunks as the model writes, a finish chunk (and usage when
    stream_options.include_usage), then [DONE]. A model failure mid-stream is sent as an error event."""
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue[str] = asyncio.Queue()
    job.on_text = lambda piece: loop.call_soon_threadsafe(pieces.put_nowait, piece)
    ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    include_usage = bool((chat.stream_options or {}).get("include_usage"))

    def event(delta: dict[str, Any], finish: str | None = None, usage: Any = None) -> str:
        chunk: dict[str, Any] = {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model_name,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
            if usage is None
            else [],
        }
        if usage is not None or include_usage:
            chunk["usage"] = usage
        return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"

    async def events() -> AsyncIterator[str]:
        task = asyncio.ensure_future(_submit(batcher, job))
        try:
            yield event({"role": "assistant", "content": ""})
            while not (task.done() and pieces.empty()):
                waiter = asyncio.ensure_future(pieces.get())
                await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
                if waiter.done():
                    yield event({"content": waiter.result()})
                else:
                    waiter.cancel()
            try:
                [done] = task.result()
            except OpenAIError as exc:
                yield f"data: {json.dumps(exc.body())}\n\n"
                return
            yield event({}, done.result.finish_reason)
            if include_usage:
                yield event({}, usage=_usage(done.result))
            yield "data: [DONE]\n\n"
        finally:
            task.cancel()  # the client went away: drop the queued job

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
