"""The OpenAI-compatible endpoint, driven by the official `openai` client against a real `productlens serve` on
127.0.0.1 (tiny random Phi-3-V): photos as data URLs and as loopback http URLs, streaming, JSON-schema output,
every bad input raising the client's matching error class (then a good request), concurrent clients, the shared
batcher, and `productlens predict/evaluate --endpoint` giving the rows local prediction gives."""

from __future__ import annotations

import base64
import http.server
import io
import json
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ClassVar

import datasets
import httpx
import openai
import pytest
from PIL import Image
from serve_process import serve_process
from typer.testing import CliRunner

from productlens.catalog.photos import PhotoSpec, draw_photo, encode_jpeg
from productlens.catalog.server import ImageServer
from productlens.cli import app as cli
from productlens.endpoint import EndpointError, Refused, RemotePredictor
from productlens.phi3v.tiny import save_tiny_model
from productlens.predict import Predictor, predict_inputs
from productlens.serve.app import ServeSettings, create_app, serve_in_thread

TEXTS = [
    "Product: Check Wool Scarf, Category: SCARVES, Full Price: 450.00",
    "Product: Kensington Trench Coat, Category: TRENCH COATS, Full Price: 2290.00",
]
TOKEN = "openai-test-token"
MAX_TOKENS = 8
QUESTION = "What is shown in this image?"


def photo(seed: int, silhouette: str = "trench", colour=(150, 90, 60)) -> bytes:
    return encode_jpeg(draw_photo(PhotoSpec(silhouette, "check", "leather", colour, 0.7, 96, 120, seed=seed)))


PHOTOS = [photo(1), photo(2, "coat", (20, 40, 160)), photo(3, "quilted", (30, 120, 40))]


def data_url(data: bytes, kind: str = "image/jpeg") -> str:
    return f"data:{kind};base64,{base64.b64encode(data).decode()}"


def ask(image_url: str, question: str = QUESTION) -> list[dict]:
    return [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": image_url}},
                {"type": "text", "text": question},
            ],
        }
    ]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("openai") / "tiny-phi3v", TEXTS)


@pytest.fixture(scope="module")
def predictor(model_dir) -> Predictor:
    return Predictor.load(model_dir, max_new_tokens=MAX_TOKENS)


@pytest.fixture(scope="module")
def server(model_dir):
    """`productlens serve` itself, in its own process, with a token and the private-address opt-in."""
    env = {**os.environ, "PRODUCTLENS_TOKEN": TOKEN, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "productlens", "serve", "--model", str(model_dir), "--port", "0"]
    command += [
        "--allow-private-urls",
        "--max-images",
        "2",
        "--max-image-bytes",
        "60000",
        "--max-wait-ms",
        "100",
    ]
    with serve_process(command, env) as url:
        yield url


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key=TOKEN, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    for i, data in enumerate(PHOTOS):
        (root / f"{i}.jpg").write_bytes(data)
    with ImageServer(root) as srv:
        yield srv


def expected(predictor, data: bytes) -> str:
    return predictor.predict([Image.open(io.BytesIO(data)).convert("RGB")])[0].raw_text


def chat(client, image_url: str, **options):
    return client.chat.completions.create(
        model="tiny-phi3v", messages=ask(image_url), max_tokens=MAX_TOKENS, temperature=0, **options
    )


# ---- good input -------------------------------------------------------------------------------------------


def test_models_lists_the_served_model(client):
    assert [m.id for m in client.models.list()] == ["tiny-phi3v"]
    assert client.models.retrieve("tiny-phi3v").owned_by == "productlens"


def test_a_data_url_photo_answers_what_the_predictor_answers_with_real_usage(client, predictor):
    answer = chat(client, data_url(PHOTOS[0]))
    [choice] = answer.choices
    assert choice.message.role == "assistant"
    assert choice.message.content == expected(predictor, PHOTOS[0])
    image = Image.open(io.BytesIO(PHOTOS[0])).convert("RGB")
    prompt = predictor.processor(text=predictor.processor.chat_prompt(QUESTION), images=[image])
    assert answer.usage.prompt_tokens == prompt["input_ids"].shape[1]  # image slots included
    generated = predictor.processor.tokenizer(choice.message.content, add_special_tokens=False)["input_ids"]
    if choice.finish_reason == "length":
        assert answer.usage.completion_tokens == MAX_TOKENS
    else:
        assert choice.finish_reason == "stop" and answer.usage.completion_tokens <= MAX_TOKENS
    assert answer.usage.completion_tokens >= min(len(generated), 1)
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens
    assert answer.model == "tiny-phi3v" and answer.id.startswith("chatcmpl-")


