"""Is this an image, and which kind? Decided by content (the first bytes), never by file name: one rule for
`prepare`, `predict` and `serve`.

In: the first bytes of a file or body (or a path). Out: a Pillow format name from `FORMATS`, or the reason it is
not one we read. HEIC/HEIF needs the optional plugin (`pip install 'productlens[heic]'`, i.e. pillow-heif).
"""

from __future__ import annotations

import os
import stat
from functools import cache
from pathlib import Path

# The only decoders Pillow may try (exotic formats carry CVEs). MPO (phone cameras' multi-picture JPEG) opens as
# JPEG; AVIF is built into Pillow >= 11.2; HEIF only with pillow-heif installed.
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "AVIF", "HEIF")
HEAD_BYTES = 64  # enough for every signature below
KINDS_TEXT = "JPEG (and MPO), PNG, WebP, GIF, AVIF or HEIC"
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1"}
_OTHER = (  # well-known kinds we do not read, named in the reason
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"BM", "a BMP image"),
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"8BPS", "a Photoshop file"),
    (b"\x00\x00\x01\x00", "an icon"),
    (b"\x00\x00\x00\x0cjP  ", "a JPEG 2000 image"),
)


def sniff(data: bytes) -> str | None:
    """The image format the first bytes announce (one of FORMATS), or None."""
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[4:8] == b"ftyp":  # ISO base media file: the major brand, then compatible brands
        size = int.from_bytes(data[:4], "big")
        brands = {data[i : i + 4] for i in range(16, min(size, len(data)) - 3, 4)} | {data[8:12]}
        if brands & {b"avif", b"avis"}:
            return "AVIF"
        if data[8:12] in _HEIF_BRANDS:
            return "HEIF"
    return None


def describe(data: bytes) -> str:
    """For bytes `sniff` does not accept: what they look like ("empty", "a TIFF image", "text or HTML", ...)."""
    if not data:
        return "empty"
    for magic, name in _OTHER:
        if data.startswith(magic):
            return name
    head = data[:HEAD_BYTES].lstrip()
    if head[:1] == b"<":
        return "HTML or XML"
    if head[:1] in (b"{", b"["):
        return "JSON"
    try:
        head.decode("utf-8")
        return "text"
    except UnicodeDecodeError:
        return "of an unknown kind"


@cache
def heif_plugin() -> bool:
    """True when the optional pillow-heif plugin is installed (and then registered with Pillow)."""
    try:
        import pillow_heif
    except ImportError:
        return False
    pillow_heif.register_heif_opener()
    return True


def problem(data: bytes) -> str | None:
    """Why productlens will not decode `data` (from its first bytes); None when it is a kind it reads."""
    kind = sniff(data)
    if kind == "HEIF" and not heif_plugin():
        return "a HEIC/HEIF photo: install the optional plugin with `pip install 'productlens[heic]'`"
    if kind is None:
        return f"not a {KINDS_TEXT} image ({describe(data)})"
    return None


def file_problem(path: str | os.PathLike) -> str | None:
    """Why the file at `path` is not an image productlens reads (not a regular file, empty, another kind...);
    None when its content is one. Reads only its first bytes; never blocks on a FIFO or device."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        return f"cannot read it: {exc.strerror or exc}"
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return "not a regular file"
        head = os.read(fd, HEAD_BYTES)
    except OSError as exc:
        return f"cannot read it: {exc.strerror or exc}"
    finally:
        os.close(fd)
    return problem(head)


def list_folder(folder: str | os.PathLike) -> list[tuple[str, str | None]]:
    """Every file under `folder` (recursive, sorted) as (path, None) for images and (path, why) for the rest."""
    files = sorted(str(p) for p in Path(folder).rglob("*") if not p.is_dir())
    return [(f, file_problem(f)) for f in files]
