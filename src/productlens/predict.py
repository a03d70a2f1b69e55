"""Product photos in, {title, category, price} out: files, folders and http(s) URLs through a `Predictor`, one
JSONL/CSV row per input.

In: photo paths, folders and URLs. Out: a JSONL or CSV file (or JSONL on stdout). The model side (`Predictor`,
`Prediction`, loading) lives in predictor.py and is re-exported here. Run: `productlens predict photo.jpg --model RUN`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from PIL import Image

from productlens.endpoint import Refused
from productlens.predictor import (  # noqa: F401  (re-exported: the old import path keeps working)
    ADAPTER_SUBFOLDER,
    HUB_ID,
    MODEL_SUBFOLDER,
    PROCESSOR_FILES,
    RUN_CONFIG,
    ModelSource,
    Prediction,
    Predictor,
    resolve_source,
)
from productlens.task.constrain import Constraints  # noqa: F401  (re-exported)

OUTPUT_COLUMNS = ("input", "title", "category", "price", "raw_text", "failures", "seconds", "error")


# ---- photos, folders and URLs in, a table out -------------------------------------------------------------


@dataclass(frozen=True)
class PredictSummary:
    """What `predict_inputs` did: rows written, how many succeeded and failed, and where they went."""

    rows: int
    succeeded: int
    failed: int
    out: Path | None  # None: JSONL went to stdout
    skipped: int = 0  # files in folders that are not images (each still has its row, with the reason)


def expand_inputs(inputs: Iterable[str | os.PathLike]) -> list[tuple[str, str | None]]:
    """Photos, folders (every file, recursively, sorted) and URLs -> (entry, None), or (file, why it is skipped).

    Folder files count as photos by content, never by name (`catalog.imagetypes`: JPEG, MPO, PNG, WebP, GIF,
    AVIF, HEIC with pillow-heif, extensionless CDN files too). Named entries that are neither a photo nor a
    folder stay in, so that they are reported as errors in order.
    """
    from productlens.catalog.imagetypes import list_folder

    out: list[tuple[str, str | None]] = []
    for item in inputs:
        text = str(item)
        if "://" not in text and Path(text).is_dir():
            out += list_folder(text)
        else:
            out.append((text, None))
    return out


def read_inputs(
    entries: Sequence[str], allow_private: bool = False, config: Any = None
) -> list[Image.Image | str]:
    """Entries -> a verified RGB image each, or the error message (str) saying why not.

    Files are read through the project's image verifier, URLs through its safe downloader (http(s) only;
    loopback/private addresses only with `allow_private`), both with its size limits.
    """
    from productlens.catalog import download

    config = replace(config or download.DownloadConfig(), allow_private=allow_private)
    out: list[Image.Image | str] = []
    urls = {i: e for i, e in enumerate(entries) if "://" in e}
    fetched: dict[int, Image.Image | str] = {}
    if urls:
        with tempfile.TemporaryDirectory(prefix="productlens-predict-") as folder:
            jobs = [download.ImageJob(str(i), url) for i, url in urls.items()]
            for result in download.download_images(jobs, folder, config):
                i = int(result.row_id)
                fetched[i] = (
                    _open(result.path) if result.status == "ok" else f"{result.reason}: {result.detail}"
                )
    for i, entry in enumerate(entries):
        out.append(fetched[i] if i in fetched else _read_file(Path(entry), config))
    return out


def _open(path: str) -> Image.Image:
    with Image.open(path) as im:  # a file the downloader verified and normalised (JPEG/PNG, RGB)
        return im.convert("RGB")


def _read_file(path: Path, config: Any) -> Image.Image | str:
    from productlens.catalog import download

    if not path.exists():
        return "no such file or folder"
    if not path.is_file():
        return "not a regular file"
    try:
        size = path.stat().st_size
        if size > config.max_bytes:
            return f"file is {size:,} bytes, over the limit of {config.max_bytes:,}"
        data, _, _, _ = download.normalise_image(path.read_bytes(), max_pixels=config.max_pixels)
    except download.InvalidImage as exc:
        return f"invalid_image: {exc}"
    except OSError as exc:
        return f"cannot read the file: {exc.strerror or exc}"
    return Image.open(io.BytesIO(data)).convert("RGB")


def predict_inputs(
    predictor: Predictor,
    inputs: Iterable[str | os.PathLike],
    out: str | os.PathLike | None = None,
    *,
    batch_size: int | None = None,
    allow_private: bool = False,
    chunk: int = 64,
    progress: bool = True,
    allow_hosts: Iterable[str] = (),
) -> PredictSummary:
    """Photos / folders / URLs -> predictions in `out` (.jsonl or .csv; None: JSONL on stdout).

    Every input gets one row: input, title, category, price, raw_text, failures, seconds, error. A bad input
    (missing, not an image, truncated, too large, unsafe or failing URL) gets an `error` and a warning on
    stderr; the rest go on. Inputs are read and predicted `chunk` at a time, so memory stays flat.
    """
    from tqdm import tqdm

    listed = expand_inputs(inputs)
    if not listed:
        raise ValueError("no inputs: pass photo files, folders with photos, or http(s) URLs")
    entries = [entry for entry, why in listed if why is None]
    skipped = [(entry, why) for entry, why in listed if why is not None]
    path = Path(out) if out is not None else None
    kind = _output_kind(path)
    succeeded = failed = 0
    from productlens.catalog.download import DownloadConfig

    config = DownloadConfig(allow_hosts=frozenset(allow_hosts))
    with (
        _RowWriter(path, kind) as writer,
        tqdm(total=len(entries), unit="photo", disable=not progress) as bar,
    ):
        for entry, why in skipped:  # every file left out is listed, with its reason
            bar.write(f"skipped: {entry}: {why}", file=sys.stderr)
            writer.write({"input": entry, **_empty_prediction(), "error": f"skipped: {why}"})
        for start in range(0, len(entries), chunk):
            part = entries[start : start + chunk]
            loaded = read_inputs(part, allow_private=allow_private, config=config)
            good = [i for i, item in enumerate(loaded) if isinstance(item, Image.Image)]
            predictions = dict(
                zip(good, predictor.predict([loaded[i] for i in good], batch_size), strict=True)
            )
            for i, entry in enumerate(part):
                result = predictions.get(i)
                if result is not None and not isinstance(result, Refused):
                    writer.write({"input": entry, **result.as_dict(), "error": None})
                    succeeded += 1
                else:
                    message = result.error if result is not None else str(loaded[i])
                    bar.write(f"warning: {entry}: {message}", file=sys.stderr)
                    writer.write({"input": entry, **_empty_prediction(), "error": message})
                    failed += 1
            bar.update(len(part))
    return PredictSummary(len(listed), succeeded, failed, path, skipped=len(skipped))


def _empty_prediction() -> dict[str, Any]:
    return {"title": None, "category": None, "price": None, "raw_text": "", "failures": [], "seconds": 0.0}


def _output_kind(path: Path | None) -> str:
    if path is None:
        return "jsonl"
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".csv"):
        raise ValueError(f"--out {path}: use a .jsonl or .csv file name (the format follows the extension)")
    return suffix[1:]


class _RowWriter:
    """JSONL or CSV rows to a file (temp file beside it, renamed into place at the end) or JSONL to stdout."""

    def __init__(self, path: Path | None, kind: str) -> None:
        self.path, self.kind = path, kind

    def __enter__(self) -> _RowWriter:
        if self.path is None:
            self.file, self.tmp = sys.stdout, None
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
            self.file, self.tmp = os.fdopen(fd, "w", encoding="utf-8", newline=""), Path(tmp)
        self.csv = csv.DictWriter(self.file, OUTPUT_COLUMNS) if self.kind == "csv" else None
        if self.csv is not None:
            self.csv.writeheader()
        return self

    def write(self, row: dict[str, Any]) -> None:
        if self.csv is not None:
            self.csv.writerow({**row, "failures": ";".join(row["failures"])})
        else:
            self.file.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.file.flush()

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if self.tmp is None:
            return
        self.file.close()
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)