def test_an_http_url_photo_is_fetched_from_the_loopback_image_server(client, predictor, images):
    answer = chat(client, images.url("/1.jpg"))
    assert answer.choices[0].message.content == expected(predictor, PHOTOS[1])
    assert images.requests["/1.jpg"] == 1


def test_private_urls_are_refused_without_the_opt_in(predictor, images):
    app = create_app(predictor, ServeSettings(), model_name="tiny-phi3v")
    with serve_in_thread(app) as url:
        local = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        with pytest.raises(openai.BadRequestError, match="loopback"):
            chat(local, images.url("/2.jpg"))
    assert images.requests["/2.jpg"] == 0


def test_text_only_chat_and_stop_strings(client, predictor):
    full = client.chat.completions.create(
        model="tiny-phi3v", messages=[{"role": "user", "content": "hello"}], max_tokens=12, temperature=0
    )
    text = full.choices[0].message.content
    assert full.usage.completion_tokens >= 1
    stop = next((text[i : i + 2] for i in range(2, len(text) - 1) if text[i : i + 2].strip()), None)
    assert stop is not None, f"the model (greedy, fixed weights) wrote no text to stop at: {text!r}"
    cut = client.chat.completions.create(
        model="tiny-phi3v",
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=12,
        temperature=0,
        stop=[stop],
    )
    assert cut.choices[0].message.content == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    assert cut.usage.completion_tokens < full.usage.completion_tokens


def test_streaming_gives_the_same_text_in_chunks_then_done(client, server, predictor):
    whole = chat(client, data_url(PHOTOS[2])).choices[0].message.content
    chunks = list(chat(client, data_url(PHOTOS[2]), stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole == expected(predictor, PHOTOS[2])
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes in (["length"], ["stop"])
    assert chunks[-1].usage.completion_tokens >= 1 and not chunks[-1].choices
    body = {"model": "tiny-phi3v", "messages": ask(data_url(PHOTOS[2])), "max_tokens": 4, "stream": True}
    raw = httpx.post(
        f"{server}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {TOKEN}"}, timeout=60
    )
    assert raw.headers["content-type"].startswith("text/event-stream")
    events = [e for e in raw.text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"


def test_json_schema_output_parses_into_the_three_fields(client):
    schema = {
        "type": "object",
        "properties": {
            "title": {"type": "string", "maxLength": 12},
            "category": {"type": "string", "maxLength": 8},
            "price": {"type": "number"},
        },
        "required": ["title", "category", "price"],
    }
    answer = client.chat.completions.create(
        model="tiny-phi3v",
        messages=ask(data_url(PHOTOS[0])),
        max_tokens=160,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "product", "schema": schema}},
    )
    assert answer.choices[0].finish_reason == "stop", answer.choices[0].message.content
    fields = json.loads(answer.choices[0].message.content)
    assert set(fields) == {"title", "category", "price"}
    # lm-format-enforcer holds a string to maxLength give or take one character (seen: a leading space)
    assert isinstance(fields["title"], str) and len(fields["title"]) <= 12 + 1
    assert isinstance(fields["category"], str) and len(fields["category"]) <= 8 + 1
    assert isinstance(fields["price"], int | float)


def test_json_object_answers_title_category_and_price(client):
    answer = client.chat.completions.create(
        model="tiny-phi3v",
        messages=ask(data_url(PHOTOS[1])),
        max_tokens=400,
        temperature=0,
        response_format={"type": "json_object"},
    )
    fields = json.loads(answer.choices[0].message.content)
    assert set(fields) == {"title", "category", "price"}
    assert isinstance(fields["title"], str) and isinstance(fields["price"], int | float)


