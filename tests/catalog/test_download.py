"""The downloader over real HTTP on 127.0.0.1: safety refusals (before any connection), every server fault,
retries, connection reuse, and the image verification and normalisation every image goes through."""

from __future__ import annotations

import hashlib
import io
import re
import sys
import time

import numpy as np
import pytest
from PIL import Image

from productlens.catalog.download import (
    USER_AGENT,
    DownloadConfig,
    ImageJob,
    InvalidImage,
    UnsafeURL,
    address_problem,
    check_url,
    download_images,
    normalise_image,
    store,
)
from productlens.catalog.server import ImageServer, bomb_png

# ---- a record of every socket connect in this process, to prove refused addresses get nothing ----
_CONNECTS: list[object] = []
sys.addaudithook(lambda event, args: _CONNECTS.append(args[1]) if event == "socket.connect" else None)


@pytest.fixture()
def connects():
    """Addresses connected to during the test (every one must be loopback)."""
    _CONNECTS.clear()
    yield _CONNECTS
    assert all(isinstance(a, tuple) and a[0] in ("127.0.0.1", "::1") for a in _CONNECTS), _CONNECTS


def jpeg(seed: int = 0, size=(40, 30), mode="RGB", **save) -> bytes:
    rng = np.random.default_rng(seed)
    im = Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype("uint8")).convert(mode)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90, **save)
    return buf.getvalue()


def encode(im: Image.Image, fmt: str, **save) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **save)
    return buf.getvalue()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    (root / "images").mkdir()
    for i in range(40):
        (root / "images" / f"{i}.jpg").write_bytes(jpeg(i))
    return root


def config(**overrides) -> DownloadConfig:
    base = dict(allow_private=True, deadline_s=5, backoff_s=0.01, retries=2, concurrency=8)
    return DownloadConfig(**{**base, **overrides})


def fetch_one(url: str, out, cfg: DownloadConfig | None = None):
    [result] = download_images([ImageJob("r", url)], out, cfg or config())
    return result


# ---- address safety ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("127.0.0.1", "loopback"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),
        ("100.64.0.1", "shared address space (CGNAT)"),
        ("224.0.0.1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("::1", "loopback"),
        ("fd00::1", "private"),
        ("fe80::1", "link-local"),
        ("::ffff:127.0.0.1", "IPv6 wrapping a loopback IPv4 address"),
        ("::ffff:169.254.169.254", "IPv6 wrapping a link-local IPv4 address"),
        ("64:ff9b::a00:1", "IPv6 wrapping a private IPv4 address"),
        ("2002:a00:1::", "IPv6 wrapping a private IPv4 address"),
        ("8.8.8.8", None),
        ("2606:4700::1111", None),
    ],
)
def test_address_problem(address, problem):
    assert address_problem(address) == problem


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("file:///etc/passwd", "scheme file: is not allowed"),
        ("ftp://example.com/a.jpg", "scheme ftp:"),
        ("data:image/png;base64,iVBORw0KGgo=", "scheme data:"),
        ("gopher://example.com/", "scheme gopher:"),
        ("//example.com/a.jpg", r"scheme \(none\)"),
        ("http://user:pw@example.com/a.jpg", "credentials"),
        ("http://10.0.0.1/a.jpg", "private"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://2130706433/", "loopback"),  # decimal 127.0.0.1
        ("http://0177.0.0.1/", "loopback"),  # octal
        ("http://0x7f.1/", "loopback"),  # hex, short form
        ("http://127.1/", "loopback"),
        ("http://[::1]/", "loopback"),
        ("http://[::ffff:7f00:1]/", "loopback"),
        ("http://0/", "unspecified"),
        ("https:///a.jpg", "no host"),
    ],
)
def test_check_url_refuses(url, match):
    with pytest.raises(UnsafeURL, match=match):
        check_url(url)


