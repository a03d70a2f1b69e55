"""Export a fine-tuned model for serving, and check a folder against its layout. The family of the run's base
(config.json `model_type`, or the run's `model.family`) picks the layout: Phi-3-Vision's official one here, the
native families' own transformers layout in export_native.py.

In: a run folder (adapter/ or model/), an adapter folder or a model folder. Out, for Phi-3-V: a folder that the
official remote code (transformers 4.40.2 + `trust_remote_code`), vLLM and productlens all load unchanged:
official config.json (rope `su`, `torch_dtype`, `auto_map`), generation_config.json with the chat stop ids, the
base's tokenizer and processor files byte for byte, merged weights under the official names in (sharded)
safetensors.

    productlens export runs/lora --out exports/lora [--dtype bfloat16]
    productlens export --check exports/lora
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from productlens.families import Family, checkpoint_family
from productlens.phi3v.configuration import OFFICIAL_AUTO_MAP, OFFICIAL_KEYS

OFFICIAL_REPO = "microsoft/Phi-3-vision-128k-instruct"
CODE_FILES = (
    "configuration_phi3_v.py",
    "modeling_phi3_v.py",
    "image_embedding_phi3_v.py",
    "image_processing_phi3_v.py",
    "processing_phi3_v.py",
)
# Copied byte for byte from the base when it has them (never re-serialised).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.json",
    "processor_config.json",
)
PREPROCESSOR_AUTO_MAP = {
    "AutoProcessor": "processing_phi3_v.Phi3VProcessor",
    "AutoImageProcessor": "image_processing_phi3_v.Phi3VImageProcessor",
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
STOP_TOKENS = ("<|end|>", "<|endoftext|>")
OLD_TOKENIZER_CLASSES = {"LlamaTokenizer", "LlamaTokenizerFast", "PreTrainedTokenizerFast"}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# transformers 5 names that the official code does not read (it falls back to defaults without a word).
NEW_CONFIG_KEYS = ("rope_parameters", "dtype")
CLIP_336 = "openai/clip-vit-large-patch14-336"


class ExportError(ValueError):
    """A source that cannot be exported, with what to do."""


@dataclass(frozen=True)
class Source:
    """What an export reads: weights (adapter over base, or a model folder) and the base's own files."""

    base: str  # local folder or hub id of the base checkpoint
    base_dir: Path  # local folder with the base's config, tokenizer and processor files
    hub_repo: str | None  # the base's hub repository, when it came from the hub
    adapter_dir: Path | None  # a PEFT adapter to merge into the base
    model_dir: Path | None  # or a whole model folder
    num_crops: int | None  # the training value, when the run set one
    family: str | None = None  # the run's `model.family` (overrides the base's model_type)
    cost: dict[str, Any] = field(default_factory=dict)  # the run's `model.cost` (processor settings)


# ---- what to export -----------------------------------------------------------------------------------------


def _run_settings(run: Path) -> dict[str, Any]:
    path = run / "config.yaml"
    return (yaml.safe_load(path.read_text()) or {}).get("model", {}) if path.is_file() else {}


def _base_files(base: str) -> tuple[Path, str | None]:
    """A base model folder or hub id -> (local folder with its json/tokenizer/code files, hub repo or None)."""
    if Path(base).is_dir():
        return Path(base), None
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    try:
        folder = snapshot_download(base, allow_patterns=["*.json", "*.model", "*.py", "*.jinja"])
    except (HFValidationError, OSError) as exc:
        raise ExportError(
            f"base model {base!r} is neither a local folder nor a reachable hub repository ({exc}); "
            "pass the base folder the run was trained from."
        ) from None
    return Path(folder), base