# ---- bad input: the client's own error classes, and the server goes on ------------------------------------


def too_big() -> str:
    return data_url(b"\xff\xd8\xff" + b"0" * 70_000)


BAD = {
    # id: (create() keyword arguments, error class, words in the message)
    "unknown-model": ({"model": "gpt-4o"}, openai.NotFoundError, "tiny-phi3v"),
    "n-2": ({"n": 2}, openai.BadRequestError, "n=1"),
    "temperature-5": ({"temperature": 5}, openai.BadRequestError, "temperature"),
    "max-tokens-0": ({"max_tokens": 0}, openai.BadRequestError, "max_tokens"),
    "not-an-image": (
        {"messages": ask(data_url(b"hello, not a photo"))},
        openai.BadRequestError,
        "not a JPEG",
    ),
    "bad-base64": ({"messages": ask("data:image/jpeg;base64,!!!")}, openai.BadRequestError, "base64"),
    "photo-over-byte-limit": ({"messages": ask(too_big())}, openai.BadRequestError, "over the limit"),
    "file-url": ({"messages": ask("file:///etc/passwd")}, openai.BadRequestError, "http"),
    "url-answering-404": (None, openai.BadRequestError, "404"),
    "too-many-photos": (
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": data_url(PHOTOS[0])}}] * 3,
                }
            ]
        },
        openai.BadRequestError,
        "at most 2",
    ),
    "image-in-assistant-message": (
        {
            "messages": [
                {
                    "role": "assistant",
                    "content": [{"type": "image_url", "image_url": {"url": data_url(PHOTOS[0])}}],
                }
            ]
        },
        openai.BadRequestError,
        "only user messages",
    ),
    "no-messages": ({"messages": []}, openai.BadRequestError, "messages"),
    "unknown-response-format": (
        {"response_format": {"type": "yaml"}},
        openai.BadRequestError,
        "response_format",
    ),
    "schema-not-an-object": (
        {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": "title"}}},
        openai.BadRequestError,
        "schema",
    ),
}


@pytest.mark.parametrize(("options", "error", "words"), BAD.values(), ids=BAD.keys())
def test_bad_input_raises_the_clients_error_class_and_the_server_goes_on(
    client, images, options, error, words
):
    request = {"model": "tiny-phi3v", "messages": ask(data_url(PHOTOS[0])), "max_tokens": MAX_TOKENS}
    request.update(options if options is not None else {"messages": ask(images.url("/0.jpg", "404"))})
    with pytest.raises(error) as raised:
        client.chat.completions.create(**request)
    assert words in raised.value.body["message"] and raised.value.message.endswith(
        raised.value.body["message"]
    )
    assert raised.value.body["type"] in ("invalid_request_error", "not_found_error")
    assert chat(client, data_url(PHOTOS[0])).choices[0].message.content  # and a good request is answered


def test_a_wrong_token_raises_authentication_error(server, client):
    for key in ("wrong", ""):
        stranger = openai.OpenAI(base_url=f"{server}/v1", api_key=key or "x", max_retries=0)
        with pytest.raises(openai.AuthenticationError, match="api_key"):
            chat(stranger, data_url(PHOTOS[0]))
        with pytest.raises(openai.AuthenticationError):
            stranger.models.list()
    assert chat(client, data_url(PHOTOS[0])).choices


def test_a_failing_model_raises_internal_server_error_or_a_stream_error_and_the_server_goes_on(
    predictor, monkeypatch
):
    app = create_app(predictor, ServeSettings(), model_name="tiny-phi3v")
    with serve_in_thread(app) as url:
        local = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        real_chat = predictor.chat

        def broken(jobs):
            raise RuntimeError("CUDA out of memory (injected)")

        monkeypatch.setattr(predictor, "chat", broken)
        with pytest.raises(openai.InternalServerError, match="CUDA out of memory"):
            chat(local, data_url(PHOTOS[0]))
        with pytest.raises(openai.APIError, match="CUDA out of memory"):
            list(chat(local, data_url(PHOTOS[0]), stream=True))
        monkeypatch.setattr(predictor, "chat", real_chat)
        assert chat(local, data_url(PHOTOS[0])).choices[0].message.content == expected(predictor, PHOTOS[0])


