"""The HTTP API, served for real by uvicorn on 127.0.0.1 around a Predictor on a tiny random Phi-3-V model:
uploads and JSON inputs, every kind of bad input (a 4xx with a message, and the server keeps serving),
batching across clients, the token, the timeout, the OpenAPI document and the `productlens serve` command."""

import base64
import io
import os
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image
from serve_process import serve_process

from productlens.catalog.photos import PhotoSpec, draw_photo, encode_jpeg
from productlens.catalog.server import ImageServer, bomb_png
from productlens.phi3v.tiny import save_tiny_model
from productlens.predict import Predictor
from productlens.serve.app import ServeSettings, create_app, exposure_warning, is_loopback, serve_in_thread

TEXTS = [
    "Product: Check Wool Scarf, Category: SCARVES, Full Price: 450.00",
    "Product: Kensington Trench Coat, Category: TRENCH COATS, Full Price: 2290.00",
]
SETTINGS = ServeSettings(
    max_batch=4,
    max_wait_ms=30,
    max_image_bytes=60_000,
    max_request_bytes=150_000,
    max_image_pixels=1_000_000,
    max_images=3,
)


def photo(seed: int, silhouette: str = "trench", colour=(150, 90, 60)) -> bytes:
    """A small synthetic product photo as JPEG bytes (96 x 120)."""
    return encode_jpeg(draw_photo(PhotoSpec(silhouette, "check", "leather", colour, 0.7, 96, 120, seed=seed)))


PHOTO_A = photo(1)
PHOTO_B = photo(2, "coat", (20, 40, 160))


def png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 180, 160)).save(buf, "PNG")
    return buf.getvalue()


def upload(*photos: bytes, name: str = "file") -> dict:
    return {"files": [(name, (f"photo{i}.jpg", data, "image/jpeg")) for i, data in enumerate(photos)]}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("serve") / "tiny-phi3v", TEXTS)


@pytest.fixture(scope="module")
def predictor(model_dir) -> Predictor:
    return Predictor.load(model_dir, max_new_tokens=8)


