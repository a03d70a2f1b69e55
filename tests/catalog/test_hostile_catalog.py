"""Hostile catalogs end to end: a JSON Lines catalog mixing every bad row we know of, served from a faulty
loopback server, ends with every row accounted for; problems with the run itself are an `error:` line."""

from __future__ import annotations

import io
import json
import os
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from productlens.catalog.download import DownloadConfig
from productlens.catalog.prepare import REASONS, load_prepared, prepare_catalog
from productlens.catalog.server import ImageServer
from productlens.cli import app

_CONNECTS: list[object] = []
sys.addaudithook(lambda event, args: _CONNECTS.append(args[1]) if event == "socket.connect" else None)
SECRET = "root:x:0:0:root:/root:/bin/bash"


def jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray((rng.random((20, 28, 3)) * 255).astype("uint8")).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture()
def photos(tmp_path):
    root = tmp_path / "served"
    (root / "images").mkdir(parents=True)
    for i in range(8):
        (root / "images" / f"{i}.jpg").write_bytes(jpeg(i))
    return root


def test_an_adversarial_catalog_ends_with_every_row_accounted_for(photos, tmp_path):
    cat = tmp_path / "cat"
    (cat / "pics").mkdir(parents=True)
    (cat / "pics" / "ok.jpg").write_bytes(jpeg(100))
    os.mkfifo(cat / "pipe.jpg")
    (tmp_path / "secret.txt").write_text(SECRET)
    faults = {"/data": "redirect:data:image/png;base64,iVBORw0KGgo=",
              "/meta": "redirect:http://169.254.169.254/latest/meta-data/"}  # fmt: skip
    rows: list[tuple[str, str]] = []  # (JSON line, expected reason)

    def add(image: object, expect: str, price: str = '"$1,290.00"', code: str | None = None) -> None:
        n = len(rows)
        line = (f'{{"product_code": {code or 5000 + n}, "title": "Scarf {n}", "category3_code": "SCARVES", '
                f'"full_price": {price}, "imageurl": {json.dumps(image)}}}')  # fmt: skip
        rows.append((line, expect))

    _CONNECTS.clear()
    with ImageServer(photos, faults=faults) as srv:
        host = srv.base_url.removeprefix("http://").split(":")[0]
        add(srv.url("/images/0.jpg"), "")
        add(f"  {srv.url('/images/2.jpg')}\t", "")  # spaces around a URL are dropped, as browsers do
        add(srv.url("/images/4.jpg"), "", code="9" * 400)  # a 400-digit id
        add(srv.url("/images/5.jpg"), "", price='"1 290"')
        add(srv.url("/images/6.jpg"), "", price='"2 490,00 EUR"')
        for _ in range(50):  # one URL on many rows: fetched once, the later rows are duplicates
            add(srv.url("/images/1.jpg"), "duplicate" if rows and rows[-1][0].count("/images/1.jpg") else "")
        for port in ("99999", "abc", "-1"):
            add(f"http://{host}:{port}/images/0.jpg", "unsafe_url")
        add(srv.url("/images/3.jpg", "no-location"), "download_failed")
        add(srv.url("/data"), "unsafe_url")
        add(srv.url("/meta"), "unsafe_url")
        add("http://10.0.0.1./a.jpg", "unsafe_url")
        add("http://[fe80::1]/a.jpg", "unsafe_url")
        for price in ("1e400", "9" * 400, '"1290 1390"', '"12 5"', '"1.5k"', '"12 pcs"', '".99"', '"0"'):
            add(srv.url("/images/7.jpg"), "bad_price", price=price)
        add("pics/ok.jpg", "")
        for path in ("../secret.txt", str(tmp_path / "secret.txt"), "/etc/passwd", "/dev/zero", "/dev/urandom",
                     "pipe.jpg", "pics", "pics/../../secret.txt"):  # fmt: skip
            add(path, "unsafe_url")
        add("pics/missing.jpg", "download_failed")
        add([1, 2], "invalid_image")
        add(12345, "invalid_image")
        add({"nested": 1}, "no_image")
        (cat / "catalog.jsonl").write_text("\n".join(line for line, _ in rows) + "\n")
        config = DownloadConfig(allow_hosts=frozenset({srv.base_url.removeprefix("http://")}), deadline_s=5,
                                backoff_s=0.01, retries=1, concurrency=8)  # fmt: skip
        result = prepare_catalog(cat / "catalog.jsonl", tmp_path / "out", download=config, progress=False)
        assert srv.requests["/images/1.jpg"] == 1  # fifty rows, one request
        no_location = srv.url("/images/3.jpg", "no-location")
    assert all(isinstance(a, tuple) and a[0] in ("127.0.0.1", "::1") for a in _CONNECTS), _CONNECTS

    m = pq.read_table(tmp_path / "out" / "manifest.parquet").to_pandas()
    expected = [e for _, e in rows]
    assert m["row"].tolist() == list(range(len(rows)))
    assert m["reason"].fillna("").tolist() == expected, m[["reason", "detail"]].to_string()
    assert result.input_rows == len(rows) == result.ok + sum(result.rejected.values())
    assert result.rejected == {r: expected.count(r) for r in REASONS}
    assert not m["detail"].fillna("").str.contains("root:x").any()  # file contents are never quoted
    details = dict(zip(m["image"], m["detail"], strict=False))
    assert "without a Location" in details[no_location]
    assert "not a regular file" in details["pipe.jpg"] and "--image-root" in details["../secret.txt"]
    prices = {r["id"]: r["price"] for split in load_prepared(tmp_path / "out").values() for r in split}
    assert prices["5003"] == 1290.0 and prices["5004"] == 2490.0 and prices["9" * 400] == 1290.0