def resolve(path: str | os.PathLike, num_crops: int | None = None) -> Source:
    """RUN folder (adapter/ or model/), adapter folder or model folder -> what to export from it."""
    path = Path(path)
    run, adapter, model = path, None, None
    if (path / "adapter" / "adapter_config.json").is_file():
        adapter = path / "adapter"
    elif (path / "adapter_config.json").is_file():
        adapter, run = path, path.parent
    elif (path / "model" / "config.json").is_file():
        model = path / "model"
    elif (path / "config.json").is_file():
        model = path
    else:
        raise ExportError(
            f"{path} is not a run folder (with adapter/ or model/), an adapter folder or a model folder "
            "(with config.json); give the --out folder of `productlens train`."
        )
    settings = _run_settings(run)
    if adapter is not None:
        base = settings.get("path") or json.loads((adapter / "adapter_config.json").read_text()).get(
            "base_model_name_or_path"
        )
        if not base:
            raise ExportError(
                f"{adapter} does not name its base model; pass the run folder with config.yaml."
            )
    else:
        base = settings.get("path") or str(model)
        if not (Path(base).is_dir() or "/" in base):
            base = str(model)
    base_dir, hub_repo = _base_files(str(base))
    crops = num_crops or settings.get("num_crops")
    return Source(
        str(base),
        base_dir,
        hub_repo,
        adapter,
        model,
        int(crops) if crops else None,
        settings.get("family"),
        dict(settings.get("cost") or {}),
    )


def family_of(source: Source) -> Family:
    """The family of the base (its config.json `model_type`), the run's `model.family` winning when set."""
    try:
        return checkpoint_family(source.base_dir, source.family)
    except ValueError as exc:
        raise ExportError(str(exc)) from None


def base_dtype(config: dict[str, Any]) -> str | None:
    """The dtype a config.json records: `torch_dtype` or `dtype`, else its text config's."""
    text = config.get("text_config") or {}
    return config.get("torch_dtype") or config.get("dtype") or text.get("dtype") or text.get("torch_dtype")


def load_weights(source: Source, dtype: torch.dtype) -> torch.nn.Module:
    """The model to export: the adapter merged into the base (in float32, then cast), or the model folder."""
    from transformers import AutoModelForCausalLM

    import productlens.phi3v  # noqa: F401  (registers phi3_v)

    if source.adapter_dir is None:
        return AutoModelForCausalLM.from_pretrained(source.model_dir, dtype=dtype)
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(source.base, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, str(source.adapter_dir)).merge_and_unload()
    return merged.to(dtype)


# ---- the files ------------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _json(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def auto_map_for(source: Source, given: dict[str, str] | None, defaults: dict[str, str]) -> dict[str, str]:
    """The base's code: `repo--module.Class` for a hub base, `module.Class` when the .py files sit in the base
    folder, else the base's own entries (the official ones when it has none)."""
    entries = dict(given or defaults)
    plain = {k: v.split("--")[-1] for k, v in entries.items()}
    if source.hub_repo:
        return {k: f"{source.hub_repo}--{v}" for k, v in plain.items()}
    if all((source.base_dir / name).is_file() for name in CODE_FILES):
        return plain
    return entries


def official_config(model_config: Any, source: Source, dtype: torch.dtype) -> dict[str, Any]:
    """config.json: the model's config in the official layout; when the base file is an official one, its key
    order, its other keys, and its `eos_token_id`, `_name_or_path`, `_attn_implementation`, `transformers_version`."""
    values = model_config.to_official_dict()
    values["torch_dtype"] = str(dtype).removeprefix("torch.")
    raw = _read_json(source.base_dir / "config.json")
    official_base = not any(key in raw for key in NEW_CONFIG_KEYS)
    if official_base:
        for key in ("eos_token_id", "_name_or_path", "_attn_implementation", "transformers_version"):
            if key in raw:
                values[key] = raw[key]
        rope = raw.get("rope_scaling") or {}
        if values.get("rope_scaling") and rope.get("type") in ("su", "longrope"):
            values["rope_scaling"]["type"] = rope["type"]  # Phi-3.5-V's code names it longrope
    values["auto_map"] = auto_map_for(source, raw.get("auto_map"), OFFICIAL_AUTO_MAP)
    order = list(raw) if official_base else list(OFFICIAL_KEYS)
    kept = {k: values.get(k, raw.get(k)) for k in order if k in values or (official_base and k in raw)}
    return kept | {k: v for k, v in values.items() if k not in kept}


def stop_ids(tokenizer_file: Path) -> dict[str, int]:
    """Ids of `<|end|>` and `<|endoftext|>` (and `<s>`) from tokenizer.json's added tokens."""
    added = _read_json(tokenizer_file).get("added_tokens", [])
    return {t["content"]: t["id"] for t in added if t["content"] in (*STOP_TOKENS, "<s>")}


