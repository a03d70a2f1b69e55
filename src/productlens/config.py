"""A training run's settings: project sections as small frozen dataclasses, plus a `training:` mapping that is
handed to `transformers.TrainingArguments` as it is. In: a preset YAML (configs/*.yaml) and `--set a.b=value`
overrides. Out: a `RunConfig`. Used by `productlens train --config configs/phi3v-lora.yaml`.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from productlens.files import write_atomic

CONFIGS_DIR = Path(__file__).resolve().parents[2] / "configs"  # the presets beside the package (a checkout)
METHODS = ("lora", "dora", "qlora", "full")
DTYPES = ("auto", "float32", "bfloat16", "float16")

# TrainingArguments values this project needs that differ from transformers' own defaults. A preset's
# `training:` section is merged over these; anything else keeps transformers' default.
DEFAULT_TRAINING: dict[str, Any] = {
    "output_dir": "runs/train",
    "remove_unused_columns": False,  # the collator needs the image/title/category/price columns
    "train_sampling_strategy": "group_by_length",  # lengths come from `collate.example_lengths`
    "per_device_train_batch_size": 8,
    "per_device_eval_batch_size": 8,
    "learning_rate": 2.0e-4,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0.03,  # a float below 1 is a fraction of the total steps
    "max_grad_norm": 1.0,
    "num_train_epochs": 3,
    "logging_steps": 10,
    "eval_strategy": "steps",
    "eval_steps": 100,
    "save_strategy": "steps",
    "save_steps": 100,
    "save_total_limit": 3,
    "report_to": "wandb",
    "seed": 0,
}


@dataclass(frozen=True)
class ModelConfig:
    """Which checkpoint to start from and how to load it."""

    path: str = "microsoft/Phi-3-vision-128k-instruct"  # a hub id or a local folder
    family: str | None = (
        None  # phi3v | qwen2_5_vl | qwen3_vl | smolvlm | gemma3; None: from config.json's model_type
    )
    dtype: str = (
        "auto"  # auto | float32 | bfloat16 | float16: frozen weights as loaded; with training.bf16/fp16
    )
    # the trained ones get float32 master weights
    attn_implementation: str | None = None  # eager | sdpa | flash_attention_2; None: the model's default
    num_crops: int | None = (
        None  # Phi-3-V's HD crops per image (16: 3V default, 4: 3.5V); None: the processor's own
    )
    # the family's image-cost settings, e.g. {max_pixels: 401408} (Qwen2.5-VL), {size: {longest_edge: 768}}
    # (SmolVLM), {do_pan_and_scan: false} (Gemma 3); {}: the checkpoint's own
    cost: dict[str, Any] = field(default_factory=dict)

    def cost_settings(self) -> dict[str, Any]:
        """The processor overrides this config asks for: `cost`, plus `num_crops` (Phi-3-V's knob) when set."""
        return {**self.cost, **({"num_crops": self.num_crops} if self.num_crops is not None else {})}


@dataclass(frozen=True)
class DataConfig:
    """The prepared dataset (`productlens prepare`) and how much of it to use."""

    path: str = "data/prepared"
    max_length: int | None = None  # a cap on tokens per example; it may never cut image slots
    train_limit: int | None = None  # use only the first N training rows (quick runs)
    eval_limit: int | None = None  # validation rows for the loss (None: all)


@dataclass(frozen=True)
class FinetuneConfig:
    """What is trained: the method, what stays frozen, and per-part learning rates."""

    method: str = "lora"  # lora | dora | qlora | full
    freeze_vision: bool = True  # the CLIP tower
    freeze_projection: bool = (
        False  # img_projection and the glb_GN/sub_GN separators (LoRA: saved in the adapter)
    )
    freeze_language: bool = False  # the Phi-3 decoder (full: its weights; lora: no adapters there)
    vision_learning_rate: float | None = None  # None: training.learning_rate
    projection_learning_rate: float | None = None
    merge: bool = False  # also save the adapter merged into the base, in the official layout


@dataclass(frozen=True)
class LoraConfig:
    """PEFT adapter settings for lora / dora / qlora: adapters go on the parts finetune.freeze_* leaves open."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    # language model modules; None: the family's (Phi-3-V: qkv_proj, o_proj, gate_up_proj, down_proj)
    targets: tuple[str, ...] | None = None
    vision_targets: tuple[str, ...] | None = None  # vision tower modules, if unfrozen; None: the family's
    projection_targets: bool = False  # adapters on img_projection.0/.2 instead of training it whole


@dataclass(frozen=True)
class EvalConfig:
    """Generation-based evaluation on a fixed validation sample at every evaluation."""

    sample_size: int = 32  # validation products generated for at every evaluation (0: loss only)
    max_new_tokens: int = 64
    batch_size: int = 8


@dataclass(frozen=True)
class WandbConfig:
    """Weights & Biases run naming (used when training.report_to includes wandb)."""

    project: str = "productlens"
    entity: str | None = None
    name: str | None = None  # None: the output folder's name
    log_model: bool = True  # log the final adapter / model folder as an artifact
    table_rows: int = 32  # rows of the photo / truth / prediction table at each evaluation


@dataclass(frozen=True)
class RunConfig:
    """Everything one `productlens train` run needs; `training` goes to TrainingArguments unchanged."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    task: dict[str, Any] = field(default_factory=dict)  # an AnswerTemplate mapping: question, fields
    eval: EvalConfig = field(default_factory=EvalConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    training: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_TRAINING))

    def __post_init__(self) -> None:
        if self.finetune.method not in METHODS:
            raise ValueError(
                f"finetune.method is {self.finetune.method!r}; choose one of {', '.join(METHODS)}"
            )
        if self.model.dtype not in DTYPES:
            raise ValueError(f"model.dtype is {self.model.dtype!r}; choose one of {', '.join(DTYPES)}")
        if self.model.num_crops is not None and not 1 <= self.model.num_crops <= 16:
            raise ValueError(f"model.num_crops is {self.model.num_crops}; use 1..16 (4 for 3.5V, 16 for 3V)")
        if self.eval.sample_size < 0:
            raise ValueError("eval.sample_size must be >= 0 (0 turns generation-based evaluation off)")

    @property
    def output_dir(self) -> Path:
        return Path(self.training["output_dir"])

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (lists, not tuples), ready for YAML; `from_dict` reads it back."""
        return _plain(dataclasses.asdict(self))


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "finetune": FinetuneConfig,
    "lora": LoraConfig,
    "eval": EvalConfig,
    "wandb": WandbConfig,
}


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads `1e-4` as a float (YAML 1.1 wants `1.0e-4`) and only true/false as booleans
    (YAML 1.1 also turns `no`, `off`, `yes`, `on` into booleans: `eval_strategy: no` must stay the string)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*)?(?:\.\d*)?[eE][-+]?\d+$|^[-+]?\d[\d_]*\.\d*$|^[-+]?\.\d+$"),
    list("-+0123456789."),
)


def parse_value(text: str) -> Any:
    """A command-line value as YAML would read it: '1e-4' -> 0.0001, 'true' -> True, '[a, b]' -> list."""
    return yaml.load(text, Loader=_Loader)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A preset file -> its mapping (empty file -> {}). A bare name like 'phi3v-lora' is looked up in configs/."""
    path = resolve_preset(path)
    data = yaml.load(path.read_text(), Loader=_Loader) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a YAML mapping of sections (model:, data:, training:, ...)")
    return data


