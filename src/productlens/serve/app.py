"""HTTP API and web page over the Predictor: product photos in (multipart upload, or JSON with URLs / base64),
title, category and price out; requests arriving together are batched into one model call.

In: a loaded `Predictor` and `ServeSettings`. Out: a FastAPI app (`create_app`). Run: `productlens serve --model RUN`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import io
import ipaddress
import logging
import socket
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect
from starlette.types import Message

from productlens.catalog import download
from productlens.catalog.imagetypes import KINDS_TEXT
from productlens.serve.batching import Batcher

if TYPE_CHECKING:
    from productlens.chat import ChatJob, ChatResult
    from productlens.predict import Prediction, Predictor

log = logging.getLogger(__name__)
MiB = 1024 * 1024
FILE_FIELDS = ("file", "files")  # multipart part names that carry photos


@dataclass(frozen=True)
class ServeSettings:
    """Limits and batching for one server. Every limit answers bad input with a 4xx and a message."""

    max_batch: int = 8  # images per model call across requests; 1 switches batching off
    max_wait_ms: float = 20.0  # how long the batcher waits for more images after the first
    max_image_bytes: int = 10 * MiB  # one photo's encoded size
    max_request_bytes: int = 32 * MiB  # one request's body (checked on Content-Length and while streaming)
    max_image_pixels: int = 40_000_000  # width * height of one photo (decompression bombs)
    max_images: int = 8  # photos per request
    request_timeout_s: float = 120.0  # from body read to answer; then 504
    url_timeout_s: float = 15.0  # fetching one photo URL
    allow_private_urls: bool = False  # let JSON URL inputs reach loopback / private hosts (not link-local)
    token: str | None = None  # bearer token for /v1/predict; None = open
    allow_hosts: frozenset[str] = (
        frozenset()
    )  # private hosts / IPs / CIDRs URL inputs may reach (--allow-host)

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_image_bytes", "max_request_bytes", "max_image_pixels", "max_images"):
            if getattr(self, name) < 1:
                raise ValueError(f"ServeSettings.{name} must be at least 1, got {getattr(self, name)}")
        for name in ("max_wait_ms", "request_timeout_s", "url_timeout_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"ServeSettings.{name} must be 0 or more, got {getattr(self, name)}")
        if self.token is not None and not self.token:
            raise ValueError(
                "ServeSettings.token is empty; pass a non-empty token or None for an open server"
            )
        download.HostPolicy(self.allow_private_urls, self.allow_hosts)  # a bad entry fails here, saying why


# ---- request and response schemas (these make /openapi.json) ----------------------------------------------


class ImageInput(BaseModel):
    """One photo in a JSON request: exactly one of `url` (http/https) or `base64` (the file's bytes)."""

    model_config = ConfigDict(extra="forbid")
    url: str | None = Field(
        None, description="http(s) URL of the photo; private addresses need --allow-private-urls"
    )
    base64: str | None = Field(None, description="the photo file (JPEG, PNG, WebP...) in standard base64")

    @model_validator(mode="after")
    def _one_source(self) -> ImageInput:
        if (self.url is None) == (self.base64 is None):
            raise ValueError('give each image exactly one of "url" or "base64"')
        return self


class PredictJSON(BaseModel):
    """JSON body of POST /v1/predict."""

    model_config = ConfigDict(extra="forbid")
    images: list[ImageInput] = Field(description="the photos to read, 1 to max_images of them")


class PredictionOut(BaseModel):
    """What the model read from one photo; fields it could not read are null and named in `failures`."""

    title: str | None = Field(description="product title, or null when it could not be read")
    category: str | None = Field(description="category code (category3_code), or null")
    price: float | None = Field(description="full price, or null")
    raw_text: str = Field(description="the model's whole answer")
    failures: list[str] = Field(description="why a field could not be read; empty when all were")
    seconds: float = Field(description="model seconds spent on this photo")


class Timing(BaseModel):
    """Where the request's time went, in seconds."""

    read_seconds: float = Field(description="receiving, fetching and decoding the photos")
    queued_seconds: float = Field(description="longest wait of a photo for the model")
    model_seconds: float = Field(description="longest model call that read a photo of this request")
    total_seconds: float = Field(description="from the first byte read to the answer")
    batch_sizes: list[int] = Field(
        description="per photo: how many photos (of all requests) its model call read"
    )


class PredictResponse(BaseModel):
    predictions: list[PredictionOut] = Field(description="one per photo, in request order")
    timing: Timing


class Health(BaseModel):
    status: str = Field(description='"ok" while the server answers')
    model: str = Field(description="the model (or run folder) being served")
    ready: bool = Field(description="true when predictions can be made")
    auth_required: bool = Field(description="true when /v1/predict needs `Authorization: Bearer TOKEN`")
    max_images: int = Field(description="photos per request")
    max_image_bytes: int = Field(description="bytes per photo")
    max_request_bytes: int = Field(description="bytes per request body")


class ErrorOut(BaseModel):
    error: str = Field(description="what went wrong and what to do")


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut, "description": text}
    for code, text in {
        400: "malformed body: bad JSON, bad multipart, a URL the server may not or cannot fetch",
        401: "missing or wrong bearer token",
        413: "too many photos, or a photo / the body / the pixels over the server's limits",
        415: "not multipart/form-data or application/json, or a file that is not a readable image",
        422: "well-formed JSON that does not fit the schema, bad base64, or no photos",
        504: "the model did not answer within the server's request timeout",
    }.items()
}

