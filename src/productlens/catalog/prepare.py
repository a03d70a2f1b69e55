"""Turn any product catalog into a training-ready dataset. In: a Hugging Face dataset id, a parquet / CSV /
JSONL file or a `save_to_disk` folder. Out (in DIR): verified images, `manifest.parquet` (one row per input
row), leak-free train/validation/test splits, `catalog.csv`, `dataset/` (a DatasetDict) and `stats.json`.

    productlens prepare catalog.parquet --out data/prepared          (resumable: run it again after a crash)
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
import shutil
import sqlite3
import statistics
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from productlens.catalog.download import DownloadConfig, Downloader, ImageJob, run_blocking
from productlens.catalog.schema import MISSING, ColumnMap
from productlens.files import write_atomic
from productlens.prices import read_price

if TYPE_CHECKING:
    import datasets

REASONS = (  # why a row is rejected; a row with several problems gets the first in this order
    "no_image",  # the image value is missing, empty or N.A.
    "empty_title",
    "bad_price",  # missing, unparseable, ambiguous or not positive
    "unsafe_url",  # not a valid http(s) URL, credentials, a non-public address, a local path outside the roots
    "download_failed",  # HTTP error, timeout, too large, unreadable file... (detail says which)
    "invalid_image",  # not a complete image of a kind we read, HTML instead of an image, a decompression bomb
    "duplicate",  # the same image bytes as an earlier ok row (detail names it); colour variants are not
    "unexpected_error",  # a case nobody foresaw (detail has the error): recorded for the row, the run goes on
)
SPLITS = ("train", "validation", "test")
CHUNK_ROWS = 1000  # catalog rows read at a time: memory stays flat however long the catalog is
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
# The run's state: one sqlite row per finished input row (see _State).
_FIELDS = {
    "idx": "INTEGER PRIMARY KEY", "id": "TEXT", "status": "TEXT", "reason": "TEXT", "detail": "TEXT",
    "transient": "INTEGER", "image": "TEXT", "sha256": "TEXT", "path": "TEXT", "width": "INTEGER",
    "height": "INTEGER", "bytes": "INTEGER", "http_status": "INTEGER", "attempts": "INTEGER",
    "seconds": "REAL", "title": "TEXT", "category": "TEXT", "price": "REAL", "row_json": "TEXT",
}  # fmt: skip


class PrepareError(Exception):
    """A problem with the user's input or output folder; the message says what to do."""


@dataclass(frozen=True)
class PrepareResult:
    """What `prepare_catalog` / `merge_prepared` produced. `rejected` holds every reason (zeros too)."""

    out_dir: Path
    input_rows: int
    ok: int
    rejected: Mapping[str, int]
    splits: Mapping[str, int]  # rows per split; empty for a `--shard` run (the merge makes the splits)
    seconds: float
    shard: tuple[int, int] | None = None
    examples: Mapping[str, str] = field(default_factory=dict)  # reason -> its commonest detail

    def summary(self) -> str:
        """A few lines for people: row accounting, splits, where things are."""
        lines = [f"{self.input_rows} rows in, {self.ok} ok, {sum(self.rejected.values())} rejected "
                 f"in {self.seconds:.1f} s -> {self.out_dir}"]  # fmt: skip
        for reason, n in self.rejected.items():
            if n:
                lines.append(f"  {reason:<16}{n:<8}e.g. {self.examples.get(reason, '')}"[:160])
        if self.splits:
            lines.append("  splits: " + ", ".join(f"{name} {n}" for name, n in self.splits.items()))
        elif self.shard:
            lines.append(f"  shard {self.shard[0]}/{self.shard[1]} done; once every shard is: "
                         "productlens prepare --merge DIR1 DIR2 ... --out DIR")  # fmt: skip
        return "\n".join(lines)


# ---- fields -----------------------------------------------------------------------------------------------
def parse_price(value: object) -> float:
    """A catalog price cell -> float, by the one rule in `productlens.prices` (the answer parser uses it too);
    raises ValueError saying why for missing, ambiguous or non-positive prices."""
    price = read_price(value)
    if price == 0:
        raise ValueError(f"not a positive price: {str(value)[:80]!r}")
    return price


def group_key(title: str, price: float) -> str:
    """Colour variants share this key: the case- and space-normalised title and the price in cents."""
    return f"{' '.join(title.casefold().split())}|{price:.2f}"


