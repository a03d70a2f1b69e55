"""`productlens export` and `export --check` for the native families (Qwen2.5-VL, Qwen3-VL, SmolVLM, Gemma 3): a run
folder built by hand on each family's tiny model (a LoRA adapter with non-zero weights, saved with a processor
whose cost setting differs from the base's) -> an export in the family's own transformers layout that reloads
through the family's loaders with the adapted model's logits, and a check that names each broken rule."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from families.family_checks import TEXTS, rows
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from productlens.cli import app
from productlens.config import from_dict, save_config
from productlens.export import ExportError, check, export, family_of, resolve
from productlens.families import get_family

NAMES = ["qwen2_5_vl", "qwen3_vl", "smolvlm", "gemma3"]
# a processor setting the run trained with, other than the tiny base's own (the export must keep it)
COST = {
    "qwen2_5_vl": {"max_pixels": 12 * 28 * 28},
    "qwen3_vl": {"max_pixels": 12 * 32 * 32},
    "smolvlm": {"do_image_splitting": False},
    "gemma3": {"do_pan_and_scan": True},
}
QUESTION = "What is shown in this image?"


def cli(*args):
    return CliRunner().invoke(app, list(map(str, args)), terminal_width=200)


def logits(family, processor, model) -> torch.Tensor:
    """Logits [B, L, V] of three photos of different sizes under the family's generation prompt."""
    inputs = family.encode(processor, [family.prompt(processor, QUESTION)] * 3, [r["image"] for r in rows()])
    with torch.inference_mode():
        return model.eval()(**inputs).logits


def tensors(folder: Path) -> dict[str, str]:
    """Tensor name -> safetensors dtype over every *.safetensors file of `folder`."""
    found = {}
    for path in folder.glob("*.safetensors"):
        with safe_open(str(path), "pt") as f:
            found |= {name: f.get_slice(name).get_dtype() for name in f.keys()}  # noqa: SIM118
    return found


@pytest.fixture(scope="module", params=NAMES)
def run(request, tmp_path_factory):
    """-> (family, RUN folder, the adapted model's logits, the run's processor): base = the tiny model, a LoRA
    adapter (init_lora_weights=False) on the family's targets in RUN/adapter with the processor, RUN/config.yaml."""
    from peft import LoraConfig, get_peft_model

    family = get_family(request.param)
    root = tmp_path_factory.mktemp(family.name)
    base = family.save_tiny(root / "base", TEXTS, seed=0)
    run = root / "run"
    processor = family.load_processor(base, **COST[family.name])
    torch.manual_seed(0)
    settings = LoraConfig(
        r=4, lora_alpha=8, target_modules=family.lora_target_modules(), init_lora_weights=False
    )
    peft_model = get_peft_model(family.load_model(base), settings)
    peft_model.save_pretrained(run / "adapter")
    processor.save_pretrained(run / "adapter")
    save_config(
        from_dict({"model": {"path": str(base)}, "training": {"output_dir": str(run)}}), run / "config.yaml"
    )
    return family, run, logits(family, processor, peft_model), processor


@pytest.fixture(scope="module")
def merged(run):
    """`train --merge`'s call: export(RUN, RUN/model, dtype=None, overwrite=True) -> (family, folder, logits, proc)."""
    family, folder, adapted, processor = run
    return family, export(folder, folder / "model", dtype=None, overwrite=True), adapted, processor


def test_export_reloads_with_the_adapted_logits(merged):
    family, out, adapted, processor = merged
    reloaded = family.load_model(out)
    exported = family.load_processor(out)
    torch.testing.assert_close(logits(family, exported, reloaded), adapted, rtol=0, atol=1e-5)
    trained = processor.image_processor.to_dict()  # with the run's cost setting
    assert exported.image_processor.to_dict() == trained
    base = out.parent.parent / "base"
    assert family.load_processor(base).image_processor.to_dict() != trained
    unadapted = logits(family, processor, family.load_model(base))
    assert (unadapted - adapted).abs().max() > 1e-2  # the adapter matters: an unmerged export would fail


def test_export_is_the_family_layout(merged):
    family, out, _, processor = merged
    names = {p.name for p in out.iterdir()}
    assert "model.safetensors" in names and not any(n.endswith((".bin", ".pt", ".pkl", ".py")) for n in names)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] in family.model_types and "auto_map" not in config
    assert config["dtype"] == "float32" and set(tensors(out).values()) == {"F32"}
    assert not any("lora_" in n or n.startswith("base_model.") for n in tensors(out))
    generation = json.loads((out / "generation_config.json").read_text())
    end = processor.tokenizer.convert_tokens_to_ids(family.end_of_turn)
    assert end in generation["eos_token_id"] and generation["pad_token_id"] == family.pad_token_id(processor)
    readme = (out / "README.md").read_text()
    assert "`vllm serve DIR` (no --trust-remote-code" in readme
    assert check(out) == []
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left behind


def test_cli_export_in_bfloat16_shards(run, tmp_path):
    family, folder, _, _ = run
    out = tmp_path / "bf16"
    result = cli("export", folder, "--out", out, "--dtype", "bfloat16", "--max-shard-size", "40KB")
    assert result.exit_code == 0, result.output
    assert f"ok: {out} follows the transformers layout of" in result.output
    assert set(tensors(out).values()) == {"BF16"}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1 and set(index["weight_map"]) == set(tensors(out))
    assert family.load_model(out).dtype == torch.bfloat16