PREDICT_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {
                    "file": {"type": "string", "format": "binary", "description": "one photo"},
                    "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                },
                "description": "one or more photos as `file` or `files` parts",
            }
        },
        "application/json": {"schema": {"$ref": "#/components/schemas/PredictJSON"}},
    },
}


# ---- errors -------------------------------------------------------------------------------------------------


class BadInput(Exception):
    """Input the server refuses, with the HTTP status and a message that says what to do."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ModelFailed(Exception):
    """The model (or the server) failed on good input: a 500, never the client's fault."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(
            f"{type(cause).__name__}: {cause}; this is a server or model problem, not your input"
        )


class _BodyTooLarge(Exception):
    pass


def _limited(receive: Callable[[], Awaitable[Message]], limit: int) -> Callable[[], Awaitable[Message]]:
    """Wrap an ASGI `receive` so that reading more than `limit` body bytes raises instead of buffering on."""
    seen = 0

    async def receive_limited() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _BodyTooLarge
        return message

    return receive_limited


# ---- the app ------------------------------------------------------------------------------------------------


def create_app(
    predictor: Predictor | Any, settings: ServeSettings = ServeSettings(), model_name: str = "model"
) -> FastAPI:
    """A FastAPI app serving `predictor`: POST /v1/predict, GET /health, GET / (the page), /openapi.json.

    `predictor` needs `predict(images: list[PIL.Image]) -> list[Prediction]`; calls are serialized.
    """
    batcher: Batcher[Image.Image | ChatJob, Prediction | ChatResult] = Batcher(
        _run_batch(predictor), settings.max_batch, settings.max_wait_ms
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(
        title="productlens",
        summary="Read a product photo: title, category and price.",
        description="POST photos to /v1/predict (multipart `file`/`files` parts, or JSON with URLs / base64), "
        "or chat with them at /v1/chat/completions (OpenAI's format).",
        version=_version(),
        lifespan=lifespan,
    )
    app.state.batcher = batcher
    app.state.settings = settings

    async def authorize(request: Request) -> None:
        if settings.token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), settings.token.encode()
        ):
            raise StarletteHTTPException(
                401,
                "this server needs a token: send the header `Authorization: Bearer TOKEN` "
                "(the --token or PRODUCTLENS_TOKEN the server was started with)",
                headers={"WWW-Authenticate": "Bearer"},
            )

    @app.exception_handler(BadInput)
    async def bad_input(request: Request, exc: BadInput) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": _describe(exc.errors())}, status_code=422)

    @app.exception_handler(ModelFailed)
    async def model_failed(request: Request, exc: ModelFailed) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=500)

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> JSONResponse:  # uvicorn logs the traceback
        return JSONResponse({"error": f"the server failed: {ModelFailed(exc)}"}, status_code=500)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE, headers=PAGE_HEADERS)

    @app.get("/health", response_model=Health, summary="Is the server up and the model ready?")
    async def health() -> Health:
        return Health(
            status="ok",
            model=model_name,
            ready=batcher.running,
            auth_required=settings.token is not None,
            max_images=settings.max_images,
            max_image_bytes=settings.max_image_bytes,
            max_request_bytes=settings.max_request_bytes,
        )

    @app.post(
        "/v1/predict",
        response_model=PredictResponse,
        responses=ERRORS,
        summary="Read one or several product photos",
        openapi_extra={"requestBody": PREDICT_BODY},
        dependencies=[Depends(authorize)],
    )
    async def predict(request: Request) -> PredictResponse:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(settings.request_timeout_s):
                images = await _read_images(request, settings)
                read_seconds = time.perf_counter() - started
                try:
                    results = await batcher.submit(images)
                except Exception as exc:  # the model failed: answer 500 here, keeping the connection usable
                    log.exception("the model failed on a request")
                    raise ModelFailed(exc) from exc
        except TimeoutError:
            raise StarletteHTTPException(
                504, f"no answer within {settings.request_timeout_s:g} s; the server is busy, try again later"
            ) from None
        return PredictResponse(
            predictions=[_prediction_out(r.result) for r in results],
            timing=Timing(
                read_seconds=read_seconds,
                queued_seconds=max(r.queued_seconds for r in results),
                model_seconds=max(r.model_seconds for r in results),
                total_seconds=time.perf_counter() - started,
                batch_sizes=[r.batch_size for r in results],
            ),
        )

    from productlens.serve.openai_api import create_router

    app.include_router(create_router(batcher, predictor, settings, model_name))
    _add_schema(app, PredictJSON)
    return app


