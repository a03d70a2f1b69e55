"""Predictor on a tiny random Phi-3-V: batching, order, parsing, constrained decoding, image features, loading
run folders and adapters, and `predict` over files, folders and loopback URLs (CLI included)."""

from __future__ import annotations

import csv
import dataclasses
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from productlens.catalog.server import ImageServer
from productlens.cli import app
from productlens.phi3v.tiny import save_tiny_model
from productlens.predict import (
    OUTPUT_COLUMNS,
    Prediction,
    Predictor,
    predict_inputs,
    resolve_source,
)
from productlens.task.constrain import Constraints
from productlens.task.parse import parse_answer

CATEGORIES = ("BAG", "BAGS", "CROSSBODY", "SCARVES", "SHOES")
TEXTS = [
    "Product: Medium Lola Bag, Category: CROSSBODY, Full Price: 2490.0",
    "Product: Check Cashmere Scarf, Category: SCARVES, Full Price: 590.0",
    "Product: Leather Tote, Category: BAGS, Full Price: 1890.0",
    "What is shown in this image?",
] * 10


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model", TEXTS, vocab_size=420)


@pytest.fixture(scope="module")
def predictor(tiny_dir):
    return Predictor.load(tiny_dir, max_new_tokens=24)


def photo(i: int, size: tuple[int, int]) -> Image.Image:
    rng = np.random.default_rng(i)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


# sizes chosen so that the prompt lengths (image slots) are not in input order
SIZES = [(300, 100), (90, 90), (100, 300), (250, 240), (120, 400), (60, 200)]


@pytest.fixture(scope="module")
def photos():
    return [photo(i, size) for i, size in enumerate(SIZES)]


# ---- batching, order, parsing -----------------------------------------------------------------------------


def test_batches_equal_one_by_one_in_input_order(predictor, photos):
    slots = [predictor.processor.num_image_tokens(*im.size) for im in photos]
    assert slots != sorted(slots) and len(set(slots)) > 2  # the batches really are reordered
    batched = predictor.predict(photos, batch_size=4)
    alone = [predictor.predict([im], batch_size=1)[0] for im in photos]
    assert [p.raw_text for p in batched] == [p.raw_text for p in alone]
    assert len({p.raw_text for p in alone}) > 2  # distinct answers, so a mix-up of order would show


def test_prediction_is_frozen_and_parsed_from_raw_text(predictor, photos):
    predictions = predictor.predict(photos[:3])
    for p in predictions:
        assert isinstance(p, Prediction) and isinstance(p.raw_text, str) and p.seconds > 0
        parsed = parse_answer(p.raw_text, predictor.template)
        assert (p.title, p.category, p.price, p.failures) == (
            parsed.title,
            parsed.category,
            parsed.price,
            parsed.failures,
        )
    with pytest.raises(dataclasses.FrozenInstanceError):
        predictions[0].title = "x"


def test_answer_is_the_new_tokens_only_decoded_without_specials(predictor, photos):
    short = predictor.with_options(max_new_tokens=3).predict(photos[:1])[0]
    processor = predictor.processor
    inputs = processor(text=[processor.chat_prompt(predictor.template.question)], images=photos[:1])
    sequences = predictor.model.generate(
        **inputs, max_new_tokens=3, do_sample=False, eos_token_id=processor.stop_token_ids, pad_token_id=0
    )
    new = sequences[0, inputs["input_ids"].shape[1] :]
    assert len(new) <= 3
    assert short.raw_text == processor.tokenizer.decode(new, skip_special_tokens=True)


def test_empty_input_gives_empty_output(predictor):
    assert predictor.predict([]) == []


def test_bad_options_are_refused(predictor):
    with pytest.raises(ValueError, match="at least 1"):
        predictor.with_options(batch_size=0)


# ---- constrained decoding ---------------------------------------------------------------------------------


def valid(p: Prediction, categories=CATEGORIES) -> bool:
    return p.category in categories and p.price is not None and p.title is not None and not p.failures


def test_constraints_give_a_known_category_and_a_price(predictor, photos):
    free = predictor.with_options(max_new_tokens=60).predict(photos)
    assert not any(valid(p) for p in free)  # a random model does not follow the template by itself
    constrained = predictor.with_options(max_new_tokens=60, constraints=Constraints(CATEGORIES, price=True))
    results = constrained.predict(photos, batch_size=3)
    assert all(valid(p) for p in results), [p.raw_text for p in results]
    answer = re.compile(
        r"Product: [^\n:]+, Category: (BAGS?|CROSSBODY|SCARVES|SHOES), Full Price: \d+(\.\d+)?"
    )
    assert all(answer.fullmatch(p.raw_text) for p in results)  # stopped right after the price
    assert [p.raw_text for p in results] == [constrained.predict([im])[0].raw_text for im in photos[:3]] + [
        p.raw_text for p in results[3:]
    ]