def resolve_preset(path: str | Path) -> Path:
    """'configs/x.yaml', 'x.yaml' or 'x' -> an existing preset path, or a clear error listing the presets."""
    candidates = [Path(path)]
    if not Path(path).suffix:
        candidates.append(CONFIGS_DIR / f"{path}.yaml")
    candidates.append(CONFIGS_DIR / Path(path).name)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    known = ", ".join(sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml"))) or "none found"
    raise FileNotFoundError(
        f"no preset {str(path)!r}; pass a YAML file or one of the presets in configs/: {known}"
    )


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """['training.learning_rate=1e-4', 'lora.r=8'] -> {'training': {'learning_rate': 1e-4}, 'lora': {'r': 8}}."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) < 2 or not all(parts):
            raise ValueError(
                f"override {pair!r} must look like section.key=value, e.g. training.learning_rate=1e-4"
            )
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {pair!r} conflicts with an earlier override of {part!r}")
        node[parts[-1]] = parse_value(text)
    return out


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge: mappings merge key by key, anything else in `over` replaces the value in `base`."""
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def from_dict(raw: Mapping[str, Any]) -> RunConfig:
    """A nested mapping (preset merged with overrides) -> RunConfig; unknown sections or keys are errors.

    A `quickstart:` section (catalog and tiny-model sizes, read by `productlens quickstart`) is skipped, so that
    configs/quickstart.yaml also works as a training preset."""
    raw = {k: v for k, v in raw.items() if k != "quickstart"}
    unknown = set(raw) - {*SECTIONS, "task", "training"}
    if unknown:
        raise ValueError(
            f"unknown config section(s) {sorted(unknown)}; allowed: {', '.join([*SECTIONS, 'task', 'training'])}"
        )
    kwargs: dict[str, Any] = {}
    for name, cls in SECTIONS.items():
        values = raw.get(name) or {}
        if not isinstance(values, Mapping):
            raise ValueError(f"config section {name!r} must be a mapping; got {values!r}")
        allowed = {f.name for f in dataclasses.fields(cls)}
        bad = set(values) - allowed
        if bad:
            raise ValueError(
                f"unknown key(s) {sorted(bad)} in section {name!r}; allowed: {', '.join(sorted(allowed))}"
            )
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        kwargs[name] = cls(**values)
    task = raw.get("task") or {}
    if not isinstance(task, Mapping):
        raise ValueError(f"config section 'task' must be a mapping with question/fields; got {task!r}")
    training = raw.get("training") or {}
    if not isinstance(training, Mapping):
        raise ValueError(
            f"config section 'training' must be a mapping of TrainingArguments; got {training!r}"
        )
    check_training_keys(training)
    return RunConfig(**kwargs, task=dict(task), training=merge(DEFAULT_TRAINING, training))


def check_training_keys(training: Mapping[str, Any]) -> None:
    """Unknown TrainingArguments names are an error here, before any model is loaded."""
    from transformers import TrainingArguments

    allowed = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    bad = sorted(set(training) - allowed)
    if bad:
        raise ValueError(
            f"unknown training setting(s) {bad}: the training: section is passed to transformers.TrainingArguments; "
            "see `python -c 'import transformers; help(transformers.TrainingArguments)'` for the names"
        )


def load_config(preset: str | Path | None = None, overrides: Sequence[str] = ()) -> RunConfig:
    """Defaults <- preset YAML <- `section.key=value` overrides -> RunConfig."""
    raw = load_yaml(preset) if preset is not None else {}
    return from_dict(merge(raw, parse_overrides(overrides)))


def save_config(config: RunConfig, path: str | Path) -> Path:
    """Write the resolved config as YAML (atomically); `load_config(path)` reproduces the run's settings."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, yaml.safe_dump(config.to_dict(), sort_keys=False))