def test_check_url_allows_public_and_opted_in():
    assert check_url("https://assets.burberry.com/is/image/x").host == "assets.burberry.com"
    assert check_url("http://8.8.8.8/a.jpg").host == "8.8.8.8"  # only parsed; nothing is fetched here
    check_url("http://127.0.0.1:8080/a.jpg", allow_private=True)
    check_url("http://127.0.0.1:8080/a.jpg", allow_hosts={"127.0.0.1:8080"})
    with pytest.raises(UnsafeURL):
        check_url("http://127.0.0.1:8081/a.jpg", allow_hosts={"127.0.0.1:8080"})
    with pytest.raises(UnsafeURL, match="scheme file"):
        check_url("file:///etc/passwd", allow_private=True)  # opting in never opens other schemes


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/a.jpg",
        "http://[fd00::1]/a.jpg",
        "file:///etc/hosts",
    ],
)
def test_refused_before_any_connection(url, tmp_path, connects):
    result = fetch_one(url, tmp_path, DownloadConfig())
    assert (result.status, result.reason, result.attempts, result.http_status) == (
        "failed",
        "unsafe_url",
        0,
        None,
    )
    assert connects == []  # not a single socket connect, not even to loopback


def test_host_names_are_resolved_and_checked_before_connecting(folder, tmp_path, connects):
    with ImageServer(folder) as srv:
        port = srv.base_url.rsplit(":", 1)[1]
        result = fetch_one(f"http://localhost:{port}/images/0.jpg", tmp_path, DownloadConfig())
        assert (
            result.reason == "unsafe_url" and "resolves to" in result.detail and "loopback" in result.detail
        )
        assert sum(srv.requests.values()) == 0 and connects == []


def test_a_name_that_does_not_resolve_is_a_transient_failure(tmp_path, monkeypatch, connects):
    import socket

    import anyio

    async def no_dns(host, port, **kwargs):  # there is no DNS here, so resolution is made to fail
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(anyio, "getaddrinfo", no_dns)
    result = fetch_one("http://images.example.com/a.jpg", tmp_path, config(retries=1))
    assert (result.reason, result.transient, result.attempts) == ("download_failed", True, 2)
    assert "cannot resolve images.example.com" in result.detail and connects == []


def test_redirect_to_a_private_address_is_refused(folder, tmp_path, connects):
    metadata = "http://169.254.169.254/latest/meta-data/iam/"
    with ImageServer(folder, faults={"/hop": f"redirect:{metadata}"}) as srv:
        first_hop = srv.base_url.removeprefix("http://")  # this one host:port is allowed, nothing else
        result = fetch_one(srv.url("/hop"), tmp_path, DownloadConfig(allow_hosts=frozenset({first_hop})))
        assert srv.requests["/hop"] == 1
    assert (result.reason, result.http_status) == ("unsafe_url", 302)
    assert "169.254.169.254" in result.detail and "link-local" in result.detail
    assert {a[1] for a in connects} == {int(first_hop.rsplit(":", 1)[1])}  # only the first hop was contacted


def test_relative_redirect_is_followed(folder, tmp_path):
    with ImageServer(folder, faults={"/old": "redirect:/images/3.jpg"}) as srv:
        result = fetch_one(srv.url("/old"), tmp_path)
    assert result.status == "ok" and result.sha256 == hashlib.sha256(jpeg(3)).hexdigest()


# ---- faults -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(folder):
    with ImageServer(folder, trickle_s=0.1, huge_bytes=64 * 2**20) as srv:
        yield srv


def test_ok_image_is_stored_under_its_hash(server, tmp_path):
    result = fetch_one(server.url("/images/1.jpg"), tmp_path)
    data = jpeg(1)
    sha = hashlib.sha256(data).hexdigest()
    assert (result.status, result.reason, result.http_status, result.attempts) == ("ok", "", 200, 1)
    assert result.sha256 == sha and result.path == str(tmp_path / sha[:2] / f"{sha}.jpg")
    assert (tmp_path / sha[:2] / f"{sha}.jpg").read_bytes() == data  # an RGB JPEG is kept byte for byte
    assert (result.width, result.height, result.bytes) == (40, 30, len(data))


def test_404_is_not_retried(server, tmp_path):
    result = fetch_one(server.url("/images/2.jpg", "404"), tmp_path)
    assert (result.reason, result.http_status, result.attempts, result.transient) == (
        "download_failed",
        404,
        1,
        False,
    )
    assert server.requests["/fault/404/images/2.jpg"] == 1


def test_500_once_is_retried_and_succeeds(server, tmp_path):
    result = fetch_one(server.url("/images/2.jpg", "500-once"), tmp_path)
    assert (result.status, result.attempts) == ("ok", 2)
    assert server.requests["/fault/500-once/images/2.jpg"] == 2