def test_constraints_hold_when_sampling(predictor, photos):
    sampler = predictor.with_options(
        max_new_tokens=60,
        do_sample=True,
        top_k=5,
        temperature=1.5,
        constrain_categories=CATEGORIES,  # the shorthand for constraints=Constraints(CATEGORIES, price=True)
        constrain_price=True,
    )
    assert sampler.constraints == Constraints(CATEGORIES, price=True)
    torch.manual_seed(0)
    assert all(valid(p) for p in sampler.predict(photos))


def test_price_only_constraint_keeps_category_free_text(predictor, photos):
    results = predictor.with_options(max_new_tokens=60, constraints=Constraints(price=True)).predict(
        photos[:3]
    )
    for p in results:
        assert p.price is not None and p.title is not None and p.category is not None, p.raw_text


# ---- image features ---------------------------------------------------------------------------------------


def test_image_features_are_per_photo_and_batch_invariant(predictor, photos):
    together = predictor.image_features(photos, batch_size=4)
    hidden = predictor.model.config.hidden_size
    assert together.shape == (len(photos), hidden) and together.dtype == np.float32
    alone = np.concatenate([predictor.image_features([im]) for im in photos])
    np.testing.assert_allclose(together, alone, rtol=1e-4, atol=1e-5)
    assert not np.allclose(together[0], together[1])


# ---- loading ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(tiny_dir, tmp_path_factory):
    """A run folder as `productlens train` writes it: config.yaml + adapter/ (with processor), LoRA non-zero."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoProcessor

    from productlens.config import ModelConfig, RunConfig, save_config

    run = tmp_path_factory.mktemp("run")
    template = {
        "question": "Which product is this?",
        "fields": [["Product", "title"], ["Category", "category"]],
    }
    save_config(
        RunConfig(model=ModelConfig(path=str(tiny_dir), num_crops=2), task=template), run / "config.yaml"
    )
    base = AutoModelForCausalLM.from_pretrained(tiny_dir, use_safetensors=True)
    peft = get_peft_model(base, LoraConfig(r=4, target_modules=["qkv_proj", "o_proj"]))
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    peft.save_pretrained(run / "adapter")
    AutoProcessor.from_pretrained(tiny_dir).save_pretrained(run / "adapter")
    return run


def test_run_folder_gives_adapter_template_and_crops(run_dir, tiny_dir, photos):
    merged = Predictor.load(run_dir, max_new_tokens=16)
    assert merged.template.question == "Which product is this?" and merged.template.names == (
        "title",
        "category",
    )
    assert merged.processor.image_processor.num_crops == 2
    assert not hasattr(merged.model, "peft_config")  # merged into plain weights
    kept = Predictor.load(run_dir / "adapter", merge=False, max_new_tokens=16)
    assert (
        hasattr(kept.model, "peft_config") and kept.template == merged.template
    )  # run config read from parent
    base = Predictor.load(tiny_dir, template=merged.template, num_crops=2, max_new_tokens=16)
    texts = [p.raw_text for p in merged.predict(photos)]
    assert texts == [p.raw_text for p in kept.predict(photos)]
    assert texts != [p.raw_text for p in base.predict(photos)]  # the adapter changes the answers


def test_explicit_adapter_and_merged_model_subfolder(run_dir, tiny_dir, tmp_path):
    source = resolve_source(tiny_dir, adapter=run_dir / "adapter")
    assert source.base == str(tiny_dir) and source.adapter == run_dir / "adapter"
    (tmp_path / "run" / "model").mkdir(parents=True)
    for f in tiny_dir.iterdir():
        (tmp_path / "run" / "model" / f.name).write_bytes(f.read_bytes())
    (tmp_path / "run" / "adapter").mkdir()
    assert resolve_source(tmp_path / "run").base == str(tmp_path / "run" / "model")  # merged model wins


def test_loading_refuses_pickles_and_says_what_to_pass(run_dir, tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text((run_dir / "adapter" / "adapter_config.json").read_text())
    (adapter / "adapter_model.bin").write_bytes(b"pickle")
    with pytest.raises(ValueError, match="safetensors only"):
        resolve_source(adapter)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_source(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no model in"):
        resolve_source(tmp_path / "empty")
    assert (
        resolve_source("microsoft/Phi-3-vision-128k-instruct").base == "microsoft/Phi-3-vision-128k-instruct"
    )


# ---- files, folders, URLs ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A folder tree of photos plus broken files: a text file named .jpg, a truncated JPEG, a non-image."""
    root = tmp_path_factory.mktemp("inputs")
    (root / "shelf" / "deep").mkdir(parents=True)
    photo(1, (200, 150)).save(root / "shelf" / "a.jpg")
    photo(2, (150, 220)).save(root / "shelf" / "deep" / "b.png")
    photo(3, (180, 180)).save(root / "single.webp")
    (root / "shelf" / "notes.txt").write_text("not a photo, and not an image suffix")
    (root / "fake.jpg").write_text("plain text pretending to be a JPEG")
    photo(4, (300, 200)).save(root / "whole.jpg")
    (root / "truncated.jpg").write_bytes((root / "whole.jpg").read_bytes()[:600])
    return root


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_files_and_folders_to_jsonl_with_per_file_errors(predictor, inputs, tmp_path, capsys):
    entries = [
        inputs / "shelf",
        inputs / "fake.jpg",
        inputs / "single.webp",
        inputs / "truncated.jpg",
        "missing.png",
    ]
    summary = predict_inputs(predictor, entries, tmp_path / "preds.jsonl", progress=False)
    rows = read_jsonl(tmp_path / "preds.jsonl")
    assert [r["input"] for r in rows] == [
        str(inputs / "shelf" / "notes.txt"),  # skipped files come first, each with its reason
        str(inputs / "shelf" / "a.jpg"),
        str(inputs / "shelf" / "deep" / "b.png"),
        str(inputs / "fake.jpg"),
        str(inputs / "single.webp"),
        str(inputs / "truncated.jpg"),
        "missing.png",
    ]
    assert (summary.rows, summary.succeeded, summary.failed, summary.skipped) == (7, 3, 3, 1)
    assert all(set(r) == set(OUTPUT_COLUMNS) for r in rows)
    errors = {r["input"].rsplit("/", 1)[-1]: r["error"] for r in rows}
    assert errors["a.jpg"] is None and errors["b.png"] is None and errors["single.webp"] is None
    assert "invalid_image" in errors["fake.jpg"] and "invalid_image" in errors["truncated.jpg"]
    assert "no such file" in errors["missing.png"] and errors["notes.txt"].startswith("skipped: not a JPEG")
    good = predictor.predict([Image.open(inputs / "shelf" / "a.jpg").convert("RGB")])[0]
    assert rows[1]["raw_text"] == good.raw_text  # the file path gives the same answer as the image in memory
    err = capsys.readouterr().err
    assert err.count("warning:") == 3 and "truncated.jpg" in err and err.count("skipped:") == 1