# ---- problems with the run itself: one `error:` line saying what to do, exit status 2, no traceback --------
HEADER = "product_code,title,category3_code,full_price,imageurl\n"
RUN_PROBLEMS = {
    "non-utf8-csv": ("c.csv", (HEADER + "1,Café scarf,X,10,N.A.\n").encode("latin-1"), [], "not UTF-8"),
    "extra-fields": ("c.csv", (HEADER + "1,S,X,10,N.A.\n2,S,X,1,N.A.,surplus\n").encode(), [], "more fields"),
    "extra-fields-first": ("c.csv", (HEADER + "1,Scarf,X,10,N.A.,surplus,more\n").encode(), [], "more fields"),
    "zero-byte-csv": ("c.csv", b"", [], "is empty"),
    "zero-byte-jsonl": ("c.jsonl", b"", [], "is empty"),
    "header-only": ("c.csv", HEADER.encode(), [], "holds no rows"),
    "not-json-lines": ("c.jsonl", b'{"product_code": 1, "title": "a", "category3_code": "X", "full_price": 1, '
                       b'"imageurl": "N.A."}\n[1, 2\n', [], "JSON"),
    "bad-allow-host": ("c.csv", (HEADER + "1,S,X,10,N.A.\n").encode(), ["--allow-host", "10.0.0.0/33"], "allow"),
    "missing-image-root": ("c.csv", (HEADER + "1,S,X,10,N.A.\n").encode(), ["--image-root", "/nope"], "not a folder"),
    "out-is-a-file": ("c.csv", (HEADER + "1,S,X,10,N.A.\n").encode(), ["--out", "{file}"], "output folder"),
}  # fmt: skip


@pytest.mark.parametrize(("name", "data", "extra", "words"), RUN_PROBLEMS.values(), ids=RUN_PROBLEMS.keys())
def test_run_level_problems_are_one_error_line(tmp_path, name, data, extra, words):
    (tmp_path / name).write_bytes(data)
    (tmp_path / "a-file").write_text("x")
    extra = [e.replace("{file}", str(tmp_path / "a-file")) for e in extra]
    args = ["prepare", str(tmp_path / name), "--out", str(tmp_path / "out"), *extra]
    run = CliRunner().invoke(app, args)
    assert run.exit_code == 2, run.output
    assert "error:" in run.output and words in run.output and "Traceback" not in run.output
    assert not isinstance(run.exception, Exception) or isinstance(run.exception, SystemExit)


def test_an_unforeseen_row_error_is_recorded_and_the_run_goes_on(tmp_path, monkeypatch):
    import productlens.catalog.prepare as prepare

    real = prepare.read_price

    def fragile(value):
        if value == "boom":
            raise KeyError("a bug nobody foresaw")
        return real(value)

    monkeypatch.setattr(prepare, "read_price", fragile)
    (tmp_path / "pic.jpg").write_bytes(jpeg(7))
    (tmp_path / "c.csv").write_text(HEADER + "1,Scarf,X,boom,pic.jpg\n2,Coat,X,10,pic.jpg\n")
    result = prepare_catalog(tmp_path / "c.csv", tmp_path / "out", progress=False)
    m = pq.read_table(tmp_path / "out" / "manifest.parquet").to_pandas()
    assert m["reason"].fillna("").tolist() == ["unexpected_error", ""] and "KeyError" in m["detail"][0]
    assert (result.ok, result.rejected["unexpected_error"]) == (1, 1)


@pytest.mark.parametrize(("command", "options"), [("prepare", ["--allow-host", "--image-root"]),
                                                  ("predict", ["--allow-host"]), ("serve", ["--allow-host"])])  # fmt: skip
def test_narrow_private_access_is_offered_where_urls_are_fetched(command, options):
    run = CliRunner().invoke(app, [command, "--help"], terminal_width=200)
    assert run.exit_code == 0 and all(option in run.output for option in options), run.output
