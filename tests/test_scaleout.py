"""The scale-out configs in configs/accelerate/ run: `accelerate launch` with two processes on the CPU (gloo), a
few steps on the tiny model. DDP and DeepSpeed ZeRO-2 / ZeRO-3 (DeepSpeed's CPU accelerator) train, both ranks
end with the same weights, ZeRO-3 reaches the same weights as DDP, and what ZeRO saves reloads as an ordinary
model or adapter folder (safetensors, official names). FSDP: accelerate runs it only on GPUs, so on the CPU the
run stops with a clear error instead of silently training plain DDP."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_train import SHAPES, make_prepared

from productlens.config import load_config, save_config
from productlens.phi3v.tiny import save_tiny_model

ACCELERATE = Path(__file__).resolve().parents[1] / "configs" / "accelerate"
LAUNCH = [
    sys.executable,
    "-m",
    "accelerate.commands.launch",
    "--num_processes",
    "2",
    "--mixed_precision",
    "no",
]

DRIVER = """
import contextlib, json, sys
from pathlib import Path
from accelerate.state import AcceleratorState
from safetensors.torch import save_file
from transformers import TrainerCallback
from productlens.config import load_config
from productlens.train import end_distributed, train

class Probe(TrainerCallback):
    def on_train_end(self, args, state, control, model=None, **kwargs):
        params = list(model.parameters())
        gather = contextlib.nullcontext()
        if any(hasattr(p, "ds_id") for p in params):  # ZeRO-3: each rank holds a shard; gather them all
            import deepspeed
            gather = deepspeed.zero.GatheredParameters(params)
        with gather:
            weights = {n: p.detach().clone().contiguous() for n, p in model.named_parameters()}
        save_file(weights, str(Path(args.output_dir) / f"rank{args.process_index}.safetensors"))
        plugin = getattr(AcceleratorState(), "deepspeed_plugin", None)
        info = {"type": str(AcceleratorState().distributed_type), "zero_stage": plugin and plugin.zero_stage,
                "sharded": any(hasattr(p, "ds_id") for p in params), "world_size": args.world_size}
        Path(args.output_dir, f"info{args.process_index}.json").write_text(json.dumps(info))

train(load_config(sys.argv[1]), callbacks=[Probe()])
end_distributed()  # as `productlens train` does
"""


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("scaleout")
    data = make_prepared(root / "data", sizes=(16, 4, 4))
    texts = [
        f"What is shown in this image? Product: {t}, Category: {c}" for t in ("Small Bag",) for c in SHAPES
    ]
    model = save_tiny_model(root / "base", texts * 4, vocab_size=350, image_size=56, num_crops=1)
    driver = root / "driver.py"
    driver.write_text(DRIVER)
    return root, data, model, driver


def _launch(workspace, name: str, method: str, config_file: str):
    root, data, model, driver = workspace
    out = root / name
    config = load_config(
        None,
        [
            f"model.path={model}",
            f"data.path={data}",
            f"training.output_dir={out}",
            f"finetune.method={method}",
            "finetune.freeze_vision=false",
            "training.report_to=none",
            "training.per_device_train_batch_size=2",
            "training.max_steps=3",
            "training.save_steps=3",
            "training.logging_steps=1",
            "training.learning_rate=1e-3",
            "training.eval_strategy=no",
            "training.disable_tqdm=true",
        ],
    )
    preset = save_config(config, root / f"{name}.yaml")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [*LAUNCH, "--config_file", str(ACCELERATE / config_file), str(driver), str(preset)]
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    infos = [json.loads((out / f"info{r}.json").read_text()) for r in (0, 1)]
    assert infos[0] == infos[1] and infos[0]["world_size"] == 2
    rank0, rank1 = load_file(out / "rank0.safetensors"), load_file(out / "rank1.safetensors")
    assert rank0.keys() == rank1.keys() and all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    return out, infos[0], rank0


def test_ddp_and_zero3_full_fine_tuning_agree_and_zero3_saves_an_ordinary_model(workspace):
    ddp, info, ddp_weights = _launch(workspace, "ddp", "full", "ddp.yaml")
    assert info["type"] == "DistributedType.MULTI_CPU" and not info["sharded"]
    zero3, info, zero3_weights = _launch(workspace, "zero3", "full", "deepspeed-zero3.yaml")
    assert info["type"] == "DistributedType.DEEPSPEED" and info["zero_stage"] == 3 and info["sharded"]

    # the same data, batches and optimizer: sharding changes where the numbers live, not what they are
    base = load_file(workspace[2] / "model.safetensors")
    assert any(not torch.equal(ddp_weights[k], base[k]) for k in base)
    assert max((ddp_weights[k] - zero3_weights[k]).abs().max().item() for k in base) < 1e-4

    # ZeRO-3's gathered 16-bit save (here fp32) is an ordinary model folder: official names and shapes
    saved = load_file(zero3 / "model" / "model.safetensors")
    assert saved.keys() == base.keys() == load_file(ddp / "model" / "model.safetensors").keys()
    assert all(torch.equal(saved[k], zero3_weights[k]) for k in saved)
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(zero3 / "model")
    assert all(torch.equal(p, saved[n]) for n, p in reloaded.state_dict().items() if n in saved)
    assert (zero3 / "checkpoint-3" / "model.safetensors").is_file()
    pickles = [p.name for p in (zero3 / "model").iterdir() if p.suffix in (".bin", ".pt", ".pth")]
    assert pickles == ["training_args.bin"]  # the Trainer's settings; no weights outside safetensors


def test_zero2_lora_trains_and_saves_an_ordinary_adapter(workspace):
    out, info, weights = _launch(workspace, "zero2", "lora", "deepspeed-zero2.yaml")
    assert info["type"] == "DistributedType.DEEPSPEED" and info["zero_stage"] == 2
    adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    assert any(".lora_A." in k for k in adapter) and any("img_projection.0" in k for k in adapter)

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(workspace[2]), out / "adapter")
    trained = {n: p for n, p in model.named_parameters() if ".lora_" in n or "modules_to_save" in n}
    assert trained and all(torch.equal(p, weights[n]) for n, p in trained.items())
    assert any(p.abs().sum() > 0 for n, p in trained.items() if ".lora_B." in n)  # B starts at zero


def test_fsdp_on_the_cpu_stops_with_a_clear_error(workspace):
    root, data, model, _ = workspace
    command = [*LAUNCH, "--config_file", str(ACCELERATE / "fsdp.yaml"), "-m", "productlens", "train"]
    command += ["--data", str(data), "--model", str(model), "--out", str(root / "fsdp")]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    assert "error: FSDP (configs/accelerate/fsdp.yaml) needs GPUs" in run.stderr
    assert not (root / "fsdp" / "model").exists()