def _missing(value: object) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return True
    if isinstance(value, Mapping):
        return not (value.get("bytes") or value.get("path"))
    if isinstance(value, bytes | bytearray):
        return len(value) == 0
    return isinstance(value, str) and value.strip().upper() in ("", MISSING)


def _text(value: object) -> str:
    if _missing(value):
        return ""
    if isinstance(value, float) and value.is_integer():  # ids that pandas turned into floats
        return str(int(value))
    return str(value).strip()


def _plain(value: object) -> object:
    """A JSON-friendly catalog cell: embedded image bytes are not copied (their path is)."""
    if isinstance(value, bytes | bytearray):
        return None
    if isinstance(value, Mapping) and "bytes" in value:
        return value.get("path")
    return None if isinstance(value, float) and math.isnan(value) else value


def _label(image: object) -> str:
    if isinstance(image, Mapping) and image.get("bytes"):
        image = image["bytes"]
    if isinstance(image, bytes | bytearray):
        return f"<embedded image, {len(image)} bytes>"
    return str(_plain(image) or "")


def _judge(idx: int, row: Mapping, columns: ColumnMap) -> dict:
    """The checks that need no network: a state record, with a `reason` when the row is rejected already.
    Never raises: an error nobody foresaw becomes the row's `unexpected_error`."""
    try:
        return _checks(idx, row, columns)
    except Exception as exc:
        detail = f"{type(exc).__name__}: {str(exc)[:300]} (please report this as a productlens bug)"
        return {"idx": idx, "id": str(idx), "image": "", "title": "", "category": MISSING,
                "reason": "unexpected_error", "detail": detail}  # fmt: skip


def _checks(idx: int, row: Mapping, columns: ColumnMap) -> dict:
    image = row.get(columns.image)
    record = {"idx": idx, "id": _text(row.get(columns.id)) or str(idx), "image": _label(image),
              "title": _text(row.get(columns.title)),
              "category": _text(row.get(columns.category)) or MISSING}  # fmt: skip
    try:
        record["price"] = parse_price(row.get(columns.price))
    except ValueError as exc:
        record.update(reason="bad_price", detail=str(exc))
    if not record["title"]:
        record.update(reason="empty_title", detail=f"title is {row.get(columns.title)!r}")
    if _missing(image):
        record.update(reason="no_image", detail=f"image is {_plain(image)!r}")
    return record


# ---- sources ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Source:
    name: str
    base_dir: Path | None  # folder for relative image paths; None: local paths are refused
    total: int | None  # rows, when known without reading everything
    columns: tuple[str, ...]
    chunks: Callable[[], Iterator[list[dict]]]


def _open_source(source: str | os.PathLike, chunk_rows: int) -> _Source:
    """The catalog, checked enough to start; problems with the file as a whole raise PrepareError."""
    path = Path(source)
    if path.is_file() and path.stat().st_size == 0:
        raise PrepareError(f"{path} is empty (0 bytes); pass the catalog file itself")
    try:
        src = _open(path, source, chunk_rows)
    except (ValueError, OSError) as exc:
        raise _unreadable(str(source), exc) from None
    chunks = src.chunks

    def checked() -> Iterator[list[dict]]:  # reading errors later in the file stop the run the same way
        try:
            yield from chunks()
        except (ValueError, OSError) as exc:
            raise _unreadable(src.name, exc) from None

    return _Source(src.name, src.base_dir, src.total, src.columns, checked)


def _unreadable(name: str, exc: Exception) -> PrepareError:
    if isinstance(exc, UnicodeDecodeError):
        return PrepareError(f"{name} is not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8 "
                            "(e.g. \"CSV UTF-8\" in Excel) and run again")  # fmt: skip
    return PrepareError(f"cannot read the catalog {name} ({type(exc).__name__}: {str(exc)[:300]}); fix the "
                        "file (a CSV row with more fields than the header needs quotes) and run again")  # fmt: skip