def test_500_always_gives_up_after_the_retries_and_stays_transient(server, tmp_path):
    result = fetch_one(server.url("/images/3.jpg", "500"), tmp_path)
    assert (result.reason, result.http_status, result.attempts, result.transient) == (
        "download_failed",
        500,
        3,
        True,
    )
    assert server.requests["/fault/500/images/3.jpg"] == 3


def test_429_retry_after_is_honoured(server, tmp_path):
    start = time.monotonic()
    result = fetch_one(server.url("/images/4.jpg", "429-once"), tmp_path)
    assert (result.status, result.attempts) == ("ok", 2)
    assert time.monotonic() - start >= 1.0  # the server said Retry-After: 1 (back-off alone would be ~10 ms)


def test_retry_after_longer_than_the_cap_ends_the_tries(folder, tmp_path):
    with ImageServer(folder, retry_after_s=3600) as srv:
        start = time.monotonic()
        result = fetch_one(srv.url("/images/4.jpg", "429-once"), tmp_path)
        assert (result.reason, result.http_status, result.attempts, result.transient) == (
            "download_failed",
            429,
            1,
            True,
        )
        assert "Retry-After 3600" in result.detail and time.monotonic() - start < 5


def test_slow_body_hits_the_wall_clock_deadline(server, tmp_path):
    # every read returns within the 10 s socket timeout, so only a wall-clock deadline can stop this
    result = fetch_one(server.url("/images/5.jpg", "slow"), tmp_path, config(deadline_s=1.0))
    assert (result.reason, result.transient) == ("download_failed", True)
    assert "deadline" in result.detail and 1.0 <= result.seconds < 3


def test_truncated_jpeg_is_invalid(server, tmp_path):
    result = fetch_one(server.url("/images/6.jpg", "truncated"), tmp_path)
    assert (result.reason, result.transient) == ("invalid_image", False) and "truncated" in result.detail
    assert list(tmp_path.rglob("*.jpg")) == []


def test_short_body_is_a_transient_connection_failure(server, tmp_path):
    result = fetch_one(server.url("/images/7.jpg", "short"), tmp_path)
    assert (result.reason, result.transient, result.attempts) == ("download_failed", True, 3)
    assert "RemoteProtocolError" in result.detail


def test_html_is_rejected_by_content_type(server, tmp_path):
    result = fetch_one(server.url("/images/8.jpg", "html"), tmp_path)
    assert (result.reason, result.http_status) == ("invalid_image", 200) and "text/html" in result.detail


def test_decompression_bomb_is_refused(server, tmp_path):
    result = fetch_one(server.url("/images/9.jpg", "bomb"), tmp_path)
    assert result.reason == "invalid_image" and "bomb" in result.detail


def test_redirect_loop_stops_after_the_limit(server, tmp_path):
    result = fetch_one(server.url("/images/10.jpg", "redirect-loop"), tmp_path, config(max_redirects=5))
    assert result.reason == "download_failed" and "more than 5 redirects" in result.detail
    assert server.requests["/fault/redirect-loop/images/10.jpg"] == 6


def test_huge_streamed_body_is_cut_at_the_cap(server, tmp_path):
    result = fetch_one(server.url("/images/11.jpg", "huge"), tmp_path, config(max_bytes=2 * 2**20))
    assert result.reason == "download_failed" and "cap" in result.detail
    assert 2 * 2**20 < result.bytes < 4 * 2**20  # stopped reading right after the cap


def test_huge_declared_body_is_refused_from_its_header(server, tmp_path):
    result = fetch_one(server.url("/images/11.jpg", "huge-declared"), tmp_path, config(max_bytes=2 * 2**20))
    assert result.reason == "download_failed" and "Content-Length" in result.detail and result.bytes == 0


# ---- throughput mechanics ---------------------------------------------------------------------------------
def test_connections_are_reused_and_user_agent_sent(folder, tmp_path):
    with ImageServer(folder, latency=0.01) as srv:
        jobs = [ImageJob(str(i), srv.url(f"/images/{i}.jpg")) for i in range(40)]
        results = download_images(jobs, tmp_path, config(concurrency=4))
        assert sorted(int(r.row_id) for r in results if r.status == "ok") == list(range(40))
        assert srv.connections <= 4 < 40 == sum(srv.requests.values())
        assert set(srv.user_agents) == {USER_AGENT} and USER_AGENT.startswith("productlens/")


