"""Export a fine-tuned model of a native family (Qwen2.5-VL, Qwen3-VL, SmolVLM, Gemma 3) in its own transformers
layout, and check a folder against that layout.

In: a resolved `export.Source` (an adapter over its base, or a model folder) and its `Family`. Out: a folder that
transformers' Auto classes, vLLM (`vllm serve DIR`, no remote code) and productlens load unchanged: the merged
weights in (sharded) safetensors under transformers' own names, config.json without `auto_map`, the processor
saved with the run (it carries the trained cost settings, e.g. max_pixels), a generation_config.json that stops
at the family's end-of-turn token, and a README.md.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch

from productlens.export import (
    DTYPES,
    ExportError,
    Problem,
    Source,
    base_dtype,
    stored_weights,
)
from productlens.families import MODEL_TYPES, Family, get_family
from productlens.files import atomic_folder

PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")
SAFETENSORS_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}
FLOAT_DTYPES = {"F64", "F32", "BF16", "F16", "F8_E4M3", "F8_E5M2"}

# ---- the export -----------------------------------------------------------------------------------------------


def load_processor(source: Source, family: Family) -> Any:
    """The processor saved with the adapter (or model folder) by training, with its cost settings; else the
    base's, with the run's `model.cost` settings."""
    for folder in (source.adapter_dir, source.model_dir):
        if folder is not None and any((folder / name).is_file() for name in PROCESSOR_FILES):
            return family.load_processor(folder)
    return family.load_processor(source.base, **source.cost)


def load_merged(source: Source, family: Family, dtype: torch.dtype) -> torch.nn.Module:
    """The adapter merged into the base in float32 and cast to `dtype`, or the model folder cast to `dtype`."""
    if source.adapter_dir is None:
        return family.load_model(source.model_dir, dtype=dtype).to(dtype)
    from peft import PeftModel

    base = family.load_model(source.base, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, str(source.adapter_dir)).merge_and_unload()
    leftovers = [k for k in merged.state_dict() if k.startswith("base_model.") or "lora_" in k]
    if leftovers:
        raise ExportError(f"adapter weights were not merged: {leftovers[:3]}")
    return merged.to(dtype)


def generation_config(model: Any, family: Family, processor: Any) -> Any:
    """The model's generation config, stopping at the end-of-turn token (and the tokenizer's eos, and any eos the
    model already had), padding with the family's pad id."""
    config = copy.deepcopy(model.generation_config)
    eos = config.eos_token_id
    eos = [] if eos is None else list(eos) if isinstance(eos, list | tuple) else [eos]
    config.eos_token_id = list(dict.fromkeys([*family.stop_token_ids(processor), *eos]))
    config.pad_token_id = family.pad_token_id(processor)
    if config.bos_token_id is None and processor.tokenizer.bos_token_id is not None:
        config.bos_token_id = processor.tokenizer.bos_token_id
    return config


def model_card(source: Source, family: Family, dtype: torch.dtype, processor: Any) -> str:
    """README.md of the export: where it came from and how to load and serve it."""
    what = f"the adapter `{source.adapter_dir}` merged into" if source.adapter_dir else "the model folder of"
    knobs = processor.image_processor.to_dict() if hasattr(processor, "image_processor") else {}
    cost = {k: knobs[k] for k in family.cost_knobs if k in knobs}
    cost_line = ", ".join(f"`{k}` = {json.dumps(v)}" for k, v in cost.items()) or "the base's own"
    return f"""# {family.name} fine-tuned with productlens

Exported by `productlens export` from {what} `{source.base}`, in transformers' own {family.name} layout (no
remote code); weights in {str(dtype).removeprefix("torch.")}. Generation stops at `{family.end_of_turn}`
(generation_config.json).

The processor is the one the run trained with. Its image-cost settings: {cost_line}.

- productlens: `productlens predict PHOTO --model DIR`
- transformers: `AutoModelForImageTextToText.from_pretrained(DIR)`, `AutoProcessor.from_pretrained(DIR)`
- vLLM: `vllm serve DIR` (no --trust-remote-code; another image cost per server: `--mm-processor-kwargs '{{...}}'`)
"""


def export_native(
    source: Source, family: Family, out: Path, dtype: torch.dtype, max_shard_size: str | int
) -> Path:
    """Merge and write `source` into `out` (replaced whole; the caller checked it may be); returns `out`."""
    processor = load_processor(source, family)
    model = load_merged(source, family, dtype)
    model.generation_config = generation_config(model, family, processor)
    if getattr(model.config, "auto_map", None):
        del model.config.auto_map  # native families load through transformers' own classes
    with atomic_folder(out, overwrite=True) as tmp:
        model.save_pretrained(tmp, max_shard_size=max_shard_size)
        processor.save_pretrained(tmp)
        (tmp / "README.md").write_text(model_card(source, family, dtype, processor))
    return out


# ---- the check ------------------------------------------------------------------------------------------------