def _run_batch(predictor: Any) -> Callable[[list[Any]], list[Any]]:
    """One batcher call: photos (from /v1/predict) -> predictor.predict, chat jobs -> predictor.chat."""

    def run(items: list[Any]) -> list[Any]:
        out: list[Any] = [None] * len(items)
        photos = [i for i, item in enumerate(items) if isinstance(item, Image.Image)]
        chats = [i for i, item in enumerate(items) if not isinstance(item, Image.Image)]
        for group, call in (
            (photos, lambda x: predictor.predict(x, batch_size=len(x))),
            (chats, lambda x: predictor.chat(x)),
        ):
            if group:
                for i, result in zip(group, call([items[i] for i in group]), strict=True):
                    out[i] = result
        return out

    return run


def _add_schema(app: FastAPI, model: type[BaseModel]) -> None:
    """Put `model` under components/schemas of the OpenAPI document (the body is read by hand, see _read_images)."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = original()
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            defs = model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(defs.pop("$defs", {}))
            schemas[model.__name__] = defs
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _prediction_out(p: Prediction) -> PredictionOut:
    return PredictionOut(
        title=p.title,
        category=p.category,
        price=p.price,
        raw_text=p.raw_text,
        failures=list(p.failures),
        seconds=p.seconds,
    )


def _describe(errors: Any) -> str:
    """pydantic errors -> one readable sentence naming where each problem is."""
    parts = []
    for e in errors:
        where = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
        parts.append(f"{where}: {e.get('msg')}" if where else str(e.get("msg")))
    return "the request does not fit the schema (see /openapi.json): " + "; ".join(parts)


# ---- reading photos from a request --------------------------------------------------------------------------


async def _read_images(request: Request, settings: ServeSettings) -> list[Image.Image]:
    """The request's photos as verified RGB images; BadInput (4xx) for anything the server will not read."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > settings.max_request_bytes:
        raise BadInput(413, _too_large_body(settings))
    bounded = Request(request.scope, _limited(request.receive, settings.max_request_bytes))
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        if kind == "multipart/form-data":
            return await _read_multipart(bounded, settings)
        if kind == "application/json":
            return await _read_json(await bounded.body(), settings)
    except _BodyTooLarge:
        raise BadInput(413, _too_large_body(settings)) from None
    except ClientDisconnect:
        raise BadInput(400, "the client went away before sending the whole body") from None
    raise BadInput(
        415,
        f"unsupported Content-Type {kind or '(none)'!r}: send multipart/form-data with `file` parts "
        'or application/json like {"images": [{"url": "https://..."}, {"base64": "..."}]}',
    )


