"""`productlens export` and `export --check` on the reference fixture: a LoRA run exported by the CLI compared file by
file with the official files, reloaded in productlens, and judged by the real old stack (transformers 4.40.2 +
tokenizers 0.19.1 for the tokenizer, config and CLIP tower; 4.41.2's native Phi3ForCausalLM, `su` RoPE, for the
decoder), installed once per machine into ~/.cache/productlens-test with pip."""

import json
import shutil
from pathlib import Path

import numpy as np
import old_stack
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_train import make_prepared
from typer.testing import CliRunner

import productlens.phi3v  # noqa: F401
from productlens.cli import app
from productlens.config import load_config
from productlens.export import check
from productlens.train import train

FIXTURE = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "phi3v-reference"
BASE = FIXTURE / "model"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
CASES = {
    "a": ("a_square_800x800_nc16", 16),
    "b": ("b_portrait_600x900_nc4", 4),
    "c": ("c_landscape_1000x400_nc4", 4),
}
TRAIN_CROPS = 1  # the run trains with num_crops 1 (short sequences); the export records it


def cli(*args: str):
    return CliRunner().invoke(app, list(map(str, args)), terminal_width=200)


def tensors(folder: Path) -> dict[str, tuple[list[int], str]]:
    found = {}
    for path in folder.glob("*.safetensors"):
        with safe_open(str(path), "pt") as f:
            for name in f.keys():  # noqa: SIM118
                found[name] = (list(f.get_slice(name).get_shape()), f.get_slice(name).get_dtype())
    return found


@pytest.fixture(scope="module")
def lora(tmp_path_factory):
    """A LoRA run on the fixture (language, vision and projection adapters, 3 steps, `--merge`) + its CLI export."""
    root = tmp_path_factory.mktemp("export")
    data = make_prepared(root / "data", sizes=(8, 2, 2))
    config = load_config(
        None,
        [
            f"model.path={BASE}",
            f"model.num_crops={TRAIN_CROPS}",
            f"data.path={data}",
            f"training.output_dir={root / 'run'}",
            "training.report_to=none",
            "training.per_device_train_batch_size=4",
            "training.max_steps=3",
            "training.learning_rate=5e-3",
            "training.eval_strategy=no",
            "training.save_strategy=no",
            "training.disable_tqdm=true",
            "finetune.merge=true",
            "finetune.freeze_vision=false",
            "lora.projection_targets=true",
            "eval.sample_size=2",
        ],
    )
    result = train(config)
    result_cli = cli("export", root / "run", "--out", root / "export")
    assert result_cli.exit_code == 0, result_cli.output
    return root / "run", root / "export", result


# ---- the export against the official files ------------------------------------------------------------------


