"""The real-GPU recipe at full size, in one go, on one CUDA GPU: Phi-3-Vision (4.15B parameters, the official
3V config) with random bf16 weights (nothing is downloaded), trained as the presets train it.

For LoRA, QLoRA and full fine-tuning (configs/phi3v-{lora,qlora,full}.yaml, loaded through productlens.train) at
num_crops 4 and 16: samples/s, tokens/s, MFU against the GPU's dense bf16 peak (its spec sheet value, and a bf16
matmul measured in the same run), and peak memory. One optimizer step is amortised over the preset's gradient
accumulation. Plus: whether bf16 training (the full preset's precision, 6 steps at its learning rate) changes the
weights as fp32 would, on a full-width model cut to 2 decoder layers; and batched generation throughput, a timed
slice extrapolated to the 3,040 photos of the reference catalog. Each measurement is a few steps under a time
budget (under 8 minutes on one H200). Writes a JSON and a table in bench/RESULTS.md.

    python bench/bench_gpu.py                  # one CUDA GPU
    python bench/bench_gpu.py --tiny --out /tmp/gpu-bench   # the same code on the CPU, tiny model (CI)

In --tiny mode QLoRA is not run (bitsandbytes 4-bit needs CUDA): the preset's path is followed until
productlens refuses it, and the message is recorded.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import random
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw

import productlens.phi3v  # noqa: F401  (registers phi3_v)
from productlens.config import load_config
from productlens.families import get_family
from productlens.families.collate import FamilyCollator
from productlens.phi3v.configuration import CLIP_VIT_LARGE_PATCH14_336, Phi3VConfig
from productlens.phi3v.image_processing import Phi3VImageProcessor
from productlens.phi3v.modeling import Phi3VForCausalLM
from productlens.phi3v.processing import Phi3VProcessor
from productlens.phi3v.tiny import build_tokenizer, tiny_config
from productlens.task.prompts import AnswerTemplate
from productlens.train import ProductTrainer, load_model, template_of, training_arguments

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
MARK_BEGIN, MARK_END = "<!-- bench_gpu:begin -->", "<!-- bench_gpu:end -->"
METHODS = {"lora": "phi3v-lora", "qlora": "phi3v-qlora", "full": "phi3v-full"}
CROPS = (4, 16)
CATALOG_PHOTOS = 3040  # the reference catalog
# dense bf16 tensor-core peaks from the vendors' spec sheets (no sparsity), FLOP/s
SPEC_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "L4": 121e12}
# 3V rope factors (phi3v-facts 1.1): short exact, long rounded; below 4,096 tokens only the short ones are used
SHORT = [1.05] * 3 + [1.1] * 3 + [1.25] * 2 + [1.4, 1.45, 1.55, 1.85, 1.9] + [2.0] * 19 + [2.1] * 2 + [2.2]
SHORT += [2.35] * 4 + [2.4] * 2 + [2.65, 2.7, 2.9, 2.95] + [3.05] * 3
LONG = [
    1.03,
    1.05,
    1.05,
    1.08,
    1.23,
    1.23,
    1.3,
    1.45,
    1.6,
    1.65,
    1.9,
    2.86,
    3.69,
    5.42,
    5.49,
    5.49,
    9.09,
    11.58,
]
LONG += [
    15.66,
    15.77,
    15.79,
    18.36,
    21.99,
    23.08,
    30.01,
    32.35,
    32.59,
    35.56,
    39.95,
    53.84,
    56.2,
    57.95,
    59.29,
]
LONG += [
    59.77,
    59.92,
    61.19,
    61.96,
    62.5,
    63.37,
    63.48,
    63.48,
    63.66,
    63.85,
    64.08,
    64.76,
    64.8,
    64.81,
    64.81,
]

PHI3V = get_family("phi3v")


# ---- the model -------------------------------------------------------------------------------------------


def phi3v_config(tiny: bool, vocab: int, pad_id: int, stop_ids: list[int], **overrides: Any) -> Phi3VConfig:
    """The official Phi-3-Vision-128K config (4.15B parameters), or the tiny one of the tests."""
    if tiny:
        return tiny_config(vocab, 56, pad_token_id=pad_id, eos_token_id=stop_ids, **overrides)
    values: dict[str, Any] = {
        "vocab_size": 32064,
        "hidden_size": 3072,
        "intermediate_size": 8192,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": 131072,
        "original_max_position_embeddings": 4096,
        "rope_theta": 10000.0,
        "rope_scaling": {"type": "su", "short_factor": SHORT, "long_factor": LONG},
        "sliding_window": 131072,
        "initializer_range": 0.02,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "pad_token_id": pad_id,
        "eos_token_id": stop_ids,
        "vision_config": dict(CLIP_VIT_LARGE_PATCH14_336),
        "img_processor": {
            "image_dim_out": 1024,
            "model_name": "openai/clip-vit-large-patch14-336",
            "name": "clip_vision_model",
            "num_img_tokens": 144,
        },
    }
    values.update(overrides)
    return Phi3VConfig(**values)


def save_model(folder: Path, tiny: bool, device: torch.device, **overrides: Any) -> Path:
    """A random bf16 Phi-3-V in the official layout (+ a small BPE tokenizer with the real special tokens)."""
    tokenizer = build_tokenizer([f"{PROMPT} {a}" for a in ANSWERS] * 4, vocab_size=600)
    stop_ids = [tokenizer.convert_tokens_to_ids("<|end|>"), tokenizer.eos_token_id]
    config = phi3v_config(tiny, len(tokenizer), tokenizer.pad_token_id, stop_ids, **overrides)
    torch.manual_seed(0)
    with torch.device(device):
        model = Phi3VForCausalLM._from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    Phi3VProcessor(Phi3VImageProcessor.for_model(config, num_crops=16), tokenizer).save_pretrained(folder)
    del model
    _free()
    return folder


PROMPT = "What is shown in this image?"
ANSWERS = [
    "Product: Check Cotton Trench Coat, Category: COATS, Full Price: 2490.0",
    "Product: Small Leather Lola Bag, Category: BAGS, Full Price: 1890.0",
    "Product: Vintage Check Cashmere Scarf, Category: SCARVES, Full Price: 590.0",
    "Product: Monogram Motif Leather Belt, Category: BELTS, Full Price: 450.0",
]


def rows(count: int, side: int, seed: int = 0) -> list[dict[str, Any]]:
    """Square product photos (drawn) with a title, category and price: what the collator takes."""
    rng = random.Random(seed)
    out = []
    for k in range(count):
        image = Image.new("RGB", (side, side), (245, 244, 240))
        draw = ImageDraw.Draw(image)
        box = [rng.randrange(side // 3) for _ in range(2)]
        colour = tuple(rng.randrange(40, 220) for _ in range(3))
        draw.rectangle((box[0], box[1], side - box[0], side - box[1] // 2), fill=colour)
        title, category, price = re.match(
            r"Product: (.*), Category: (.*), Full Price: (.*)", ANSWERS[k % 4]
        ).groups()
        out.append(
            {"id": str(k), "image": image, "title": title, "category": category, "price": float(price)}
        )
    return out


# ---- measurements ----------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _peak_bytes(device: torch.device) -> int | None:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def matmul_peak(device: torch.device, side: int, seconds: float) -> float:
    """Measured dense bf16 matmul FLOP/s (the ceiling MFU is also quoted against)."""
    a = torch.randn(side, side, device=device, dtype=torch.bfloat16)
    b = torch.randn(side, side, device=device, dtype=torch.bfloat16)
    a @ b
    _sync(device)
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        runs += 1
        if runs % 10 == 0:
            _sync(device)
    _sync(device)
    return 2 * side**3 * runs / (time.perf_counter() - started)


def matmul_tflops(device: torch.device, tiny: bool) -> float:
    return matmul_peak(device, 256 if tiny else 8192, 0.5 if tiny else 3.0) / 1e12


def bf16_check(folder: Path, tiny: bool, data_rows: list, device: torch.device) -> dict[str, Any]:
    """bf16_versus_fp32 on a full-width model cut to 2 decoder layers (saved to `folder`)."""
    return bf16_versus_fp32(save_model(folder, tiny, device, num_hidden_layers=2), data_rows, device, steps=6)


def model_flops(config: Phi3VConfig, lm_tokens: int, crops: int, method: str, freeze_vision: bool) -> float:
    """Model FLOPs of one training sample (no recompute counted): 2 per parameter and token forward, 2 more for
    the input gradients where a gradient flows, 2 more for weight gradients where weights train (full); plus
    attention scores (PaLM's 12 L d s for forward + backward)."""
    d, layers = config.hidden_size, config.num_hidden_layers
    lm_params = layers * (d * 3 * d + d * d + 3 * d * config.intermediate_size) + d * config.vocab_size
    vision = config.vision_config
    clip_layers = config.feature_layer % (vision.num_hidden_layers + 1)
    clip_params = clip_layers * (
        4 * vision.hidden_size**2 + 2 * vision.hidden_size * vision.intermediate_size
    )
    clip_tokens = (crops + 1) * ((vision.image_size // vision.patch_size) ** 2 + 1)
    lm_factor = 6 if method == "full" else 4
    clip_factor = 6 if method == "full" and not freeze_vision else 2
    attention = 12 * layers * d * lm_tokens * lm_tokens * (lm_factor / 6) / 2  # causal: half the scores
    return lm_factor * lm_params * lm_tokens + clip_factor * clip_params * clip_tokens + attention


def preset(name: str, base: Path, device: torch.device, *extra: str) -> Any:
    """A preset as the recipe resolves it, on the bench's model; no evaluation, W&B or checkpoints."""
    overrides = [f"model.path={base}", f"training.output_dir={tempfile.gettempdir()}/bench-gpu"]
    overrides += [
        "training.report_to=none",
        "training.eval_strategy=no",
        "training.load_best_model_at_end=false",
    ]
    overrides += ["training.save_strategy=no"] + ["training.use_cpu=true"] * (device.type == "cpu")
    return load_config(name, [*overrides, *extra])


def forward_backward(model: Any, batch: dict, device: torch.device, bf16: bool) -> float:
    """One micro-batch forward and backward, under bf16 autocast when the preset trains in bf16."""
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        loss = model(**batch).loss
    loss.backward()
    return float(loss.detach())


def optimizer_step(optimizer: Any, trainable: list, max_grad_norm: float) -> None:
    """Clip, step, zero: what the Trainer does once per accumulated batch."""
    torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def train_steps(
    method: str,
    base: Path,
    data_rows: list,
    device: torch.device,
    steps: int,
    seconds_left: float,
) -> list[dict[str, Any]]:
    """One preset, loaded once through productlens.train; each num_crops measured with a few steps."""
    out: list[dict[str, Any]] = []
    config = preset(METHODS[method], base, device)
    args = training_arguments(config)
    began = time.perf_counter()
    try:
        model = load_model(config, args)
    except (RuntimeError, ImportError) as error:  # QLoRA without bitsandbytes / CUDA
        return [{"method": method, "num_crops": c, "error": str(error)} for c in CROPS]
    if method != "qlora":
        model.to(device)
    if args.activation_checkpointing:  # as Trainer.train does
        model.activation_checkpointing_enable(
            activation_checkpointing_kwargs=args.activation_checkpointing_kwargs
        )
    model.train()
    optimizer = ProductTrainer(model=model, args=args, finetune=config.finetune).create_optimizer()
    load_seconds = time.perf_counter() - began
    trainable = [p for p in model.parameters() if p.requires_grad]
    base_config = Phi3VConfig.from_pretrained(base)
    for crops in CROPS:
        if time.perf_counter() - began > seconds_left:
            out.append({"method": method, "num_crops": crops, "error": "skipped: time budget spent"})
            continue
        processor = Phi3VProcessor.from_pretrained(base, num_crops=crops)
        collate = FamilyCollator(PHI3V, processor, template_of(config))
        size = args.per_device_train_batch_size
        batch = {k: v.to(device) for k, v in collate(data_rows[:size]).items()}
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

        step_once = (model, batch, device, bool(args.bf16))
        forward_backward(*step_once)  # warm-up, and the optimizer's state
        optimizer_step(optimizer, trainable, args.max_grad_norm)
        _sync(device)
        started = time.perf_counter()
        for _ in range(steps):
            forward_backward(*step_once)
        _sync(device)
        fb = (time.perf_counter() - started) / steps
        started = time.perf_counter()
        optimizer_step(optimizer, trainable, args.max_grad_norm)
        _sync(device)
        step = time.perf_counter() - started
        accumulation = args.gradient_accumulation_steps
        per_sample = (fb * accumulation + step) / (accumulation * size)
        tokens = int(batch["attention_mask"].sum()) / size
        flops = model_flops(base_config, int(tokens), crops, method, config.finetune.freeze_vision)
        out.append(
            {
                "method": method,
                "num_crops": crops,
                "batch_size": size,
                "gradient_accumulation_steps": accumulation,
                "tokens_per_sample": tokens,
                "samples_per_s": 1 / per_sample,
                "tokens_per_s": tokens / per_sample,
                "model_tflop_per_sample": flops / 1e12,
                "achieved_tflop_per_s": flops / per_sample / 1e12,
                "forward_backward_s": fb,
                "optimizer_step_s": step,
                "peak_memory_gib": (_peak_bytes(device) or 0) / 2**30 or None,
                "load_s": load_seconds,
                "trainable_parameters": sum(p.numel() for p in trainable),
            }
        )
        del batch, step_once
    del model, optimizer, trainable
    _free()
    return out


def bf16_versus_fp32(base: Path, data_rows: list, device: torch.device, steps: int) -> dict[str, Any]:
    """The full preset's precision against fp32, same batches and optimizer, `steps` steps at its learning
    rate: share of decoder weights changed by each, and the cosine between the two updates."""
    deltas, shares = {}, {}
    for name, extra in (("preset", []), ("fp32", ["model.dtype=float32", "training.bf16=false"])):
        config = preset("phi3v-full", base, device, *extra)
        args = training_arguments(config)
        torch.manual_seed(0)
        model = load_model(config, args).to(device).train()
        before = {
            n: p.detach().float().cpu().clone()
            for n, p in model.named_parameters()
            if n.startswith("model.layers.")
        }
        optimizer = ProductTrainer(model=model, args=args, finetune=config.finetune).create_optimizer()
        processor = Phi3VProcessor.from_pretrained(base, num_crops=4)
        collate = FamilyCollator(PHI3V, processor, template_of(config))
        for k in range(steps):
            batch = {key: v.to(device) for key, v in collate(data_rows[k : k + 1]).items()}
            forward_backward(model, batch, device, bool(args.bf16))
            optimizer_step(optimizer, [p for p in model.parameters() if p.requires_grad], args.max_grad_norm)
        after = {n: p.detach().float().cpu() for n, p in model.named_parameters() if n in before}
        deltas[name] = torch.cat([(after[n] - before[n]).flatten() for n in before])
        shares[name] = float((deltas[name] != 0).float().mean())
        dtype = str(next(model.parameters()).dtype)
        shares[f"{name}_dtype"] = dtype
        del model, optimizer
        _free()
    cosine = float(torch.nn.functional.cosine_similarity(deltas["preset"], deltas["fp32"], dim=0))
    norm_ratio = float(deltas["preset"].norm() / deltas["fp32"].norm())
    ok = shares["preset"] >= 0.9 * shares["fp32"] and cosine >= 0.9 and 0.8 <= norm_ratio <= 1.25
    return {
        "steps": steps,
        "share_changed_preset": shares["preset"],
        "share_changed_fp32": shares["fp32"],
        "preset_weight_dtype": shares["preset_dtype"],
        "update_cosine": cosine,
        "update_norm_ratio": norm_ratio,
        "as_fp32": ok,
    }


def generation(base: Path, data_rows: list, device: torch.device, batch: int, new_tokens: int, batches: int):
    """Batched greedy generation of `new_tokens` tokens per photo (the base model in bf16): a timed slice of
    `batches` batches, extrapolated to the 3,040 photos of the reference catalog, per num_crops."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16).to(device).eval()
    prompt_text = None
    out = []
    for crops in CROPS:
        processor = Phi3VProcessor.from_pretrained(base, num_crops=crops)
        prompt_text = processor.chat_prompt(AnswerTemplate().question)
        images = [row["image"] for row in data_rows[:batch]]
        inputs = processor(
            text=[prompt_text] * len(images), images=images, padding_side="left", return_tensors="pt"
        )
        inputs = {
            k: v.to(device, torch.bfloat16) if k == "pixel_values" else v.to(device)
            for k, v in inputs.items()
        }
        settings = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False}
        settings["pad_token_id"] = processor.pad_token_id
        with torch.inference_mode():
            model.generate(**inputs, **settings)  # warm-up
            _sync(device)
            started = time.perf_counter()
            for _ in range(batches):
                model.generate(**inputs, **settings)
            _sync(device)
        seconds = (time.perf_counter() - started) / batches
        photos_per_s = len(images) / seconds
        out.append(
            {
                "num_crops": crops,
                "batch_size": len(images),
                "prompt_tokens": int(inputs["input_ids"].shape[1]),
                "new_tokens": new_tokens,
                "photos_per_s": photos_per_s,
                "new_tokens_per_s": photos_per_s * new_tokens,
                "catalog_minutes": CATALOG_PHOTOS / photos_per_s / 60,
                "timed_photos": len(images) * batches,
            }
        )
    del model
    _free()
    return out


# ---- report ----------------------------------------------------------------------------------------------


def _error(part: Any) -> str | None:
    return part.get("error") if isinstance(part, dict) else None


def table(results: dict[str, Any]) -> str:
    """The results as Markdown (what goes between the markers in bench/RESULTS.md)."""
    env, measured = results["environment"], results["measured_bf16_tflops"]
    spec = env["spec_bf16_tflops"]
    measured_text = f"{measured:.3g} TFLOP/s" if not _error(measured) else _error(measured)
    lines = [
        f"Device: {env['device']}; torch {env['torch']}; {'tiny CPU mode' if results['tiny'] else 'full size'}; "
        f"{results['seconds']:.0f} s in all. Dense bf16 peak: spec {f'{spec:g} TFLOP/s' if spec else 'n/a'}, "
        f"measured (bf16 matmul, same run) {measured_text}.",
        "",
        "| method | num_crops | batch x accum | tokens/sample | samples/s | tokens/s | MFU (spec) | MFU (measured) "
        "| peak GiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["training"]:
        if "error" in row:
            lines.append(f"| {row['method']} | {row.get('num_crops', '')} | not run: {row['error']} |||||||")
            continue
        achieved = row["achieved_tflop_per_s"]
        mfu_spec = f"{achieved / spec:.1%}" if spec else "n/a"
        mfu_measured = f"{achieved / measured:.1%}" if not _error(measured) else "n/a"
        memory = f"{row['peak_memory_gib']:.1f}" if row["peak_memory_gib"] else "n/a"
        lines.append(
            f"| {row['method']} | {row['num_crops']} | {row['batch_size']} x {row['gradient_accumulation_steps']} "
            f"| {row['tokens_per_sample']:.0f} | {row['samples_per_s']:.2f} | {row['tokens_per_s']:,.0f} "
            f"| {mfu_spec} | {mfu_measured} | {memory} |"
        )
    check = results["bf16_check"]
    lines.append("")
    if _error(check):
        lines.append(f"bf16 against fp32: not run: {_error(check)}")
    else:
        lines.append(
            f"bf16 against fp32 (full preset on a 2-layer cut, {check['steps']} steps, weights "
            f"{check['preset_weight_dtype']}): decoder weights changed {check['share_changed_preset']:.1%} against "
            f"{check['share_changed_fp32']:.1%} in fp32; update cosine {check['update_cosine']:.3f}, norm ratio "
            f"{check['update_norm_ratio']:.2f}: {'as fp32' if check['as_fp32'] else 'NOT as fp32'}."
        )
    lines += [
        "",
        "| generation | batch | prompt tokens | new tokens | photos/s | new tokens/s | 3,040 photos |",
    ]
    lines.append("|---|---|---|---|---|---|---|")
    if _error(results["generation"]):
        lines.append(f"| not run: {_error(results['generation'])} |||||||")
    else:
        for row in results["generation"]:
            lines.append(
                f"| num_crops {row['num_crops']} | {row['batch_size']} | {row['prompt_tokens']} "
                f"| {row['new_tokens']} | {row['photos_per_s']:.2f} | {row['new_tokens_per_s']:,.0f} "
                f"| {row['catalog_minutes']:.1f} min (from {row['timed_photos']} timed) |"
            )
    return "\n".join(lines)


def write_results_md(path: Path, text: str) -> None:
    """Replace the bench_gpu section of RESULTS.md (between its markers) with `text`."""
    current = path.read_text()
    if MARK_BEGIN not in current or MARK_END not in current:
        raise ValueError(f"{path} has no {MARK_BEGIN} ... {MARK_END} section to fill")
    head, rest = current.split(MARK_BEGIN, 1)
    _, tail = rest.split(MARK_END, 1)
    path.write_text(f"{head}{MARK_BEGIN}\n{text}\n{MARK_END}{tail}")


def guarded(results: dict[str, Any], key: str, seconds: dict[str, float], run: Any, *args: Any) -> None:
    """results[key] = run(*args); an exception (out of memory, a missing library) is recorded, not fatal, so
    one failing measurement does not cost the others."""
    began = time.perf_counter()
    try:
        results[key] = run(*args)
    except Exception as error:  # a benchmark run in one go keeps what it can
        results[key] = {"error": f"{type(error).__name__}: {error}"[:300]}
        _free()
    seconds[key] = time.perf_counter() - began


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny model on the CPU (what CI runs)")
    parser.add_argument("--out", type=Path, default=RESULTS.parent, help="folder for gpu-results.json")
    parser.add_argument("--results", type=Path, default=None, help="RESULTS.md to fill (full mode: bench/'s)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="time for all the measurements")
    args = parser.parse_args(argv)
    if not args.tiny and not torch.cuda.is_available():
        parser.error("no CUDA GPU here; run it on one GPU, or add --tiny for the CPU check")
    started = time.perf_counter()
    device = torch.device("cpu") if args.tiny else torch.device("cuda", torch.cuda.current_device())
    name = (platform.processor() or "CPU") if args.tiny else torch.cuda.get_device_name(device)
    spec = next((v / 1e12 for k, v in SPEC_BF16.items() if not args.tiny and k in name), None)
    results: dict[str, Any] = {"tiny": args.tiny}
    seconds: dict[str, float] = {}
    guarded(results, "measured_bf16_tflops", seconds, matmul_tflops, device, args.tiny)
    steps, reserve, side = (1, 30, 112) if args.tiny else (3, 100, 800)
    data = rows(8, side)
    with tempfile.TemporaryDirectory() as tmp:
        guarded(results, "model", seconds, save_model, Path(tmp) / "phi3v", args.tiny, device)
        base = results.pop("model")
        results["training"] = []
        for method in METHODS:
            left = args.budget_s - (time.perf_counter() - started) - reserve
            guarded(results, method, seconds, train_steps, method, base, data, device, steps, left)
            found = results.pop(method)
            results["training"] += [{"method": method, **found}] if "error" in found else found
        cut = Path(tmp) / "phi3v-2layers"
        guarded(results, "bf16_check", seconds, bf16_check, cut, args.tiny, data, device)
        batch, batches, new_tokens = (4, 1, 8) if args.tiny else (32, 2, 32)
        guarded(
            results, "generation", seconds, generation, base, data * 4, device, batch, new_tokens, batches
        )
    results["seconds"] = time.perf_counter() - started
    results["phase_seconds"] = seconds
    results["environment"] = {"device": name, "torch": torch.__version__, "spec_bf16_tflops": spec}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu-results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    text = table(results)
    print(text)
    target = args.results or (None if args.tiny else RESULTS)
    if target is not None:
        write_results_md(target, text)
    return results


if __name__ == "__main__":
    main()