def generation_config(model: Any, source: Source) -> dict[str, Any]:
    """generation_config.json: stop at `<|end|>` and `<|endoftext|>`, bos `<s>`, pad as the model has it."""
    ids = stop_ids(source.base_dir / "tokenizer.json")
    eos = [ids[t] for t in STOP_TOKENS if t in ids] or model.generation_config.eos_token_id
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else ids.get("<|endoftext|>")
    return {
        "bos_token_id": ids.get("<s>", model.config.bos_token_id),
        "eos_token_id": eos,
        "pad_token_id": pad,
        "transformers_version": "4.40.2",
    }


def preprocessor_config(source: Source) -> tuple[bytes, int, int | None]:
    """preprocessor_config.json: the base's bytes, rewritten only to record the training num_crops or add the
    `auto_map` the loaders need -> (file bytes, num_crops written, the base's num_crops)."""
    path = source.base_dir / "preprocessor_config.json"
    if not path.is_file():
        raise ExportError(
            f"the base {source.base} has no preprocessor_config.json; export from an official base."
        )
    data = _read_json(path)
    base_crops = data.get("num_crops")
    auto_map = auto_map_for(source, data.get("auto_map"), PREPROCESSOR_AUTO_MAP)
    crops = source.num_crops or base_crops or 1
    if crops == base_crops and auto_map == data.get("auto_map"):
        return path.read_bytes(), crops, base_crops
    written = {"auto_map": auto_map} | data if "auto_map" not in data else dict(data)
    written |= {"auto_map": auto_map, "num_crops": crops}
    return _json(written).encode(), crops, base_crops


