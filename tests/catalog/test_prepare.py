"""`productlens prepare` end to end over real HTTP on 127.0.0.1: exact row accounting with every server
fault, resume after SIGKILL, leak-free grouped splits, every source format, shards and merge."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image
from price_table import PRICE_TABLE

from productlens.catalog.download import DownloadConfig
from productlens.catalog.prepare import (
    REASONS,
    SPLITS,
    PrepareError,
    assign_splits,
    group_key,
    load_prepared,
    merge_prepared,
    parse_price,
    parse_shard,
    prepare_catalog,
)
from productlens.catalog.schema import ColumnMap
from productlens.catalog.server import ImageServer

SRC = Path(__file__).resolve().parents[2] / "src"


# ---- prices: the shared table (tests/price_table.py), plus what only a catalog cell can be -------------------
@pytest.mark.parametrize(("text", "value"), PRICE_TABLE)
def test_parse_price_reads_the_shared_table_as_the_answer_parser_does(text, value):
    if value is None:
        with pytest.raises(ValueError, match=r"missing|not a|ambiguous"):
            parse_price(text)
    else:
        assert parse_price(text) == value


@pytest.mark.parametrize(
    ("value", "price"), [(2490, 2490.0), (2490.5, 2490.5), (np.float64(12.5), 12.5), (np.int64(7), 7.0)]
)
def test_parse_price_takes_numbers_as_they_are(value, price):
    assert parse_price(value) == price


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (None, "missing"),
        (float("nan"), "missing"),
        ("N.A.", "missing"),
        ("abc", "not a price"),
        ("12 pcs", "not a price"),
        ("1290 1390", "ambiguous spacing"),
        ("1.290.00", "ambiguous"),
        ("0", "not a positive price"),  # the answer parser reads 0; a catalog product needs a price
        (0.0, "not a positive price"),
        ("-5", "not a positive price"),
        (-5.0, "not a positive price"),
        (float("inf"), "not a finite price"),
        (10**400, "not a finite price"),  # a 400-digit JSON integer
        (True, "missing"),
    ],
)
def test_parse_price_rejects(value, why):
    with pytest.raises(ValueError, match=why):
        parse_price(value)


# ---- splits -----------------------------------------------------------------------------------------------
def test_assign_splits_keeps_groups_and_shared_images_together():
    rng = np.random.default_rng(0)
    rows = []
    for g in range(300):
        for v in range(int(rng.integers(1, 4))):  # colour variants share title and price
            rows.append((len(rows), group_key(f"Bag {g}", 100 + g), f"sha-{g}-{v}"))
    rows.append((len(rows), group_key("Odd One", 5), "sha-7-0"))  # same photo as group 7: joins it
    splits = assign_splits(rows, (0.8, 0.1, 0.1), seed=0)
    by_key, by_sha = {}, {}
    for idx, key, sha in rows:
        by_key.setdefault(key, set()).add(splits[idx])
        by_sha.setdefault(sha, set()).add(splits[idx])
    assert all(len(s) == 1 for s in [*by_key.values(), *by_sha.values()])
    assert splits[len(rows) - 1] == splits[next(i for i, k, _ in rows if k == group_key("bag  7", 107))]
    counts = {s: list(splits.values()).count(s) for s in SPLITS}
    assert abs(counts["train"] - 0.8 * len(rows)) <= 3 and abs(counts["test"] - 0.1 * len(rows)) <= 3
    assert assign_splits(rows, (0.8, 0.1, 0.1), seed=0) == splits  # deterministic
    assert assign_splits(rows, (0.8, 0.1, 0.1), seed=1) != splits
    assert set(assign_splits(rows, (0.9, 0.1, 0.0), seed=0).values()) == {"train", "validation"}


# ---- a catalog with every kind of row ---------------------------------------------------------------------
def jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray((rng.random((24, 32, 3)) * 255).astype("uint8")).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    (root / "images").mkdir()
    for i in range(200):
        (root / "images" / f"{i}.jpg").write_bytes(jpeg(i))
    return root


def download_config(srv: ImageServer, **overrides) -> DownloadConfig:
    """Loopback is refused except for exactly this server, so unsafe URLs in catalogs stay refused."""
    base = dict(
        allow_hosts=frozenset({srv.base_url.removeprefix("http://")}),
        deadline_s=5,
        backoff_s=0.01,
        retries=2,
        concurrency=8,
    )
    return DownloadConfig(**{**base, **overrides})


def faulty_rows(srv: ImageServer) -> list[tuple[dict, str]]:
    """Catalog rows in the reference columns, each with the reason it must end with ("" for ok)."""
    rows: list[tuple[dict, str]] = []

    def add(image, expect, title=None, price="$1,290.00"):
        n = len(rows)
        title = f"Check Wool Scarf {n // 2}" if title is None else title  # pairs of colour variants
        rows.append(
            (
                {
                    "product_code": 80000000 + 10 * n,
                    "title": title,
                    "category3_code": "SCARVES",
                    "full_price": price,
                    "imageurl": image,
                    "website_name": "Burberry",
                },
                expect,
            )
        )

    for i in range(12):
        add(srv.url(f"/images/{i}.jpg"), "")
    add("N.A.", "no_image")
    add("", "no_image")
    add(srv.url("/images/20.jpg"), "empty_title", title="  ")
    add(srv.url("/images/21.jpg"), "bad_price", price="abc")
    add(srv.url("/images/22.jpg"), "bad_price", price="-5")
    add(srv.url("/images/23.jpg", "404"), "download_failed")
    add(srv.url("/images/24.jpg", "500"), "download_failed")
    add(srv.url("/images/25.jpg", "500-once"), "")
    add(srv.url("/images/26.jpg", "html"), "invalid_image")
    add(srv.url("/images/27.jpg", "truncated"), "invalid_image")
    add(srv.url("/images/28.jpg", "bomb"), "invalid_image")
    add(srv.url("/images/29.jpg", "redirect-loop"), "download_failed")
    add("http://169.254.169.254/latest/meta-data/", "unsafe_url")
    add("http://10.0.0.1/a.jpg", "unsafe_url")
    add("file:///etc/passwd", "unsafe_url")
    add(srv.url("/images/3.jpg"), "duplicate")  # the same photo as row 3
    add(srv.url("/images/30.jpg"), "", title="Check Wool Scarf 1")  # a variant of rows 2-3 (other photo)
    add(srv.url("/images/31.jpg"), "")
    return rows


def manifest(out: Path) -> pd.DataFrame:
    return pq.read_table(out / "manifest.parquet").to_pandas()


def test_every_row_is_accounted_for(photos, tmp_path):
    with ImageServer(photos, latency=0.005) as srv:
        rows = faulty_rows(srv)
        pd.DataFrame([r for r, _ in rows]).to_parquet(tmp_path / "catalog.parquet")
        result = prepare_catalog(
            tmp_path / "catalog.parquet", tmp_path / "out", download=download_config(srv), progress=False
        )
    out = tmp_path / "out"
    m = manifest(out)
    expected = [e for _, e in rows]
    assert m["row"].tolist() == list(range(len(rows)))  # one manifest row per input row, in order
    assert m["reason"].fillna("").tolist() == expected
    assert m["status"].tolist() == ["ok" if not e else "rejected" for e in expected]
    assert m.loc[m.reason == "duplicate", "detail"].tolist() == ["same image as row 3 (id 80000030)"]
    assert m.loc[m.reason == "download_failed", "detail"].str[:8].tolist() == [
        "HTTP 404",
        "HTTP 500",
        "more tha",
    ]
    assert m.loc[m.reason == "bad_price", "detail"].tolist() == [
        "not a price: 'abc'",
        "not a positive price: '-5'",
    ]

    stats = json.loads((out / "stats.json").read_text())
    counts = {reason: expected.count(reason) for reason in REASONS}
    assert stats["rejected"] == counts and result.rejected == counts
    assert (
        stats["ok"] + sum(stats["rejected"].values()) == stats["input_rows"] == len(rows) == result.input_rows
    )
    assert sum(s["rows"] for s in stats["splits"].values()) == result.ok == expected.count("")

    ok = m[m.status == "ok"]
    assert ok["split"].notna().all() and m.loc[m.status != "ok", "split"].isna().all()
    for path, sha in zip(ok["local_path"], ok["sha256"], strict=True):
        assert Path(path).is_absolute() and hashlib.sha256(Path(path).read_bytes()).hexdigest() == sha

    csv = pd.read_csv(out / "catalog.csv", dtype=str, keep_default_na=False)
    assert list(csv.columns) == [*rows[0][0], "local_image_path", "split"]
    assert csv["product_code"].tolist() == ok["id"].tolist() and set(csv["full_price"]) == {"$1,290.00"}
    assert csv["local_image_path"].tolist() == ok["local_path"].tolist()
    assert csv["split"].tolist() == ok["split"].tolist()

    # no leak: colour variants (same title and price) and identical photos never cross splits
    for key in ("title", "sha256"):
        column = csv["title"] if key == "title" else ok["sha256"].to_numpy()
        splits_per_key = pd.DataFrame({"k": column, "s": csv["split"]}).groupby("k")["s"].nunique()
        assert (splits_per_key == 1).all()

    dataset = load_prepared(out)
    assert set(dataset) == set(SPLITS)
    assert (
        {s: len(dataset[s]) for s in SPLITS}
        == result.splits
        == csv["split"].value_counts().to_dict() | {s: 0 for s in SPLITS if s not in set(csv["split"])}
    )
    train = dataset["train"]
    assert (
        train.features["image"].__class__.__name__ == "Image" and train.features["price"].dtype == "float64"
    )
    first = train[0]
    assert first["image"].mode == "RGB" and first["price"] == 1290.0 and first["category"] == "SCARVES"
    assert first["id"] in set(ok["id"]) and first["title"].startswith("Check Wool Scarf")


def test_rerun_skips_finished_rows_and_retries_only_transient_failures(photos, tmp_path):
    with ImageServer(photos) as srv:
        rows = [
            {
                "product_code": i,
                "title": f"T{i}",
                "category3_code": "C",
                "full_price": 10 + i,
                "imageurl": srv.url(f"/images/{40 + i}.jpg"),
            }
            for i in range(6)
        ]
        rows[1]["imageurl"] = srv.url("/images/41.jpg", "404")
        rows[2]["imageurl"] = srv.url("/images/42.jpg", "500")
        pd.DataFrame(rows).to_csv(tmp_path / "catalog.csv", index=False)
        cfg = download_config(srv)
        first = prepare_catalog(tmp_path / "catalog.csv", tmp_path / "out", download=cfg, progress=False)
        before = srv.requests.copy()
        second = prepare_catalog(tmp_path / "catalog.csv", tmp_path / "out", download=cfg, progress=False)
        after = srv.requests
    assert (
        before["/fault/500/images/42.jpg"] == 3 and after["/fault/500/images/42.jpg"] == 6
    )  # transient: again
    assert after["/fault/404/images/41.jpg"] == 1  # permanent: never again
    assert all(after[f"/images/{40 + i}.jpg"] == 1 for i in (0, 3, 4, 5))  # finished: never fetched twice
    assert (
        (first.ok, first.rejected["download_failed"])
        == (second.ok, second.rejected["download_failed"])
        == (4, 2)
    )


def test_synthetic_catalog_over_http_splits_colour_variants_together(tmp_path):
    from productlens.catalog.synth import write_catalog

    with ImageServer(tmp_path / "synth", latency=0.002) as srv:
        write_catalog(tmp_path / "synth", rows=150, seed=3, image_base_url=srv.base_url, workers=1)
        catalog = pd.read_parquet(tmp_path / "synth" / "catalog.parquet")
        result = prepare_catalog(tmp_path / "synth" / "catalog.parquet", tmp_path / "out",
                                 download=download_config(srv), progress=False)  # fmt: skip
    assert result.input_rows == len(catalog) == 150
    assert result.rejected["no_image"] == (catalog["imageurl"] == "N.A.").sum()
    assert result.ok + sum(result.rejected.values()) == 150
    csv = pd.read_csv(tmp_path / "out" / "catalog.csv")
    variants = csv.groupby(["title", "full_price"])
    assert variants.ngroups < len(csv)  # the catalog has colour variants...
    assert (variants["split"].nunique() == 1).all()  # ...and none crosses a split


# ---- sources ----------------------------------------------------------------------------------------------
def small_catalog(srv: ImageServer, image_values=None) -> pd.DataFrame:
    images = image_values or [srv.url(f"/images/{60 + i}.jpg") for i in range(5)]
    return pd.DataFrame(
        {
            "sku": [f"A{i}" for i in range(5)],
            "name": ["Lola Bag", "Lola Bag", "Knight Bag", "", "Frances Bag"],
            "kind": ["BAGS", "BAGS", "TOTES", "BAGS", None],
            "cost": ["$2,490.00", "$2,490.00", "1.290,00", "100", "USD 890"],
            "photo": images,
        }
    )


CUSTOM = ColumnMap(image="photo", title="name", category="kind", price="cost", id="sku")


def write_source(kind: str, frame: pd.DataFrame, folder: Path) -> Path:
    if kind == "csv":
        frame.to_csv(folder / "c.csv", index=False)
        return folder / "c.csv"
    if kind == "jsonl":
        frame.to_json(folder / "c.jsonl", orient="records", lines=True)
        return folder / "c.jsonl"
    if kind == "parquet":
        frame.to_parquet(folder / "c.parquet")
        return folder / "c.parquet"
    import datasets

    datasets.Dataset.from_pandas(frame).save_to_disk(str(folder / "ds"))
    return folder / "ds"


@pytest.mark.parametrize("kind", ["csv", "jsonl", "parquet", "datasets"])
def test_sources_with_a_custom_column_mapping(photos, tmp_path, kind):
    with ImageServer(photos) as srv:
        source = write_source(kind, small_catalog(srv), tmp_path)
        result = prepare_catalog(
            source, tmp_path / "out", columns=CUSTOM, download=download_config(srv), progress=False
        )
    m = manifest(tmp_path / "out")
    assert m["id"].tolist() == ["A0", "A1", "A2", "A3", "A4"]
    assert m["status"].tolist() == ["ok", "ok", "ok", "rejected", "ok"] and m["reason"][3] == "empty_title"
    assert result.ok == 4
    rows = {r["id"]: r for split in load_prepared(tmp_path / "out").values() for r in split}
    assert {k: (r["price"], r["category"]) for k, r in rows.items()} == {
        "A0": (2490.0, "BAGS"),
        "A1": (2490.0, "BAGS"),
        "A2": (1290.0, "TOTES"),
        "A4": (890.0, "N.A."),
    }
    assert rows["A0"]["image"].size == (32, 24)


def test_embedded_and_relative_local_images(tmp_path):
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "x.jpg").write_bytes(jpeg(90))
    frame = pd.DataFrame(
        {
            "product_code": [1, 2, 3, 4, 5],
            "title": ["A", "B", "C", "D", "E"],
            "category3_code": ["X"] * 5,
            "full_price": [1.0, 2.0, 3.0, 4.0, 5.0],
            "imageurl": [
                {"bytes": jpeg(91), "path": None},
                {"bytes": None, "path": "pics/x.jpg"},
                {"bytes": b"not an image", "path": None},
                {"bytes": None, "path": None},
                {"bytes": jpeg(91), "path": "same.jpg"},
            ],
        }
    )
    frame.to_parquet(tmp_path / "embedded.parquet")
    prepare_catalog(tmp_path / "embedded.parquet", tmp_path / "out", progress=False)
    m = manifest(tmp_path / "out")
    assert m["reason"].fillna("").tolist() == ["", "", "invalid_image", "no_image", "duplicate"]
    assert m["image"][0] == f"<embedded image, {len(jpeg(91))} bytes>" and m["image"][1] == "pics/x.jpg"
    csv = pd.read_csv(tmp_path / "out" / "catalog.csv")
    assert csv["imageurl"].isna().tolist() == [True, False]  # bytes are not copied into the CSV


def test_datasets_folder_with_image_feature(tmp_path):
    import datasets

    (tmp_path / "a.png").write_bytes(b"")
    Image.new("RGBA", (10, 10), (0, 0, 0, 0)).save(tmp_path / "a.png")
    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "img": datasets.Image(),
            "t": datasets.Value("string"),
            "p": datasets.Value("float64"),
            "c": datasets.Value("string"),
        }
    )
    ds = datasets.Dataset.from_dict(
        {
            "id": ["a", "b"],
            "img": [str(tmp_path / "a.png"), None],
            "t": ["A", "B"],
            "p": [5.0, 6.0],
            "c": ["X", "Y"],
        },
        features=features,
    )
    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(tmp_path / "ds"))
    result = prepare_catalog(
        tmp_path / "ds", tmp_path / "out", columns=ColumnMap("img", "t", "c", "p", "id"), progress=False
    )
    m = manifest(tmp_path / "out")
    assert m["reason"].fillna("").tolist() == ["", "no_image", "duplicate", "no_image"]  # both splits read
    assert result.ok == 1


# ---- resume after SIGKILL ---------------------------------------------------------------------------------
KILLABLE = """
import sys
from productlens.catalog.download import DownloadConfig
from productlens.catalog.prepare import prepare_catalog
cfg = DownloadConfig(allow_hosts=frozenset({sys.argv[3]}), concurrency=4, backoff_s=0.01)
prepare_catalog(sys.argv[1], sys.argv[2], download=cfg, progress=False)
"""


def recorded(out: Path) -> dict[int, str]:
    try:
        with sqlite3.connect(f"file:{out / 'state.sqlite'}?mode=ro", uri=True) as db:
            return dict(db.execute("SELECT idx, status FROM rows"))
    except sqlite3.Error:
        return {}


def test_sigkill_then_resume_ends_like_a_clean_run(photos, tmp_path):
    with ImageServer(photos, latency=0.05) as srv:
        hostport = srv.base_url.removeprefix("http://")
        rows = [
            {
                "product_code": i,
                "title": f"Item {i // 2}",
                "category3_code": "C",
                "full_price": 100 + i // 2,
                "imageurl": srv.url(f"/images/{i}.jpg"),
            }
            for i in range(120)
        ]
        rows[7]["imageurl"], rows[50]["imageurl"] = "N.A.", srv.url("/images/50.jpg", "404")
        pd.DataFrame(rows).to_parquet(tmp_path / "catalog.parquet")
        killed = tmp_path / "killed"
        env = {**os.environ, "PYTHONPATH": str(SRC)}
        proc = subprocess.Popen(
            [sys.executable, "-c", KILLABLE, tmp_path / "catalog.parquet", killed, hostport], env=env
        )
        deadline = time.monotonic() + 60
        while len(recorded(killed)) < 30 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        done_at_kill = recorded(killed)
        assert 30 <= len(done_at_kill) < 120, "the run was not killed half-way"

        # nothing half-written: every image file is complete and named by its content
        for path in (killed / "images").rglob("*.jpg"):
            if ".tmp" not in path.parts:
                assert hashlib.sha256(path.read_bytes()).hexdigest() == path.stem
                Image.open(path).load()

        resumed = prepare_catalog(
            tmp_path / "catalog.parquet", killed, download=download_config(srv), progress=False
        )
        for idx, status in done_at_kill.items():  # finished work is never fetched again
            if status == "ok":
                assert srv.requests[f"/images/{idx}.jpg"] == 1
        clean = prepare_catalog(
            tmp_path / "catalog.parquet", tmp_path / "clean", download=download_config(srv), progress=False
        )

    columns = ["row", "id", "status", "reason", "detail", "sha256", "split"]
    a, b = manifest(killed), manifest(tmp_path / "clean")
    pd.testing.assert_frame_equal(a[columns], b[columns])
    assert (resumed.ok, resumed.rejected, resumed.splits) == (clean.ok, clean.rejected, clean.splits)

    def files(out: Path) -> dict[str, str]:
        return {
            p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in (out / "images").rglob("*")
            if p.is_file()
        }

    assert files(killed) == files(tmp_path / "clean")  # no temp or partial file left anywhere
    assert (
        a["local_path"]
        .str.replace(str(killed), "")
        .equals(b["local_path"].str.replace(str(tmp_path / "clean"), ""))
    )


# ---- shards -----------------------------------------------------------------------------------------------
def test_shards_then_merge_equal_one_run(photos, tmp_path):
    with ImageServer(photos) as srv:
        rows = [
            {
                "product_code": i,
                "title": f"Coat {i // 3}",
                "category3_code": "COATS",
                "full_price": 500 + i // 3,
                "imageurl": srv.url(f"/images/{100 + i}.jpg"),
            }
            for i in range(30)
        ]
        rows[4]["imageurl"], rows[9]["imageurl"] = "N.A.", srv.url("/images/100.jpg")  # no_image, duplicate
        pd.DataFrame(rows).to_parquet(tmp_path / "catalog.parquet")
        cfg = download_config(srv)
        shards = []
        for i in range(3):
            shards.append(tmp_path / f"shard{i}")
            part = prepare_catalog(
                tmp_path / "catalog.parquet", shards[-1], shard=(i, 3), download=cfg, progress=False
            )
            assert part.input_rows == 10 and part.splits == {}
            assert manifest(shards[-1])["row"].tolist() == list(range(i, 30, 3))
        whole = prepare_catalog(
            tmp_path / "catalog.parquet", tmp_path / "whole", download=cfg, progress=False
        )
    merged = merge_prepared(shards, tmp_path / "merged")
    columns = ["row", "id", "status", "reason", "detail", "sha256", "split"]
    pd.testing.assert_frame_equal(
        manifest(tmp_path / "merged")[columns], manifest(tmp_path / "whole")[columns]
    )
    assert (merged.ok, merged.rejected, merged.splits) == (whole.ok, whole.rejected, whole.splits)
    assert (
        merged.rejected["duplicate"] == 1
        and len(load_prepared(tmp_path / "merged")["train"]) == whole.splits["train"]
    )
    with pytest.raises(PrepareError, match="do not cover"):
        merge_prepared(shards[:2], tmp_path / "merged2")


# ---- errors people will meet ------------------------------------------------------------------------------
def test_clear_errors(tmp_path):
    pd.DataFrame({"title": ["a"], "full_price": [1.0], "imageurl": ["N.A."]}).to_csv(
        tmp_path / "c.csv", index=False
    )
    with pytest.raises(
        PrepareError, match=r"no column 'category3_code' for the category \(--category-col\).*title"
    ):
        prepare_catalog(tmp_path / "c.csv", tmp_path / "out", progress=False)
    with pytest.raises(PrepareError, match="add up to 1"):
        prepare_catalog(tmp_path / "c.csv", tmp_path / "out", splits=(0.8, 0.3, 0.1), progress=False)
    with pytest.raises(PrepareError, match="i/n"):
        parse_shard("3/3")
    (tmp_path / "c.xlsx").write_text("x")
    with pytest.raises(PrepareError, match="unknown catalog format"):
        prepare_catalog(tmp_path / "c.xlsx", tmp_path / "out", progress=False)
    with pytest.raises(PrepareError, match="no such file"):
        prepare_catalog(tmp_path / "missing.parquet", tmp_path / "out", progress=False)
    columns = ColumnMap(category="title", id="title")
    prepare_catalog(tmp_path / "c.csv", tmp_path / "out", columns=columns, progress=False)
    with pytest.raises(PrepareError, match="other settings"):
        prepare_catalog(tmp_path / "c.csv", tmp_path / "out", columns=columns, max_side=64, progress=False)


def test_cli_prepare_and_hub_id_offline(photos, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1"}
    hub = subprocess.run(
        [
            sys.executable,
            "-m",
            "productlens",
            "prepare",
            "DBQ/Burberry.Product.prices.United.States",
            "--out",
            str(tmp_path / "hub"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert hub.returncode == 2
    assert "could not load the Hugging Face dataset 'DBQ/Burberry.Product.prices.United.States'" in hub.stderr
    assert "parquet file" in hub.stderr

    from typer.testing import CliRunner

    from productlens.cli import app

    with ImageServer(photos) as srv:
        small_catalog(srv).to_csv(tmp_path / "c.csv", index=False)
        args = [
            "prepare",
            str(tmp_path / "c.csv"),
            "--out",
            str(tmp_path / "out"),
            "--allow-private",
            "--image-col",
            "photo",
            "--title-col",
            "name",
            "--category-col",
            "kind",
            "--price-col",
            "cost",
            "--id-col",
            "sku",
            "--split",
            "0.5,0.5,0",
            "--concurrency",
            "4",
        ]
        run = CliRunner().invoke(app, args)
    assert run.exit_code == 0, run.output
    assert (
        "5 rows in, 4 ok, 1 rejected" in run.output and "empty_title     1       e.g. title is" in run.output
    )
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["splits"]["test"] == {"rows": 0}


# ---- scale ----------------------------------------------------------------------------------------------
PEAK_RSS = """
import sys, threading, time
from productlens.catalog.prepare import prepare_catalog
samples = []  # resident memory every 20 ms, from /proc (a sampled peak, blind to allocator blips)
def sample():
    while True:
        samples.append(int(open("/proc/self/statm").read().split()[1]) * 4096)
        time.sleep(0.02)