def test_per_host_limit_bounds_requests_in_flight(folder, tmp_path):
    with ImageServer(folder, latency=0.05) as srv:
        jobs = [ImageJob(str(i), srv.url(f"/images/{i}.jpg")) for i in range(24)]
        results = download_images(jobs, tmp_path, config(concurrency=24, per_host=3))
        assert all(r.status == "ok" for r in results)
        assert srv.max_inflight == 3


def test_identical_images_are_stored_once(folder, tmp_path):
    with ImageServer(folder) as srv:
        jobs = [ImageJob(str(i), srv.url("/images/12.jpg")) for i in range(5)]
        results = download_images(jobs, tmp_path, config())
    assert len({r.path for r in results}) == 1
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == [f"{results[0].sha256}.jpg"]


# ---- local and embedded images ----------------------------------------------------------------------------
def test_local_and_embedded_images_take_the_same_path(tmp_path, connects):
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "a.jpg").write_bytes(jpeg(20))
    png = encode(Image.new("RGBA", (8, 8), (255, 0, 0, 0)), "PNG")
    jobs = [
        ImageJob("rel", "a.jpg"),
        ImageJob("abs", str(tmp_path / "cat" / "a.jpg")),
        ImageJob("bytes", jpeg(21)),
        ImageJob("dict", {"bytes": png, "path": "x.png"}),
        ImageJob("dict-path", {"bytes": None, "path": "a.jpg"}),
        ImageJob("missing", "nope.jpg"),
        ImageJob("garbage", b"<html>not an image</html>"),
        ImageJob("file-url", f"file://{tmp_path / 'cat' / 'a.jpg'}"),
        ImageJob("number", 12),
    ]
    results = {
        r.row_id: r for r in download_images(jobs, tmp_path / "out", config(), base_dir=tmp_path / "cat")
    }
    assert {k for k, r in results.items() if r.status == "ok"} == {"rel", "abs", "bytes", "dict", "dict-path"}
    assert results["rel"].sha256 == results["abs"].sha256 == hashlib.sha256(jpeg(20)).hexdigest()
    assert results["dict"].path.endswith(".jpg")  # transparent PNG flattened and re-encoded
    assert (results["missing"].reason, results["garbage"].reason) == ("download_failed", "invalid_image")
    assert results["file-url"].reason == "unsafe_url" and results["number"].reason == "invalid_image"
    assert results["bytes"].url == f"<embedded image, {len(jpeg(21))} bytes>"
    assert connects == []


def test_local_paths_are_refused_without_a_base_dir(tmp_path):
    (tmp_path / "a.jpg").write_bytes(jpeg(1))
    [result] = download_images([ImageJob("r", str(tmp_path / "a.jpg"))], tmp_path / "out", config())
    assert result.reason == "unsafe_url" and "local path" in result.detail


# ---- verification and normalisation -----------------------------------------------------------------------
def test_rgb_jpeg_and_png_are_kept_byte_for_byte():
    data = jpeg(1)
    assert normalise_image(data) == (data, ".jpg", 40, 30)
    png = encode(Image.new("RGB", (5, 7), (1, 2, 3)), "PNG")
    assert normalise_image(png) == (png, ".png", 5, 7)