def test_export_of_the_unchanged_fixture_equals_the_fixture(tmp_path):
    result = cli("export", BASE, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "ok:" in result.output
    out = tmp_path / "out"
    for path in BASE.iterdir():
        assert (out / path.name).read_bytes() == path.read_bytes(), path.name
    added = {p.name for p in out.iterdir()} - {p.name for p in BASE.iterdir()}
    assert added == {"generation_config.json", "README.md"}
    generation = json.loads((out / "generation_config.json").read_text())
    assert (generation["eos_token_id"], generation["bos_token_id"], generation["pad_token_id"]) == (
        [32007, 32000],
        1,
        32000,
    )
    assert "`num_crops` is 16, as in the base" in (out / "README.md").read_text()


def test_lora_export_matches_the_official_files(lora):
    run, out, _ = lora
    official = json.loads((BASE / "config.json").read_text())
    exported = json.loads((out / "config.json").read_text())
    assert list(exported) == list(official)  # official key set and order
    assert exported == official  # same values: float32 run, base from a local folder (plain auto_map)
    for name in TOKENIZER_FILES:
        assert (out / name).read_bytes() == (BASE / name).read_bytes(), name
    assert not (out / "processor_config.json").exists() and not (out / "chat_template.jinja").exists()
    pre, base_pre = (json.loads((f / "preprocessor_config.json").read_text()) for f in (out, BASE))
    assert list(pre) == list(base_pre) and pre == base_pre | {
        "num_crops": TRAIN_CROPS
    }  # the documented change
    assert (
        f"`num_crops` is {TRAIN_CROPS}: the value used in training (the base says 16)"
        in (out / "README.md").read_text()
    )
    assert tensors(out) == tensors(BASE)  # names, shapes, dtypes
    # the adapters changed the language, vision and projection weights
    new, old = load_file(out / "model.safetensors"), load_file(BASE / "model.safetensors")
    changed = {k for k in old if not torch.equal(new[k], old[k])}
    assert "model.layers.0.self_attn.qkv_proj.weight" in changed
    assert "model.vision_embed_tokens.img_processor.vision_model.encoder.layers.0.mlp.fc1.weight" in changed
    assert "model.vision_embed_tokens.img_projection.0.weight" in changed
    assert "lm_head.weight" not in changed
    # `train --merge` wrote the very same folder
    for path in out.iterdir():
        assert (run / "model" / path.name).read_bytes() == path.read_bytes(), path.name
    assert not [p for p in out.iterdir() if p.suffix in (".bin", ".pt")]


def test_export_reloads_in_productlens_with_identical_logits(lora):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoProcessor

    run, out, _ = lora
    processor = AutoProcessor.from_pretrained(out)
    assert processor.image_processor.num_crops == TRAIN_CROPS
    image = Image.open(FIXTURE / "cases" / CASES["c"][0] / "image.png")
    batch = processor(processor.chat_prompt("What is shown in this image?"), images=image)
    with torch.no_grad():
        exported = AutoModelForCausalLM.from_pretrained(out).eval()
        adapter = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(BASE), run / "adapter"
        ).eval()
        unmerged = adapter(**batch).logits
        merged = adapter.merge_and_unload()(**batch).logits
        logits = exported(**batch).logits
    assert torch.equal(logits, merged)
    assert torch.allclose(logits, unmerged, atol=1e-4)
    assert exported.generation_config.eos_token_id == [32007, 32000]


def test_dtype_shards_and_local_code(tmp_path):
    base = tmp_path / "base"
    shutil.copytree(BASE, base)
    for name in ("configuration_phi3_v.py", "modeling_phi3_v.py", "image_embedding_phi3_v.py"):
        (base / name).write_text(f"# stands for the official {name}\n")
    for name in ("image_processing_phi3_v.py", "processing_phi3_v.py"):
        (base / name).write_text(f"# stands for the official {name}\n")
    out = tmp_path / "out"
    result = cli("export", base, "--out", out, "--dtype", "bfloat16", "--max-shard-size", "4MB")
    assert result.exit_code == 0, result.output
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(shards) > 1 and set(index["weight_map"].values()) == set(shards)
    assert set(index["weight_map"]) == set(tensors(BASE))
    assert {d for _, d in tensors(out).values()} == {"BF16"}
    for shard in shards:
        with safe_open(str(out / shard), "pt") as f:
            assert f.metadata() == {"format": "pt"}
    config = json.loads((out / "config.json").read_text())
    assert (
        config["torch_dtype"] == "bfloat16"
        and config["auto_map"]["AutoConfig"] == "configuration_phi3_v.Phi3VConfig"
    )
    assert (out / "modeling_phi3_v.py").read_text() == (base / "modeling_phi3_v.py").read_text()
    assert check(out) == []
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)
    reference = load_file(BASE / "model.safetensors")
    state = model.state_dict()
    assert all(torch.equal(state[k], v.to(torch.bfloat16)) for k, v in reference.items())


def test_hub_base_gets_the_hub_form_of_auto_map(tmp_path):
    from productlens.export import Source, auto_map_for

    source = Source(
        "microsoft/Phi-3-vision-128k-instruct", BASE, "microsoft/Phi-3-vision-128k-instruct", None, None, None
    )
    entries = auto_map_for(source, {"AutoConfig": "configuration_phi3_v.Phi3VConfig"}, {})
    assert entries == {"AutoConfig": "microsoft/Phi-3-vision-128k-instruct--configuration_phi3_v.Phi3VConfig"}