def _too_large_body(settings: ServeSettings) -> str:
    return (
        f"the request body is over {settings.max_request_bytes:,} bytes; send fewer or smaller photos "
        f"(at most {settings.max_image_bytes:,} bytes each)"
    )


async def _read_multipart(request: Request, settings: ServeSettings) -> list[Image.Image]:
    # One file more than allowed, so that "too many" is answered by us (413) rather than by the parser.
    try:
        form = await request.form(max_files=settings.max_images + 1, max_fields=16)
    except (MultiPartException, StarletteHTTPException) as exc:
        problem = exc.message if isinstance(exc, MultiPartException) else str(exc.detail)
        if problem.startswith("Too many files"):  # the parser stops at max_images + 1 files
            raise BadInput(413, _too_many(settings)) from None
        raise BadInput(
            400, f"the multipart body could not be read ({problem}); send photos as `file` parts"
        ) from None
    try:
        files = [v for key, v in form.multi_items() if isinstance(v, UploadFile) and key in FILE_FIELDS]
        _check_count(len(files), settings, hint="as multipart parts named `file` or `files`")
        images = []
        for i, upload in enumerate(files):
            name = upload.filename or f"file {i + 1}"
            if upload.size is not None and upload.size > settings.max_image_bytes:
                raise BadInput(413, _too_large_image(name, upload.size, settings))
            data = await upload.read(settings.max_image_bytes + 1)
            if len(data) > settings.max_image_bytes:
                raise BadInput(413, _too_large_image(name, len(data), settings))
            images.append(await asyncio.to_thread(_decode, data, name, settings))
        return images
    finally:
        await form.close()


async def _read_json(body: bytes, settings: ServeSettings) -> list[Image.Image]:
    try:
        parsed = PredictJSON.model_validate_json(body)
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            raise BadInput(400, f"the body is not valid JSON ({exc.errors()[0]['msg']})") from None
        raise BadInput(422, _describe(exc.errors())) from None
    _check_count(len(parsed.images), settings, hint='in "images"')
    images = []
    for i, item in enumerate(parsed.images):
        if item.url is not None:
            images.append(await _fetch(item.url, settings))
            continue
        try:
            data = base64.b64decode(item.base64 or "", validate=True)
        except (binascii.Error, ValueError):
            raise BadInput(
                422, f"images[{i}].base64 is not valid base64; encode the file's bytes with standard base64"
            ) from None
        if len(data) > settings.max_image_bytes:
            raise BadInput(413, _too_large_image(f"images[{i}]", len(data), settings))
        images.append(await asyncio.to_thread(_decode, data, f"images[{i}]", settings))
    return images


def _check_count(count: int, settings: ServeSettings, hint: str) -> None:
    if count == 0:
        raise BadInput(422, f"the request holds no photos; send 1 to {settings.max_images} photos {hint}")
    if count > settings.max_images:
        raise BadInput(413, _too_many(settings))


def _too_many(settings: ServeSettings) -> str:
    return f"too many photos: this server reads at most {settings.max_images} per request; split them"


def _too_large_image(name: str, size: int, settings: ServeSettings) -> str:
    return f"{name} is {size:,} bytes or more, over the limit of {settings.max_image_bytes:,}; send a smaller photo"


def _decode(data: bytes, name: str, settings: ServeSettings) -> Image.Image:
    """Encoded photo bytes -> RGB image, verified and normalised as the training photos were (one verifier)."""
    try:
        verified, _, _, _ = download.normalise_image(data, max_pixels=settings.max_image_pixels)
    except download.InvalidImage as exc:
        raise BadInput(415, f"{name} was refused: {exc}; send a complete {KINDS_TEXT} photo") from None
    with Image.open(io.BytesIO(verified), formats=["JPEG", "PNG"]) as im:
        return im.convert("RGB")


