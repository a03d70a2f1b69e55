"""Loopback image server for tests and benchmarks: a folder in; HTTP/1.1 on 127.0.0.1 out, with added
latency and faults on demand.

    with ImageServer(folder, latency=0.05, faults={"/images/1.jpg": "404"}) as srv: srv.url("/images/1.jpg")
    productlens serve-images FOLDER --latency 0.05       (the same server in its own process)

A fault is chosen per path (the `faults` mapping) or by a path prefix: `/fault/<name>/images/1.jpg` serves
`/images/1.jpg` with fault <name>. See `FAULTS` for the names and what each does.
"""

from __future__ import annotations

import contextlib
import mimetypes
import struct
import threading
import time
import zlib
from collections import Counter
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Self

FAULTS: dict[str, str] = {
    "404": "always 404 Not Found",
    "500": "always 500 Internal Server Error",
    "500-once": "500 on the first request for the path, the file afterwards",
    "429-once": "429 with Retry-After on the first request for the path, the file afterwards",
    "slow": "honest headers, then the body trickles one byte per `trickle_s` (slower than any sane deadline)",
    "truncated": "200 with an honest Content-Length, but the body is the first half of the file",
    "short": "Content-Length of the whole file, half of it sent, then the connection is closed",
    "html": "200 with an HTML page (text/html)",
    "bomb": "a tiny PNG whose header declares 100,000 x 100,000 pixels (a decompression bomb)",
    "redirect-loop": "302 to itself, forever",
    "no-location": "302 without a Location header",
    "huge": "an image/jpeg body of up to `huge_bytes`, chunked (no Content-Length), streamed",
    "huge-declared": "the same huge body, with an honest Content-Length",
    "redirect:<url>": "302 to <url> (in the `faults` mapping only)",
}

_CHUNK = 64 * 1024


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid ~70-byte PNG whose header declares `width` x `height` grey pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so that connection reuse can be observed
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.owner._on_connect(self.connection)

    def finish(self) -> None:
        self.server.owner._on_disconnect(self.connection)
        super().finish()

    def handle_one_request(self) -> None:  # the request head must arrive within header_timeout_s
        self.server.owner._head_deadline(self.connection, time.monotonic())
        super().handle_one_request()

    def do_GET(self) -> None:
        self.server.owner._head_deadline(self.connection, None)
        self.server.owner._handle(self)

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 256  # a client opening 64 connections at once must not see SYN drops
    owner: ImageServer