def test_a_full_fine_tune_run_takes_its_files_from_the_base(tmp_path):
    from productlens.export import resolve

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "config.yaml").write_text(f"model:\n  path: {BASE}\n  num_crops: 4\n")
    source = resolve(tmp_path)
    assert (source.model_dir, source.adapter_dir, source.base_dir, source.num_crops) == (
        tmp_path / "model",
        None,
        BASE,
        4,
    )
    assert source.hub_repo is None


def test_bad_sources_are_clear_errors(tmp_path):
    result = cli("export", tmp_path, "--out", tmp_path / "out")
    assert result.exit_code == 2 and "not a run folder" in result.output
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    result = cli("export", BASE, "--out", tmp_path / "busy")
    assert result.exit_code == 2 and "--overwrite" in result.output
    result = cli("export", BASE, "--out", tmp_path / "o", "--dtype", "int8")
    assert result.exit_code == 2 and "dtype 'int8'" in result.output
    result = cli("export")
    assert result.exit_code == 2 and "--check" in result.output


# ---- export --check ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    out = tmp_path_factory.mktemp("good") / "export"
    assert cli("export", BASE, "--out", out).exit_code == 0
    return out


def _edit_json(name, change):
    def damage(folder):
        data = json.loads((folder / name).read_text())
        change(data)
        (folder / name).write_text(json.dumps(data))

    return damage


def _rename_weight(folder):
    state = load_file(folder / "model.safetensors")
    state["model.layers.0.mlp.gate_up.weight"] = state.pop("model.layers.0.mlp.gate_up_proj.weight")
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})


def _reshape_weight(folder):
    state = load_file(folder / "model.safetensors")
    state["model.vision_embed_tokens.glb_GN"] = torch.zeros(1, 1, 64)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})


def _no_metadata(folder):
    save_file(load_file(folder / "model.safetensors"), folder / "model.safetensors")


def _new_tokenizer_format(folder):
    data = json.loads((folder / "tokenizer.json").read_text())
    data["model"]["merges"] = [m.split(" ") for m in data["model"]["merges"]]
    (folder / "tokenizer.json").write_text(json.dumps(data))


def _reorder(data):
    data["rope_theta"] = data.pop("rope_theta")


DAMAGES = {
    "rope_parameters instead of rope_scaling": (
        _edit_json("config.json", lambda d: d.update(rope_parameters=d.pop("rope_scaling"))),
        {"config.keys", "config.rope"},
    ),
    "no rope_theta": (
        _edit_json("config.json", lambda d: d.pop("rope_theta")),
        {"config.keys", "config.rope"},
    ),
    "short factor list": (
        _edit_json("config.json", lambda d: d["rope_scaling"]["short_factor"].pop()),
        {"config.rope"},
    ),
    "dtype instead of torch_dtype": (
        _edit_json("config.json", lambda d: d.update(dtype=d.pop("torch_dtype"))),
        {"config.keys", "config.torch_dtype"},
    ),
    "keys out of order": (_edit_json("config.json", _reorder), {"config.order"}),
    "no auto_map": (
        _edit_json("config.json", lambda d: d.pop("auto_map")),
        {"config.keys", "config.auto_map"},
    ),
    "tiny clip name": (
        _edit_json("config.json", lambda d: d["img_processor"].update(model_name="tiny")),
        {"config.img_processor"},
    ),
    "tokenizers 0.20 merges": (_new_tokenizer_format, {"tokenizer.json"}),
    "TokenizersBackend": (
        _edit_json("tokenizer_config.json", lambda d: d.update(tokenizer_class="TokenizersBackend")),
        {"tokenizer_config"},
    ),
    "no chat_template": (
        _edit_json("tokenizer_config.json", lambda d: d.pop("chat_template")),
        {"tokenizer_config"},
    ),
    "no special_tokens_map": (lambda f: (f / "special_tokens_map.json").unlink(), {"files"}),
    "eos 2 only": (
        _edit_json("generation_config.json", lambda d: d.update(eos_token_id=2)),
        {"generation_config"},
    ),
    "no generation_config": (lambda f: (f / "generation_config.json").unlink(), {"generation_config"}),
    "processor_config.json": (lambda f: (f / "processor_config.json").write_text("{}"), {"processor_config"}),
    "no preprocessor auto_map": (
        _edit_json("preprocessor_config.json", lambda d: d.pop("auto_map")),
        {"preprocessor_config"},
    ),
    "renamed tensor": (_rename_weight, {"weights.names"}),
    "wrong shape": (_reshape_weight, {"weights.shapes"}),
    "bf16 claimed": (
        _edit_json("config.json", lambda d: d.update(torch_dtype="bfloat16")),
        {"weights.dtype"},
    ),
    "no format metadata": (_no_metadata, {"weights.metadata"}),
    "optimizer state": (lambda f: (f / "optimizer.pt").write_bytes(b"x"), {"weights.pickle"}),
}