def decoded(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def test_alpha_is_flattened_onto_white():
    im = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    im.paste((200, 0, 0, 255), (0, 0, 5, 10))
    out, ext, w, h = normalise_image(encode(im, "PNG"))
    got = decoded(out)
    assert (ext, got.mode, w, h) == (".jpg", "RGB", 10, 10)
    assert all(abs(a - b) < 12 for a, b in zip(got.getpixel((8, 5)), (255, 255, 255), strict=True))
    assert got.getpixel((1, 5))[0] > 180 and got.getpixel((1, 5))[1] < 40


def test_palette_with_transparency_and_grey_and_cmyk_become_rgb():
    pal = Image.new("P", (6, 6), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.paste(1, (0, 0, 3, 6))
    pal.info["transparency"] = 0
    got = decoded(normalise_image(encode(pal, "GIF", transparency=0))[0])
    assert got.mode == "RGB" and got.getpixel((5, 3))[0] > 240 and got.getpixel((5, 3))[1] > 240  # white
    assert decoded(normalise_image(jpeg(2, mode="L"))[0]).mode == "RGB"
    cmyk = decoded(normalise_image(encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG"))[0])
    r, g, b = cmyk.getpixel((4, 4))
    assert cmyk.mode == "RGB" and r > 200 and g < 60 and b < 60  # red, not a CMYK JPEG


def test_sixteen_bit_grey_is_scaled_not_clipped():
    grey = Image.fromarray(np.full((4, 4), 32768, dtype=np.uint16))
    got = decoded(normalise_image(encode(grey, "PNG"))[0])
    assert got.mode == "RGB" and 120 <= got.getpixel((1, 1))[0] <= 136


def test_exif_orientation_is_applied():
    im = Image.new("RGB", (40, 20), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, 10, 20))  # red stripe on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: show it turned 90 degrees clockwise
    out, _, w, h = normalise_image(encode(im, "JPEG", exif=exif.tobytes(), quality=95))
    got = decoded(out)
    assert (w, h) == (20, 40) and got.getpixel((10, 2))[0] > 200  # the stripe is now on top
    assert got.getexif().get(0x0112, 1) == 1


def test_animation_keeps_its_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in ((0, 200, 0), (200, 0, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100)
    got = decoded(normalise_image(buf.getvalue())[0])
    r, g, _ = got.getpixel((4, 4))
    assert g > 150 and r < 60


def test_max_side_shrinks_the_longest_side():
    out, ext, w, h = normalise_image(jpeg(3, size=(200, 100)), max_side=50)
    assert (ext, w, h) == (".jpg", 50, 25) and decoded(out).size == (50, 25)


def test_webp_is_reencoded_as_jpeg():
    out, ext, w, h = normalise_image(encode(Image.new("RGB", (9, 9), (10, 20, 30)), "WEBP"))
    assert (ext, w, h) == (".jpg", 9, 9) and out[:3] == b"\xff\xd8\xff"


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (
            b"<!doctype html><html></html>",
            r"not a JPEG \(and MPO\), PNG, WebP, GIF, AVIF or HEIC image \(HTML",
        ),
        (b"BM" + bytes(100), r"not a JPEG.*\(a BMP image\)"),  # a real format, but not one we decode
        (jpeg(4)[:300], "truncated|cannot decode"),
        (bomb_png(), "bomb"),
        (bomb_png(8000, 6000), "48 MP, above the 40 MP limit"),  # below Pillow's own limit: ours is the error
        (b"\x89PNG\r\n\x1a\n" + bytes(30), "cannot decode"),
    ],
)
def test_invalid_images_are_refused(data, match):
    with pytest.raises(InvalidImage, match=match):
        normalise_image(data)


def test_store_is_atomic_and_content_addressed(tmp_path):
    data = jpeg(5)
    sha, path = store(data, ".jpg", tmp_path)
    assert sha == hashlib.sha256(data).hexdigest() and path == tmp_path / sha[:2] / f"{sha}.jpg"
    assert store(data, ".jpg", tmp_path) == (sha, path) and path.read_bytes() == data
    assert list((tmp_path / ".tmp").iterdir()) == []  # no temp file left behind


def test_sync_api_also_works_inside_a_running_event_loop(tmp_path):
    import asyncio

    async def notebook_cell():  # Jupyter runs cells inside an event loop
        return download_images([ImageJob("r", jpeg(7))], tmp_path, config())

    [result] = asyncio.run(notebook_cell())
    assert result.status == "ok" and result.sha256 == hashlib.sha256(jpeg(7)).hexdigest()


# ---- hostile URLs and local paths: each a result for its row, never an exception -------------------------
@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("http://example.com:99999/a.jpg", "not a valid URL"),
        ("http://example.com:abc/a.jpg", "not a valid URL"),
        ("http://example.com:-1/a.jpg", "not a valid URL"),
        ("http://example.com:0/a.jpg", "port 0"),
        ("http://[::1/a.jpg", "not a valid URL"),
        ("http://exa mple.com/a.jpg", "spaces"),
        ("http://10.0.0.1./a.jpg", "private"),  # a trailing dot spells the same IP
        ("http://0x7f.1./a.jpg", "loopback"),
        ("http://[fe80::1]/a.jpg", "link-local"),
    ],
)
def test_hostile_urls_are_refused_with_a_reason_and_no_connection(url, match, tmp_path, connects):
    with pytest.raises(UnsafeURL, match=match):
        check_url(url)
    result = fetch_one(url, tmp_path, DownloadConfig())
    assert (result.status, result.reason, result.attempts) == ("failed", "unsafe_url", 0)
    assert re.search(match, result.detail) and connects == []


