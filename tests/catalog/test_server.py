"""The loopback image server: every fault does what its name says, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import io
import struct
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from productlens.catalog.server import FAULTS, ImageServer, bomb_png


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((48, 64, 3)) * 255).astype("uint8")).save(
        root / "images" / "a.jpg", quality=90
    )
    (root / "secret.txt").write_text("outside images but inside root")
    return root


@pytest.fixture()
def server(folder):
    with ImageServer(folder, faults={"/mapped.jpg": "404", "/go": "redirect:/images/a.jpg"}) as srv:
        yield srv


def test_serves_files_with_type_and_counts_requests(server, folder):
    with httpx.Client() as client:
        r = client.get(server.url("/images/a.jpg"))
        client.get(server.url("/images/a.jpg"))
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/jpeg"
    assert r.content == (folder / "images" / "a.jpg").read_bytes()
    assert server.requests["/images/a.jpg"] == 2


def test_keep_alive_reuses_one_connection(server):
    with httpx.Client() as client:
        for _ in range(5):
            assert client.get(server.url("/images/a.jpg")).status_code == 200
    assert server.connections == 1
    for _ in range(3):  # a fresh client each time cannot reuse
        httpx.get(server.url("/images/a.jpg"))
    assert server.connections == 4


def test_latency_is_added(folder):
    with ImageServer(folder, latency=0.2) as srv:
        start = time.monotonic()
        httpx.get(srv.url("/images/a.jpg"))
        assert time.monotonic() - start >= 0.2


def test_missing_paths_and_traversal_are_404(server):
    assert httpx.get(server.url("/images/nope.jpg")).status_code == 404
    assert httpx.get(server.base_url + "/images/../../etc/passwd").status_code == 404
    assert httpx.get(server.url("/fault/404/images/a.jpg")).status_code == 404
    assert httpx.get(server.url("/mapped.jpg")).status_code == 404  # fault by path mapping


def test_unknown_fault_is_a_clear_400(server):
    r = httpx.get(server.url("/images/a.jpg", "gremlins"))
    assert r.status_code == 400 and "gremlins" in r.text


def test_500_always_and_500_once(server):
    assert [httpx.get(server.url("/images/a.jpg", "500")).status_code for _ in range(3)] == [500] * 3
    assert [httpx.get(server.url("/images/a.jpg", "500-once")).status_code for _ in range(3)] == [
        500,
        200,
        200,
    ]


def test_429_once_with_retry_after(server):
    first = httpx.get(server.url("/images/a.jpg", "429-once"))
    assert first.status_code == 429 and first.headers["retry-after"] == "1"
    assert httpx.get(server.url("/images/a.jpg", "429-once")).status_code == 200


def test_slow_body_trickles(folder):
    with (
        ImageServer(folder, trickle_s=0.05) as srv,
        httpx.stream("GET", srv.url("/images/a.jpg", "slow")) as r,
    ):
        assert r.status_code == 200
        size = int(r.headers["content-length"])
        got, start = 0, time.monotonic()
        for chunk in r.iter_raw():
            got += len(chunk)
            if time.monotonic() - start > 0.5:
                break
        assert 0 < got < 20 < size  # bytes do come, one at a time, far too slowly to finish


def test_truncated_has_an_honest_length_but_a_cut_jpeg(server, folder):
    r = httpx.get(server.url("/images/a.jpg", "truncated"))
    full = (folder / "images" / "a.jpg").read_bytes()
    assert r.status_code == 200 and int(r.headers["content-length"]) == len(r.content) == len(full) // 2
    with pytest.raises(OSError, match="truncated"):
        Image.open(io.BytesIO(r.content)).load()


def test_short_declares_more_than_it_sends(server):
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(server.url("/images/a.jpg", "short"))


def test_html_page_with_200(server):
    r = httpx.get(server.url("/images/a.jpg", "html"))
    assert r.status_code == 200 and r.headers["content-type"] == "text/html" and b"<html" in r.content


def test_bomb_is_tiny_but_declares_ten_gigapixels(server):
    r = httpx.get(server.url("/images/a.jpg", "bomb"))
    assert r.status_code == 200 and r.content == bomb_png() and len(r.content) < 200
    assert struct.unpack(">II", r.content[16:24]) == (100_000, 100_000)
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(r.content))


def test_redirects(server):
    r = httpx.get(server.url("/images/a.jpg", "redirect-loop"))
    assert r.status_code == 302 and r.headers["location"] == "/fault/redirect-loop/images/a.jpg"
    r = httpx.get(server.url("/go"))
    assert r.status_code == 302 and r.headers["location"] == "/images/a.jpg"
    r = httpx.get(server.url("/images/a.jpg", "no-location"))
    assert r.status_code == 302 and "location" not in r.headers


@pytest.mark.parametrize("fault", ["huge", "huge-declared"])
def test_huge_bodies_stream_without_end(server, fault):
    with httpx.stream("GET", server.url("/images/a.jpg", fault)) as r:
        assert r.headers["content-type"] == "image/jpeg"
        if fault == "huge":
            assert "content-length" not in r.headers and r.headers["transfer-encoding"] == "chunked"
        else:
            assert int(r.headers["content-length"]) == server.huge_bytes
        got = 0
        for chunk in r.iter_bytes():
            got += len(chunk)
            if got > 8 * 2**20:
                break
    assert got > 8 * 2**20  # more than any small cap, and still going


def test_every_fault_is_documented():
    assert {
        "404",
        "500-once",
        "429-once",
        "slow",
        "truncated",
        "short",
        "html",
        "bomb",
        "redirect-loop",
        "no-location",
        "huge",
    } <= set(FAULTS)


def drip(url: str, every_s: float, limit_s: float) -> float:
    """Send a request head one byte per `every_s`; seconds until the server closes (or `limit_s`)."""
    import socket

    host, port = url.removeprefix("http://").split("/")[0].split(":")
    head = b"GET /images/a.jpg HTTP/1.1\r\nHost: x\r\nX-Drip: " + b"y" * 1000
    start = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=limit_s) as sock:
        for byte in head:
            try:
                sock.sendall(bytes([byte]))
                sock.settimeout(every_s)
                if sock.recv(1) == b"":  # closed by the server
                    break
            except TimeoutError:
                pass
            except OSError:
                break
            if time.monotonic() - start > limit_s:
                break
    return time.monotonic() - start


def test_a_slow_drip_request_head_is_cut_off(folder):
    with ImageServer(folder, header_timeout_s=0.6) as srv:
        assert drip(srv.base_url, every_s=0.1, limit_s=10) < 3  # without the deadline: until limit_s
        assert httpx.get(srv.url("/images/a.jpg")).status_code == 200  # and it goes on serving


def test_stop_releases_idle_keep_alive_connections(folder):
    srv = ImageServer(folder).start()
    url = srv.url("/images/a.jpg")
    with httpx.Client() as client:
        client.get(url)  # leaves an idle keep-alive connection open
        start = time.monotonic()
        srv.stop()
        assert time.monotonic() - start < 2
        with pytest.raises(httpx.TransportError):
            client.get(url)