def _open(path: Path, source: str | os.PathLike, chunk_rows: int) -> _Source:
    if path.is_dir():
        if not any((path / f).exists() for f in ("dataset_info.json", "dataset_dict.json", "state.json")):
            raise PrepareError(f"{path} is a folder but not a `datasets` save_to_disk folder")
        import datasets

        return _datasets_source(datasets.load_from_disk(str(path)), str(path.resolve()), path, chunk_rows)
    if not path.is_file():
        if HUB_ID.fullmatch(str(source)):
            return _hub_source(str(source), chunk_rows)
        raise PrepareError(f"no such file or folder: {source}. Pass a .parquet/.csv/.jsonl file, a "
                           "`datasets` save_to_disk folder, or a Hugging Face dataset id such as "
                           "DBQ/Burberry.Product.prices.United.States")  # fmt: skip
    name, base, suffix = str(path.resolve()), path.resolve().parent, "".join(path.suffixes[-2:]).lower()
    if suffix.endswith(".parquet"):
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)

        def chunks() -> Iterator[list[dict]]:
            return (batch.to_pylist() for batch in pf.iter_batches(batch_size=chunk_rows))

        return _Source(name, base, pf.metadata.num_rows, tuple(pf.schema_arrow.names), chunks)
    if suffix.endswith((".csv", ".tsv", ".csv.gz", ".tsv.gz")):
        import pandas as pd

        # every cell as the text it is: prices like "1,290.00" and ids keep their exact spelling
        read = dict(sep="\t" if ".tsv" in suffix else ",", dtype=str, keep_default_na=False)
        header = tuple(pd.read_csv(path, nrows=0, **read).columns)

        def chunks() -> Iterator[list[dict]]:
            # index_col=False: a row with more fields than the header must not turn columns into an index
            reader = pd.read_csv(path, chunksize=chunk_rows, index_col=False, **read)
            while True:
                with warnings.catch_warnings():
                    warnings.simplefilter(
                        "error", pd.errors.ParserWarning
                    )  # pandas would drop the extra fields
                    try:
                        frame = next(reader, None)
                    except pd.errors.ParserWarning:
                        raise ValueError("a row has more fields than the header") from None
                if frame is None:
                    return
                yield frame.to_dict("records")

        return _Source(name, base, None, header, chunks)
    if suffix.endswith((".jsonl", ".ndjson", ".json")):
        first = next(_json_lines(path, 1), [{}])[0]  # its keys name the columns (later rows may add some)
        return _Source(name, base, None, tuple(first), lambda: _json_lines(path, chunk_rows))
    raise PrepareError(f"{path}: unknown catalog format {path.suffix!r}; use .parquet, .csv, .tsv or .jsonl")


def _json_lines(path: Path, chunk_rows: int) -> Iterator[list[dict]]:
    rows: list[dict] = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(dict(json.loads(line)))
                except (json.JSONDecodeError, TypeError, ValueError):
                    raise PrepareError(f"{path}:{number} is not a JSON object; write JSON Lines") from None
            if len(rows) == chunk_rows:
                yield rows
                rows = []
    if rows:
        yield rows


def _datasets_source(ds: object, name: str, base_dir: Path | None, chunk_rows: int) -> _Source:
    """A Dataset / DatasetDict / IterableDataset(Dict): every split in turn, images left undecoded."""
    import datasets

    parts = list(ds.values()) if isinstance(ds, dict) else [ds]  # (Iterable)DatasetDicts are dicts
    for i, part in enumerate(parts):
        for column, feature in (getattr(part, "features", None) or {}).items():
            if isinstance(feature, datasets.Image) and feature.decode:
                parts[i] = part = part.cast_column(column, datasets.Image(decode=False))
    try:
        total = sum(len(part) for part in parts)
    except TypeError:  # streaming datasets have no length
        total = None

    def chunks() -> Iterator[list[dict]]:
        for part in parts:
            for batch in part.iter(batch_size=chunk_rows):
                yield [dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)]

    return _Source(name, base_dir, total, tuple(parts[0].column_names or ()) if parts else (), chunks)


def _hub_source(dataset_id: str, chunk_rows: int) -> _Source:
    import datasets

    try:
        ds = datasets.load_dataset(dataset_id, streaming=True)
    except Exception as exc:  # the hub client raises many types; all mean "cannot get it from here"
        raise PrepareError(
            f"could not load the Hugging Face dataset {dataset_id!r} ({type(exc).__name__}: {exc}). "
            "Loading by id needs network access to huggingface.co; offline, download it elsewhere and pass "
            "its parquet file or `save_to_disk` folder instead"
        ) from None
    return _datasets_source({"train": ds["train"]} if "train" in ds else ds, dataset_id, None, chunk_rows)