def test_a_folder_is_read_by_content_and_every_skipped_file_is_listed(predictor, tiny_dir, tmp_path):
    import os

    from productlens.catalog.imagetypes import heif_plugin

    folder = tmp_path / "phone"
    folder.mkdir()
    photo(10, (64, 48)).save(folder / "a.avif", "AVIF")
    photo(11, (64, 48)).save(folder / "b.mpo", "MPO", save_all=True, append_images=[photo(12, (64, 48))])
    photo(13, (64, 48)).save(folder / "E646D207-DC83-4AED", "JPEG")  # a CDN file without an extension
    photo(14, (64, 48)).save(folder / "looks.png", "JPEG")  # the name lies; the content decides
    photo(15, (64, 48)).save(folder / "old.bmp", "BMP")
    (folder / "notes.txt").write_text("shopping list")
    (folder / "empty.jpg").write_bytes(b"")
    os.mkfifo(folder / "pipe.jpg")
    if heif_plugin():
        photo(16, (64, 48)).save(folder / "c.heic", "HEIF")
    else:  # the signature alone: without the plugin the reason names it
        (folder / "c.heic").write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64))
    summary = predict_inputs(predictor, [folder], tmp_path / "p.jsonl", progress=False)
    errors = {r["input"].rsplit("/", 1)[-1]: r["error"] for r in read_jsonl(tmp_path / "p.jsonl")}
    read = {"a.avif", "b.mpo", "E646D207-DC83-4AED", "looks.png"} | ({"c.heic"} if heif_plugin() else set())
    assert {name for name, error in errors.items() if error is None} == read
    skipped = {name: error for name, error in errors.items() if error is not None}
    assert all(error.startswith("skipped: ") for error in skipped.values())
    assert "a BMP image" in skipped["old.bmp"] and "(text)" in skipped["notes.txt"]
    assert "(empty)" in skipped["empty.jpg"] and "not a regular file" in skipped["pipe.jpg"]
    if not heif_plugin():
        assert "productlens[heic]" in skipped["c.heic"]
    assert (summary.rows, summary.succeeded, summary.failed, summary.skipped) == (
        9,
        len(read),
        0,
        9 - len(read),
    )
    run = CliRunner().invoke(
        app, ["predict", str(folder), "--model", str(tiny_dir), "--out", str(tmp_path / "p.csv")]
    )
    assert run.exit_code == 0 and f"{9 - len(read)} skipped" in run.output, run.output