def test_check_passes_on_a_good_export(good):
    result = cli("export", "--check", good)
    assert result.exit_code == 0 and "ok:" in result.output, result.output


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_check_names_each_broken_rule(good, tmp_path, damage):
    folder = tmp_path / "damaged"
    shutil.copytree(good, folder)
    change, rules = DAMAGES[damage]
    change(folder)
    assert {p.rule for p in check(folder)} == rules


def test_check_via_cli_lists_every_problem(good, tmp_path):
    folder = tmp_path / "damaged"
    shutil.copytree(good, folder)
    DAMAGES["no rope_theta"][0](folder)
    DAMAGES["processor_config.json"][0](folder)
    result = cli("export", "--check", folder)
    assert result.exit_code == 1
    assert "FAIL config.rope: rope_theta is missing" in result.output
    assert "FAIL processor_config:" in result.output


def test_check_catches_what_save_pretrained_writes(tmp_path):
    """The issue's symptoms: transformers 5's save_pretrained of the fixture model (what `--merge` used to write)."""
    from transformers import AutoModelForCausalLM, AutoProcessor

    AutoModelForCausalLM.from_pretrained(BASE).save_pretrained(tmp_path)
    AutoProcessor.from_pretrained(BASE).save_pretrained(tmp_path)
    rules = {p.rule for p in check(tmp_path)}
    assert {"config.keys", "config.rope", "config.auto_map", "tokenizer.json", "tokenizer_config"} <= rules
    assert {"processor_config", "preprocessor_config"} <= rules


# ---- the real old stack as the judge ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def old(request):
    cache = Path.home() / ".cache" / "productlens-test" / "old-stack"
    try:
        return old_stack.install(cache)
    except RuntimeError as exc:
        pytest.fail(f"{exc}\nThe old-stack tests need PyPI once to fill {cache}.")


def test_old_tokenizers_and_transformers_read_the_export(lora, old, tmp_path):
    from transformers import AutoProcessor

    _, out, _ = lora
    texts = [
        "<|user|>\n",
        "What is shown in this image?<|end|><|assistant|>\n",
        "Full Price: 2490.0 € <|end|>",
    ]
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    answer = old_stack.run(old, "tokenizer", out, tmp_path / "texts.json")
    assert answer["versions"] == ["4.40.2", "0.19.1"]
    tokenizer = AutoProcessor.from_pretrained(out).tokenizer
    assert answer["ids"] == [tokenizer(t).input_ids for t in texts]
    assert answer["ids"][0] == [1, 32010, 29871, 13]  # the fixture's official chunk ids
    assert answer["tokenizer_class"] == "LlamaTokenizerFast"
    assert answer["chat"] == "<|user|>\n<|image_1|>\nWhat is shown in this image?<|end|>\n<|assistant|>\n"
    assert "<|end|>" in answer["additional_special_tokens"]
    assert answer["rope_scaling"]["type"] == "su" and len(answer["rope_scaling"]["short_factor"]) == 8
    assert answer["rope_theta"] == 10000.0
    assert (answer["eos"], answer["bos"], answer["pad"]) == ([32007, 32000], 1, 32000)


def _case_inputs(out, case):
    from transformers import AutoProcessor

    name, crops = CASES[case]
    processor = AutoProcessor.from_pretrained(out, num_crops=crops)
    meta = json.loads((FIXTURE / "cases" / name / "meta.json").read_text())
    return processor(meta["prompt"], images=Image.open(FIXTURE / "cases" / name / "image.png"))