@pytest.fixture(scope="module")
def server(predictor):
    app = create_app(predictor, SETTINGS, model_name="tiny-phi3v")
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client, app


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A loopback image server with the two photos, for URL inputs."""
    root = tmp_path_factory.mktemp("photos")
    (root / "a.jpg").write_bytes(PHOTO_A)
    (root / "b.jpg").write_bytes(PHOTO_B)
    with ImageServer(root, huge_bytes=10 * SETTINGS.max_image_bytes) as srv:
        yield srv


def expected(predictor, *photos: bytes) -> list[str]:
    """What the Predictor itself answers for each photo alone (the server is idle when this runs)."""
    return [predictor.predict([Image.open(io.BytesIO(p)).convert("RGB")])[0].raw_text for p in photos]


def assert_serves(client: httpx.Client) -> None:
    response = client.post("/v1/predict", **upload(PHOTO_A))
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == 1


# ---- good input -------------------------------------------------------------------------------------------


def test_health_names_the_model_and_limits(server):
    client, _ = server
    health = client.get("/health").json()
    assert health == {
        "status": "ok",
        "model": "tiny-phi3v",
        "ready": True,
        "auth_required": False,
        "max_images": 3,
        "max_image_bytes": 60_000,
        "max_request_bytes": 150_000,
    }


def test_one_upload_answers_what_the_predictor_answers(server, predictor):
    client, _ = server
    response = client.post("/v1/predict", **upload(PHOTO_A))
    assert response.status_code == 200
    body = response.json()
    [prediction] = body["predictions"]
    assert set(prediction) == {"title", "category", "price", "raw_text", "failures", "seconds"}
    assert prediction["raw_text"] == expected(predictor, PHOTO_A)[0]
    assert prediction["seconds"] > 0
    timing = body["timing"]
    assert timing["batch_sizes"] == [1]
    assert 0 < timing["model_seconds"] <= timing["total_seconds"]
    assert timing["queued_seconds"] >= 0 and timing["read_seconds"] >= 0


def test_several_photos_come_back_in_order(server, predictor):
    client, _ = server
    want_a, want_b = expected(predictor, PHOTO_A, PHOTO_B)
    assert want_a != want_b  # else the order would not show
    files = [("files", ("a.jpg", PHOTO_A, "image/jpeg")), ("file", ("b.jpg", PHOTO_B, "image/jpeg"))]
    files.append(("files", ("a2.jpg", PHOTO_A, "image/jpeg")))
    response = client.post("/v1/predict", files=files)
    assert response.status_code == 200, response.text
    assert [p["raw_text"] for p in response.json()["predictions"]] == [want_a, want_b, want_a]
    assert response.json()["timing"]["batch_sizes"] == [3, 3, 3]


def test_json_base64_answers_like_the_upload(server, predictor):
    client, _ = server
    payload = {"images": [{"base64": base64.b64encode(PHOTO_B).decode()}]}
    response = client.post("/v1/predict", json=payload)
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["raw_text"] == expected(predictor, PHOTO_B)[0]


def test_json_urls_are_fetched_only_when_private_addresses_are_allowed(server, predictor, images):
    client, _ = server
    payload = {"images": [{"url": images.url("/b.jpg")}, {"url": images.url("/a.jpg")}]}
    refused = client.post("/v1/predict", json=payload)
    assert refused.status_code == 400
    assert "loopback" in refused.json()["error"] and "--allow-private-urls" in refused.json()["error"]
    assert images.requests["/b.jpg"] == 0  # refused before any connection

    app = create_app(
        predictor, ServeSettings(allow_private_urls=True, max_image_bytes=60_000), model_name="t"
    )
    with serve_in_thread(app) as url:
        response = httpx.post(f"{url}/v1/predict", json=payload, timeout=60)
        assert response.status_code == 200, response.text
        assert [p["raw_text"] for p in response.json()["predictions"]] == expected(
            predictor, PHOTO_B, PHOTO_A
        )
        for fault, status, words in [
            ("404", 400, "HTTP 404"),
            ("html", 415, "text/html"),
            ("bomb", 415, "decompression bomb"),
            ("huge", 400, "cap"),
        ]:
            bad = httpx.post(
                f"{url}/v1/predict", json={"images": [{"url": images.url("/a.jpg", fault)}]}, timeout=60
            )
            assert (bad.status_code, fault) == (status, fault) and words in bad.json()["error"], bad.text
        assert_serves(httpx.Client(base_url=url, timeout=60))


# ---- bad input: a 4xx with a message saying what to do, and the server goes on serving -------------------


def chunked(total: int, size: int = 16_384):
    for start in range(0, total, size):
        yield b"x" * min(size, total - start)


JSON = {"content-type": "application/json"}
BAD_INPUTS = {
    # id: (request keyword arguments, status, words in the error)
    "not-an-image": (upload(b"hello, I am not a photo"), 415, "not a JPEG"),
    "truncated-jpeg": (upload(PHOTO_A[: len(PHOTO_A) // 2]), 415, "cannot decode"),
    "empty-file": (upload(b""), 415, "not a JPEG"),
    "photo-over-byte-limit": (upload(b"\xff\xd8\xff" + b"0" * 70_000), 413, "over the limit of 60,000"),
    "photo-over-pixel-limit": (upload(png(1200, 1000)), 415, "1 MP limit"),
    "decompression-bomb": (upload(bomb_png()), 415, "decompression bomb"),
    "body-over-limit": (upload(*[b"\xff\xd8\xff" + b"0" * 55_000] * 3), 413, "request body"),
    "body-over-limit-streamed": ({"content": chunked(400_000), "headers": JSON}, 413, "request body"),
    "too-many-photos": (upload(PHOTO_A, PHOTO_A, PHOTO_A, PHOTO_A), 413, "at most 3"),
    "far-too-many-photos": (upload(*[PHOTO_A] * 12), 413, "at most 3"),
    "no-photos-multipart": (upload(PHOTO_A, name="photo"), 422, "no photos"),
    "no-photos-json": ({"json": {"images": []}}, 422, "no photos"),
    "too-many-photos-json": (
        {"json": {"images": [{"url": "https://example.com/a.jpg"}] * 4}},
        413,
        "at most 3",
    ),
    "bad-json": ({"content": b'{"images": [', "headers": JSON}, 400, "not valid JSON"),
    "json-not-an-object": ({"content": b"[1, 2]", "headers": JSON}, 422, "schema"),
    "unknown-field": ({"json": {"photos": []}}, 422, "photos"),
    "url-and-base64": (
        {"json": {"images": [{"url": "https://e.com/a.jpg", "base64": "AAAA"}]}},
        422,
        "exactly one",
    ),
    "bad-base64": ({"json": {"images": [{"base64": "this is not base64!"}]}}, 422, "not valid base64"),
    "base64-not-an-image": (
        {"json": {"images": [{"base64": base64.b64encode(b"hi").decode()}]}},
        415,
        "not a JPEG",
    ),
    "base64-over-byte-limit": (
        {"json": {"images": [{"base64": base64.b64encode(b"\xff\xd8\xff" + b"0" * 61_000).decode()}]}},
        413,
        "over the limit",
    ),
    "loopback-url": ({"json": {"images": [{"url": "http://127.0.0.1:9/a.jpg"}]}}, 400, "loopback"),
    "private-url": ({"json": {"images": [{"url": "http://10.1.2.3/a.jpg"}]}}, 400, "private"),
    "file-url": ({"json": {"images": [{"url": "file:///etc/passwd"}]}}, 400, "only http and https"),
    "port-out-of-range": (
        {"json": {"images": [{"url": "http://example.com:99999/a.jpg"}]}},
        400,
        "not a valid URL",
    ),
    "port-not-a-number": (
        {"json": {"images": [{"url": "http://example.com:abc/a.jpg"}]}},
        400,
        "not a valid URL",
    ),
    "port-negative": ({"json": {"images": [{"url": "http://example.com:-1/a.jpg"}]}}, 400, "not a valid URL"),
    "broken-ipv6-url": ({"json": {"images": [{"url": "http://[::1/a.jpg"}]}}, 400, "not a valid URL"),
    "trailing-dot-private-ip": ({"json": {"images": [{"url": "http://10.0.0.1./a.jpg"}]}}, 400, "private"),
    "metadata-url": ({"json": {"images": [{"url": "http://169.254.169.254/latest/"}]}}, 400, "metadata"),
    "wrong-content-type": (
        {"content": b"hello", "headers": {"content-type": "text/plain"}},
        415,
        "Content-Type",
    ),
    "multipart-without-boundary": (
        {"content": b"--x\r\n", "headers": {"content-type": "multipart/form-data"}},
        400,
        "boundary",
    ),
}


@pytest.mark.parametrize(("kwargs", "status", "words"), BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_gets_a_4xx_with_a_message_and_the_server_keeps_serving(server, kwargs, status, words):
    client, _ = server
    response = client.post("/v1/predict", **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert words in error and len(error) > 30
    assert_serves(client)


def test_hostile_urls_get_a_4xx_even_with_private_access(predictor, images):
    """Faults only a reachable server can produce (redirects without Location, to data:, to the metadata
    address), and link-local refused even under --allow-private-urls: a 4xx each time, then a good request."""
    here = images.base_url.removeprefix("http://")
    images.faults.update({"/to-data": "redirect:data:image/png;base64,iVBORw0KGgo=",
                          "/to-meta": "redirect:http://169.254.169.254/latest/meta-data/"})  # fmt: skip
    cases = [
        (images.url("/a.jpg", "no-location"), 400, "without a Location"),
        (images.url("/to-data"), 400, "scheme data:"),
        (images.url("/to-meta"), 400, "metadata"),
        (f"http://{here.split(':')[0]}:99999/a.jpg", 400, "not a valid URL"),
        ("http://[fe80::1]/a.jpg", 400, "--allow-host"),
    ]
    for settings in (ServeSettings(allow_hosts=frozenset({here})), ServeSettings(allow_private_urls=True)):
        with (
            serve_in_thread(create_app(predictor, settings)) as url,
            httpx.Client(base_url=url, timeout=60) as c,
        ):
            for link, status, words in cases:
                response = c.post("/v1/predict", json={"images": [{"url": link}]})
                assert (response.status_code, link) == (status, link) and words in response.json()["error"]
                assert_serves(c)
            good = c.post("/v1/predict", json={"images": [{"url": images.url("/a.jpg")}]})
            assert good.status_code == 200, good.text
    with pytest.raises(ValueError, match="allowed host"):
        ServeSettings(allow_hosts=frozenset({"10.0.0.0/33"}))


def test_a_slow_drip_request_head_is_cut_off_and_the_server_goes_on(predictor, monkeypatch):
    from productlens.serve import app as app_module

    monkeypatch.setattr(app_module, "HEADER_TIMEOUT_S", 0.5)
    with serve_in_thread(create_app(predictor, ServeSettings())) as url:
        host, port = url.removeprefix("http://").split(":")
        head = b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nX-Drip: " + b"y" * 200
        started = time.monotonic()
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.settimeout(0.1)
            closed = False
            for byte in head:  # one byte per 0.1 s: each read is quick, the head never completes
                try:
                    sock.sendall(bytes([byte]))
                    closed = sock.recv(1) == b""
                except TimeoutError:
                    pass
                except OSError:
                    closed = True
                if closed or time.monotonic() - started > 10:
                    break
        assert closed and time.monotonic() - started < 3
        assert_serves(httpx.Client(base_url=url, timeout=60))


def test_declared_body_over_limit_is_refused_before_reading(server):
    """A Content-Length over the limit is answered at once: the server does not wait for the body."""
    client, _ = server
    host, port = client.base_url.host, client.base_url.port
    head = (
        f"POST /v1/predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {SETTINGS.max_request_bytes + 1}\r\n\r\n"
    )
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(head.encode())  # and no body at all
        answer = b""
        while b"}" not in answer:
            chunk = sock.recv(4096)
            assert chunk, answer
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413") and b"request body" in answer
    assert_serves(client)


def test_unknown_paths_and_methods_answer_json_errors(server):
    client, _ = server
    assert client.get("/v2/nothing").status_code == 404
    assert "error" in client.get("/v2/nothing").json()
    wrong = client.get("/v1/predict")
    assert wrong.status_code == 405 and "error" in wrong.json()


# ---- batching ---------------------------------------------------------------------------------------------


def concurrent_posts(url: str, count: int, photos: list[bytes]) -> list[dict]:
    barrier = threading.Barrier(count)

    def post(i: int) -> dict:
        barrier.wait()
        response = httpx.post(f"{url}/v1/predict", **upload(photos[i % len(photos)]), timeout=120)
        assert response.status_code == 200, response.text
        return response.json()

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(post, range(count)))


@pytest.mark.parametrize("max_batch", [4, 1])
def test_requests_arriving_together_share_model_calls(predictor, max_batch):
    want_a, want_b = expected(predictor, PHOTO_A, PHOTO_B)
    app = create_app(predictor, ServeSettings(max_batch=max_batch, max_wait_ms=100))
    with serve_in_thread(app) as url:
        answers = concurrent_posts(url, 8, [PHOTO_A, PHOTO_B])
    sizes = app.state.batcher.batch_sizes
    assert sum(sizes) == 8 and max(sizes) <= max_batch
    if max_batch > 1:
        assert max(sizes) > 1  # 8 requests at once with a 100 ms window: some calls read several photos
        assert any(a["timing"]["batch_sizes"][0] > 1 for a in answers)
    else:
        assert sizes == [1] * 8
    # batched or not, each client gets the answer for its own photo
    assert [a["predictions"][0]["raw_text"] for a in answers] == [want_a, want_b] * 4


def test_a_failing_model_answers_500_json_and_the_server_goes_on(predictor, monkeypatch):
    app = create_app(predictor, ServeSettings())
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        real_predict = predictor.predict

        def broken(images, batch_size=None):
            raise RuntimeError("CUDA out of memory (injected)")

        monkeypatch.setattr(predictor, "predict", broken)
        failed = client.post("/v1/predict", **upload(PHOTO_A))
        assert failed.status_code == 500 and "CUDA out of memory" in failed.json()["error"]
        monkeypatch.setattr(predictor, "predict", real_predict)
        assert_serves(client)


# ---- token, timeout, settings -----------------------------------------------------------------------------


def test_token_guards_predict_but_not_health_or_page(predictor):
    app = create_app(predictor, ServeSettings(token="s3cret-token"))
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        assert client.get("/health").json()["auth_required"] is True
        assert client.get("/").status_code == 200
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "Basic s3cret-token"}):
            refused = client.post("/v1/predict", **upload(PHOTO_A), headers=headers)
            assert refused.status_code == 401, headers
            assert refused.headers["www-authenticate"] == "Bearer"
            assert "Authorization: Bearer" in refused.json()["error"]
        ok = client.post("/v1/predict", **upload(PHOTO_A), headers={"authorization": "Bearer s3cret-token"})
        assert ok.status_code == 200, ok.text


def test_a_request_over_the_timeout_gets_504_and_the_server_goes_on(predictor):
    app = create_app(predictor, ServeSettings(request_timeout_s=0.000001))
    with serve_in_thread(app) as url:
        response = httpx.post(f"{url}/v1/predict", **upload(PHOTO_A), timeout=60)
        assert response.status_code == 504 and "try again" in response.json()["error"]
        assert httpx.get(f"{url}/health").json()["ready"] is True


@pytest.mark.parametrize(
    "bad", [{"max_batch": 0}, {"max_images": 0}, {"max_image_bytes": 0}, {"max_wait_ms": -1}, {"token": ""}]
)
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        ServeSettings(**bad)


def test_binding_beyond_loopback_without_a_token_warns():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.com")
    assert exposure_warning("127.0.0.1", None) is None
    assert exposure_warning("0.0.0.0", "t") is None
    assert "--token" in exposure_warning("0.0.0.0", None)


# ---- OpenAPI ----------------------------------------------------------------------------------------------


def test_openapi_document_describes_requests_responses_and_errors(server):
    client, _ = server
    doc = client.get("/openapi.json").json()
    post = doc["paths"]["/v1/predict"]["post"]
    body = post["requestBody"]["content"]
    assert body["application/json"]["schema"] == {"$ref": "#/components/schemas/PredictJSON"}
    assert body["multipart/form-data"]["schema"]["properties"]["files"]["items"]["format"] == "binary"
    ok = post["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/PredictResponse"}
    for code in ("400", "401", "413", "415", "422", "504"):
        assert post["responses"][code]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorOut"
        }
    schemas = doc["components"]["schemas"]
    assert set(schemas["PredictionOut"]["properties"]) == {
        "title",
        "category",
        "price",
        "raw_text",
        "failures",
        "seconds",
    }
    assert set(schemas["ImageInput"]["properties"]) == {"url", "base64"}
    assert schemas["PredictJSON"]["properties"]["images"]["items"] == {
        "$ref": "#/components/schemas/ImageInput"
    }
    health = doc["paths"]["/health"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert health == {"$ref": "#/components/schemas/Health"}
    assert client.get("/docs").status_code == 200


# ---- the command ------------------------------------------------------------------------------------------


def test_productlens_serve_command_prints_its_url_and_serves(model_dir):
    env = {**os.environ, "PRODUCTLENS_TOKEN": "cli-token", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "productlens", "serve", "--model", str(model_dir), "--port", "0"]
    command += ["--max-batch", "2", "--max-images", "2"]
    with serve_process(command, env) as url:
        health = httpx.get(f"{url}/health", timeout=30).json()
        assert health["model"] == model_dir.name and health["auth_required"] and health["max_images"] == 2
        headers = {"authorization": "Bearer cli-token"}
        response = httpx.post(f"{url}/v1/predict", **upload(PHOTO_A), headers=headers, timeout=120)
        assert response.status_code == 200, response.text
        too_many = httpx.post(f"{url}/v1/predict", **upload(PHOTO_A, PHOTO_A, PHOTO_A), headers=headers)
        assert too_many.status_code == 413