def test_csv_output_is_well_formed(predictor, inputs, tmp_path):
    predict_inputs(
        predictor, [inputs / "single.webp", inputs / "fake.jpg"], tmp_path / "p.csv", progress=False
    )
    with open(tmp_path / "p.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(OUTPUT_COLUMNS) and len(rows) == 2
    assert rows[0]["error"] == "" and rows[1]["error"].startswith("invalid_image")
    assert not list(tmp_path.glob(".*tmp"))  # the temp file was renamed into place


def test_unknown_output_format_is_refused_before_work(predictor, inputs, tmp_path):
    with pytest.raises(ValueError, match=r"\.jsonl or \.csv"):
        predict_inputs(predictor, [inputs / "single.webp"], tmp_path / "p.parquet", progress=False)
    assert not (tmp_path / "p.parquet").exists()


def test_urls_over_loopback_need_allow_private(predictor, inputs, tmp_path):
    with ImageServer(inputs, faults={"/gone.jpg": "404"}) as server:
        urls = [server.url("/shelf/a.jpg"), server.url("/gone.jpg"), server.url("/fake.jpg")]
        refused = predict_inputs(predictor, urls[:1], tmp_path / "refused.jsonl", progress=False)
        allowed = predict_inputs(predictor, urls, tmp_path / "ok.jsonl", allow_private=True, progress=False)
        named = server.base_url.removeprefix("http://")  # --allow-host: just this host:port
        one = predict_inputs(predictor, urls[:1], tmp_path / "one.jsonl", allow_hosts=[named], progress=False)
        other = predict_inputs(
            predictor, urls[:1], tmp_path / "two.jsonl", allow_hosts=["10.0.0.0/8"], progress=False
        )
    assert (one.succeeded, other.succeeded) == (1, 0)
    assert refused.succeeded == 0 and "unsafe_url" in read_jsonl(tmp_path / "refused.jsonl")[0]["error"]
    rows = read_jsonl(tmp_path / "ok.jsonl")
    assert (allowed.succeeded, allowed.failed) == (1, 2)
    assert rows[0]["error"] is None and rows[0]["input"] == urls[0]
    assert "404" in rows[1]["error"] and "invalid_image" in rows[2]["error"]
    local = predictor.predict([Image.open(inputs / "shelf" / "a.jpg").convert("RGB")])[0]
    assert rows[0]["raw_text"] == local.raw_text  # an RGB JPEG is kept byte for byte by the downloader


def test_other_url_schemes_are_reported(predictor, tmp_path):
    summary = predict_inputs(predictor, ["file:///etc/passwd"], tmp_path / "p.jsonl", progress=False)
    assert summary.failed == 1 and "scheme" in read_jsonl(tmp_path / "p.jsonl")[0]["error"]


def test_cli_predict_exit_codes_and_stdout(tiny_dir, inputs, tmp_path):
    runner = CliRunner()
    ok = runner.invoke(
        app, ["predict", str(inputs / "single.webp"), str(inputs / "fake.jpg"), "--model", str(tiny_dir)]
    )
    assert ok.exit_code == 0, ok.output
    lines = [json.loads(line) for line in ok.stdout.splitlines() if line.startswith("{")]
    assert [r["error"] is None for r in lines] == [True, False]
    failed = runner.invoke(
        app, ["predict", str(inputs / "fake.jpg"), "--model", str(tiny_dir), "--out", str(tmp_path / "p.csv")]
    )
    assert failed.exit_code == 1 and (tmp_path / "p.csv").exists()
    bad = runner.invoke(app, ["predict", str(inputs / "single.webp"), "--model", str(tmp_path / "nothing")])
    assert bad.exit_code == 2 and "does not exist" in bad.output
    constrained = runner.invoke(
        app,
        [
            "predict",
            str(inputs / "single.webp"),
            "--model",
            str(tiny_dir),
            "--constrain",
            "--max-new-tokens",
            "60",
        ],
    )
    row = json.loads(next(line for line in constrained.stdout.splitlines() if line.startswith("{")))
    assert constrained.exit_code == 0 and row["price"] is not None and row["title"] is not None
