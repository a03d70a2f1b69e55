"""The training recipe on a tiny Phi-3-Vision: LoRA / DoRA / full runs with the real HF Trainer, what each
method trains, per-part learning rates, best-checkpoint choice by a generation metric, the merged model in the
official layout, a killed-and-resumed run equal to an uninterrupted one, and two processes training one model."""

import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
import yaml
from PIL import Image, ImageDraw
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, TrainerCallback

import productlens.phi3v  # noqa: F401
from productlens.config import load_config, save_config
from productlens.families import get_family
from productlens.phi3v.tiny import save_tiny_model
from productlens.train import (
    ProductTrainer,
    latest_checkpoint,
    load_model,
    quantization_settings,
    train,
    training_arguments,
)

PHI3V = get_family("phi3v")
part_of = PHI3V.part_of
SHAPES = {"BAGS": "ellipse", "BELTS": "rectangle", "SCARVES": "polygon"}


def _photo(category: str, size: int, k: int) -> bytes:
    image = Image.new("RGB", (64 + 8 * (k % 3), 64), (250, 250, 248))
    draw = ImageDraw.Draw(image)
    box = (32 - size, 32 - size, 32 + size, 32 + size)
    colour = ((k * 70) % 255, 90, 160)
    if SHAPES[category] == "polygon":
        draw.polygon([(32, 32 - size), (32 + size, 32 + size), (32 - size, 32 + size)], fill=colour)
    else:
        getattr(draw, SHAPES[category])(box, fill=colour)
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def make_prepared(folder: Path, sizes=(24, 6, 6)) -> Path:
    """A prepared-dataset folder (as `productlens prepare` leaves it) with drawn shapes: category = shape."""
    splits, k = {}, 0
    for name, n in zip(("train", "validation", "test"), sizes, strict=True):
        rows = []
        for _ in range(n):
            category = list(SHAPES)[k % 3]
            size = 8 + 4 * (k % 4)
            rows.append(
                {
                    "id": str(1000 + k),
                    "image": {"bytes": _photo(category, size, k), "path": None},
                    "title": f"{['Small', 'Medium', 'Large', 'Oversized'][k % 4]} {category.title()[:-1]}",
                    "category": category,
                    "price": float(100 * (1 + k % 4) * (1 + k % 3)),
                }
            )
            k += 1
        splits[name] = datasets.Dataset.from_list(rows).cast_column("image", datasets.Image())
    datasets.DatasetDict(splits).save_to_disk(str(folder / "dataset"))
    return folder


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    data = make_prepared(root / "data")
    texts = [
        f"What is shown in this image? Product: {t}, Category: {c}"
        for t in ("Small Bag", "Large Belt")
        for c in SHAPES
    ]
    model = save_tiny_model(
        root / "base", texts * 4, vocab_size=400, image_size=56, num_crops=1, resid_pdrop=0.1
    )
    return root, data, model


def _config(workspace, out, *overrides):
    _, data, model = workspace
    base = [
        f"model.path={model}",
        f"data.path={data}",
        f"training.output_dir={out}",
        "training.report_to=none",
        "training.per_device_train_batch_size=4",
        "training.per_device_eval_batch_size=4",
        "training.logging_steps=1",
        "training.learning_rate=1e-3",
        "training.disable_tqdm=true",
        "eval.sample_size=4",
        "eval.max_new_tokens=12",
        "eval.batch_size=4",
    ]
    return load_config(None, [*base, *overrides])


def test_parts_of_the_model_by_parameter_name():
    assert (
        part_of("model.vision_embed_tokens.img_processor.vision_model.encoder.layers.0.mlp.fc1.weight")
        == "vision"
    )
    assert part_of("base_model.model.model.vision_embed_tokens.img_projection.0.weight") == "projection"
    assert part_of("model.vision_embed_tokens.glb_GN") == "projection"
    assert part_of("model.layers.1.self_attn.qkv_proj.weight") == "language"
    assert part_of("lm_head.weight") == "language"


