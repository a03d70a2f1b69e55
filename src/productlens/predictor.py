"""The `Predictor`: loads a model once, generates answers for photos in batches, and parses them.

In: PIL images, and a model folder / run folder / adapter to load. Out: `Prediction` records (title, category,
price, the raw answer). Used by `productlens predict` (through predict.py), `evaluate`, `serve` and training.
"""

from __future__ import annotations

import json
import os
import re
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import LogitsProcessor, LogitsProcessorList

from productlens.families import Family, checkpoint_family, family_for
from productlens.task.constrain import AnswerGrammar, Constraints, TemplateConstraint, token_pieces
from productlens.task.parse import parse_answer
from productlens.task.prompts import AnswerTemplate


@dataclass(frozen=True)
class Prediction:
    """What the model read from one photo; `failures` names the fields it could not read.

    `seconds` is this photo's share of its batch's generation time (batch seconds / batch size).
    """

    title: str | None
    category: str | None
    price: float | None
    raw_text: str
    failures: tuple[str, ...] = ()
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready dict of all fields."""
        return {
            "title": self.title,
            "category": self.category,
            "price": self.price,
            "raw_text": self.raw_text,
            "failures": list(self.failures),
            "seconds": self.seconds,
        }


# ---- the predictor ----------------------------------------------------------------------------------------


class Predictor:
    """Loads a model once; photos in, `Prediction`s out. The one inference object behind the CLI, the HTTP API
    and the training-time evaluation (which builds it around the model in memory).

    Generation is greedy by default, in batches of `batch_size` left-padded prompts, and stops at the family's
    end-of-turn token (Phi-3-V: `<|end|>` or `<|endoftext|>`). `family`: default from the model's config. `constraints` (or the shorthand `constrain_categories=[...]`, `constrain_price=True`)
    switches on constrained decoding: see `Constraints`.
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        template: AnswerTemplate = AnswerTemplate(),
        *,
        batch_size: int = 8,
        max_new_tokens: int = 96,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        constraints: Constraints | None = None,
        constrain_categories: Sequence[str] | None = None,
        constrain_price: bool = False,
        family: Family | None = None,
    ) -> None:
        if constrain_categories is not None or constrain_price:  # shorthand for constraints=Constraints(...)
            if constraints is not None:
                raise ValueError(
                    "pass either constraints=... or constrain_categories/constrain_price, not both"
                )
            categories = tuple(constrain_categories) if constrain_categories is not None else None
            constraints = Constraints(categories=categories, price=constrain_price)
        if batch_size < 1 or max_new_tokens < 1:
            raise ValueError(
                f"batch_size and max_new_tokens must be at least 1 (got {batch_size}, {max_new_tokens})"
            )
        self.model = model
        self.processor = processor
        self.family = family or family_for(model.config)
        self.template = template
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.do_sample = do_sample
        self.temperature, self.top_p, self.top_k = temperature, top_p, top_k
        self.constraints = (
            constraints if constraints and (constraints.categories or constraints.price) else None
        )
        self._grammar: AnswerGrammar | None = None

    @classmethod
    def load(
        cls,
        model: str | os.PathLike,
        adapter: str | os.PathLike | None = None,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        num_crops: int | None = None,
        template: AnswerTemplate | None = None,
        merge: bool = True,
        family: str | None = None,
        cost: dict[str, Any] | None = None,
        **options: Any,
    ) -> Predictor:
        """Load a model folder / hub id, a PEFT adapter folder, or a training run folder -> Predictor.

        A run folder (from `productlens train`) gives the base model, the adapter or merged model, the answer
        template, the family and the image-cost settings (`cost`, e.g. {"max_pixels": 401408}; `num_crops` is
        Phi-3-V's). `family`: default from the model's config.json. `device`: default cuda if available, else cpu; `dtype`: default bfloat16 on
        GPU, float32 on CPU. `merge` folds a LoRA adapter into the weights (faster inference). Weights are read
        from safetensors only, and no remote code is run. `options` go to `Predictor(...)`.
        """
        source = resolve_source(model, adapter)
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = _dtype(dtype, device)
        kind = checkpoint_family(source.base, family or source.family)
        net = kind.load_model(source.base, dtype=dtype)
        if source.adapter is not None:
            from peft import PeftModel

            net = PeftModel.from_pretrained(net, str(source.adapter), is_trainable=False)
            if merge:
                net = net.merge_and_unload()
        net.to(device).eval()
        settings = {**source.cost, **(cost or {})}
        if num_crops is not None:
            settings["num_crops"] = num_crops
        if "num_crops" in settings and not 1 <= int(settings["num_crops"]) <= 16:
            raise ValueError(
                f"num_crops is {settings['num_crops']}; use 1..16 (4 for Phi-3.5-V, 16 for Phi-3-V)"
            )
        processor = kind.load_processor(source.processor, **settings)
        return cls(net, processor, template or source.template or AnswerTemplate(), family=kind, **options)

    def with_options(self, **options: Any) -> Predictor:
        """A Predictor on the same model and processor with some options changed (e.g. constraints=...)."""
        current = {
            "batch_size": self.batch_size,
            "max_new_tokens": self.max_new_tokens,
            "do_sample": self.do_sample,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "constraints": self.constraints,
        }
        if {"constrain_categories", "constrain_price"} & set(options):
            del current["constraints"]  # the shorthand replaces them
        template = options.pop("template", self.template)
        other = Predictor(self.model, self.processor, template, family=self.family, **{**current, **options})
        if (other.template, other.constraints) == (self.template, self.constraints):
            other._grammar = self._grammar  # reading the vocabulary again would give the same automaton
        return other

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @cached_property
    def _prompt(self) -> str:
        return self.family.prompt(self.processor, self.template.question)

    def predict(self, images: Sequence[Image.Image], batch_size: int | None = None) -> list[Prediction]:
        """Photos -> one Prediction each, in order. Batches hold photos of similar prompt length (fewer pads)."""
        images = list(images)
        size = batch_size or self.batch_size
        slots = [self.family.image_tokens(self.processor, *im.size) for im in images]
        order = sorted(range(len(images)), key=lambda i: slots[i])
        out: list[Prediction | None] = [None] * len(images)
        for start in range(0, len(order), size):
            chunk = order[start : start + size]
            began = time.perf_counter()
            texts = self._generate([images[i] for i in chunk])
            seconds = (time.perf_counter() - began) / len(chunk)
            for i, text in zip(chunk, texts, strict=True):
                parsed = parse_answer(text, self.template)
                out[i] = Prediction(
                    parsed.title, parsed.category, parsed.price, text, parsed.failures, seconds
                )
        return out  # type: ignore[return-value]

    def _generate(self, images: list[Image.Image]) -> list[str]:
        """One left-padded batch -> the decoded answers (new tokens only, special tokens skipped)."""
        inputs = self._inputs(images)
        prompt_length = inputs["input_ids"].shape[1]
        processors = LogitsProcessorList()
        sampling: dict[str, Any] = {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k}
        if self.constraints is not None:
            processors.append(TemplateConstraint(self.grammar, prompt_length, self.max_new_tokens))
            if self.do_sample:  # warpers after the mask, or they could keep only tokens it then removes
                processors.extend(_warpers(self.temperature, self.top_p, self.top_k))
                sampling = {"temperature": 1.0, "top_p": 1.0, "top_k": 0}
        with _evaluating(self.model), torch.inference_mode():
            sequences = self.model.generate(
                **inputs,
                max_new_tokens=self.max_new_tokens,
                do_sample=self.do_sample,
                **(sampling if self.do_sample else {}),
                eos_token_id=self.family.stop_token_ids(self.processor),
                pad_token_id=self.family.pad_token_id(self.processor),
                logits_processor=processors,
            )
        return self.processor.tokenizer.batch_decode(sequences[:, prompt_length:], skip_special_tokens=True)

    def _inputs(self, images: list[Image.Image]) -> dict[str, torch.Tensor]:
        inputs = self.family.encode(self.processor, [self._prompt] * len(images), images, padding_side="left")
        return self._on_device(inputs)

    def _on_device(self, inputs: Any) -> dict[str, torch.Tensor]:
        """Processor output -> tensors on the model's device (pixel values in its dtype)."""
        dtype = next(p.dtype for p in self.model.parameters() if p.is_floating_point())
        return {
            k: v.to(self.device, dtype=dtype) if k == "pixel_values" else v.to(self.device)
            for k, v in inputs.items()
        }

    def chat(self, jobs: Sequence[Any]) -> list[Any]:
        """Chat requests (`chat.ChatJob`: own prompt, photos, budget, sampling, stops, JSON schema) -> one
        `chat.ChatResult` each, from one batched generate. Used by the OpenAI-compatible endpoint."""
        from productlens.chat import run_chat

        with _evaluating(self.model):
            return run_chat(self, jobs)

    @property
    def grammar(self) -> AnswerGrammar:
        """The constrained-decoding automaton for this tokenizer (built on first use: it reads the vocabulary)."""
        if self._grammar is None:
            if self.constraints is None:
                raise ValueError("this Predictor has no constraints; pass constraints=Constraints(...)")
            tokenizer = self.processor.tokenizer
            vocab = self.model.get_output_embeddings().weight.shape[0]
            context = tokenizer(self.template.fields[0][0], add_special_tokens=False)["input_ids"][-1:]
            pieces, first = token_pieces(
                lambda rows: tokenizer.batch_decode(rows, skip_special_tokens=True),
                vocab,
                min(len(tokenizer), vocab),
                context,
            )
            self._grammar = AnswerGrammar(
                self.template, self.constraints, pieces, first, self.family.stop_token_ids(self.processor)
            )
            need = self._grammar.need_from[0]
            if need > self.max_new_tokens:
                warnings.warn(
                    f"max_new_tokens={self.max_new_tokens} may cut a constrained answer short (the longest takes "
                    f"up to {need} tokens); raise max_new_tokens",
                    stacklevel=2,
                )
        return self._grammar

    def image_features(self, images: Sequence[Image.Image], batch_size: int | None = None) -> np.ndarray:
        """Photos -> [N, hidden] float32: the projected image embeddings the language model sees, mean-pooled."""
        size = batch_size or self.batch_size
        out = []
        with _evaluating(self.model), torch.inference_mode():
            for start in range(0, len(images), size):
                inputs = self._inputs(list(images[start : start + size]))
                out += [
                    row.float().cpu().numpy()
                    for row in self.family.image_features(self.model, self.processor, inputs)
                ]
        if not out:
            width = self.model.get_input_embeddings().weight.shape[1]
            return np.zeros((0, width), dtype=np.float32)
        return np.stack(out)


