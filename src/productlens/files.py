"""Crash-safe file writes: a file (or a model folder) appears whole under its name, or not at all.

In: a target path and its bytes or text (or a function that writes a path), or a folder to fill in a block (or
the objects to `save_pretrained` into it). Out: the file or folder, written to a temporary sibling and renamed
onto the target, so a crash never leaves a half-written one behind.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` when the block succeeds, remove it if not."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write `data` (text as UTF-8) to `path` atomically; -> the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


@contextmanager
def atomic_folder(folder: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder beside `folder`; when the block succeeds it replaces `folder` (gone if it
    fails). Refuses a non-empty `folder` unless `overwrite`."""
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{folder} exists and is not empty; pass overwrite=True or choose another folder."
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def save_pretrained_atomic(folder: str | os.PathLike, *parts: Any, overwrite: bool = False) -> Path:
    """`part.save_pretrained` for each of `parts` (model, processor, ...) into `folder`, via a temporary sibling
    folder renamed into place; -> the folder. Refuses a non-empty folder unless `overwrite`."""
    with atomic_folder(folder, overwrite=overwrite) as tmp:
        for part in parts:
            part.save_pretrained(tmp)
    return Path(folder)