async def _fetch(url: str, settings: ServeSettings) -> Image.Image:
    """A photo URL -> RGB image, through the project's safe downloader (into a folder that lives one request)."""
    config = download.DownloadConfig(
        concurrency=1,
        timeout_s=settings.url_timeout_s,
        deadline_s=settings.url_timeout_s,
        retries=1,
        max_bytes=settings.max_image_bytes,
        max_pixels=settings.max_image_pixels,
        allow_private=settings.allow_private_urls,
        allow_hosts=settings.allow_hosts,
        workers=1,
    )
    with tempfile.TemporaryDirectory(prefix="productlens-serve-") as folder:
        async with download.Downloader(folder, config) as downloader:
            result = await downloader.fetch(download.ImageJob("0", url))
        if result.status != "ok" or result.path is None:
            status, hint = URL_FAILURES.get(result.reason, (400, "check the URL"))
            raise BadInput(status, f"{url} was not read ({result.reason}: {result.detail}); {hint}")
        return await asyncio.to_thread(_open_rgb, result.path)


def _open_rgb(path: str) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


URL_FAILURES = {  # downloader's reason -> (status, what to do)
    "unsafe_url": (
        400,
        "give a valid, public http(s) URL (the server refuses private addresses unless started with "
        "--allow-host HOST or --allow-private-urls)",
    ),
    "download_failed": (400, "check that the URL serves the photo, or upload the file instead"),
    "invalid_image": (415, f"the URL must serve a complete {KINDS_TEXT} photo"),
    "unexpected_error": (400, "upload the file instead (and please report the URL as a productlens bug)"),
}


# ---- the page -----------------------------------------------------------------------------------------------

PAGE = resources.files("productlens.serve").joinpath("page.html").read_text(encoding="utf-8")
# The page is self-contained: the policy forbids any resource from elsewhere (no CDN, no fonts).
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src 'self' blob: data:; style-src 'unsafe-inline'; "
    "script-src 'unsafe-inline'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _version() -> str:
    from productlens import __version__

    return __version__


# ---- running it ---------------------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """True when `host` binds only this machine (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, token: str | None) -> str | None:
    """A warning when `host` is reachable from other machines and no token guards the API; else None."""
    if is_loopback(host) or token is not None:
        return None
    return (
        f"warning: binding {host} lets other machines use the model without a token; "
        "pass --token (or set PRODUCTLENS_TOKEN), or bind 127.0.0.1"
    )


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family)


def _url(sock: socket.socket, host: str) -> str:
    port = sock.getsockname()[1]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


HEADER_TIMEOUT_S = 10.0  # a connection must deliver a request's head (line and headers) within this


def _protocol() -> type | str:
    """uvicorn's h11 protocol with a deadline for each request head: uvicorn has none, so a client dripping one
    header byte at a time would hold its connection (and a file descriptor) forever."""
    try:
        import h11
        from uvicorn.protocols.http.h11_impl import H11Protocol
    except ImportError:  # pragma: no cover
        return "auto"

    class HeadDeadline(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE and self._head_timer is not None:  # the head is in
                self._head_timer.cancel()
                self._head_timer = None

        def connection_lost(self, exc: Exception | None) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            self._head_timer = self.loop.call_later(HEADER_TIMEOUT_S, self._too_slow)

        def _too_slow(self) -> None:
            self._head_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

    return HeadDeadline


@contextlib.contextmanager
def serve_in_thread(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run `app` with uvicorn in a background thread; yields its base URL (port 0 = a free port), stops on exit."""
    sock = _bind(host, port)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", http=_protocol()))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="productlens-serve"
    )
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start; see the log above")
            time.sleep(0.01)
        yield _url(sock, host)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def serve(
    model: str | Path,
    adapter: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    settings: ServeSettings = ServeSettings(),
    family: str | None = None,
) -> None:
    """Load the model once (`family`: default from its config.json) and serve the API and page until interrupted
    (Ctrl+C); prints the URL."""
    from productlens.predict import Predictor

    if warning := exposure_warning(host, settings.token):
        print(warning, flush=True)
    try:
        sock = _bind(host, port)  # bind first, so a busy port fails before the model loads
    except OSError as exc:
        raise SystemExit(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port"
        ) from None
    print(f"loading {model} ...", flush=True)
    predictor = Predictor.load(model, adapter=adapter, family=family)
    app = create_app(predictor, settings, model_name=Path(model).name or str(model))
    url = _url(sock, "127.0.0.1" if host in ("0.0.0.0", "::") else host)
    print(f"productlens is serving {model} at {url}/  (API: {url}/openapi.json; Ctrl+C stops)", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="info", http=_protocol())).run(sockets=[sock])