# ---- the run's memory -------------------------------------------------------------------------------------
class _State:
    """`DIR/state.sqlite` (WAL): settings, and one row per finished input row. Each download result is
    committed as it arrives, so a killed run loses nothing it recorded; local rejects are committed per chunk
    (they cost nothing to redo). Rows ordered by index stream out of it for the outputs in flat memory."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")  # durable against a killed process; fsync at checkpoints
        self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        self.db.execute(
            f"CREATE TABLE IF NOT EXISTS rows ({', '.join(f'{k} {t}' for k, t in _FIELDS.items())})"
        )
        self.db.commit()

    def get(self, key: str) -> object:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def set(self, **values: object) -> None:
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                                [(k, json.dumps(v)) for k, v in values.items()])  # fmt: skip

    def finished(self, lo: int, hi: int) -> set[int]:
        """Rows in [lo, hi) that need no more work: ok, or rejected for a reason a retry cannot fix."""
        query = "SELECT idx FROM rows WHERE idx >= ? AND idx < ? AND transient = 0"
        return {idx for (idx,) in self.db.execute(query, (lo, hi))}

    def put(self, records: Sequence[dict]) -> None:
        rows = [tuple(r.get(k, 0 if k == "transient" else None) for k in _FIELDS) for r in records]
        with self.db:
            self.db.executemany(f"INSERT OR REPLACE INTO rows VALUES ({', '.join('?' * len(_FIELDS))})", rows)

    def rows(self, where: str = "") -> Iterator[dict]:
        cursor = self.db.execute(f"SELECT * FROM rows {where} ORDER BY idx")
        while batch := cursor.fetchmany(10_000):
            yield from (dict(zip(_FIELDS, row, strict=True)) for row in batch)

    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM rows").fetchone()[0]


class _Locked:
    """One prepare per output folder at a time (the lock dies with its process, even on SIGKILL)."""

    def __init__(self, out: Path) -> None:
        from filelock import FileLock

        self.lock = FileLock(out / ".prepare.lock")

    def __enter__(self) -> None:
        from filelock import Timeout

        try:
            self.lock.acquire(timeout=0)
        except Timeout:
            raise PrepareError(f"another `productlens prepare` is working in {self.lock.lock_file}") from None

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


# ---- prepare ----------------------------------------------------------------------------------------------
def parse_shard(text: str) -> tuple[int, int]:
    """ "2/8" -> (2, 8): this machine takes the rows whose index modulo 8 is 2."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not int(match[1]) < int(match[2]):
        raise PrepareError(f"--shard {text!r}: write it as i/n with 0 <= i < n, e.g. 0/4")
    return int(match[1]), int(match[2])


def prepare_catalog(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    columns: ColumnMap = ColumnMap(),
    splits: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    shard: tuple[int, int] | None = None,
    allow_private: bool = False,
    concurrency: int = 64,
    max_side: int | None = None,
    download: DownloadConfig | None = None,
    chunk_rows: int = CHUNK_ROWS,
    progress: bool = True,
    allow_hosts: Iterable[str] = (),
    image_roots: Iterable[str | os.PathLike] = (),
) -> PrepareResult:
    """Download, verify and split a catalog into `out_dir`; running it again resumes where a run stopped.

    `shard=(i, n)` takes the rows whose index modulo n is i (several machines, one catalog); combine the
    shard folders with `merge_prepared`. `allow_hosts` names private hosts / IPs / CIDRs URLs may reach;
    `image_roots` are folders local image paths may lie in besides the catalog's. `download` sets every
    downloader option at once (then `allow_private`, `allow_hosts`, `image_roots`, `concurrency` and
    `max_side` are not used). Problems with a row become its rejection reason; only problems with the run
    (catalog file, output folder, options) raise PrepareError.
    """
    started = time.monotonic()
    ratios = _check_splits(splits)
    roots = tuple(Path(r).resolve() for r in image_roots)
    if bad := [str(r) for r in roots if not r.is_dir()]:
        raise PrepareError(f"--image-root {', '.join(bad)}: not a folder; name folders that hold the images")
    try:
        config = download or DownloadConfig(
            allow_private=allow_private, concurrency=concurrency, max_side=max_side,
            allow_hosts=frozenset(allow_hosts), image_roots=tuple(map(str, roots)),
        )  # fmt: skip
    except ValueError as exc:
        raise PrepareError(f"--allow-host: {exc}") from None
    out = _out_folder(out_dir)
    with _Locked(out):
        src = _open_source(source, chunk_rows)
        _check_columns(src, columns)
        state = _state(out)
        settings = {"source": src.name, "columns": asdict(columns), "shard": list(shard) if shard else None,
                    "max_side": config.max_side, "max_pixels": config.max_pixels}  # fmt: skip
        if state.get("settings") not in (None, settings):
            raise PrepareError(f"{out} holds a run with other settings ({state.get('settings')}); use a new "
                               "--out folder, or delete this one to start over")  # fmt: skip
        state.set(settings=settings, complete=False)
        shutil.rmtree(out / "images" / ".tmp", ignore_errors=True)  # partial files of a killed run
        scanned = run_blocking(_scan(src, state, out, columns, config, shard, progress))
        if scanned["catalog_rows"] == 0:
            raise PrepareError(f"{src.name} holds no rows; pass a catalog with at least one product")
        state.set(complete=True, **scanned)
        return _finalise(out, state, ratios, seed, shard, started, progress)


