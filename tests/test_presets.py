"""Every preset in configs/ loads, holds only what differs from the defaults, says how to run it, resolves into
TrainingArguments on this CPU machine, and its cost knob, LoRA and freeze settings fit a tiny model of its family.
The GPU presets are validated, not run; the accelerate launch files are checked for shape."""

import dataclasses
from pathlib import Path

import pytest
import torch
import yaml
from transformers import TrainingArguments

from productlens.config import (
    CONFIGS_DIR,
    DEFAULT_TRAINING,
    SECTIONS,
    from_dict,
    load_config,
    load_yaml,
    merge,
)
from productlens.families import Family, get_family, names
from productlens.phi3v.tiny import save_tiny_model
from productlens.quickstart import split_preset
from productlens.train import load_model, quantization_settings, training_arguments

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted(p for p in (ROOT / "configs").glob("*.yaml"))
LAUNCHERS = sorted((ROOT / "configs" / "accelerate").glob("*.yaml"))
HF_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainingArguments) if f.init}


def test_the_presets_the_project_promises_exist():
    names = {p.stem for p in PRESETS}
    assert {"quickstart", "phi3v-lora", "phi3v-qlora", "phi3v-full", "phi35v-lora"} <= names
    assert {"qwen2_5-vl-3b-lora", "smolvlm2-2b-lora", "gemma3-4b-lora"} <= names
    assert CONFIGS_DIR == ROOT / "configs"
    assert {p.stem for p in LAUNCHERS} >= {"ddp", "deepspeed-zero2", "deepspeed-zero3", "fsdp"}


def _resolve(path: Path, tmp_path: Path):
    raw = load_yaml(path)
    if path.stem == "quickstart":
        _, raw = split_preset(raw)
    return from_dict(merge(raw, {"training": {"output_dir": str(tmp_path / "out")}})), raw


def _family(config) -> Family:
    """A GPU preset's family without the hub: `model.family`, else the family that lists its checkpoint."""
    if config.model.family:
        return get_family(config.model.family)
    found = [get_family(n) for n in names() if config.model.path in get_family(n).hub_ids]
    assert len(found) == 1, f"{config.model.path} is not one family's known checkpoint; set model.family"
    return found[0]


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_preset_starts_with_the_command_that_runs_it(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# productlens ")
    assert (
        path.stem == "quickstart" and first == "# productlens quickstart"
    ) or f"configs/{path.name}" in first


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_preset_holds_only_what_differs(path, tmp_path):
    _, raw = _resolve(path, tmp_path)
    defaults = {name: cls() for name, cls in SECTIONS.items()}
    for section, values in raw.items():
        for key, value in values.items():
            if section == "training":
                default = DEFAULT_TRAINING.get(key, HF_DEFAULTS.get(key))
            elif section == "task":
                continue
            else:
                default = getattr(defaults[section], key)
                value = tuple(value) if isinstance(value, list) else value
            assert value != default, f"{path.name}: {section}.{key} = {value!r} is the default; leave it out"


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_preset_resolves_into_training_arguments_on_this_machine(path, tmp_path):
    config, _ = _resolve(path, tmp_path)
    gpu = bool(config.training.get("bf16") or config.training.get("fp16"))
    if gpu:  # validated here, run on a GPU machine
        config = dataclasses.replace(config, training={**config.training, "use_cpu": True})
    args = training_arguments(config)
    assert isinstance(args, TrainingArguments)
    assert args.remove_unused_columns is False
    if args.load_best_model_at_end:
        assert args.metric_for_best_model.startswith("eval_") and args.save_steps % args.eval_steps == 0
    if path.stem != "quickstart":
        family = _family(config)  # a real checkpoint of a known family, with that family's cost knobs
        family._check_cost(config.model.cost_settings())
        assert args.bf16 and args.activation_checkpointing


def test_the_native_presets_use_their_cost_knob():
    """Each non-Phi preset names its checkpoint, and its model.cost is the family's recommended setting."""
    for stem, family in (
        ("qwen2_5-vl-3b-lora", "qwen2_5_vl"),
        ("smolvlm2-2b-lora", "smolvlm"),
        ("gemma3-4b-lora", "gemma3"),
    ):
        config = load_config(stem)
        assert _family(config) is get_family(family) and config.model.path == get_family(family).hub_ids[0]
        assert config.model.cost == get_family(family).recommended_cost
        assert config.model.dtype == "bfloat16" and config.finetune.method == "lora"


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """family name -> a tiny model folder of that family, saved on first use."""
    folders = {}

    def get(family: Family) -> Path:
        if family.name not in folders:
            folder = tmp_path_factory.mktemp(family.name) / "tiny"
            texts = ["Product: Bag, Category: BAGS"] * 8
            if family.name == "phi3v":
                folders[family.name] = save_tiny_model(folder, texts, vocab_size=350)
            else:
                folders[family.name] = family.save_tiny(folder, texts)
        return folders[family.name]

    return get


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_preset_finds_its_modules_in_a_tiny_model_of_its_family(path, tmp_path, tiny_models):
    config, _ = _resolve(path, tmp_path)
    family = get_family("phi3v") if path.stem == "quickstart" else _family(config)
    tiny_model = tiny_models(family)
    family.load_processor(tiny_model, **config.model.cost_settings())  # the cost knob is accepted
    training = {**config.training, "bf16": False, "fp16": False, "activation_checkpointing": False}
    config = dataclasses.replace(
        config,
        model=dataclasses.replace(
            config.model, path=str(tiny_model), dtype="float32", attn_implementation=None
        ),
        training=training,
    )
    if config.finetune.method == "qlora":
        with pytest.raises(RuntimeError, match=r"bitsandbytes|CUDA"):
            quantization_settings(torch.bfloat16, family)
        config = dataclasses.replace(config, finetune=dataclasses.replace(config.finetune, method="lora"))
    model = load_model(config, training_arguments(config))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    parts = {family.part_of(n.replace("base_model.model.", "", 1)) for n in trainable}
    if config.finetune.method != "full":
        adapted = {family.part_of(n.replace("base_model.model.", "", 1)) for n in trainable if "lora_A" in n}
        assert "language" in adapted
    assert ("vision" in parts) != config.finetune.freeze_vision
    assert ("projection" in parts) != config.finetune.freeze_projection


@pytest.mark.parametrize("path", LAUNCHERS, ids=lambda p: p.stem)
def test_accelerate_launch_files(path):
    text = path.read_text()
    first = text.splitlines()[0]
    assert first.startswith(
        f"# accelerate launch --config_file configs/accelerate/{path.name} -m productlens train"
    )
    preset = first.split("--config ")[1].split()[0]
    assert (ROOT / preset).is_file()
    launcher = yaml.safe_load(text)
    assert launcher["distributed_type"] in {"MULTI_GPU", "DEEPSPEED", "FSDP"}
    assert launcher["num_processes"] >= 2 and launcher["use_cpu"] is False
    if path.stem.startswith("deepspeed-zero"):
        assert launcher["deepspeed_config"]["zero_stage"] == int(path.stem[-1])
    if launcher["distributed_type"] == "FSDP":
        assert "Phi3DecoderLayer" in launcher["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"]