class ImageServer:
    """Serve `root` over HTTP/1.1 on 127.0.0.1 (port 0 = any free port), with optional latency and faults.

    A connection that does not deliver a request head within `header_timeout_s` (a slow-drip client, or an idle
    keep-alive one) is closed. Counters for tests: `requests` (Counter of paths), `connections` (TCP connections accepted),
    `max_inflight` (most requests served at the same time), `user_agents` (Counter).
    """

    def __init__(
        self,
        root: str | Path,
        *,
        latency: float = 0.0,
        faults: Mapping[str, str] | None = None,
        port: int = 0,
        retry_after_s: int = 1,
        trickle_s: float = 0.2,
        huge_bytes: int = 1 << 30,
        header_timeout_s: float = 10.0,
    ) -> None:
        self.root = Path(root).resolve()
        self.latency = latency
        self.faults = dict(faults or {})
        self.retry_after_s = retry_after_s
        self.trickle_s = trickle_s
        self.huge_bytes = huge_bytes
        self.header_timeout_s = header_timeout_s
        self._heads: dict = {}  # connection -> when its current request head started
        self.requests: Counter[str] = Counter()
        self.user_agents: Counter[str] = Counter()
        self.connections = 0
        self.inflight = 0
        self.max_inflight = 0
        self._port = port
        self._lock = threading.Lock()
        self._open: set = set()
        self._stop = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle ----
    def start(self) -> Self:
        self._server = _Server(("127.0.0.1", self._port), _Handler)
        self._server.owner = self
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="image-server",
            daemon=True,
        )
        self._thread.start()
        threading.Thread(target=self._watch_heads, name="image-server-heads", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            sockets = list(self._open)
        for sock in sockets:  # wake handler threads blocked on idle keep-alive connections
            with contextlib.suppress(OSError):
                sock.shutdown(2)
        self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        assert self._server is not None, "start the server first (use it as a context manager)"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def url(self, path: str, fault: str | None = None) -> str:
        """The URL of `path` (e.g. "/images/1.jpg"), optionally through the `/fault/<fault>` prefix."""
        path = "/" + path.lstrip("/")
        return f"{self.base_url}/fault/{fault}{path}" if fault else self.base_url + path

    # ---- counters ----
    def _on_connect(self, sock: object) -> None:
        with self._lock:
            self.connections += 1
            self._open.add(sock)

    def _on_disconnect(self, sock: object) -> None:
        with self._lock:
            self._open.discard(sock)
            self._heads.pop(sock, None)

    def _head_deadline(self, sock: object, started: float | None) -> None:
        with self._lock:
            if started is None:
                self._heads.pop(sock, None)
            else:
                self._heads[sock] = started

    def _watch_heads(self) -> None:
        while not self._stop.wait(min(0.25, self.header_timeout_s / 4)):
            limit = time.monotonic() - self.header_timeout_s
            with self._lock:
                late = [sock for sock, started in self._heads.items() if started < limit]
                for sock in late:
                    del self._heads[sock]
            for sock in late:
                with contextlib.suppress(OSError):
                    sock.shutdown(2)  # type: ignore[attr-defined]

    # ---- requests ----
    def _handle(self, h: _Handler) -> None:
        path = h.path.split("?", 1)[0]
        with self._lock:
            self.requests[path] += 1
            count = self.requests[path]
            self.user_agents[h.headers.get("User-Agent", "")] += 1
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            if self.latency:
                time.sleep(self.latency)
            fault, file_path = self.faults.get(path), path
            if fault is None and path.startswith("/fault/"):
                parts = path.split("/", 3)  # ["", "fault", name, rest of the path]
                fault, file_path = parts[2], "/" + (parts[3] if len(parts) > 3 else "")
            self._respond(h, fault, path, file_path, count)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            h.close_connection = True
        finally:
            with self._lock:
                self.inflight -= 1

    def _respond(self, h: _Handler, fault: str | None, path: str, file_path: str, count: int) -> None:
        if fault == "404" or (fault is None and not self._file(file_path)):
            return self._send(h, 404, b"not found", "text/plain")
        if fault == "500" or (fault == "500-once" and count == 1):
            return self._send(h, 500, b"server error", "text/plain")
        if fault == "429-once" and count == 1:
            return self._send(h, 429, b"slow down", "text/plain", {"Retry-After": str(self.retry_after_s)})
        if fault == "redirect-loop":
            return self._send(h, 302, b"", "text/plain", {"Location": path})
        if fault == "no-location":
            return self._send(h, 302, b"", "text/plain")
        if fault is not None and fault.startswith("redirect:"):
            return self._send(h, 302, b"", "text/plain", {"Location": fault.removeprefix("redirect:")})
        if fault == "html":
            return self._send(h, 200, b"<!doctype html><html><body>Sign in</body></html>", "text/html")
        if fault == "bomb":
            return self._send(h, 200, bomb_png(), "image/png")
        if fault in ("huge", "huge-declared"):
            return self._send_huge(h, declared=fault == "huge-declared")
        file = self._file(file_path)
        if file is None:
            return self._send(h, 404, b"not found", "text/plain")
        data, ctype = file.read_bytes(), mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        if fault == "truncated":
            return self._send(h, 200, data[: len(data) // 2], ctype)
        if fault == "short":
            h.close_connection = True
            return self._send(h, 200, data[: len(data) // 2], ctype, {"Content-Length": str(len(data))})
        if fault == "slow":
            return self._send_slow(h, data, ctype)
        if fault not in (None, "500-once", "429-once"):
            return self._send(
                h, 400, f"unknown fault {fault!r}; known: {sorted(FAULTS)}".encode(), "text/plain"
            )
        return self._send(h, 200, data, ctype)

    def _file(self, path: str) -> Path | None:
        file = (self.root / path.lstrip("/")).resolve()
        return file if file.is_relative_to(self.root) and file.is_file() else None

    @staticmethod
    def _send(h: _Handler, status: int, body: bytes, ctype: str, headers: Mapping[str, str] = {}) -> None:
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        if "Content-Length" not in headers:
            h.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(body)

    def _send_slow(self, h: _Handler, data: bytes, ctype: str) -> None:
        h.close_connection = True
        h.send_response(200)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        for i in range(len(data)):
            if self._stop.wait(self.trickle_s):
                return
            h.wfile.write(data[i : i + 1])
            h.wfile.flush()

    def _send_huge(self, h: _Handler, declared: bool) -> None:
        h.close_connection = True
        h.send_response(200)
        h.send_header("Content-Type", "image/jpeg")
        if declared:
            h.send_header("Content-Length", str(self.huge_bytes))
        else:
            h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        block = b"\xff\xd8\xff\xe0" + bytes(_CHUNK - 4)  # starts like a JPEG; never ends like one
        sent = 0
        while sent < self.huge_bytes and not self._stop.is_set():
            piece = block[: min(_CHUNK, self.huge_bytes - sent)]
            h.wfile.write(piece if declared else b"%x\r\n%s\r\n" % (len(piece), piece))
            sent += len(piece)
        if not declared:
            h.wfile.write(b"0\r\n\r\n")


def serve(root: str | Path, latency: float = 0.0, port: int = 0) -> None:
    """Run an `ImageServer` in the foreground until Ctrl-C; prints its base URL on the first line."""
    with ImageServer(root, latency=latency, port=port) as srv:
        print(srv.base_url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