def _out_folder(out_dir: str | os.PathLike) -> Path:
    out = Path(out_dir).resolve()
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise PrepareError(f"cannot use {out} as the output folder ({exc.strerror or exc}); pass --out a "
                           "folder you can write to") from None  # fmt: skip
    return out


def _state(out: Path) -> _State:
    try:
        return _State(out / "state.sqlite")
    except sqlite3.Error as exc:
        raise PrepareError(f"cannot open {out / 'state.sqlite'} ({exc}); use a new --out folder") from None


def _check_splits(splits: Sequence[float]) -> tuple[float, float, float]:
    if len(splits) != 3 or min(splits) < 0 or not math.isclose(sum(splits), 1.0, abs_tol=1e-6):
        raise PrepareError(
            f"splits {tuple(splits)}: give three ratios >= 0 that add up to 1, e.g. 0.8,0.1,0.1"
        )
    return (float(splits[0]), float(splits[1]), float(splits[2]))


def _check_columns(src: _Source, columns: ColumnMap) -> None:
    for name, column in asdict(columns).items():
        if src.columns and column not in src.columns:
            raise PrepareError(f"the catalog has no column {column!r} for the {name} (--{name}-col); its "
                               f"columns are: {', '.join(src.columns)}")  # fmt: skip


async def _scan(
    src: _Source,
    state: _State,
    out: Path,
    columns: ColumnMap,
    config: DownloadConfig,
    shard: tuple[int, int] | None,
    progress: bool,
) -> dict:
    """Stream the catalog through the local checks, then the downloader; record every outcome as it comes."""
    from tqdm import tqdm

    seen = {"catalog_rows": 0, "input_rows": 0, "source_columns": list(src.columns)}
    known = set(src.columns)
    waiting: dict[int, dict] = {}  # rows whose image is on its way
    total = src.total if shard is None or src.total is None else len(range(shard[0], src.total, shard[1]))
    bar = tqdm(total=total, unit="row", desc="prepare", disable=not progress, dynamic_ncols=True)
    tally: Counter[str] = Counter()

    def jobs() -> Iterator[ImageJob]:
        for rows in src.chunks():
            start = seen["catalog_rows"]
            seen["catalog_rows"] += len(rows)
            done, rejects = state.finished(start, start + len(rows)), []
            for idx, row in enumerate(rows, start):
                if not known.issuperset(row):  # JSON Lines rows may bring new keys
                    seen["source_columns"] += [key for key in row if key not in known]
                    known.update(row)
                if shard is not None and idx % shard[1] != shard[0]:
                    continue
                seen["input_rows"] += 1
                if idx in done:
                    tally["resumed"] += 1
                    bar.update()
                    continue
                record = _judge(idx, row, columns)
                if "reason" not in record:
                    try:
                        plain = {key: _plain(value) for key, value in row.items()}
                        record["row_json"] = json.dumps(plain, default=str)
                    except Exception as exc:  # a cell JSON cannot hold: this row's problem only
                        record.update(reason="unexpected_error", detail=f"{type(exc).__name__}: {exc}"[:300])
                if "reason" in record:
                    rejects.append({**record, "status": "rejected"})
                    tally["rejected"] += 1
                    bar.update()
                    continue
                waiting[idx] = record
                yield ImageJob(str(idx), row[columns.image])
            state.put(rejects)

    try:
        async with Downloader(out / "images", config, base_dir=src.base_dir) as downloader:
            async for r in downloader.map(jobs()):
                record = waiting.pop(int(r.row_id))
                path = r.path and Path(r.path).relative_to(out).as_posix()
                record.update(status="ok" if r.status == "ok" else "rejected", reason=r.reason or None,
                              detail=r.detail or None, transient=int(r.transient), sha256=r.sha256, path=path,
                              width=r.width, height=r.height, bytes=r.bytes, http_status=r.http_status,
                              attempts=r.attempts, seconds=round(r.seconds, 4))  # fmt: skip
                if r.status != "ok":
                    record["row_json"] = None
                state.put([record])
                tally["ok" if r.status == "ok" else "rejected"] += 1
                bar.update()
                if bar.n % 64 == 0:
                    bar.set_postfix(tally, refresh=False)
    finally:
        bar.close()
    return seen


