"""GPU memory estimates for LoRA and QLoRA training of each model family at its real size, from the real
architectures (no weights, no GPU: an estimate; bench/bench_gpu.py measures on a GPU when one is lent).

In: the families' real hyperparameters (the checkpoints' config.json values, below) and the presets in configs/
(batch size, LoRA rank, cost knob). Out: a markdown table on stdout.

    python bench/memory_table.py

Parameters are counted exactly: each real config is built with transformers' config classes (productlens.phi3v's
for Phi-3-V) and the model instantiated on the meta device; the family's `part_of` splits the count into vision
tower / projector / language model, its `lora_target_modules` picks the LoRA layers (r * (in + out) each) and
transformers' own QLoRA plan (`should_convert_module` with the family's `quantization_skip_modules`) picks the 4-bit
Linear layers. Image tokens per photo are exact: the image processor's own arithmetic at the preset's cost knob,
the most over five photo shapes (1:1, 4:3, 3:4, 16:9, 9:16, long side 1600 px). Memory, in GiB (2^30 bytes):

    weights      LoRA: 2 B/param (bf16, frozen); QLoRA: 0.516 B/param for the 4-bit Linear layers (NF4 with double
                 quantisation, ~4.13 bits) and 2 B/param for the rest (tower, projector, embeddings, norms, lm_head)
    trained      LoRA adapters + the projector's trainable copy (trained whole unless finetune.freeze_projection;
                 PEFT keeps the frozen original too), float32 master weights: 16 B/param (weight 4, grad 4, Adam 8);
                 QLoRA with paged_adamw_8bit: 10 B/param
    activations  gradient checkpointing per decoder layer, bf16, B rows of S = image tokens + 128 text tokens:
                 B*S*H*2 bytes kept per layer, + one layer recomputed in backward, B*S*(12H + 6I)*2 bytes (norms,
                 q/k/v/o, MLP, LoRA dropout copies; sdpa, no S^2 attention matrix), + the logits, B*S*V*12 bytes
                 (bf16 logits, their float32 copy and log-softmax for the loss, the bf16 gradient), + the frozen
                 tower's forward working set, B*patches*H_vision*16 bytes (no gradient flows into it)
    overhead     1 GiB (CUDA context, cuBLAS workspace, allocator slack)

A card "fits" when the estimate is at most 90% of its memory (N GB taken as N GiB). What this leaves out:
fragmentation beyond the slack, evaluation-time generation, a longer answer template, and eager attention.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from typing import Any

import torch

from productlens.config import load_config
from productlens.families import Family, get_family

GIB = 2**30
TEXT_TOKENS = 128  # chat template, image markers, question and answer: an upper bound for the product task
PHOTO_SHAPES = ((1600, 1600), (1600, 1200), (1200, 1600), (1600, 900), (900, 1600))  # (width, height)
CARDS_GB = (16, 24, 40, 80)
HEADROOM = 0.9
OVERHEAD_GIB = 1.0
NF4_BYTES = 0.516  # 4-bit NF4 + double-quantised absmax per 64 weights
LOGIT_BYTES = 12
LORA_TRAINED_BYTES, QLORA_TRAINED_BYTES = 16, 10  # fp32 weight + grad + Adam (fp32 / 8-bit paged) states

# ---- the real checkpoints' hyperparameters (their config.json) ------------------------------------------------

QWEN2_5_VL_VISION = {
    "depth": 32,
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "num_heads": 16,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31],
}
QWEN2_5_VL_ROPE = {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [16, 24, 24]}


def qwen2_5_vl_config(
    hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, vocab: int, tie: bool
):
    """Qwen2.5-VL-3B/7B-Instruct: the same 32-block vision tower, a Qwen2 decoder."""
    from transformers import Qwen2_5_VLConfig

    text = {
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "vocab_size": vocab,
        "tie_word_embeddings": tie,
        "rope_parameters": QWEN2_5_VL_ROPE,
    }
    vision = {**QWEN2_5_VL_VISION, "out_hidden_size": hidden}
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=tie)


def smolvlm2_2b_config():
    """SmolVLM2-2.2B-Instruct: SigLIP so400m on 384-px crops, 3x3 pixel shuffle, a SmolLM2-1.7B decoder."""
    from transformers import SmolVLMConfig

    vision = {
        "hidden_size": 1152,
        "intermediate_size": 4304,
        "num_hidden_layers": 27,
        "num_attention_heads": 16,
        "image_size": 384,
        "patch_size": 14,
    }
    text = {
        "model_type": "llama",
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 24,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "vocab_size": 49280,
        "tie_word_embeddings": False,
    }
    return SmolVLMConfig(vision_config=vision, text_config=text, scale_factor=3, tie_word_embeddings=False)


def gemma3_4b_config():
    """gemma-3-4b-it: SigLIP so400m on one 896-px view pooled to 256 tokens, a 34-layer Gemma 3 decoder."""
    from transformers import Gemma3Config

    text = {
        "hidden_size": 2560,
        "intermediate_size": 10240,
        "num_hidden_layers": 34,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "head_dim": 256,
        "query_pre_attn_scalar": 256,
        "vocab_size": 262208,
        "sliding_window": 1024,
    }
    vision = {
        "hidden_size": 1152,
        "intermediate_size": 4304,
        "num_hidden_layers": 27,
        "num_attention_heads": 16,
        "image_size": 896,
        "patch_size": 14,
        "vision_use_head": False,
    }
    return Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=256)


def phi3v_config():
    """Phi-3-vision-128k-instruct / Phi-3.5-vision-instruct (same sizes): CLIP ViT-L/14-336, a Phi-3-mini decoder."""
    from productlens.phi3v.configuration import Phi3VConfig

    return Phi3VConfig(
        hidden_size=3072,
        intermediate_size=8192,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32064,
        tie_word_embeddings=False,
        img_processor={"image_dim_out": 1024, "num_img_tokens": 144},
    )


@dataclass(frozen=True)
class Row:
    family: str
    size: str
    hub_id: str
    preset: str  # configs/NAME.yaml: batch size, LoRA rank, cost knob
    config: Any  # () -> the real architecture config


ROWS = (
    Row("phi3v", "4.2B", "microsoft/Phi-3-vision-128k-instruct", "phi3v-lora", phi3v_config),
    Row("phi3v", "4.2B", "microsoft/Phi-3.5-vision-instruct", "phi35v-lora", phi3v_config),
    Row(
        "qwen2_5_vl",
        "3B",
        "Qwen/Qwen2.5-VL-3B-Instruct",
        "qwen2_5-vl-3b-lora",
        lambda: qwen2_5_vl_config(2048, 11008, 36, 16, 2, 151936, True),
    ),
    Row(
        "qwen2_5_vl",
        "7B",
        "Qwen/Qwen2.5-VL-7B-Instruct",
        "qwen2_5-vl-3b-lora",
        lambda: qwen2_5_vl_config(3584, 18944, 28, 28, 4, 152064, False),
    ),
    Row("smolvlm", "2.2B", "HuggingFaceTB/SmolVLM2-2.2B-Instruct", "smolvlm2-2b-lora", smolvlm2_2b_config),
    Row("gemma3", "4B", "google/gemma-3-4b-it", "gemma3-4b-lora", gemma3_4b_config),
)

# ---- the model on the meta device ---------------------------------------------------------------------------


def meta_model(family: Family, config: Any) -> torch.nn.Module:
    """The architecture with parameters on the meta device (shapes only, no memory)."""
    with torch.device("meta"):
        if family.name == "phi3v":
            from productlens.phi3v.modeling import Phi3VForCausalLM

            return Phi3VForCausalLM(config)
        from transformers import AutoModelForImageTextToText

        return AutoModelForImageTextToText.from_config(config)


def parameter_counts(family: Family, model: torch.nn.Module) -> dict[str, int]:
    """{'vision', 'projection', 'language'} -> parameters (tied weights once, as the checkpoints count them)."""
    counts = {"vision": 0, "projection": 0, "language": 0}
    for name, parameter in model.named_parameters():
        counts[family.part_of(name)] += parameter.numel()
    return counts


def quantized_parameters(family: Family, model: torch.nn.Module) -> int:
    """Parameters in the Linear layers transformers' bitsandbytes plan turns into 4-bit ones, given the family's
    skip list (as `replace_with_bnb_linear` decides: `should_convert_module`)."""
    from transformers.quantizers.quantizer_bnb_4bit import Bnb4BitHfQuantizer
    from transformers.quantizers.quantizers_utils import should_convert_module

    skip = Bnb4BitHfQuantizer.get_modules_to_not_convert(
        model, family.quantization_skip_modules(), model._keep_in_fp32_modules
    )
    return sum(
        module.weight.numel()
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and should_convert_module(name, skip)
    )


def lora_parameters(family: Family, model: torch.nn.Module, rank: int, targets: Any = None) -> int:
    """Adapter parameters, r * (in + out) per Linear that the family's PEFT target regex matches (fullmatch)."""
    pattern = re.compile(family.lora_target_modules(targets))
    return sum(
        rank * (module.in_features + module.out_features)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and pattern.fullmatch(name)
    )