def test_spaces_around_a_url_are_dropped_as_browsers_do(folder, tmp_path):
    with ImageServer(folder) as srv:
        result = fetch_one(f"  {srv.url('/images/13.jpg')}\t\n", tmp_path)
    assert result.status == "ok" and result.sha256 == hashlib.sha256(jpeg(13)).hexdigest()


METADATA = ["169.254.169.254", "[fe80::1]", "[::ffff:169.254.169.254]", "[fd00:ec2::254]", "100.100.100.200"]


@pytest.mark.parametrize("host", METADATA)
def test_link_local_and_metadata_stay_refused_under_allow_private(host, tmp_path, connects):
    result = fetch_one(f"http://{host}/latest/meta-data/", tmp_path, DownloadConfig(allow_private=True))
    assert (result.reason, result.attempts) == ("unsafe_url", 0) and "--allow-host" in result.detail
    assert "metadata" in result.detail and connects == []
    check_url(f"http://{host}/x", allow_hosts={host.strip("[]")})  # naming it is the one way in
    check_url(f"http://{host}/x", allow_private=True, allow_hosts={"169.254.0.0/16", "fe80::/10", host})


def test_allow_hosts_names_cidrs_and_ports(tmp_path):
    cidr = {"10.0.0.0/8"}
    check_url("http://10.1.2.3/a.jpg", allow_hosts=cidr)
    check_url("http://10.1.2.3./a.jpg", allow_hosts=cidr)
    with pytest.raises(UnsafeURL, match="--allow-host"):
        check_url("http://192.168.1.1/a.jpg", allow_hosts=cidr)
    with pytest.raises(UnsafeURL, match="link-local"):
        check_url("http://169.254.169.254/", allow_hosts=cidr, allow_private=True)
    check_url("http://[fd00::5]:8080/a.jpg", allow_hosts={"[fd00::5]:8080"})
    with pytest.raises(UnsafeURL):
        check_url("http://[fd00::5]:8081/a.jpg", allow_hosts={"[fd00::5]:8080"})
    for bad in ("not a host!", "10.0.0.0/33", "cdn.local:99999"):
        with pytest.raises(ValueError, match="allowed host"):
            DownloadConfig(allow_hosts=frozenset({bad}))


def test_an_allowed_host_name_is_fetched_and_others_are_refused_before_connecting(folder, tmp_path, connects):
    with ImageServer(folder) as srv:
        port = srv.base_url.rsplit(":", 1)[1]
        ok = fetch_one(f"http://localhost:{port}/images/14.jpg", tmp_path, config(allow_private=False,
                       allow_hosts=frozenset({"localhost"})))  # fmt: skip
        assert ok.status == "ok"
        connects.clear()
        cfg = config(allow_private=False, allow_hosts=frozenset({"127.0.0.2"}))
        refused = fetch_one(f"http://localhost:{port}/images/15.jpg", tmp_path, cfg)
        assert refused.reason == "unsafe_url" and "resolves to" in refused.detail and connects == []


def test_redirect_without_location_and_to_data_urls(folder, tmp_path):
    faults = {"/data": "redirect:data:image/png;base64,iVBORw0KGgo=", "/js": "redirect:javascript:alert(1)",
              "/port": "redirect:http://127.0.0.1:99999/a.jpg"}  # fmt: skip
    with ImageServer(folder, faults=faults) as srv:
        results = {
            name: fetch_one(srv.url(path), tmp_path)
            for name, path in [("none", "/fault/no-location/images/1.jpg"), *((p[1:], p) for p in faults)]
        }
    assert (results["none"].reason, results["none"].http_status) == ("download_failed", 302)
    assert "without a Location" in results["none"].detail and results["none"].attempts == 1
    assert results["data"].reason == results["js"].reason == results["port"].reason == "unsafe_url"
    assert "scheme data:" in results["data"].detail and "not a valid URL" in results["port"].detail


