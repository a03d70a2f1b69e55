"""Fetch and verify product images: URLs, local paths or embedded bytes in; verified, normalised,
content-addressed image files (`images/ab/ab12...ef.jpg`) and one `ImageResult` per image out.

The only module in productlens that touches the network. Run by `productlens prepare`; on its own:
    results = download_images([ImageJob("1", "https://...")], "out/images")
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import io
import ipaddress
import os
import random
import re
import socket
import ssl
import stat
import struct
import tempfile
import time
from collections.abc import AsyncIterator, Coroutine, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Self, TypeVar
from urllib.parse import urlsplit

import anyio
import httpcore
import httpx
from PIL import ExifTags, Image, ImageOps

from productlens import __version__
from productlens.catalog.imagetypes import FORMATS as FORMATS  # re-exported; the kinds rule lives there
from productlens.catalog.imagetypes import problem as kind_problem
from productlens.catalog.imagetypes import sniff as sniff

T = TypeVar("T")
USER_AGENT = f"productlens/{__version__} (+https://github.com/productlens/productlens)"
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# Cloud metadata services: refused even with allow_private, unless named in allow_hosts (so is all link-local).
_METADATA = {ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")}
_SHARED_MAX = 100_000  # URLs whose outcome a Downloader remembers, so that repeated URLs are fetched once
_OCTET = "application/octet-stream", "binary/octet-stream"
_CONNECTIONS_PER_POOL = 8  # see Downloader.__aenter__
_RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})
_LOCATION = "x-productlens-location"  # where Location is kept, out of httpx's sight (see _hide_location)


@dataclass(frozen=True)
class DownloadConfig:
    """How images are fetched and checked. The defaults suit one CDN serving product photos."""

    concurrency: int = 64  # images in flight at once (network waits overlap; decoding uses `workers` threads)
    per_host: int = 32  # requests in flight to one host:port
    timeout_s: float = 10.0  # per socket operation: connect, each read, each write
    deadline_s: float = 60.0  # wall clock per image, every attempt, redirect and back-off wait included
    retries: int = 3  # extra attempts after timeouts, connection errors, 5xx and 429 (never after other 4xx)
    backoff_s: float = 0.5  # first back-off; doubles per attempt, times a random factor in [0.5, 1.5)
    backoff_max_s: float = 8.0
    retry_after_max_s: float = 30.0  # a longer Retry-After ends this run's tries (the next run retries)
    max_redirects: int = 5
    max_bytes: int = 20 * 2**20  # per image, checked on Content-Length first, then while streaming
    max_pixels: int = 40_000_000  # larger images are refused as decompression bombs (an error, not a warning)
    max_side: int | None = None  # shrink so that the longest side is at most this many pixels
    jpeg_quality: int = 95  # when an image has to be re-encoded
    allow_private: bool = False  # allow loopback/private/CGNAT/... addresses; link-local only when named
    # Hosts allowed even when private: "host", "host:port", an IP or a CIDR ("10.0.0.0/8", "[fd00::1]:8080").
    # Naming a link-local / metadata address here is the only way to fetch one.
    allow_hosts: frozenset[str] = frozenset()
    image_roots: tuple[str, ...] = ()  # folders local image paths may lie in, besides the catalog's own
    user_agent: str = USER_AGENT
    workers: int | None = None  # threads that decode, encode, hash and write (None: one per CPU)

    def __post_init__(self) -> None:
        HostPolicy(self.allow_private, self.allow_hosts)  # a bad allow_hosts entry fails here, with why


@dataclass(frozen=True)
class ImageJob:
    """One image to fetch: `source` is an http(s) URL, a local path, bytes, or a {"bytes", "path"} dict."""

    row_id: str
    source: object


@dataclass(frozen=True)
class ImageResult:
    """What happened to one image. `path` is the stored file when `status == "ok"`."""

    row_id: str
    url: str  # the source as text ("<embedded image, N bytes>" for bytes)
    status: str  # "ok" | "failed"
    reason: str = (
        ""  # "" when ok; else "unsafe_url" | "download_failed" | "invalid_image" | "unexpected_error"
    )
    detail: str = ""  # what went wrong, for people
    http_status: int | None = None
    sha256: str | None = None  # of the stored file, which is also its name
    path: str | None = None
    width: int | None = None
    height: int | None = None
    bytes: int = 0  # size of the stored file (or of what was received, on failure)
    attempts: int = 0  # HTTP requests made (0 for local and embedded images, and for refused URLs)
    seconds: float = 0.0
    transient: bool = False  # True when a later run may succeed (timeout, connection error, 5xx, 429)


class UnsafeURL(ValueError):
    """A URL or address productlens refuses to fetch (scheme, credentials, or a non-public address)."""


class InvalidImage(ValueError):
    """Bytes that are not a complete, safe JPEG/PNG/WEBP/GIF image."""


class _Failure(Exception):
    def __init__(
        self, reason: str, detail: str, *, transient: bool = False, retry_after: float | None = None
    ):
        super().__init__(detail)
        self.reason, self.detail, self.transient, self.retry_after = reason, detail, transient, retry_after


# ---- address safety ---------------------------------------------------------------------------------------
def address_problem(address: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why `address` must not be fetched ("loopback", "private", ...); None for a public unicast address."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded(ip)
        if embedded is not None and (problem := address_problem(embedded)):
            return f"IPv6 wrapping a {problem} IPv4 address"
    for name in ("unspecified", "loopback", "link_local", "multicast", "reserved", "private"):
        if getattr(ip, f"is_{name}"):
            return name.replace("_", "-")
    if ip in _CGNAT:
        return "shared address space (CGNAT)"
    return None if ip.is_global else "not globally routable"


def _embedded(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
    if embedded is None and ip in _NAT64:
        embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return embedded


def _named_only(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Link-local and cloud metadata addresses (also inside IPv6): fetched only when allow_hosts names them."""
    inner = _embedded(ip) if isinstance(ip, ipaddress.IPv6Address) else None
    return ip.is_link_local or ip in _METADATA or (inner is not None and _named_only(inner))