@pytest.mark.parametrize(
    ("overrides", "expect", "absent"),
    [
        (
            [],
            {"layers.0.self_attn.qkv_proj.lora_A", "img_projection.0.modules_to_save", "glb_GN", "sub_GN"},
            {"vision_model", "lora_magnitude"},
        ),
        (
            ["finetune.method=dora", "finetune.freeze_vision=false"],
            {"lora_magnitude_vector", "encoder.layers.1.self_attn.q_proj.lora_A", "mlp.gate_up_proj.lora_B"},
            {"encoder.layers.2.", "post_layernorm"},  # CLIP layers past the feature layer never get adapters
        ),
        (
            [
                "finetune.freeze_language=true",
                "finetune.freeze_projection=true",
                "finetune.freeze_vision=false",
            ],
            {"encoder.layers.0.mlp.fc1.lora_A"},
            {"model.layers.", "img_projection", "_GN"},
        ),
        (["lora.projection_targets=true"], {"img_projection.2.lora_B"}, {"modules_to_save"}),
        (
            ["finetune.method=full", "finetune.freeze_vision=false"],
            {
                "model.layers.0.mlp.down_proj.weight",
                "encoder.layers.1.mlp.fc2.weight",
                "glb_GN",
                "lm_head.weight",
            },
            {"encoder.layers.2.", "post_layernorm"},
        ),
        (
            ["finetune.method=full", "finetune.freeze_language=true"],
            {"img_projection.0.weight"},
            {"model.layers.", "vision_model"},
        ),
    ],
)
def test_each_method_trains_what_the_config_opens(workspace, tmp_path, overrides, expect, absent):
    config = _config(workspace, tmp_path, *overrides)
    model = load_model(config, training_arguments(config))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    for part in expect:
        assert any(part in n for n in trainable), (part, trainable)
    for part in absent:
        assert not any(part in n for n in trainable), (part, [n for n in trainable if part in n])


def test_everything_frozen_is_an_error(workspace, tmp_path):
    off = ["finetune.freeze_language=true", "finetune.freeze_projection=true", "finetune.freeze_vision=true"]
    for method in ("lora", "full"):
        config = _config(workspace, tmp_path, f"finetune.method={method}", *off)
        with pytest.raises(ValueError, match="frozen"):
            load_model(config, training_arguments(config))


def test_qlora_without_bitsandbytes_or_gpu_says_what_to_do():
    with pytest.raises(RuntimeError, match=r"bitsandbytes|CUDA GPU"):
        quantization_settings(torch.bfloat16, PHI3V)


def test_separate_learning_rates_for_vision_and_projection(workspace, tmp_path):
    config = _config(
        workspace,
        tmp_path,
        "finetune.method=full",
        "finetune.freeze_vision=false",
        "finetune.vision_learning_rate=1e-5",
        "finetune.projection_learning_rate=3e-4",
        "training.weight_decay=0.1",
        "training.eval_strategy=no",
    )
    args = training_arguments(config)
    model = load_model(config, args)
    trainer = ProductTrainer(model=model, args=args, finetune=config.finetune)
    optimizer = trainer.create_optimizer()
    names = {id(p): n for n, p in model.named_parameters()}
    seen = {}
    for group in optimizer.param_groups:
        parts = {part_of(names[id(p)]) for p in group["params"]}
        assert len(parts) == 1
        seen.setdefault(parts.pop(), set()).add(group["lr"])
        if any("bias" in names[id(p)] for p in group["params"]):
            assert group["weight_decay"] == 0.0
    assert seen == {"vision": {1e-5}, "projection": {3e-4}, "language": {1e-3}}
    in_groups = sum(len(g["params"]) for g in optimizer.param_groups)
    assert in_groups == sum(p.requires_grad for p in model.parameters())