def official_state_dict(model: torch.nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Model -> {official name: contiguous tensor in dtype}; no adapter names, tied lm_head left out."""
    state = model.state_dict()
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    leftovers = [k for k in state if k.startswith("base_model.") or "lora_" in k]
    if leftovers:
        raise ExportError(f"adapter weights were not merged: {leftovers[:3]}")
    return {k: v.detach().to("cpu", dtype).contiguous() for k, v in state.items()}


def write_weights(state: dict[str, torch.Tensor], folder: Path, max_shard_size: str | int) -> list[str]:
    """model.safetensors, or shards + model.safetensors.index.json; metadata {"format": "pt"} -> file names."""
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    split = split_torch_state_dict_into_shards(state, max_shard_size=max_shard_size)
    for filename, names in split.filename_to_tensors.items():
        save_file({n: state[n] for n in names}, str(folder / filename), metadata={"format": "pt"})
    if split.is_sharded:
        total = sum(t.numel() * t.element_size() for t in state.values())
        index = {
            "metadata": {"total_size": total},
            "weight_map": dict(sorted(split.tensor_to_filename.items())),
        }
        (folder / "model.safetensors.index.json").write_text(_json(index))
    return list(split.filename_to_tensors)


def model_card(source: Source, dtype: torch.dtype, crops: int, base_crops: int | None) -> str:
    """README.md of the export: where it came from, what differs from the base, how to load and serve it."""
    what = f"the adapter `{source.adapter_dir}` merged into" if source.adapter_dir else "the model folder of"
    crops_note = (
        f"`num_crops` is {crops}: the value used in training (the base says {base_crops})."
        if base_crops is not None and crops != base_crops
        else f"`num_crops` is {crops}, as in the base."
    )
    return f"""# Phi-3-Vision fine-tuned with productlens

Exported by `productlens export` from {what} `{source.base}`, in the official Phi-3-Vision layout; weights in
{str(dtype).removeprefix("torch.")}. Tokenizer and processor files are the base's own, byte for byte.

{crops_note} Override it per load: `AutoProcessor.from_pretrained(DIR, trust_remote_code=True, num_crops=16)`,
or in vLLM `--mm-processor-kwargs '{{"num_crops": 16}}'`.

- productlens: `productlens predict PHOTO --model DIR`
- transformers 4.40.2 (model card code): `AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)`
- vLLM: `vllm serve DIR --trust-remote-code --mm-processor-kwargs '{{"num_crops": {crops}}}'`
"""


def export(
    source_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    dtype: str | None = None,
    num_crops: int | None = None,
    max_shard_size: str | int = "5GB",
    overwrite: bool = False,
) -> Path:
    """Write RUN / adapter / model folder `source_path` as a servable folder `out`; returns `out`. Phi-3-V: the
    official layout; native families: their own transformers layout (export_native.py).

    dtype: float32, bfloat16 or float16 (default: the base's `torch_dtype`). num_crops (Phi-3-V only): recorded in
    preprocessor_config.json (default: the run's training value, else the base's). The folder appears whole.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"{out} exists and is not empty; choose another --out or pass --overwrite.")
    source = resolve(source_path, num_crops)
    if out.resolve() == source.base_dir.resolve():
        raise ExportError(f"--out {out} is the base model folder; choose another folder.")
    name = dtype or base_dtype(_read_json(source.base_dir / "config.json")) or "float32"
    if name not in DTYPES:
        raise ExportError(f"dtype {name!r} is not one of {', '.join(DTYPES)}.")
    torch_dtype = DTYPES[name]
    family = family_of(source)
    if family.name != "phi3v":
        if num_crops is not None:
            raise ExportError(
                f"--num-crops is Phi-3-V's setting; a {family.name} export keeps the processor the run "
                "trained with (its model.cost settings)."
            )
        from productlens.export_native import export_native

        return export_native(source, family, out, torch_dtype, max_shard_size)
    model = load_weights(source, torch_dtype)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write_weights(official_state_dict(model, torch_dtype), tmp, max_shard_size)
        config = official_config(model.config, source, torch_dtype)
        base_config = source.base_dir / "config.json"
        if config == _read_json(base_config):
            shutil.copyfile(base_config, tmp / "config.json")  # unchanged: the base's own bytes
        else:
            (tmp / "config.json").write_text(_json(config))
        (tmp / "generation_config.json").write_text(_json(generation_config(model, source)))
        for filename in TOKENIZER_FILES:
            if (source.base_dir / filename).is_file():
                shutil.copyfile(source.base_dir / filename, tmp / filename)
        pre, crops, base_crops = preprocessor_config(source)
        (tmp / "preprocessor_config.json").write_bytes(pre)
        if config["auto_map"] == {k: v.split("--")[-1] for k, v in config["auto_map"].items()}:
            for filename in CODE_FILES:
                if (source.base_dir / filename).is_file():
                    shutil.copyfile(source.base_dir / filename, tmp / filename)
        (tmp / "README.md").write_text(model_card(source, torch_dtype, crops, base_crops))
        if out.exists():
            shutil.rmtree(out)
        tmp.replace(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


# ---- the check ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One broken rule of the official layout: its name and what is wrong."""

    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.message}"


def _check_config(config: dict[str, Any]) -> list[Problem]:
    problems = []
    missing = [
        k for k in OFFICIAL_KEYS if k not in config and not k.startswith("_") and k != "transformers_version"
    ]
    if missing:
        problems.append(Problem("config.keys", f"config.json lacks the official keys {missing}"))
    new = [k for k in NEW_CONFIG_KEYS if k in config]
    if new:
        problems.append(
            Problem("config.keys", f"config.json has transformers 5 keys {new} the official code ignores")
        )
    present = [k for k in config if k in OFFICIAL_KEYS]
    if present != [k for k in OFFICIAL_KEYS if k in config]:
        problems.append(Problem("config.order", f"config.json keys are not in the official order: {present}"))
    if config.get("model_type") != "phi3_v" or config.get("architectures") != ["Phi3VForCausalLM"]:
        problems.append(
            Problem("config.model_type", "model_type must be phi3_v, architectures [Phi3VForCausalLM]")
        )
    rope = config.get("rope_scaling")
    heads, hidden = config.get("num_attention_heads") or 1, config.get("hidden_size") or 0
    half = hidden // heads // 2
    if not isinstance(rope, dict) or rope.get("type") not in ("su", "longrope"):
        problems.append(Problem("config.rope", f'rope_scaling must be {{"type": "su", ...}}, got {rope!r}'))
    else:
        for key in ("long_factor", "short_factor"):
            if not isinstance(rope.get(key), list) or len(rope[key]) != half:
                problems.append(
                    Problem("config.rope", f"rope_scaling.{key} must list {half} factors (head_dim/2)")
                )
    if not isinstance(config.get("rope_theta"), int | float):
        problems.append(
            Problem("config.rope", "rope_theta is missing: the official code needs it at top level")
        )
    auto_map = config.get("auto_map") or {}
    for key, value in OFFICIAL_AUTO_MAP.items():
        if not str(auto_map.get(key, "")).endswith(value):
            problems.append(
                Problem("config.auto_map", f"auto_map.{key} must name {value} (or REPO--{value})")
            )
    if config.get("torch_dtype") not in DTYPES:
        problems.append(Problem("config.torch_dtype", f"torch_dtype must be one of {list(DTYPES)}"))
    if (config.get("img_processor") or {}).get("model_name") != CLIP_336:
        problems.append(Problem("config.img_processor", f"img_processor.model_name must be {CLIP_336}"))
    return problems


def _check_tokenizer(folder: Path) -> list[Problem]:
    problems = []
    path = folder / "tokenizer.json"
    if path.is_file():
        merges = _read_json(path).get("model", {}).get("merges", [])
        if any(not isinstance(m, str) for m in merges):
            problems.append(
                Problem("tokenizer.json", "merges are pairs (tokenizers >= 0.20 format); 0.19 cannot read it")
            )
    path = folder / "tokenizer_config.json"
    if path.is_file():
        data = _read_json(path)
        if data.get("tokenizer_class") not in OLD_TOKENIZER_CLASSES:
            problems.append(
                Problem(
                    "tokenizer_config", f"tokenizer_class {data.get('tokenizer_class')!r} is unknown to 4.40"
                )
            )
        if not data.get("chat_template"):
            problems.append(Problem("tokenizer_config", "no inline chat_template: 4.40 falls back to [INST]"))
        if not data.get("added_tokens_decoder"):
            problems.append(Problem("tokenizer_config", "added_tokens_decoder is missing"))
    return problems


def _check_generation(folder: Path) -> list[Problem]:
    path = folder / "generation_config.json"
    if not path.is_file():
        return [Problem("generation_config", "generation_config.json is missing: generation would not stop")]
    data = _read_json(path)
    eos = data.get("eos_token_id")
    eos = eos if isinstance(eos, list) else [eos]
    ids = stop_ids(folder / "tokenizer.json") if (folder / "tokenizer.json").is_file() else {}
    missing = [t for t in STOP_TOKENS if t in ids and ids[t] not in eos]
    problems = [Problem("generation_config", f"eos_token_id {eos} lacks {missing}")] if missing else []
    if "bos_token_id" not in data or "pad_token_id" not in data:
        problems.append(Problem("generation_config", "bos_token_id and pad_token_id must be set"))
    return problems


def _check_preprocessor(folder: Path) -> list[Problem]:
    problems = []
    if (folder / "processor_config.json").exists():
        problems.append(
            Problem("processor_config", "processor_config.json must be absent (4.40 reads it first)")
        )
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return [*problems, Problem("preprocessor_config", "preprocessor_config.json is missing")]
    data = _read_json(path)
    auto_map = data.get("auto_map") or {}
    for key, value in PREPROCESSOR_AUTO_MAP.items():
        if not str(auto_map.get(key, "")).endswith(value):
            problems.append(Problem("preprocessor_config", f"auto_map.{key} must name {value}"))
    for key in ("image_processor_type", "processor_class", "num_img_tokens", "image_mean", "image_std"):
        if key not in data:
            problems.append(Problem("preprocessor_config", f"{key} is missing"))
    if not isinstance(data.get("num_crops"), int) or data["num_crops"] < 1:
        problems.append(Problem("preprocessor_config", "num_crops must be a positive integer"))
    return problems


def weight_files(folder: Path) -> tuple[list[Path], list[Problem]]:
    """The safetensors files of `folder` (model.safetensors, or the shards its index names) -> (present files,
    a `weights` problem for missing ones)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index).get("weight_map", {})
        files = sorted({folder / f for f in weight_map.values()})
        missing = [f.name for f in files if not f.is_file()]
        return [f for f in files if f.is_file()], [
            Problem("weights", f"shards {missing} are missing")
        ] * bool(missing)
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"], []
    return [], [Problem("weights", "no model.safetensors or model.safetensors.index.json")]


def stored_weights(folder: Path) -> tuple[dict[str, tuple[list[int], str]], list[Problem]]:
    """A folder's safetensors tensors -> ({name: (shape, dtype)}, problems: pickle or optimizer files, missing
    shards, files without the {"format": "pt"} metadata)."""
    from safetensors import safe_open

    problems = []
    pickles = [p.name for p in folder.iterdir() if p.name.endswith(PICKLE_SUFFIXES) or "optimizer" in p.name]
    if pickles:
        problems.append(Problem("weights.pickle", f"pickle or optimizer files {pickles}: remove them"))
    files, missing = weight_files(folder)
    problems += missing
    found: dict[str, tuple[list[int], str]] = {}
    for path in files:
        with safe_open(str(path), "pt") as f:
            if (f.metadata() or {}).get("format") != "pt":
                problems.append(Problem("weights.metadata", f'{path.name} lacks metadata {{"format": "pt"}}'))
            for name in f.keys():  # noqa: SIM118 (safe_open has no iterator)
                part = f.get_slice(name)
                found[name] = (list(part.get_shape()), part.get_dtype())
    return found, problems


def _check_weights(folder: Path, config: dict[str, Any]) -> list[Problem]:
    found, problems = stored_weights(folder)
    try:
        expected = expected_weights(config)
    except Exception as exc:  # a broken config: the config rules say why, else this one does
        return [*problems, Problem("config.model", f"config.json does not build a Phi3V model: {exc}")]
    absent = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    if absent or extra:
        problems.append(
            Problem("weights.names", f"missing {absent[:5]}, unexpected {extra[:5]} (official names)")
        )
    wrong = [f"{n}: {found[n][0]} != {s}" for n, s in expected.items() if n in found and found[n][0] != s]
    if wrong:
        problems.append(Problem("weights.shapes", f"shapes differ from config.json: {wrong[:5]}"))
    dtype = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}.get(config.get("torch_dtype"))
    other = sorted({d for _, d in found.values()} - {dtype})
    if dtype and other:
        problems.append(
            Problem("weights.dtype", f"tensors in {other}, but torch_dtype says {config['torch_dtype']}")
        )
    return problems


def expected_weights(config: dict[str, Any]) -> dict[str, list[int]]:
    """Official tensor names and shapes for a config.json dict (model built on the meta device)."""
    from productlens.phi3v import Phi3VConfig, Phi3VForCausalLM

    settings = {
        k: v for k, v in config.items() if k not in ("auto_map", "_attn_implementation", "torch_dtype")
    }
    with torch.device("meta"):
        model = Phi3VForCausalLM(Phi3VConfig(**settings))
    state = model.state_dict()
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    return {k: list(v.shape) for k, v in state.items()}


def check(folder: str | os.PathLike) -> list[Problem]:
    """Every broken rule of the folder's layout (by its config.json `model_type`: Phi-3-V's official one, or a
    native family's, see export_native.check_native) in `folder` (empty: the folder is fine)."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        return [Problem("files", f"{folder} has no config.json")]
    config = _read_json(folder / "config.json")
    if config.get("model_type") != "phi3_v":
        from productlens.export_native import check_native

        return check_native(folder, config)
    problems = _check_config(config)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if not (folder / name).is_file():
            problems.append(Problem("files", f"{name} is missing"))
    problems += _check_tokenizer(folder) + _check_generation(folder) + _check_preprocessor(folder)
    weights = _check_weights(folder, config)
    if any(p.rule.startswith("config.") for p in problems):
        weights = [p for p in weights if p.rule != "config.model"]
    return problems + weights


def layout(folder: str | os.PathLike) -> str:
    """What `check` held `folder` to, in words (for the CLI)."""
    path = Path(folder) / "config.json"
    model_type = _read_json(path).get("model_type") if path.is_file() else None
    if model_type == "phi3_v":
        return "the official Phi-3-Vision layout"
    return f"the transformers layout of {model_type}"


def code_form(auto_map: dict[str, str]) -> str:
    """'hub REPO' or 'local .py files' for an auto_map."""
    repos = {m.group(1) for v in auto_map.values() if (m := re.match(r"(.+)--", v))}
    return f"hub {', '.join(sorted(repos))}" if repos else "local .py files beside config.json"


__all__ = ["ExportError", "Problem", "check", "export", "family_of", "layout", "resolve", "weight_files"]