threading.Thread(target=sample, daemon=True).start()
result = prepare_catalog(sys.argv[1], sys.argv[2], progress=False)
print(result.input_rows, result.rejected["no_image"], max(samples))
"""


@pytest.mark.slow
def test_memory_stays_flat_on_a_million_rows(tmp_path):
    """Peak memory of a 1,000,000-row catalog is that of a 100,000-row one: rows stream, nothing piles up."""
    import pyarrow as pa

    peaks = {}
    for n in (100_000, 1_000_000):
        table = pa.table({"product_code": np.arange(n), "title": ["Check Scarf"] * n, "category3_code": ["X"] * n,
                          "full_price": np.full(n, 490.0), "imageurl": ["N.A."] * n})  # fmt: skip
        pq.write_table(table, tmp_path / f"{n}.parquet", row_group_size=50_000)
        env = {**os.environ, "PYTHONPATH": str(SRC)}
        args = [sys.executable, "-c", PEAK_RSS, tmp_path / f"{n}.parquet", tmp_path / f"out{n}"]
        run = subprocess.run(args, env=env, capture_output=True, text=True, check=True)
        rows, no_image, peaks[n] = map(int, run.stdout.split())
        assert rows == no_image == n
    growth = peaks[1_000_000] - peaks[100_000]
    assert growth < 40 * 2**20, peaks  # ten times the rows, (almost) no more memory