def test_lora_run_picks_the_best_checkpoint_by_a_generation_metric_and_merges(workspace, tmp_path):
    out = tmp_path / "run"
    config = _config(
        workspace,
        out,
        "training.max_steps=4",
        "training.eval_steps=2",
        "training.save_steps=2",
        "training.metric_for_best_model=eval_category_accuracy",
        "training.greater_is_better=true",
        "training.load_best_model_at_end=true",
        "finetune.merge=true",
        "task.question=Which product is this?",
    )
    result = train(config)
    assert result.global_step == 4 and result.world_size == 1 and result.total_batch_size == 4

    # the run folder reproduces the run: resolved config, versions, git commit
    assert load_config(out / "config.yaml") == config
    info = json.loads((out / "run_info.json").read_text())
    assert set(info["packages"]) == {"torch", "transformers", "peft", "accelerate", "datasets", "productlens"}
    assert info["packages"]["torch"] == torch.__version__ and "git_commit" in info

    # checkpoints: safetensors adapter, processor, trainer state with generation metrics next to eval_loss
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    evals = [e for e in state["log_history"] if "eval_loss" in e]
    assert len(evals) == 2
    for entry in evals:
        for key in (
            "eval_category_accuracy",
            "eval_price_median_ape",
            "eval_title_token_f1",
            "eval_failure_rate",
        ):
            assert 0.0 <= entry[key] <= 1e6
    assert state["best_model_checkpoint"] in {str(out / "checkpoint-2"), str(out / "checkpoint-4")}
    best = max(evals, key=lambda e: e["eval_category_accuracy"])  # the first of equals wins
    assert state["best_global_step"] == best["step"]
    for name in ("adapter_model.safetensors", "tokenizer.json", "preprocessor_config.json", "optimizer.pt"):
        assert (out / "checkpoint-2" / name).is_file()
    assert not list(out.rglob("*.bin")) or all(p.name == "training_args.bin" for p in out.rglob("*.bin"))

    # merged model: official key names, and the same outputs as base + adapter
    merged = load_file(out / "model" / "model.safetensors")
    base = load_file(Path(config.model.path) / "model.safetensors")
    assert set(merged) == set(base)

    # the image separators are trained with the projection, saved in the adapter and in the merged model
    adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    for name in ("glb_GN", "sub_GN"):
        key = f"model.vision_embed_tokens.{name}"
        saved = adapter[f"base_model.model.{key}"]
        assert not torch.allclose(saved, base[key]), name
        assert torch.equal(merged[key], saved.to(merged[key].dtype)), name
    assert (out / "model" / "tokenizer.json").is_file() and (
        out / "adapter" / "adapter_config.json"
    ).is_file()
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoProcessor

    from productlens.families import get_family
    from productlens.families.collate import FamilyCollator

    PHI3V = get_family("phi3v")
    from productlens.train import template_of

    processor = AutoProcessor.from_pretrained(out / "model")
    rows = [datasets.load_from_disk(str(Path(config.data.path) / "dataset"))["test"][i] for i in range(3)]
    batch = FamilyCollator(PHI3V, processor, template_of(config))(rows)
    with torch.no_grad():
        a = AutoModelForCausalLM.from_pretrained(out / "model").eval()(**batch).logits
        peft = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(config.model.path), out / "adapter"
        )
        b = peft.eval()(**batch).logits
    assert torch.allclose(a, b, atol=1e-4)


def test_the_seeded_sampler_is_found_behind_the_loader_wrappers(workspace, tmp_path):
    from accelerate import skip_first_batches

    from productlens.train import _datasets, _find_sampler, load_processor, template_of

    config = _config(workspace, tmp_path, "finetune.method=full", "training.eval_strategy=no")
    args = training_arguments(config)
    processor = load_processor(config)
    _, train_set, _ = _datasets(config, PHI3V, processor, template_of(config), args)
    trainer = ProductTrainer(
        model=load_model(config, args), args=args, train_dataset=train_set, finetune=config.finetune
    )
    loader = trainer.get_train_dataloader()
    sampler = _find_sampler(loader)
    assert sampler is not None and sampler.lengths == list(train_set["length"])
    assert _find_sampler(skip_first_batches(loader, 2)) is sampler