def _literal_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP a host name spells, including legacy IPv4 forms (2130706433, 0177.0.0.1, 0x7f.1, 127.1) and a
    trailing dot ("10.0.0.1.")."""
    host = host.strip("[]").rstrip(".")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if host and all(c in "0123456789abcdefxABCDEFX." for c in host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


class HostPolicy:
    """Which non-public addresses may be fetched: `allow_private` opens loopback/private/CGNAT/...; `allow_hosts`
    names hosts ("cdn.local", "cdn.local:8080"), addresses and CIDRs ("10.1.2.3", "10.0.0.0/8",
    "[fd00::1]:8080"). Link-local and cloud metadata addresses open only when named here."""

    def __init__(self, allow_private: bool = False, allow_hosts: Iterable[str] = ()) -> None:
        self.allow_private = allow_private
        self.names: set[tuple[str, int | None]] = set()
        self.networks: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, int | None]] = []
        if isinstance(allow_hosts, str):
            allow_hosts = [allow_hosts]
        for entry in allow_hosts:
            self._add(str(entry))

    def _add(self, entry: str) -> None:
        text, port = entry.strip().lower(), None
        try:
            network = ipaddress.ip_network(text.strip("[]"), strict=False)
            self.networks.append((network, None))
            return
        except ValueError:
            pass
        host, sep, tail = text.rpartition(":")
        if sep and tail.isdigit() and "]" not in tail and (host.endswith("]") or ":" not in host):
            text, port = host, int(tail)
            if not 0 < port < 65536:
                raise ValueError(f"allowed host {entry!r}: the port must be 1-65535")
        text = text.strip("[]").rstrip(".")
        ip = _literal_ip(text)
        if ip is not None:
            self.networks.append((ipaddress.ip_network(ip), port))
        elif re.fullmatch(r"[a-z0-9_-]{1,63}(\.[a-z0-9_-]{1,63})*", text):
            self.names.add((text, port))
        else:
            raise ValueError(
                f"allowed host {entry!r} is not a host name, host:port, IP address or CIDR (e.g. 10.0.0.0/8)"
            )

    def named(self, host: str, port: int, ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None) -> bool:
        """True when allow_hosts names this host (by name or address, with this port if it gives one)."""
        host = host.strip("[]").rstrip(".").lower()
        if (host, None) in self.names or (host, port) in self.names:
            return True
        return ip is not None and any(ip in net and p in (None, port) for net, p in self.networks)

    def refusal(
        self, host: str, port: int, address: str | ipaddress.IPv4Address | ipaddress.IPv6Address
    ) -> str | None:
        """Why `host` (at `address`, port `port`) may not be fetched; None when it may."""
        ip = ipaddress.ip_address(address)
        problem = address_problem(ip)
        if problem is None or self.named(host, port, ip) or self.named(str(ip), port, ip):
            return None
        where = f"{host} is" if _literal_ip(host) == ip else f"{host} resolves to {ip}, which is"
        if _named_only(ip):
            return (f"{where} a {problem} address, where cloud metadata services live; even allow_private "
                    f"(--allow-private) does not open it: name it with allow_hosts (--allow-host {ip})")  # fmt: skip
        if self.allow_private:
            return None
        return (f"{where} a {problem} address ({ip}); name it with allow_hosts (--allow-host {host}) "
                "or pass allow_private (--allow-private) to fetch it")  # fmt: skip


def check_url(url: str, *, allow_private: bool = False, allow_hosts: Iterable[str] = ()) -> httpx.URL:
    """Return the parsed URL if productlens may fetch it; raise `UnsafeURL` saying why not.

    Checks the scheme (http/https only), credentials, the port, and literal IP addresses in any spelling.
    Host names are resolved and every address checked when the connection is made (see `_GuardedBackend`).
    Spaces and control characters around the URL are ignored, as browsers do.
    """
    return _check_url(url, HostPolicy(allow_private, allow_hosts))


def _check_url(url: str, policy: HostPolicy) -> httpx.URL:
    url = url.strip("".join(map(chr, range(33))))  # WHATWG: C0 controls and spaces around a URL are dropped
    try:
        split = urlsplit(url)
        host = split.hostname or ""
        port = split.port
    except ValueError as exc:
        raise UnsafeURL(f"not a valid URL ({exc}): {url[:200]!r}") from None
    scheme = split.scheme.lower()
    if scheme not in ("http", "https"):
        raise UnsafeURL(
            f"scheme {scheme + ':' if scheme else '(none)'} is not allowed; only http and https are"
        )
    if split.username is not None or split.password is not None:
        raise UnsafeURL("URLs with credentials (user:password@host) are not allowed")
    if not host:
        raise UnsafeURL("the URL has no host")
    if port == 0:
        raise UnsafeURL("not a valid URL: port 0")
    ip = _literal_ip(host)
    if ip is not None and (why := policy.refusal(host, port or (443 if scheme == "https" else 80), ip)):
        raise UnsafeURL(why)
    if any(c.isspace() for c in url):
        raise UnsafeURL(f"not a valid URL: it contains spaces or line breaks: {url[:200]!r}")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise UnsafeURL(f"not a valid URL ({exc}): {url[:200]!r}") from None
    if parsed.userinfo or not parsed.host:
        raise UnsafeURL("the URL has credentials or no host")
    return parsed


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves the host itself, refuses it if ANY address is not public (see `HostPolicy`), then connects to
    the checked address (so a DNS answer cannot change between the check and the connection). Runs for every
    new connection, redirects included, before any packet is sent to the host."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend, policy: HostPolicy):
        self._inner, self._policy = inner, policy

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:  # becomes httpx.ConnectError: a transient failure
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from None
        addresses = list(dict.fromkeys(str(info[4][0]).split("%")[0] for info in infos))
        for address in addresses:
            if why := self._policy.refusal(host, port, address):
                raise UnsafeURL(why)
        error: Exception = httpcore.ConnectError(f"{host} did not resolve")
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except httpcore.ConnectError as exc:
                error = exc
        raise error

    async def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options=None):
        raise UnsafeURL("unix sockets are not used")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


# ---- image verification -----------------------------------------------------------------------------------
def _to_rgb(im: Image.Image) -> Image.Image:
    """Any mode -> RGB: transparency flattened onto white, 16-bit scaled to 8-bit, CMYK/L/P converted."""
    if im.mode in ("P", "L", "RGB", "1") and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode.startswith("I"):  # 16-bit grey: scale to 8 bits (a plain convert would clip to white)
        im = im.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return im if im.mode == "RGB" else im.convert("RGB")


def normalise_image(
    data: bytes, *, max_pixels: int = 40_000_000, max_side: int | None = None, jpeg_quality: int = 95
) -> tuple[bytes, str, int, int]:
    """Verify an image and make it training-ready: (bytes to store, ".jpg" or ".png", width, height).

    Refuses (InvalidImage) anything that is not a complete image of a kind `imagetypes` accepts (JPEG/MPO, PNG,
    WEBP, GIF, AVIF, HEIC with its plugin) under `max_pixels`. Applies EXIF orientation, flattens alpha onto
    white, converts to RGB, takes the first frame of animations and shrinks to `max_side`. A JPEG or PNG that is
    already RGB and needs none of that is kept byte for byte (no generation loss, and its hash is the source's
    hash); everything else is re-encoded as JPEG. Messages never quote the bytes.
    """
    if why := kind_problem(data[:64]):
        raise InvalidImage(why)
    kind = sniff(data)
    try:
        with Image.open(io.BytesIO(data), formats=[kind]) as im:
            width, height = im.size
            if width * height > max_pixels:
                raise InvalidImage(
                    f"{width}x{height} is {width * height / 1e6:.0f} MP, above the {max_pixels / 1e6:.0f} MP "
                    "limit (a decompression bomb?)"
                )
            animated = getattr(im, "is_animated", False)
            im.seek(0)
            orientation = im.getexif().get(ExifTags.Base.Orientation, 1)
            too_big = max_side is not None and max(width, height) > max_side
            keep = (
                kind in ("JPEG", "PNG")
                and im.mode == "RGB"
                and "transparency" not in im.info
                and orientation in (0, 1)
                and not (animated or too_big)
            )
            if keep and kind == "JPEG":
                # Kept as it is, so decoded only to prove it whole: at 1/8 scale libjpeg still reads every
                # entropy-coded block (truncated or corrupt data fails alike) but skips the full-size IDCT.
                im.draft("RGB", (max(1, width // 8), max(1, height // 8)))
            im.load()  # decodes everything: truncated or corrupt data fails here
            if keep:
                return data, ".jpg" if kind == "JPEG" else ".png", width, height
            icc = im.info.get("icc_profile") if im.mode == "RGB" else None
            out = ImageOps.exif_transpose(im) if orientation in range(2, 9) else im
            out = _to_rgb(out)
            if max_side is not None and max(out.size) > max_side:
                scale = max_side / max(out.size)
                size = (max(1, round(out.width * scale)), max(1, round(out.height * scale)))
                out = out.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
            buf = io.BytesIO()
            out.save(buf, "JPEG", quality=jpeg_quality, icc_profile=icc)
            return buf.getvalue(), ".jpg", out.width, out.height
    except InvalidImage:
        raise
    except Image.DecompressionBombError as exc:
        raise InvalidImage(f"decompression bomb: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, RuntimeError, struct.error) as exc:
        raise InvalidImage(f"cannot decode the {kind} image: {exc}") from None


def store(data: bytes, ext: str, images_dir: Path) -> tuple[str, Path]:
    """Write `data` atomically as `images_dir/ab/ab12...ef<ext>` named by its sha256; (sha256, path).

    The name is the content's hash, so identical images are stored once and a file is never half-written
    (temp file in `images_dir/.tmp`, then os.replace). Callers pass bytes from `normalise_image`."""
    sha = hashlib.sha256(data).hexdigest()
    path = images_dir / sha[:2] / f"{sha}{ext}"
    if path.exists():
        return sha, path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = images_dir / ".tmp"
    tmp_dir.mkdir(exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=tmp_dir, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return sha, path


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


# ---- the downloader ---------------------------------------------------------------------------------------
class Downloader:
    """Fetches `ImageJob`s concurrently into `images_dir` and verifies every image. Use as an async context.

    `base_dir` is the folder relative local paths are read from; local paths must lie in it or in one of
    `config.image_roots`, and be regular files. None (and no image_roots) refuses local paths altogether (for
    catalogs that did not come from this machine). A URL that several jobs share is fetched once. One
    Downloader per `images_dir` at a time.
    """

    def __init__(
        self,
        images_dir: str | Path,
        config: DownloadConfig = DownloadConfig(),
        base_dir: str | Path | None = None,
    ) -> None:
        self.images_dir = Path(images_dir)
        self.config = config
        self.base_dir = None if base_dir is None else Path(base_dir)
        self._hosts: dict[str, asyncio.Semaphore] = {}
        self._random = random.Random()
        self._clients: list[httpx.AsyncClient] = []
        self._busy: list[int] = []  # requests in flight per client
        self._workers: ThreadPoolExecutor | None = None
        self._policy = HostPolicy(config.allow_private, config.allow_hosts)
        self._shared: dict[str, asyncio.Future[ImageResult]] = {}  # URL -> its (first) fetch

    async def __aenter__(self) -> Self:
        cfg = self.config
        self.images_dir.mkdir(parents=True, exist_ok=True)
        # httpcore matches queued requests to connections in O(connections x requests) on every request, so
        # one pool of 64 connections spends more CPU on bookkeeping than on HTTP; small pools keep that cost
        # flat. Each request takes the least busy pool, so with `concurrency` requests in flight none waits
        # for a connection; each pool reuses its keep-alive connections.
        per_pool = min(cfg.concurrency, _CONNECTIONS_PER_POOL)
        tls = httpx.create_ssl_context()  # one for all pools: loading the CA bundle takes ~40 ms
        self._clients = [self._client(per_pool, tls) for _ in range(-(-cfg.concurrency // per_pool))]
        self._busy = [0] * len(self._clients)
        self._workers = ThreadPoolExecutor(cfg.workers or os.cpu_count() or 1, thread_name_prefix="images")
        return self

    def _client(self, connections: int, tls: ssl.SSLContext) -> httpx.AsyncClient:
        cfg = self.config
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        transport = httpx.AsyncHTTPTransport(verify=tls, limits=limits)
        pool = getattr(transport, "_pool", None)
        if not isinstance(getattr(pool, "_network_backend", None), httpcore.AsyncNetworkBackend):
            raise RuntimeError(
                f"httpx {httpx.__version__} changed its transport internals, so productlens cannot install "
                "its connect-time address check; install httpx 0.28.x"
            )
        pool._network_backend = _GuardedBackend(pool._network_backend, self._policy)
        return httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(cfg.timeout_s),
            headers={"User-Agent": cfg.user_agent, "Accept": "image/*,*/*;q=0.5"},
            follow_redirects=False,  # redirects are followed by hand, re-checking every hop
            trust_env=False,  # no proxies or .netrc from the environment for URLs that come from data
            event_hooks={"response": [_hide_location]},
        )

    async def __aexit__(self, *exc: object) -> None:
        running = [task for task in self._shared.values() if not task.done()]  # their callers were cancelled
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        for client in self._clients:
            await client.aclose()
        if self._workers is not None:
            self._workers.shutdown(wait=True)

    async def map(self, jobs: Iterable[ImageJob]) -> AsyncIterator[ImageResult]:
        """Fetch `jobs` with at most `config.concurrency` in flight; yields results as they finish.

        `jobs` is pulled lazily, so it may be a generator over millions of rows."""
        todo = iter(jobs)
        finished: asyncio.Queue[asyncio.Task[ImageResult]] = asyncio.Queue()  # O(1) per image, unlike wait()
        pending: set[asyncio.Task[ImageResult]] = set()
        try:
            while True:
                while len(pending) < self.config.concurrency and (job := next(todo, None)) is not None:
                    task = asyncio.ensure_future(self.fetch(job))
                    task.add_done_callback(finished.put_nowait)
                    pending.add(task)
                if not pending:
                    return
                task = await finished.get()
                pending.discard(task)
                yield task.result()
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def fetch(self, job: ImageJob) -> ImageResult:
        """Fetch (or read) one image, verify and store it. Never raises for a bad image or value; the result
        says what happened (an unforeseen error is `unexpected_error`, with its type and message)."""
        source = job.source
        if isinstance(source, str) and _is_url(source):
            start, key = time.monotonic(), source.strip()
            shared = self._shared.get(key)
            if shared is None:  # the first job with this URL fetches it; later ones reuse its outcome
                if len(self._shared) >= _SHARED_MAX:
                    del self._shared[next(iter(self._shared))]
                shared = self._shared[key] = asyncio.ensure_future(self._fetch(job))
                return await asyncio.shield(shared)
            first = await asyncio.shield(shared)
            return replace(first, row_id=job.row_id, url=source, attempts=0, seconds=time.monotonic() - start)
        return await self._fetch(job)

    async def _fetch(self, job: ImageJob) -> ImageResult:
        start = time.monotonic()
        trace = {"attempts": 0, "status": None, "bytes": 0}
        source, label = job.source, ""
        try:
            if isinstance(source, Mapping):
                source = source.get("bytes") or source.get("path")
            if isinstance(source, bytes | bytearray | memoryview):
                data, label = bytes(source), f"<embedded image, {len(source)} bytes>"
            elif isinstance(source, str | os.PathLike):
                label = os.fspath(source)
                if isinstance(label, str) and _is_url(label):
                    data = await self._download(self._check(label), trace)
                else:
                    data = await self._read_local(label)
            else:
                raise _Failure("invalid_image", f"unsupported image value of type {type(source).__name__}")
            trace["bytes"] = len(data)
            loop = asyncio.get_running_loop()
            assert self._workers is not None, "use the Downloader as `async with Downloader(...) as dl`"
            sha, path, width, height, size = await loop.run_in_executor(self._workers, self._verify, data)
        except _Failure as failure:
            return ImageResult(
                job.row_id, label, "failed", failure.reason, failure.detail, trace["status"],
                bytes=trace["bytes"], attempts=trace["attempts"], seconds=time.monotonic() - start,
                transient=failure.transient,
            )  # fmt: skip
        except Exception as exc:  # a bug or a case nobody foresaw: this row's result, never the run's end
            detail = f"{type(exc).__name__}: {exc} (please report this as a productlens bug)"
            return ImageResult(
                job.row_id, label or repr(source)[:200], "failed", "unexpected_error", detail[:500],
                trace["status"], bytes=trace["bytes"], attempts=trace["attempts"],
                seconds=time.monotonic() - start,
            )  # fmt: skip
        return ImageResult(
            job.row_id, label, "ok", http_status=trace["status"], sha256=sha, path=str(path), width=width,
            height=height, bytes=size, attempts=trace["attempts"], seconds=time.monotonic() - start,
        )  # fmt: skip

    def _verify(self, data: bytes) -> tuple[str, Path, int, int, int]:
        cfg = self.config
        try:
            out, ext, width, height = normalise_image(
                data, max_pixels=cfg.max_pixels, max_side=cfg.max_side, jpeg_quality=cfg.jpeg_quality
            )
        except InvalidImage as exc:
            raise _Failure("invalid_image", str(exc)) from None
        sha, path = store(out, ext, self.images_dir)
        return sha, path, width, height, len(out)

    async def _read_local(self, label: str) -> bytes:
        """A local image: inside the catalog's folder or an image root, a regular file, at most max_bytes."""
        roots = [
            Path(r) for r in ((self.base_dir,) if self.base_dir else ()) + tuple(self.config.image_roots)
        ]
        if not roots:
            raise _Failure("unsafe_url", f"local path {label} refused: this catalog is not a local file")
        try:
            path = Path(label) if Path(label).is_absolute() else roots[0] / label
            real = path.resolve()
            if not any(real.is_relative_to(root.resolve()) for root in roots):
                raise _Failure("unsafe_url", f"local path {label} refused: it is outside {roots[0]}; pass "
                               "image_roots (--image-root FOLDER) to allow the folder it is in")  # fmt: skip
            return await asyncio.to_thread(_read_regular, real, self.config.max_bytes)
        except (OSError, ValueError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise _Failure("download_failed", f"cannot read {label}: {why}") from None

    def _check(self, url: str) -> httpx.URL:
        try:
            return _check_url(url, self._policy)
        except UnsafeURL as exc:
            raise _Failure("unsafe_url", str(exc)) from None

    async def _download(self, url: httpx.URL, trace: dict) -> bytes:
        """GET with retries and back-off, all inside the image's wall-clock deadline."""
        cfg = self.config
        deadline = time.monotonic() + cfg.deadline_s
        try:
            async with asyncio.timeout(cfg.deadline_s):
                while True:
                    trace["attempts"] += 1
                    try:
                        return await self._attempt(url, trace)
                    except _Failure as failure:
                        if not failure.transient or trace["attempts"] > cfg.retries:
                            raise
                        if failure.retry_after is not None:
                            if failure.retry_after > cfg.retry_after_max_s:
                                failure.detail += f" (Retry-After {failure.retry_after:.0f} s is too long)"
                                raise
                            wait = failure.retry_after
                        else:
                            wait = min(cfg.backoff_max_s, cfg.backoff_s * 2 ** (trace["attempts"] - 1))
                            wait *= self._random.uniform(0.5, 1.5)
                        if time.monotonic() + wait > deadline:
                            raise
                        await asyncio.sleep(wait)
        except TimeoutError:
            raise _Failure(
                "download_failed",
                f"no complete image within the {cfg.deadline_s:g} s deadline",
                transient=True,
            ) from None

    async def _attempt(self, parsed: httpx.URL, trace: dict) -> bytes:
        """One try: follow up to `max_redirects` redirects by hand, checking each hop, then read the body."""
        cfg = self.config
        assert self._clients, "use the Downloader as `async with Downloader(...) as dl`"
        for _ in range(cfg.max_redirects + 1):
            host = f"{parsed.host}:{parsed.port or (443 if parsed.scheme == 'https' else 80)}"
            if host not in self._hosts:
                self._hosts[host] = asyncio.Semaphore(cfg.per_host)
            semaphore = self._hosts[host]
            pool = self._busy.index(min(self._busy))
            self._busy[pool] += 1
            try:
                async with semaphore, self._clients[pool].stream("GET", parsed) as response:
                    trace["status"] = response.status_code
                    if response.status_code in _REDIRECT_STATUS:
                        parsed = self._check(self._location(parsed, response))
                        continue
                    return await self._body(response, trace)
            except UnsafeURL as exc:
                raise _Failure("unsafe_url", str(exc)) from None
            except httpx.TimeoutException as exc:
                raise _Failure("download_failed", f"timeout: {type(exc).__name__}", transient=True) from None
            except httpx.TransportError as exc:  # connection refused or reset, body cut short...
                raise _Failure("download_failed", f"{type(exc).__name__}: {exc}", transient=True) from None
            except (httpx.RequestError, httpx.InvalidURL) as exc:  # a corrupt encoding, a bad Location...
                raise _Failure("download_failed", f"{type(exc).__name__}: {exc}") from None
            finally:
                self._busy[pool] -= 1
        raise _Failure("download_failed", f"more than {cfg.max_redirects} redirects")

    @staticmethod
    def _location(url: httpx.URL, response: httpx.Response) -> str:
        location = response.headers.get(_LOCATION, "").strip()
        if not location:
            raise _Failure(
                "download_failed", f"HTTP {response.status_code} redirect without a Location header"
            )
        if urlsplit(location).scheme:  # absolute: checked as it is (data:, file:, javascript: are refused)
            return location
        try:
            return str(url.join(location))
        except (httpx.InvalidURL, ValueError) as exc:
            why = f"the redirect's Location {location[:200]!r} is not a valid URL ({exc})"
            raise _Failure("unsafe_url", why) from None

    async def _body(self, response: httpx.Response, trace: dict) -> bytes:
        cfg, status = self.config, response.status_code
        if status not in (200, 203):
            transient = status in _RETRYABLE_STATUS or status >= 500
            retry_after = _retry_after(response.headers.get("retry-after")) if status in (429, 503) else None
            raise _Failure("download_failed", f"HTTP {status}", transient=transient, retry_after=retry_after)
        ctype = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype and not (ctype.startswith("image/") or ctype in _OCTET):
            raise _Failure("invalid_image", f"the server sent {ctype}, not an image")
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cfg.max_bytes:
            raise _Failure(
                "download_failed", f"Content-Length {declared} is above the {cfg.max_bytes} byte cap"
            )
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            trace["bytes"] = len(body)
            if len(body) > cfg.max_bytes:
                raise _Failure("download_failed", f"body larger than the {cfg.max_bytes} byte cap")
        return bytes(body)


async def _hide_location(response: httpx.Response) -> None:
    """httpx parses a redirect's Location even when it follows none, and raises on odd ones (data:, a bad
    port...) before we see the response; moved aside, it is read and checked by `Downloader._location`."""
    if "location" in response.headers:
        response.headers[_LOCATION] = response.headers.pop("location")


def _is_url(text: str) -> bool:
    """True for a URL of any scheme (a one-letter "scheme" is a Windows drive), even a malformed one."""
    try:
        return len(urlsplit(text.strip()).scheme) > 1
    except ValueError:  # e.g. "http://[::1/": a URL, and check_url will say what is wrong with it
        return "://" in text


def _read_regular(path: Path, cap: int) -> bytes:
    """The bytes of `path` if it is a regular file of at most `cap` bytes (never blocks on a FIFO or device)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise _Failure(
            "unsafe_url", f"local path {path} refused: not a regular file (a folder, device, FIFO...)"
        )
    with os.fdopen(fd, "rb") as f:
        if info.st_size > cap:
            raise _Failure("invalid_image", f"{path} is {info.st_size} bytes, above the {cap} byte cap")
        data = f.read(cap + 1)
    if len(data) > cap:
        raise _Failure("invalid_image", f"{path} is over the {cap} byte cap")
    return data


def download_images(
    jobs: Iterable[ImageJob],
    images_dir: str | Path,
    config: DownloadConfig = DownloadConfig(),
    base_dir: str | Path | None = None,
) -> list[ImageResult]:
    """Synchronous convenience: fetch every job into `images_dir`; results in completion order."""

    async def run() -> list[ImageResult]:
        async with Downloader(images_dir, config, base_dir) as downloader:
            return [result async for result in downloader.map(jobs)]

    return run_blocking(run())


def run_blocking(coroutine: Coroutine[object, object, T]) -> T:
    """Run a coroutine to its end from synchronous code, also where an event loop already runs (Jupyter)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with ThreadPoolExecutor(1) as thread:
        return thread.submit(asyncio.run, coroutine).result()