# ---- image tokens per photo, from each image processor's own arithmetic ---------------------------------------


def image_tokens(
    family: Family, config: Any, cost: dict[str, Any], width: int, height: int
) -> tuple[int, int]:
    """(image-feature tokens the language model gets, patches the vision tower sees) for a photo of this size."""
    if family.name == "phi3v":
        from productlens.phi3v.image_processing import Phi3VImageProcessor, hd_grid

        processor = Phi3VImageProcessor.for_model(config, num_crops=cost["num_crops"])
        _, _, rows, cols = hd_grid(width, height, processor.num_crops, processor.crop_size)
        patches = (rows * cols + 1) * (config.crop_size // config.vision_config.patch_size) ** 2
        return processor.num_image_tokens(width, height), patches
    if family.name == "qwen2_5_vl":
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        vision = config.vision_config
        processor = Qwen2VLImageProcessorPil(
            patch_size=vision.patch_size,
            merge_size=vision.spatial_merge_size,
            size={"shortest_edge": cost["min_pixels"], "longest_edge": cost["max_pixels"]},
        )
        patches = processor.get_number_of_image_patches(height, width)
        return patches // vision.spatial_merge_size**2, patches
    if family.name == "smolvlm":
        from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil

        vision = config.vision_config
        processor = SmolVLMImageProcessorPil(
            size=cost["size"], max_image_size={"longest_edge": vision.image_size}, do_image_splitting=True
        )
        crops = max(processor.get_number_of_image_patches(height, width)[0], 1)  # split crops + global view
        per_crop = (vision.image_size // vision.patch_size) ** 2
        return crops * per_crop // config.scale_factor**2, crops * per_crop
    if family.name == "gemma3":
        if cost.get("do_pan_and_scan"):
            raise ValueError("the table assumes pan-and-scan off (one 896-px view per photo)")
        vision = config.vision_config
        return config.mm_tokens_per_image, (vision.image_size // vision.patch_size) ** 2
    raise ValueError(f"no image-token arithmetic for {family.name}")


def most_image_tokens(family: Family, config: Any, cost: dict[str, Any]) -> tuple[int, int]:
    """The largest (tokens, patches) over PHOTO_SHAPES."""
    return max(image_tokens(family, config, cost, w, h) for w, h in PHOTO_SHAPES)


# ---- the estimate ----------------------------------------------------------------------------------------------


def text_sizes(config: Any) -> tuple[int, int, int, int]:
    """(hidden, intermediate, layers, vocab) of the language model."""
    text = config.get_text_config()
    return text.hidden_size, text.intermediate_size, text.num_hidden_layers, text.vocab_size


def estimate(row: Row) -> dict[str, Any]:
    """One row: parameter counts, image tokens, LoRA and QLoRA GiB at the preset's batch size."""
    family = get_family(row.family)
    preset = load_config(row.preset, [f"model.path={row.hub_id}"])
    config = row.config()
    model = meta_model(family, config)
    counts = parameter_counts(family, model)
    total = sum(counts.values())
    cost = {**family.recommended_cost, **preset.model.cost}
    if preset.model.num_crops is not None:
        cost["num_crops"] = preset.model.num_crops
    tokens, patches = most_image_tokens(family, config, cost)
    batch = int(preset.training["per_device_train_batch_size"])
    adapters = lora_parameters(family, model, preset.lora.r, preset.lora.targets)
    projector = 0 if preset.finetune.freeze_projection else counts["projection"]
    quantized = quantized_parameters(family, model)

    hidden, intermediate, layers, vocab = text_sizes(config)
    seq = tokens + TEXT_TOKENS
    vision_width = config.vision_config.hidden_size
    activations = (
        batch * seq * (layers * hidden * 2 + (12 * hidden + 6 * intermediate) * 2 + vocab * LOGIT_BYTES)
    )
    activations += batch * patches * vision_width * 16
    lora = 2 * total + LORA_TRAINED_BYTES * (adapters + projector) + activations
    qlora = NF4_BYTES * quantized + 2 * (total - quantized) + QLORA_TRAINED_BYTES * (adapters + projector)
    qlora += activations
    return {
        "row": row,
        "counts": counts,
        "total": total,
        "quantized": quantized,
        "adapters": adapters,
        "cost": cost,
        "image_tokens": tokens,
        "batch": batch,
        "seq": seq,
        "lora_gib": lora / GIB + OVERHEAD_GIB,
        "qlora_gib": qlora / GIB + OVERHEAD_GIB,
    }


def smallest_card(gib: float) -> str:
    """The smallest of CARDS_GB the estimate fits on (at HEADROOM), e.g. '24 GB'."""
    card = next((gb for gb in CARDS_GB if gib <= HEADROOM * gb), None)
    return f"{card} GB" if card else f"> {CARDS_GB[-1]} GB"


def _billions(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e8 else f"{n / 1e6:.0f}M"


def _cost(cost: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v['longest_edge'] if isinstance(v, dict) else v}" for k, v in cost.items())


def table(results: list[dict[str, Any]]) -> str:
    """Markdown table, one line per row."""
    lines = [
        "| family | checkpoint | params: total (vision / projector / language) | cost knob | image tokens/photo "
        "| preset: batch x seq | LoRA GiB | QLoRA GiB | fits: LoRA | fits: QLoRA |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        c = r["counts"]
        params = (
            f"{_billions(r['total'])} ({_billions(c['vision'])} / {_billions(c['projection'])} / "
            f"{_billions(c['language'])})"
        )
        lines.append(
            f"| {r['row'].family} {r['row'].size} | {r['row'].hub_id} | {params} | {_cost(r['cost'])} "
            f"| {r['image_tokens']} | {r['row'].preset}: {r['batch']} x {r['seq']} | {r['lora_gib']:.1f} "
            f"| {r['qlora_gib']:.1f} | {smallest_card(r['lora_gib'])} | {smallest_card(r['qlora_gib'])} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.parse_args(argv)
    results = [estimate(row) for row in ROWS]
    print(table(results))
    print(
        f"\nEstimates, not measurements (formula: bench/memory_table.py). Image tokens: the most over "
        f"{len(PHOTO_SHAPES)} photo shapes; seq = image tokens + {TEXT_TOKENS} text tokens. Fits: estimate "
        f"<= {HEADROOM:.0%} of the card. QLoRA at the LoRA preset's batch size, with paged_adamw_8bit."
    )
    return results


if __name__ == "__main__":
    main()