# ---- splits and outputs -----------------------------------------------------------------------------------
def assign_splits(
    rows: Sequence[tuple[int, str, str]], ratios: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0
) -> dict[int, str]:
    """Rows (idx, group key, sha256) -> split name, so that rows sharing a group key or an image hash
    (joined transitively, union-find) always land in the same split. Groups are ordered by a seeded hash
    and each goes to the split furthest below its target share, so the ratios hold to within one group."""
    parent: dict[int, int] = {}

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[str, int] = {}
    for idx, key, sha in rows:
        parent.setdefault(idx, idx)
        for k in (f"t:{key}", f"h:{sha}"):
            a, b = find(idx), find(first.setdefault(k, idx))
            parent[max(a, b)] = min(a, b)
    members: dict[int, list[int]] = {}
    label: dict[int, str] = {}  # a group's name: its smallest key, whatever the row order
    for idx, key, _ in rows:
        root = find(idx)
        members.setdefault(root, []).append(idx)
        label[root] = min(label.get(root, key), key)
    filled, out = [0.0, 0.0, 0.0], {}
    for root in sorted(members, key=lambda r: hashlib.sha256(f"{seed}\0{label[r]}".encode()).hexdigest()):
        deficit = [ratios[s] * len(rows) - filled[s] if ratios[s] > 0 else -math.inf for s in range(3)]
        s = deficit.index(max(deficit))
        filled[s] += len(members[root])
        out.update(dict.fromkeys(members[root], SPLITS[s]))
    return out


def _finalise(
    out: Path,
    state: _State,
    ratios: tuple[float, float, float],
    seed: int,
    shard: tuple[int, int] | None,
    started: float,
    progress: bool,
) -> PrepareResult:
    """Duplicates, splits and every output file, from the state alone (so it is cheap to run again)."""
    finalise_started, input_rows = time.monotonic(), state.get("input_rows")
    if state.count() != input_rows:
        raise PrepareError(
            f"{out} records {state.count()} rows for a catalog of {input_rows}: did the catalog change since "
            "its first run? Then use a new --out folder"
        )
    missing = [(r["idx"],) for r in state.rows("WHERE status = 'ok'") if not (out / r["path"]).is_file()]
    if missing:
        with state.db:
            state.db.executemany("DELETE FROM rows WHERE idx = ?", missing)
        raise PrepareError(f"{len(missing)} images recorded as done are missing from {out / 'images'}; "
                           "run the same command again to fetch them")  # fmt: skip

    # duplicates: the first row (lowest index) keeps an image; later rows with the same bytes are rejected
    first = dict(state.db.execute("SELECT sha256, MIN(idx) FROM rows WHERE status = 'ok' GROUP BY sha256"))
    first_id = dict(
        state.db.execute(f"SELECT idx, id FROM rows WHERE idx IN ({','.join(map(str, first.values()))})")
    )
    kept = [(r["idx"], group_key(r["title"], r["price"]), r["sha256"])
            for r in state.rows("WHERE status = 'ok'") if first[r["sha256"]] == r["idx"]]  # fmt: skip
    split_of = assign_splits(kept, ratios, seed) if shard is None else {}

    rejected, details, images = dict.fromkeys(REASONS, 0), Counter(), Counter()
    per_split = {s: {"id": [], "image": [], "title": [], "category": [], "price": []} for s in SPLITS}
    manifest = _ManifestWriter(out / "manifest.parquet")
    catalog = _CatalogWriter(out / "catalog.csv", state.get("source_columns")) if shard is None else None
    for r in state.rows():
        if r["status"] == "ok" and first[r["sha256"]] != r["idx"]:
            dup = first[r["sha256"]]
            r.update(
                status="rejected", reason="duplicate", detail=f"same image as row {dup} (id {first_id[dup]})"
            )
        images["http_attempts"] += r["attempts"] or 0
        if r["status"] == "ok":
            images.update(stored=1, bytes=r["bytes"])
            r.update(local_path=str(out / r["path"]), split=split_of.get(r["idx"]))
            if catalog is not None:
                values = (r["id"], r["local_path"], r["title"], r["category"], r["price"])
                for column, value in zip(per_split[r["split"]].values(), values, strict=True):
                    column.append(value)
                catalog.write(r)
        else:
            rejected[r["reason"]] += 1
            details[f"{r['reason']}: {r['detail']}"] += 1
        manifest.write(r)
    manifest.close()
    if catalog is not None:
        catalog.close()
        _write_dataset(out, per_split, progress)

    ok = input_rows - sum(rejected.values())
    sizes = {s: len(per_split[s]["id"]) for s in SPLITS} if shard is None else {}
    examples = {}
    for detail, _ in details.most_common():
        examples.setdefault(*detail.split(": ", 1))
    result = PrepareResult(out, input_rows, ok, rejected, sizes, time.monotonic() - started, shard, examples)
    stats = {
        "source": state.get("settings")["source"], "shard": list(shard) if shard else None,
        "catalog_rows": state.get("catalog_rows"), "input_rows": input_rows, "ok": ok, "rejected": rejected,
        "accounting": f"{ok} ok + {sum(rejected.values())} rejected = {input_rows} input rows",
        "top_rejections": dict(details.most_common(20)),
        "splits": {s: _split_stats(per_split[s]) for s in SPLITS} if shard is None else None,
        "split_ratios": ratios, "seed": seed, "images": dict(images),
        "timing_s": {"total": round(result.seconds, 3),
                     "finalise": round(time.monotonic() - finalise_started, 3)},
    }  # fmt: skip
    write_atomic(out / "stats.json", json.dumps(stats, indent=2, default=str))
    return result