def test_latest_checkpoint_skips_one_cut_short(tmp_path):
    for step, complete in ((2, True), (4, True), (6, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if complete:
            (folder / "trainer_state.json").write_text("{}")
    assert latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint-4")
    with pytest.raises(FileNotFoundError, match="without --resume"):
        latest_checkpoint(tmp_path / "checkpoint-6")


DRIVER = """
import json, os, sys
from pathlib import Path
from accelerate import PartialState
from safetensors.torch import save_file
from transformers import TrainerCallback
from productlens.config import load_config
from productlens.train import end_distributed, train

class Probe(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        if state.global_step == int(os.environ.get("KILL_AT_STEP", "-1")):
            os._exit(3)  # killed right after a checkpoint
    def on_train_end(self, args, state, control, model=None, **kwargs):
        weights = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
        save_file(weights, str(Path(args.output_dir) / f"rank{args.process_index}.safetensors"))

result = train(load_config(sys.argv[1]), callbacks=[Probe()])
out = {"global_step": result.global_step, "world_size": result.world_size, "total_batch_size": result.total_batch_size}
Path(result.output_dir, f"result{PartialState().process_index}.json").write_text(json.dumps(out))
end_distributed()  # as `productlens train` does
"""


def _run(cmd, env_extra=None, cwd=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **(env_extra or {})}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


def _losses(run: Path, step: int) -> list[tuple[int, float]]:
    state = json.loads((run / f"checkpoint-{step}" / "trainer_state.json").read_text())
    return [(e["step"], e["loss"]) for e in state["log_history"] if "loss" in e]


def test_killed_and_resumed_run_equals_an_uninterrupted_one(workspace, tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    runs = {}
    for name in ("straight", "killed"):
        config = _config(
            workspace,
            tmp_path / name,
            "finetune.method=full",
            "finetune.freeze_vision=false",
            "training.num_train_epochs=2",  # 24 rows / 4 = 6 steps an epoch; the kill falls in the second
            "training.save_steps=4",
            "training.eval_strategy=no",
            "training.save_total_limit=null",
        )
        runs[name] = save_config(config, tmp_path / f"{name}.yaml")
    straight = _run([sys.executable, str(driver), str(runs["straight"])])
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = _run([sys.executable, str(driver), str(runs["killed"])], {"KILL_AT_STEP": "8"})
    assert killed.returncode == 3, killed.stderr[-3000:]
    assert latest_checkpoint(tmp_path / "killed").endswith("checkpoint-8")
    assert not (tmp_path / "killed" / "model").exists()
    # resume through the command line, with the run folder's own config
    resumed = _run(
        [sys.executable, "-m", "productlens", "train", "--out", str(tmp_path / "killed"), "--resume"]
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "checkpoint-8" in resumed.stdout + resumed.stderr

    a = load_file(tmp_path / "straight" / "model" / "model.safetensors")
    b = load_file(tmp_path / "killed" / "model" / "model.safetensors")
    assert set(a) == set(b)
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    assert any((a[k] - load_file(Path(workspace[2]) / "model.safetensors")[k]).abs().max() > 1e-3 for k in a)
    straight_losses, resumed_losses = _losses(tmp_path / "straight", 12), _losses(tmp_path / "killed", 12)
    assert [s for s, _ in straight_losses] == list(range(1, 13))
    assert [s for s, _ in resumed_losses] == list(range(1, 13))
    assert all(abs(x - y) <= 1e-6 for (_, x), (_, y) in zip(straight_losses, resumed_losses, strict=True))


def test_two_processes_train_one_model(workspace, tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    out = tmp_path / "ddp"
    config = _config(
        workspace,
        out,
        "finetune.method=full",
        "finetune.freeze_vision=false",
        "training.num_train_epochs=1",
        "training.per_device_train_batch_size=3",
        "training.eval_steps=2",
        "training.save_steps=2",
    )
    preset = save_config(config, tmp_path / "ddp.yaml")
    # torchrun: `accelerate launch --cpu` starts one process unless MPI is set up; the Trainer (through
    # accelerate) sees the torchrun environment and trains data-parallel over gloo.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    run = _run([*cmd, str(driver), str(preset)])
    assert run.returncode == 0, run.stderr[-4000:]
    results = [json.loads((out / f"result{r}.json").read_text()) for r in (0, 1)]
    assert results[0] == results[1]
    assert results[0]["world_size"] == 2 and results[0]["total_batch_size"] == 6  # 2 x per-device 3
    assert results[0]["global_step"] == math.ceil(24 / 6)  # one epoch of 24 rows at a global batch of 6
    rank0, rank1 = load_file(out / "rank0.safetensors"), load_file(out / "rank1.safetensors")
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    saved = load_file(out / "model" / "model.safetensors")
    assert all(torch.equal(saved[k], rank0[k]) for k in saved)
    base = load_file(Path(workspace[2]) / "model.safetensors")
    assert any(not torch.equal(saved[k], base[k]) for k in saved)
    state = yaml.safe_load((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert any("eval_category_accuracy" in e for e in state["log_history"])


# ---- issue 13: the real-GPU recipe trains what it says -----------------------------------------------------


def test_qlora_quantizes_the_decoder_only():
    """transformers' own plan (the skip list + `should_convert_module`, as `replace_with_bnb_linear` runs it)
    on a tiny model built on the meta device: no Linear under vision_embed_tokens is quantised."""
    from transformers.quantizers.quantizer_bnb_4bit import Bnb4BitHfQuantizer
    from transformers.quantizers.quantizers_utils import should_convert_module

    from productlens.phi3v.tiny import tiny_config
    from productlens.train import bnb_config

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(tiny_config(400, image_size=56))
    settings = bnb_config(torch.bfloat16, PHI3V)
    skip = Bnb4BitHfQuantizer.get_modules_to_not_convert(
        model, settings.llm_int8_skip_modules, model._keep_in_fp32_modules
    )
    linears = [n for n, m in model.named_modules() if type(m) is torch.nn.Linear]
    quantised = {n for n in linears if should_convert_module(n, skip)}
    vision = {n for n in linears if ".vision_embed_tokens." in f".{n}"}
    assert {
        "model.vision_embed_tokens.img_projection.0",
        "model.vision_embed_tokens.img_projection.2",
    } <= vision
    assert any("img_processor" in n for n in vision)
    assert not quantised & vision, sorted(quantised & vision)
    decoder = {n for n in linears if n.startswith("model.layers.")}
    assert decoder and quantised == decoder  # every decoder Linear, and nothing else (lm_head stays)


class _Weights(TrainerCallback):
    """Keeps the trained weights (as float32 copies) at the end of training."""

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.weights = {n: p.detach().float().clone() for n, p in model.named_parameters()}


def _changed_share(workspace, tmp_path, name, pick, dtype, *overrides):
    """Train 6 steps at 1e-5 through `train` -> share of the picked weights that the updates changed (against
    the base weights as loaded, in `dtype`)."""
    probe = _Weights()
    config = _config(
        workspace,
        tmp_path / name,
        "training.max_steps=6",
        "training.learning_rate=1e-5",
        "training.lr_scheduler_type=constant",
        "training.warmup_steps=0",
        "training.eval_strategy=no",
        "training.save_strategy=no",
        *overrides,
    )
    train(config, callbacks=[probe])
    base = load_file(Path(config.model.path) / "model.safetensors")
    changed = total = 0
    for key, trained in probe.weights.items():
        original = pick(key, base)
        if original is not None:
            changed += int((trained != original.to(dtype).float()).sum())
            total += trained.numel()
    assert total > 0
    return changed / total


def _decoder(key, base):
    return base[key] if key.startswith("model.layers.") and key.endswith("weight") else None


def _projection_copy(key, base):  # LoRA's trainable copy of img_projection (modules_to_save)
    if ".modules_to_save.default." not in key:
        return None
    return base[key.removeprefix("base_model.model.").replace(".modules_to_save.default", "")]


@pytest.mark.parametrize(
    ("method", "pick"), [("full", _decoder), ("lora", _projection_copy)], ids=["full", "lora"]
)
def test_bf16_training_keeps_every_update_as_fp32_does(workspace, tmp_path, method, pick):
    """bf16 weights + training.bf16: trainable weights get an fp32 master copy, so an update at 1e-5 changes as
    many weights as in fp32 (a bf16 weight only moves when the update exceeds half its spacing, ~2^-9)."""
    method_args = [f"finetune.method={method}"]
    fp32 = _changed_share(workspace, tmp_path, "fp32", pick, torch.float32, *method_args)
    bf16_args = ["model.dtype=bfloat16", "training.bf16=true", "training.use_cpu=true"]  # use_cpu: bf16 here
    bf16 = _changed_share(workspace, tmp_path, "bf16", pick, torch.bfloat16, *method_args, *bf16_args)
    assert fp32 > 0.95
    assert bf16 > 0.95, (bf16, fp32)


@pytest.mark.parametrize(
    ("metric", "values", "best"),
    [
        ("eval_price_median_ape", [0.4, 0.2, 0.9], 1),
        ("eval_failure_rate", [0.3, 0.1, 0.5], 1),
        ("price_mae", [90.0, 50.0, 70.0], 1),
        ("eval_category_accuracy", [0.4, 0.2, 0.9], 2),
        ("eval_title_token_f1", [0.5, 0.7, 0.6], 1),
        ("eval_loss", [2.0, 1.5, 1.7], 1),
    ],
)
def test_the_best_checkpoint_follows_the_metric_direction(workspace, tmp_path, metric, values, best):
    """The Trainer's own best-metric logic, fed three evaluations: an error metric keeps its lowest value."""
    config = _config(workspace, tmp_path, f"training.metric_for_best_model={metric}", "finetune.method=full")
    args = training_arguments(config)
    model = load_model(config, args)
    trainer = ProductTrainer(model=model, args=args, eval_dataset=[{}], finetune=config.finetune)
    key = metric if metric.startswith("eval_") else f"eval_{metric}"
    for step, value in enumerate(values):
        trainer.state.global_step = step
        trainer._determine_best_metric({key: value}, None)
    assert trainer.state.best_global_step == best and trainer.state.best_metric == values[best]


def test_an_explicit_greater_is_better_wins_and_an_unknown_metric_asks_for_it(workspace, tmp_path):
    overrides = ["training.metric_for_best_model=eval_price_mae", "training.greater_is_better=true"]
    assert training_arguments(_config(workspace, tmp_path, *overrides)).greater_is_better is True
    config = _config(workspace, tmp_path, "training.metric_for_best_model=eval_my_score")
    with pytest.raises(ValueError, match="greater_is_better"):
        training_arguments(config)