def architecture(model_type: str) -> str | None:
    """transformers' image-text-to-text class name for a model_type."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.get(model_type)


def expected_weights(folder: Path) -> dict[str, list[int]]:
    """Tensor names and shapes transformers writes for the config.json in `folder`: its own class built on the
    meta device, tied weights left out, names as save_pretrained writes them."""
    from transformers import AutoConfig, AutoModelForImageTextToText
    from transformers.modeling_utils import remove_tied_weights_from_state_dict, revert_weight_conversion

    config = AutoConfig.from_pretrained(str(folder))
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    state = remove_tied_weights_from_state_dict(model.state_dict(), model)
    return {k: list(v.shape) for k, v in revert_weight_conversion(model, state).items()}


def _check_config(folder: Path, config: dict[str, Any], family: Family) -> list[Problem]:
    problems = []
    want = architecture(config["model_type"])
    if config.get("architectures") != [want]:
        problems.append(
            Problem(
                "config.model_type",
                f"architectures {config.get('architectures')} must be [{want}] for "
                f"model_type {config['model_type']}",
            )
        )
    code = sorted(p.name for p in folder.glob("*.py"))
    if "auto_map" in config or code:
        problems.append(
            Problem(
                "config.auto_map",
                f"auto_map or code files {code}: {family.name} loads through transformers' own classes",
            )
        )
    if base_dtype(config) not in DTYPES:
        problems.append(Problem("config.dtype", f"dtype must be one of {list(DTYPES)}"))
    return problems


def _check_weights(folder: Path, config: dict[str, Any]) -> list[Problem]:
    found, problems = stored_weights(folder)
    try:
        expected = expected_weights(folder)
    except Exception as exc:  # any config that does not build fails this rule
        return [*problems, Problem("config.model", f"config.json does not build its model: {exc}")]
    absent, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if absent or extra:
        problems.append(Problem("weights.names", f"missing {absent[:5]}, unexpected {extra[:5]}"))
    wrong = [f"{n}: {found[n][0]} != {s}" for n, s in expected.items() if n in found and found[n][0] != s]
    if wrong:
        problems.append(Problem("weights.shapes", f"shapes differ from config.json: {wrong[:5]}"))
    dtype = SAFETENSORS_DTYPES.get(base_dtype(config))
    other = sorted({d for _, d in found.values() if d in FLOAT_DTYPES} - {dtype})
    if dtype and other:
        problems.append(
            Problem("weights.dtype", f"tensors in {other}, but config.json says {base_dtype(config)}")
        )
    return problems


def _check_processor(folder: Path, family: Family) -> tuple[Any, list[Problem]]:
    """-> (the processor or None, problems of the tokenizer and processor files)."""
    problems = []
    if not (folder / "tokenizer_config.json").is_file() or not any(
        (folder / name).is_file() for name in ("tokenizer.json", "tokenizer.model")
    ):
        problems.append(Problem("files.tokenizer", "tokenizer_config.json and tokenizer.json are needed"))
    if not any((folder / name).is_file() for name in PROCESSOR_FILES):
        problems.append(Problem("files.processor", f"none of {list(PROCESSOR_FILES)}"))
    try:
        processor = family.load_processor(folder)
    except Exception as exc:  # whatever stops it loading fails this rule
        return None, [*problems, Problem("processor", f"the {family.name} processor does not load: {exc}")]
    return processor, problems


def _chat_template(folder: Path, processor: Any) -> str | None:
    if processor is not None:
        return getattr(processor, "chat_template", None) or processor.tokenizer.chat_template
    if any((folder / name).is_file() for name in CHAT_TEMPLATE_FILES):
        return "present"
    for name in ("processor_config.json", "tokenizer_config.json"):
        if (folder / name).is_file() and json.loads((folder / name).read_text()).get("chat_template"):
            return "present"
    return None


def _end_of_turn_id(folder: Path, processor: Any, family: Family) -> int | None:
    """The end-of-turn token's id, from the processor's tokenizer, else tokenizer.json; None if neither has it."""
    if processor is not None:
        try:
            return family.stop_token_ids(processor)[0]
        except ValueError:
            return None
    path = folder / "tokenizer.json"
    added = json.loads(path.read_text()).get("added_tokens", []) if path.is_file() else []
    return next((t["id"] for t in added if t["content"] == family.end_of_turn), None)


def _check_generation(folder: Path, family: Family, processor: Any) -> list[Problem]:
    path = folder / "generation_config.json"
    if not path.is_file():
        return [Problem("generation_config", "generation_config.json is missing: generation would not stop")]
    data = json.loads(path.read_text())
    eos = data.get("eos_token_id")
    eos = eos if isinstance(eos, list) else [eos]
    end = _end_of_turn_id(folder, processor, family)
    problems = []
    if end is not None and end not in eos:  # no end-of-turn id: the tokenizer rules say why
        problems.append(
            Problem("generation_config", f"eos_token_id {eos} lacks {family.end_of_turn} (id {end})")
        )
    if data.get("pad_token_id") is None:
        problems.append(Problem("generation_config", "pad_token_id must be set"))
    return problems


def check_native(folder: Path, config: dict[str, Any]) -> list[Problem]:
    """Every broken rule of the family's transformers layout in `folder` (config.json already read)."""
    model_type = config.get("model_type")
    if model_type not in MODEL_TYPES or model_type == "phi3_v":
        known = ", ".join(t for t in MODEL_TYPES if t != "phi3_v")
        return [Problem("config.model_type", f"model_type {model_type!r} is not one of {known}")]
    family = get_family(MODEL_TYPES[model_type])
    problems = _check_config(folder, config, family) + _check_weights(folder, config)
    processor, found = _check_processor(folder, family)
    problems += found + _check_generation(folder, family, processor)
    if not _chat_template(folder, processor):
        problems.append(Problem("chat_template", "no chat template (chat_template.jinja or in the configs)"))
    return problems


__all__ = ["check_native", "expected_weights", "export_native"]