def test_old_clip_reads_the_exported_vision_weights(lora, old, tmp_path):
    from transformers import AutoModelForCausalLM

    _, out, _ = lora
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    pixels = _case_inputs(out, "b")["pixel_values"][0]  # [5, 3, 336, 336]: global image + 2x2 crops
    np.savez(tmp_path / "in.npz", crops=pixels.numpy())
    answer = old_stack.run(old, "clip", out, tmp_path / "in.npz", tmp_path / "out.npz")
    assert answer["versions"] == ["4.40.2"]
    with torch.no_grad():
        ours = model.model.vision_embed_tokens.patch_features(pixels)  # [5, 576, 32]
    theirs = torch.from_numpy(np.load(tmp_path / "out.npz")["features"])
    assert theirs.shape == ours.shape and torch.allclose(theirs, ours, atol=1e-4)


def test_old_phi3_decoder_matches_productlens(lora, old, tmp_path):
    """4.41.2's own Phi3ForCausalLM (`su` RoPE) on the exported config + text weights, fed productlens's
    inputs_embeds (image rows included, num_crops 4 and 16; and a 4,300-token text for the long factors): same last
    hidden state and logits within 1e-4, same greedy tokens."""
    from transformers import AutoModelForCausalLM

    _, out, _ = lora
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    inputs, ours = {"eos": np.array(32000)}, {}
    for case in CASES:
        batch = _case_inputs(out, case)
        with torch.no_grad():
            embeds = model.model.embed_inputs(batch["input_ids"], batch["pixel_values"], batch["image_sizes"])
            output = model(**batch)
            hidden = model.model(**batch).last_hidden_state
            tokens = model.generate(
                **batch, max_new_tokens=8, do_sample=False, eos_token_id=32000, pad_token_id=32000
            )
        inputs[f"embeds_{case}"] = embeds.numpy()
        ours[case] = (hidden, output.logits[:, -16:], tokens[0, -8:])
    # past original_max_position_embeddings (4096): the long rope factors apply
    ids = torch.randint(100, 32000, (1, 4300), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        embeds = model.model.embed_tokens(ids)
        hidden = model.model(inputs_embeds=embeds).last_hidden_state
        logits = model(inputs_embeds=embeds).logits[:, -16:]
        tokens = model.generate(
            input_ids=ids, max_new_tokens=8, do_sample=False, eos_token_id=32000, pad_token_id=32000
        )
    inputs["embeds_long"], ours["long"] = embeds.numpy(), (hidden, logits, tokens[0, -8:])
    np.savez(tmp_path / "in.npz", **inputs)
    answer = old_stack.run(old, "decoder", out, tmp_path / "in.npz", tmp_path / "out.npz")
    assert answer == {"versions": ["4.41.2"], "rotary": "Phi3SuScaledRotaryEmbedding"}
    theirs = np.load(tmp_path / "out.npz")
    for case, (hidden, logits, tokens) in ours.items():
        assert torch.allclose(torch.from_numpy(theirs[f"hidden_{case}"]), hidden, atol=1e-4), case
        assert torch.allclose(torch.from_numpy(theirs[f"logits_{case}"]), logits, atol=1e-4), case
        assert theirs[f"tokens_{case}"].tolist() == tokens.tolist(), case

    # the judge can tell: transformers 5's config (rope_parameters, no rope_scaling) read by the old stack
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    config = json.loads((broken / "config.json").read_text())
    config["rope_parameters"] = {**config.pop("rope_scaling"), "rope_theta": config.pop("rope_theta")}
    (broken / "config.json").write_text(json.dumps(config))
    np.savez(tmp_path / "in_b.npz", eos=inputs["eos"], embeds_b=inputs["embeds_b"])
    old_stack.run(old, "decoder", broken, tmp_path / "in_b.npz", tmp_path / "out_b.npz")
    plain_rope = torch.from_numpy(np.load(tmp_path / "out_b.npz")["logits_b"])
    assert (plain_rope - ours["b"][1]).abs().max() > 0.1