def _warpers(temperature: float, top_p: float, top_k: int) -> list[LogitsProcessor]:
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    out: list[LogitsProcessor] = []
    if temperature != 1.0:
        out.append(TemperatureLogitsWarper(temperature))
    if top_k:
        out.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        out.append(TopPLogitsWarper(top_p))
    return out


@contextmanager
def _evaluating(model: Any) -> Iterator[None]:
    """The model in eval mode inside, its previous mode restored after (training calls us mid-run)."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in names:
        raise ValueError(f"dtype {dtype!r} is not one of {', '.join(names)} (or auto)")
    return names[dtype]


# ---- where the weights are --------------------------------------------------------------------------------

RUN_CONFIG = "config.yaml"  # the resolved config `productlens train` writes into its run folder
MODEL_SUBFOLDER = "model"  # a run's merged / fully fine-tuned model (with the processor)
ADAPTER_SUBFOLDER = "adapter"  # a run's PEFT adapter (with the processor)
PROCESSOR_FILES = ("preprocessor_config.json", "tokenizer.json")
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # owner/name, e.g. microsoft/Phi-3-vision-128k-instruct


@dataclass(frozen=True)
class ModelSource:
    """What `Predictor.load` reads: base weights, an optional adapter, the processor, and run settings."""

    base: str  # folder or hub id of the (merged or base) model
    adapter: Path | None = None  # PEFT adapter folder
    processor: str = ""  # folder or hub id with the tokenizer and preprocessor config
    template: AnswerTemplate | None = None  # the run's answer template, when a run config gives one
    cost: dict[str, Any] = field(
        default_factory=dict
    )  # the run's image-cost settings (num_crops, max_pixels...)
    family: str | None = None  # the run's model.family, when set


def resolve_source(model: str | os.PathLike, adapter: str | os.PathLike | None = None) -> ModelSource:
    """A model folder, hub id, adapter folder or training run folder (+ optional adapter) -> ModelSource.

    A run folder: its `model/` if there is one, else its `adapter/` on the base its config.yaml names.
    """
    if adapter is not None:
        return _with_adapter(resolve_source(model), _adapter_folder(adapter))
    path = Path(model)
    if not path.exists():
        if HUB_ID.fullmatch(str(model)):
            return ModelSource(str(model), processor=str(model))
        raise FileNotFoundError(f"{model} does not exist; pass a model folder, a run folder or a hub id")
    if not path.is_dir():
        raise NotADirectoryError(f"{path} is a file; pass the folder that holds config.json, or a run folder")
    inside = path.name in (MODEL_SUBFOLDER, ADAPTER_SUBFOLDER)  # run/model or run/adapter
    run = path.parent if inside and not (path / RUN_CONFIG).is_file() else path
    settings = _run_settings(run) if (run / RUN_CONFIG).is_file() else RunSettings()
    base = settings.base
    for folder in (path / MODEL_SUBFOLDER, path):
        if (folder / "config.json").is_file():
            return ModelSource(str(folder), None, _processor(folder, str(folder)), *settings.fields())
    for folder in (path / ADAPTER_SUBFOLDER, path):
        if (folder / "adapter_config.json").is_file():
            base = base or json.loads((folder / "adapter_config.json").read_text()).get(
                "base_model_name_or_path"
            )
            if not base:
                raise ValueError(
                    f"{folder} does not name its base model; pass --model BASE --adapter {folder}"
                )
            if not Path(base).exists() and (run / base).exists():
                base = str(run / base)  # a base path relative to the run folder
            return ModelSource(
                str(base), _adapter_folder(folder), _processor(folder, str(base)), *settings.fields()
            )
    raise FileNotFoundError(
        f"no model in {path}: expected config.json (a model), adapter_config.json (a PEFT adapter), or a run "
        f"folder from `productlens train` with {MODEL_SUBFOLDER}/ or {ADAPTER_SUBFOLDER}/ inside"
    )


def _with_adapter(source: ModelSource, folder: Path) -> ModelSource:
    """A base model's source + an adapter folder: the adapter's run settings (template, cost, family) from the
    config.yaml of its run folder (RUN/adapter) or beside it, and the processor saved with it."""
    run = folder if (folder / RUN_CONFIG).is_file() else folder.parent
    source = replace(source, adapter=folder, processor=_processor(folder, source.processor))
    if (run / RUN_CONFIG).is_file():
        template, cost, family = _run_settings(run).fields()
        source = replace(source, template=template, cost=cost, family=family)
    return source


@dataclass(frozen=True)
class RunSettings:
    """What a run folder's resolved config says about loading its model."""

    template: AnswerTemplate | None = None
    cost: dict[str, Any] = field(default_factory=dict)
    family: str | None = None
    base: str | None = None

    def fields(self) -> tuple[AnswerTemplate | None, dict[str, Any], str | None]:
        """(template, cost, family), in ModelSource's order."""
        return self.template, self.cost, self.family


def _run_settings(run: Path) -> RunSettings:
    """A run folder's config.yaml -> its template, image-cost settings, family and base model."""
    from productlens.config import load_config

    config = load_config(run / RUN_CONFIG)
    template = AnswerTemplate.from_dict(config.task) if config.task else AnswerTemplate()
    return RunSettings(template, config.model.cost_settings(), config.model.family, config.model.path)


def _adapter_folder(adapter: str | os.PathLike) -> Path:
    """A local adapter folder with safetensors weights (adapter_model.bin is pickle: refused)."""
    folder = Path(adapter)
    if not folder.is_dir():
        raise FileNotFoundError(f"adapter folder {folder} does not exist")
    if not (folder / "adapter_model.safetensors").is_file():
        raise ValueError(
            f"{folder} has no adapter_model.safetensors; productlens loads safetensors only (re-save the "
            "adapter with save_pretrained(..., safe_serialization=True))"
        )
    return folder


def _processor(folder: Path, fallback: str) -> str:
    """`folder` if it holds tokenizer and preprocessor files (a run saves them beside the weights), else fallback."""
    return str(folder) if all((folder / f).is_file() for f in PROCESSOR_FILES) else fallback