def _split_stats(columns: dict[str, list]) -> dict:
    prices = sorted(columns["price"])
    if not prices:
        return {"rows": 0}
    q = statistics.quantiles(prices, n=4, method="inclusive") if len(prices) > 1 else prices * 3
    categories = Counter(columns["category"])
    top = dict(categories.most_common(50))
    return {"rows": len(prices),
            "price": {"min": prices[0], "p25": q[0], "median": q[1], "p75": q[2], "max": prices[-1],
                      "mean": statistics.fmean(prices)},
            "categories": top, "other_categories": len(prices) - sum(top.values())}  # fmt: skip


_MANIFEST = {"row": "int64", "id": "string", "status": "string", "reason": "string", "detail": "string",
             "image": "string", "sha256": "string", "local_path": "string", "split": "string",
             "http_status": "int32", "attempts": "int32", "width": "int32", "height": "int32",
             "bytes": "int64", "seconds": "float64"}  # fmt: skip


class _ManifestWriter:
    """manifest.parquet: one row per input row, in batches, into a temp file renamed at the end."""

    def __init__(self, path: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.pa, self.path, self.tmp = pa, path, path.with_name(f".{path.name}.tmp")
        self.schema = pa.schema([(name, getattr(pa, kind)()) for name, kind in _MANIFEST.items()])
        self.writer = pq.ParquetWriter(self.tmp, self.schema)
        self.batch: list[dict] = []

    def write(self, r: dict) -> None:
        self.batch.append({"row": r["idx"], **{k: r.get(k) for k in _MANIFEST if k != "row"}})
        if len(self.batch) >= 10_000:
            self.flush()

    def flush(self) -> None:
        self.writer.write_table(self.pa.Table.from_pylist(self.batch, schema=self.schema))
        self.batch = []

    def close(self) -> None:
        self.flush()
        self.writer.close()
        os.replace(self.tmp, self.path)


class _CatalogWriter:
    """catalog.csv: the ok rows' original columns, then `local_image_path` (absolute) and `split`."""

    def __init__(self, path: Path, columns: list[str]) -> None:
        self.path, self.tmp = path, path.with_name(f".{path.name}.tmp")
        self.file = self.tmp.open("w", newline="", encoding="utf-8")
        self.writer = csv.DictWriter(
            self.file, [*columns, "local_image_path", "split"], extrasaction="ignore"
        )
        self.writer.writeheader()

    def write(self, r: dict) -> None:
        self.writer.writerow(
            {**json.loads(r["row_json"]), "local_image_path": r["local_path"], "split": r["split"]}
        )

    def close(self) -> None:
        self.file.close()
        os.replace(self.tmp, self.path)


def _write_dataset(out: Path, per_split: dict[str, dict[str, list]], progress: bool) -> None:
    """dataset/: a DatasetDict (id, image, title, category, price per split), swapped in whole.

    `save_to_disk` embeds the image bytes, so the folder is self-contained (and as large as images/)."""
    import datasets

    v = datasets.Value
    features = datasets.Features({"id": v("string"), "image": datasets.Image(), "title": v("string"),
                                  "category": v("string"), "price": v("float64")})  # fmt: skip
    dd = datasets.DatasetDict(
        {s: datasets.Dataset.from_dict(per_split[s], features=features) for s in SPLITS}
    )
    tmp, final, old = out / ".dataset.tmp", out / "dataset", out / ".dataset.old"
    shutil.rmtree(tmp, ignore_errors=True)
    quiet = not progress and not datasets.are_progress_bars_disabled()
    if quiet:
        datasets.disable_progress_bars()
    try:  # an empty split needs one (empty) shard: with none, load_from_disk fails
        dd.save_to_disk(str(tmp), num_shards={s: 1 if len(dd[s]) == 0 else None for s in SPLITS})
    finally:
        if quiet:
            datasets.enable_progress_bars()
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def load_prepared(out_dir: str | os.PathLike) -> datasets.DatasetDict:
    """The `datasets.DatasetDict` (train, validation, test) that `productlens prepare` wrote to `out_dir`."""
    import datasets

    path = Path(out_dir) / "dataset"
    if not (path / "dataset_dict.json").is_file():
        raise PrepareError(
            f"{path} holds no prepared dataset; run `productlens prepare CATALOG --out {out_dir}`"
        )
    return datasets.load_from_disk(str(path))


# ---- merging shards ---------------------------------------------------------------------------------------
def merge_prepared(
    shard_dirs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    splits: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    progress: bool = True,
) -> PrepareResult:
    """Combine the folders of a `--shard i/n` run (all n of them) into one prepared dataset in `out_dir`:
    their states are merged, images hard-linked (copied across file systems), then duplicates and splits
    are decided over the whole catalog, exactly as one run would."""
    started, ratios = time.monotonic(), _check_splits(splits)
    out, dirs = Path(out_dir).resolve(), [Path(d).resolve() for d in shard_dirs]
    if out in dirs:
        raise PrepareError("--out must be a new folder, not one of the shard folders")
    metas = []
    for d in dirs:
        if not (d / "state.sqlite").is_file():
            raise PrepareError(f"{d} is not a prepare output folder (it has no state.sqlite)")
        shard_state = _State(d / "state.sqlite")
        meta = {k: shard_state.get(k) for k in ("settings", "complete", "catalog_rows", "source_columns")}
        shard_state.db.close()
        if not meta["complete"] or not meta["settings"]["shard"]:
            raise PrepareError(f"{d} is not a finished --shard run; finish it first (run its command again)")
        metas.append(meta)
    shards = sorted(tuple(m["settings"]["shard"]) for m in metas)
    if shards != [(i, shards[0][1]) for i in range(shards[0][1])]:
        raise PrepareError(f"shards {shards} do not cover 0/n .. n-1/n exactly once each")
    common = {**metas[0]["settings"], "shard": None}
    if any({**m["settings"], "shard": None} != common for m in metas):
        raise PrepareError(
            f"the shards were prepared with different settings: {[m['settings'] for m in metas]}"
        )
    out.mkdir(parents=True, exist_ok=True)
    with _Locked(out):
        (out / "state.sqlite").unlink(missing_ok=True)
        state = _State(out / "state.sqlite")
        for d in dirs:
            for r in _State(d / "state.sqlite").rows("WHERE status = 'ok'"):
                _link(d / r["path"], out / r["path"])
            state.db.execute("ATTACH DATABASE ? AS shard", (str(d / "state.sqlite"),))
            with state.db:
                state.db.execute("INSERT INTO rows SELECT * FROM shard.rows")
            state.db.execute("DETACH DATABASE shard")
        if state.count() != metas[0]["catalog_rows"]:
            raise PrepareError(
                f"the shards hold {state.count()} rows but the catalog has {metas[0]['catalog_rows']}"
            )
        catalog_rows, source_columns = metas[0]["catalog_rows"], metas[0]["source_columns"]
        state.set(settings=common, complete=True, input_rows=state.count(), catalog_rows=catalog_rows,
                  source_columns=source_columns)  # fmt: skip
        return _finalise(out, state, ratios, seed, None, started, progress)


def _link(src: Path, dst: Path) -> None:
    if dst.exists():
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