def test_a_url_shared_by_many_jobs_is_fetched_once(folder, tmp_path):
    with ImageServer(folder) as srv:
        url = srv.url("/images/16.jpg")
        jobs = [ImageJob(str(i), url if i % 2 else f" {url}") for i in range(10_000)]
        results = download_images(jobs, tmp_path, config(concurrency=64))
        assert srv.requests["/images/16.jpg"] == 1
    assert len(results) == 10_000 and {r.status for r in results} == {"ok"}
    assert sorted(int(r.row_id) for r in results) == list(range(10_000))
    assert sum(r.attempts for r in results) == 1 and len({r.path for r in results}) == 1


def test_local_paths_are_confined_regular_and_capped(tmp_path, connects):
    import os

    cat, other = tmp_path / "cat", tmp_path / "other"
    cat.mkdir(), other.mkdir()
    (cat / "a.jpg").write_bytes(jpeg(30))
    (other / "b.jpg").write_bytes(jpeg(31))
    (tmp_path / "secret.txt").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (cat / "big.jpg").write_bytes(jpeg(32) + bytes(300_000))
    os.mkfifo(cat / "pipe.jpg")
    os.symlink(tmp_path / "secret.txt", cat / "link.jpg")
    jobs = {
        "ok": "a.jpg",
        "dotdot": "../secret.txt",
        "absolute": str(tmp_path / "secret.txt"),
        "passwd": "/etc/passwd",
        "zero": "/dev/zero",
        "fifo": "pipe.jpg",
        "dir": ".",
        "symlink-out": "link.jpg",
        "big": "big.jpg",
        "other": str(other / "b.jpg"),
        "nul": "a\0.jpg",
    }
    run = [ImageJob(k, v) for k, v in jobs.items()]
    start = time.monotonic()
    got = {
        r.row_id: r for r in download_images(run, tmp_path / "out", config(max_bytes=200_000), base_dir=cat)
    }
    assert time.monotonic() - start < 10  # nothing hangs on the FIFO or reads /dev/zero forever
    reasons = {k: got[k].reason for k in jobs}
    assert reasons == {
        "ok": "", "dotdot": "unsafe_url", "absolute": "unsafe_url", "passwd": "unsafe_url", "zero": "unsafe_url",
        "fifo": "unsafe_url", "dir": "unsafe_url", "symlink-out": "unsafe_url", "big": "invalid_image",
        "other": "unsafe_url", "nul": "download_failed",
    }  # fmt: skip
    assert "not a regular file" in got["fifo"].detail and "--image-root" in got["dotdot"].detail
    assert all("root:x" not in r.detail for r in got.values())  # contents are never quoted
    # a folder the user names is allowed, and even then only regular files are read
    roots = config(max_bytes=200_000, image_roots=(str(other), "/dev"))
    named = {r.row_id: r for r in download_images(run, tmp_path / "out", roots, base_dir=cat)}
    assert named["other"].status == "ok" and named["zero"].reason == "unsafe_url"
    assert "not a regular file" in named["zero"].detail and connects == []


def test_an_unforeseen_error_is_the_rows_result(tmp_path, monkeypatch):
    import productlens.catalog.download as dl

    def broken(*args, **kwargs):
        raise KeyError("surprise")

    monkeypatch.setattr(dl, "store", broken)
    [result] = download_images([ImageJob("r", jpeg(33))], tmp_path, config())
    assert (result.status, result.reason) == ("failed", "unexpected_error") and "KeyError" in result.detail


@pytest.mark.parametrize("fmt", ["AVIF", "MPO"])
def test_phone_and_modern_formats_are_decoded_by_content(fmt):
    frames = [Image.new("RGB", (12, 8), (200, 30, 30)), Image.new("RGB", (12, 8), (0, 0, 200))]
    data = (
        encode(frames[0], fmt, save_all=True, append_images=frames[1:])
        if fmt == "MPO"
        else encode(frames[0], fmt)
    )
    out, ext, w, h = normalise_image(data)
    r, _, b = decoded(out).getpixel((6, 4))
    assert (ext, w, h) == (".jpg", 12, 8) and r > 150 and b < 80  # the first frame, as RGB JPEG
