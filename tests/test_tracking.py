"""Weights & Biases: online only with a key and a reachable server (said on the console), otherwise offline;
a real offline run (the wandb client, the HF Trainer) holds the losses, learning rate, task metrics, one
photo/truth/prediction table per evaluation and the final adapter as an artifact. The .wandb file is read back."""

import glob
import io
import json
import socket
import struct
from pathlib import Path

import datasets
from PIL import Image, ImageDraw

from productlens.config import load_config
from productlens.phi3v.tiny import save_tiny_model
from productlens.tracking import flatten_scores, wandb_mode


def _records(path: Path) -> list:
    """The protobuf records of a .wandb file (a LevelDB-style log: 7-byte header, 32 KiB blocks)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, records, pos, pending = path.read_bytes(), [], 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST fragment
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def test_explicit_mode_wins():
    assert wandb_mode({"WANDB_MODE": "disabled"})[0] == "disabled"


def test_offline_without_a_key(tmp_path):
    mode, why = wandb_mode({"NETRC": str(tmp_path / "none")})
    assert mode == "offline" and "WANDB_API_KEY" in why


def test_online_with_a_key_and_a_reachable_server_offline_when_unreachable(tmp_path):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        netrc = tmp_path / "netrc"
        netrc.write_text("machine 127.0.0.1\n  login user\n  password abc\n")
        env = {"NETRC": str(netrc), "WANDB_BASE_URL": f"http://127.0.0.1:{port}"}
        assert wandb_mode(env)[0] == "online"
    mode, why = wandb_mode(env)  # the server is gone
    assert mode == "offline" and "not reachable" in why
    assert wandb_mode({"WANDB_API_KEY": "k", "WANDB_BASE_URL": f"http://127.0.0.1:{port}"})[0] == "offline"


def test_flatten_keeps_numbers_only():
    flat = flatten_scores(
        {
            "price": {"mae": 10.0, "mae_parsed": None},
            "category": {"accuracy": 0.5, "n_classes": 3},
            "title": {"token_f1": 0.25},
            "failure_rate": {"any": 0.1},
        }
    )
    assert flat == {"price_mae": 10.0, "category_accuracy": 0.5, "title_token_f1": 0.25, "failure_rate": 0.1}


def _prepared(folder: Path) -> Path:
    splits = {}
    for name, n in (("train", 12), ("validation", 6), ("test", 2)):
        rows = []
        for k in range(n):
            image = Image.new("RGB", (60, 48), (240, 240, 240))
            ImageDraw.Draw(image).ellipse((10, 8, 10 + 4 * (k % 5 + 4), 40), fill=(20 * k % 255, 80, 140))
            data = io.BytesIO()
            image.save(data, "PNG")
            rows.append(
                {
                    "id": f"{name}{k}",
                    "image": {"bytes": data.getvalue(), "path": None},
                    "title": ["Small Bag", "Leather Belt"][k % 2],
                    "category": ["BAGS", "BELTS"][k % 2],
                    "price": 100.0 + 50 * k,
                }
            )
        splits[name] = datasets.Dataset.from_list(rows).cast_column("image", datasets.Image())
    datasets.DatasetDict(splits).save_to_disk(str(folder / "dataset"))
    return folder


def test_an_offline_run_holds_metrics_tables_and_the_model(tmp_path, monkeypatch, capsys):
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    for name in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wb"))
    data = _prepared(tmp_path / "data")
    base = save_tiny_model(
        tmp_path / "base", ["Product: Small Bag, Category: BAGS", "Leather Belt BELTS"] * 5, vocab_size=350
    )
    config = load_config(
        None,
        [
            f"model.path={base}",
            f"data.path={data}",
            f"training.output_dir={tmp_path / 'run'}",
            "training.report_to=wandb",
            "training.max_steps=4",
            "training.eval_steps=2",
            "training.save_steps=2",
            "training.logging_steps=1",
            "training.per_device_train_batch_size=4",
            "training.disable_tqdm=true",
            "eval.sample_size=5",
            "eval.max_new_tokens=10",
            "wandb.project=productlens-test",
            "wandb.name=tiny-run",
            "wandb.table_rows=3",
        ],
    )
    from productlens.train import train

    train(config)
    assert "W&B offline" in capsys.readouterr().err

    import wandb

    assert wandb.run is None  # the run was closed
    (run_dir,) = glob.glob(str(tmp_path / "wb" / "wandb" / "offline-run-*"))
    records = _records(next(Path(run_dir).glob("run-*.wandb")))
    kinds = [r.WhichOneof("record_type") for r in records]
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run.project == "productlens-test" and run.display_name == "tiny-run"
    config_keys = {item.key for item in run.config.update}
    assert {"model", "lora", "training", "finetune"} <= config_keys

    history = [
        {i.key or "/".join(i.nested_key): i.value_json for i in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    logged = set().union(*history)
    for key in (
        "train/loss",
        "train/learning_rate",
        "eval/loss",
        "eval/category_accuracy",
        "eval/price_median_ape",
        "eval/title_token_f1",
    ):
        assert key in logged, key
    tables = [h for h in history if h.get("eval/predictions/_type") == '"table-file"']
    assert len(tables) == 2 and all(json.loads(t["eval/predictions/nrows"]) == 3 for t in tables)
    assert [json.loads(t["train/global_step"]) for t in tables] == [2, 4]

    files = sorted(Path(run_dir, "files", "media", "table", "eval").glob("predictions_*.table.json"))
    assert len(files) == 2
    table = json.loads(files[0].read_text())
    assert table["columns"][:4] == ["id", "photo", "truth", "prediction"]
    assert [row[0] for row in table["data"]] == ["validation0", "validation1", "validation2"]
    assert table["data"][1][2] == "Product: Leather Belt, Category: BELTS, Full Price: 150.0"

    artifacts = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
    photos = [a for a in artifacts if a.type == "run_table"]
    assert photos and all(
        any(e.path.startswith("media/images/") for e in a.manifest.contents) for a in photos
    )
    (model,) = [a for a in artifacts if a.type == "model"]
    assert "final" in model.aliases
    assert {e.path for e in model.manifest.contents} >= {
        "adapter_model.safetensors",
        "adapter_config.json",
        "tokenizer.json",
    }
    assert "exit" in kinds