# ---- concurrency and the shared batcher -------------------------------------------------------------------


def test_concurrent_clients_get_their_own_answers(client, predictor):
    want = [expected(predictor, p) for p in PHOTOS]
    assert len(set(want)) > 1  # else mixed-up answers would not show
    order = [0, 1, 2, 1, 0, 2]
    barrier = threading.Barrier(len(order))

    def one(i: int) -> str:
        barrier.wait()
        return chat(client, data_url(PHOTOS[i])).choices[0].message.content

    with ThreadPoolExecutor(len(order)) as pool:
        got = list(pool.map(one, order))
    assert got == [want[i] for i in order]


def test_chat_and_predict_requests_share_model_calls(predictor):
    app = create_app(predictor, ServeSettings(max_batch=8, max_wait_ms=300), model_name="tiny-phi3v")
    with serve_in_thread(app) as url:
        local = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        barrier = threading.Barrier(2)

        def via_chat() -> str:
            barrier.wait()
            return chat(local, data_url(PHOTOS[0])).choices[0].message.content

        def via_predict() -> str:
            barrier.wait()
            files = {"file": ("a.jpg", PHOTOS[1], "image/jpeg")}
            return httpx.post(f"{url}/v1/predict", files=files, timeout=60).json()["predictions"][0][
                "raw_text"
            ]

        with ThreadPoolExecutor(2) as pool:
            a, b = pool.submit(via_chat), pool.submit(via_predict)
            answers = a.result(), b.result()
    assert answers == (expected(predictor, PHOTOS[0]), expected(predictor, PHOTOS[1]))
    assert app.state.batcher.batch_sizes == [2]  # one batch held both requests


# ---- predict / evaluate --endpoint ------------------------------------------------------------------------


def read_rows(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row in rows:
        row.pop("seconds")
    return rows


def test_predict_endpoint_writes_the_rows_local_predict_writes(server, model_dir, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, data in enumerate(PHOTOS):
        (folder / f"{i}.jpg").write_bytes(data)
    (folder / "broken.jpg").write_bytes(b"not a photo")
    runner = CliRunner()
    common = ["predict", str(folder), "--max-new-tokens", str(MAX_TOKENS)]
    local = runner.invoke(cli, [*common, "--model", str(model_dir), "--out", str(tmp_path / "local.jsonl")])
    assert local.exit_code == 0, local.output
    remote = runner.invoke(
        cli,
        [
            *common,
            "--endpoint",
            server,
            "--api-key",
            TOKEN,
            "--concurrency",
            "3",
            "--out",
            str(tmp_path / "remote.jsonl"),
        ],
    )
    assert remote.exit_code == 0, remote.output
    rows = read_rows(tmp_path / "remote.jsonl")
    assert rows == read_rows(tmp_path / "local.jsonl")
    # broken.jpg is no image by its content: listed first, with its reason, by both
    assert [r["error"] is None for r in rows] == [False, True, True, True]
    assert rows[0]["error"].startswith("skipped") and rows[1]["raw_text"]
    assert "4 inputs: 3 read, 0 failed, 1 skipped" in remote.output

    refused = runner.invoke(cli, [*common, "--endpoint", server, "--api-key", "wrong"])
    assert refused.exit_code == 2 and "401" in refused.output and "--api-key" in refused.output


def test_evaluate_endpoint_scores_like_local_evaluate(server, model_dir, tmp_path):
    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "image": datasets.Image(),
            "title": datasets.Value("string"),
            "category": datasets.Value("string"),
            "price": datasets.Value("float64"),
        }
    )
    columns = {
        "id": ["a", "b", "c"],
        "image": [{"bytes": p, "path": None} for p in PHOTOS],
        "title": ["Check Wool Scarf", "Trench Coat", "Quilted Jacket"],
        "category": ["SCARVES", "TRENCH COATS", "JACKETS"],
        "price": [450.0, 2290.0, 990.0],
    }
    split = datasets.Dataset.from_dict(columns, features=features)
    datasets.DatasetDict({"train": split, "test": split}).save_to_disk(str(tmp_path / "data" / "dataset"))
    runner = CliRunner()
    common = ["evaluate", "--data", str(tmp_path / "data"), "--max-new-tokens", str(MAX_TOKENS)]
    local = runner.invoke(cli, [*common, "--model", str(model_dir), "--out", str(tmp_path / "local")])
    assert local.exit_code == 0, local.output
    remote = runner.invoke(
        cli, [*common, "--endpoint", server, "--api-key", TOKEN, "--out", str(tmp_path / "remote")]
    )
    assert remote.exit_code == 0, remote.output

    def answers(folder: str) -> list:
        lines = (tmp_path / folder / "predictions.jsonl").read_text().splitlines()
        return [(r["raw_text"], r["parsed"], r["errors"]) for r in map(json.loads, lines)]

    assert answers("remote") == answers("local")
    metrics = json.loads((tmp_path / "remote" / "metrics.json").read_text())
    assert metrics["source"] == server and metrics["n"] == 3
    refused = runner.invoke(cli, [*common, "--endpoint", server, "--nn-baseline"])
    assert refused.exit_code == 2 and "--endpoint" in refused.output