def test_a_full_fine_tune_model_folder_is_exported_as_is(merged, tmp_path):
    """RUN/model of a full fine-tune (here: the merged export itself) -> the same weights and logits."""
    family, model_dir, adapted, _ = merged
    run = tmp_path / "full"
    shutil.copytree(model_dir, run / "model")
    out = export(run, tmp_path / "out")
    assert tensors(out).keys() == tensors(model_dir).keys() and check(out) == []
    torch.testing.assert_close(
        logits(family, family.load_processor(out), family.load_model(out)), adapted, rtol=0, atol=1e-5
    )


def test_the_run_config_family_overrides_the_model_type(run, tmp_path):
    family, folder, _, _ = run
    assert family_of(resolve(folder)) is family  # from the base's config.json
    shutil.copytree(folder / "adapter", tmp_path / "adapter")
    other = next(name for name in NAMES if name != family.name)
    base = str(folder.parent / "base")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"model": {"path": base, "family": other}}))
    assert family_of(resolve(tmp_path)) is get_family(other)


def test_num_crops_is_refused_for_a_native_family(run, tmp_path):
    with pytest.raises(ExportError, match="num-crops"):
        export(run[1], tmp_path / "out", num_crops=4)


# ---- export --check ---------------------------------------------------------------------------------------------


def _edit_json(name, change):
    def damage(folder):
        data = json.loads((folder / name).read_text())
        change(data)
        (folder / name).write_text(json.dumps(data))

    return damage


def _rename_weight(folder):
    state = load_file(folder / "model.safetensors")
    name = next(n for n in state if "q_proj.weight" in n)
    state[name.replace("q_proj", "query")] = state.pop(name)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})


def _drop_end_of_turn(folder):
    from productlens.families import MODEL_TYPES

    family = get_family(MODEL_TYPES[json.loads((folder / "config.json").read_text())["model_type"]])
    end = family.stop_token_ids(family.load_processor(folder))[0]
    _edit_json(
        "generation_config.json", lambda d: d.update(eos_token_id=[i for i in d["eos_token_id"] if i != end])
    )(folder)


DAMAGES = {
    "a .bin file": (lambda f: (f / "pytorch_model.bin").write_bytes(b"x"), {"weights.pickle"}),
    "a renamed weight": (_rename_weight, {"weights.names"}),
    "unknown model_type": (
        _edit_json("config.json", lambda d: d.update(model_type="llava")),
        {"config.model_type"},
    ),
    "end-of-turn not in eos": (_drop_end_of_turn, {"generation_config"}),
    "no pad id": (
        _edit_json("generation_config.json", lambda d: d.pop("pad_token_id")),
        {"generation_config"},
    ),
    "an auto_map": (
        _edit_json("config.json", lambda d: d.update(auto_map={"AutoConfig": "x.Y"})),
        {"config.auto_map"},
    ),
    "no format metadata": (
        lambda f: save_file(load_file(f / "model.safetensors"), f / "model.safetensors"),
        {"weights.metadata"},
    ),
    "bf16 claimed": (_edit_json("config.json", lambda d: d.update(dtype="bfloat16")), {"weights.dtype"}),
    "no tokenizer": (lambda f: (f / "tokenizer.json").unlink(), {"files.tokenizer", "processor"}),
    "no chat template": (lambda f: (f / "chat_template.jinja").unlink(), {"chat_template"}),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_check_names_each_broken_rule(merged, tmp_path, damage):
    folder = tmp_path / "damaged"
    shutil.copytree(merged[1], folder)
    change, rules = DAMAGES[damage]
    change(folder)
    assert {p.rule for p in check(folder)} == rules


def test_check_via_cli_lists_every_problem(merged, tmp_path):
    folder = tmp_path / "damaged"
    shutil.copytree(merged[1], folder)
    assert cli("export", "--check", folder).exit_code == 0
    DAMAGES["a .bin file"][0](folder)
    DAMAGES["a renamed weight"][0](folder)
    result = cli("export", "--check", folder)
    assert result.exit_code == 1
    assert "FAIL weights.pickle: " in result.output and "FAIL weights.names: " in result.output


def test_train_merge_writes_the_native_export(tmp_path):
    """`train --merge` (train.save_final -> export) on a tiny Qwen2.5-VL: RUN/model passes the check."""
    from test_train import make_prepared

    from productlens.config import load_config
    from productlens.train import train

    base = get_family("qwen2_5_vl").save_tiny(tmp_path / "base", TEXTS)
    data = make_prepared(tmp_path / "data", sizes=(8, 2, 2))
    settings = [
        f"model.path={base}",
        f"data.path={data}",
        f"training.output_dir={tmp_path / 'run'}",
        "training.report_to=none",
        "training.per_device_train_batch_size=4",
        "training.max_steps=2",
        "training.eval_strategy=no",
        "training.save_strategy=no",
        "training.disable_tqdm=true",
        "finetune.merge=true",
        "eval.sample_size=2",
    ]
    train(load_config(None, settings))
    model = tmp_path / "run" / "model"
    assert check(model) == [] and (model / "README.md").is_file()
    assert "auto_map" not in json.loads((model / "config.json").read_text())