class FlakyHandler(http.server.BaseHTTPRequestHandler):
    """A loopback OpenAI stand-in: 429 (Retry-After: 0), then 503, then a chat completion."""

    answers: ClassVar[list] = [
        (429, {"error": {"message": "slow down"}}),
        (503, {"error": {"message": "busy"}}),
    ]
    seen: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        FlakyHandler.seen.append(self.path)
        status, body = (
            self.answers.pop(0) if self.answers else (200, {"choices": [{"message": {"content": TEXTS[0]}}]})
        )
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        if status == 429:
            self.send_header("retry-after", "0")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


def test_remote_predictor_retries_429_and_5xx_then_parses_with_the_same_parser():
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), FlakyHandler) as httpd:
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        remote = RemotePredictor(url, model="m", retries=3)
        image = Image.new("RGB", (40, 30), (200, 10, 10))
        [prediction] = remote.predict([image])
        assert FlakyHandler.seen == ["/v1/chat/completions"] * 3
        assert (prediction.title, prediction.category, prediction.price) == (
            "Check Wool Scarf",
            "SCARVES",
            450.0,
        )
        FlakyHandler.answers = [(503, {"error": {"message": "busy"}})] * 3
        with pytest.raises(EndpointError, match="503"):
            RemotePredictor(url, model="m", retries=2).predict([image])
        httpd.shutdown()


def test_a_photo_the_server_refuses_is_that_photos_error_row_and_the_run_goes_on(tmp_path):
    """A 400 for one photo's request becomes that photo's row (and a failed prediction in evaluate)."""
    FlakyHandler.answers = [(400, {"error": {"message": "image too small"}})]
    FlakyHandler.seen = []
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), FlakyHandler) as httpd:
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        remote = RemotePredictor(url, model="m", retries=3, concurrency=1)
        images = [Image.new("RGB", (40, 30), (200, 10, 10)), Image.new("RGB", (40, 30), (10, 200, 10))]
        refused, read = remote.predict(images)
        assert isinstance(refused, Refused) and "400" in refused.error and "image too small" in refused.error
        assert refused.as_failed().failures == ("title", "category", "price")
        assert (read.title, read.category, read.price) == ("Check Wool Scarf", "SCARVES", 450.0)
        assert FlakyHandler.seen == ["/v1/chat/completions"] * 2  # a refusal is not retried

        for i, image in enumerate(images):
            image.save(tmp_path / f"{i}.png")
        FlakyHandler.answers = [(400, {"error": {"message": "image too small"}})]
        out = tmp_path / "rows.jsonl"
        summary = predict_inputs(
            RemotePredictor(url, model="m", concurrency=1), [tmp_path / "0.png", tmp_path / "1.png"], out
        )
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert (summary.succeeded, summary.failed) == (1, 1)
        assert "image too small" in rows[0]["error"] and rows[1]["error"] is None
        httpd.shutdown()
