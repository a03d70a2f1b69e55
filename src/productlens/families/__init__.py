"""Model families: what differs between the VLMs productlens fine-tunes, behind one small interface.

In: a checkpoint's config (its `model_type`) or a family name. Out: a `Family` that says how a product question
becomes a prompt (the checkpoint's own chat template and image tokens), what the model must learn to write after
it (the answer and its end-of-turn token), which modules are the vision tower, the projector and the default LoRA
targets, what its image-cost knob is, and how to build a tiny random model for CPU tests.

    family = family_for(AutoConfig.from_pretrained(path))   # or get_family("qwen2_5_vl"), e.g. from --family
    processor = family.load_processor(path, max_pixels=200_704)

One module per family (phi3v.py, qwen2_5_vl.py, smolvlm.py, gemma3.py) holds only what differs; a new family is one
new module (its `FAMILIES`) and a line in `MODULES` and `MODEL_TYPES`. Native families load through transformers' own Auto classes.
"""

from __future__ import annotations

import functools
import importlib
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from PIL import Image

# family name -> the module under productlens.families that defines it (in its FAMILIES)
MODULES = {
    "phi3v": "phi3v",
    "qwen2_5_vl": "qwen2_5_vl",
    "qwen3_vl": "qwen2_5_vl",
    "smolvlm": "smolvlm",
    "gemma3": "gemma3",
}
# model_type (a checkpoint's config.json) -> family name
MODEL_TYPES = {
    "phi3_v": "phi3v",
    "qwen2_5_vl": "qwen2_5_vl",
    "qwen3_vl": "qwen3_vl",
    "smolvlm": "smolvlm",
    "gemma3": "gemma3",
}
IGNORE_INDEX = -100  # label of a token the loss skips


class Family:
    """One model family. Subclasses set the class attributes and override only what differs."""

    name: str = ""  # as given to --family
    model_types: tuple[str, ...] = ()  # config.model_type values this family serves
    end_of_turn: str = ""  # the token that closes the assistant's turn (supervised, and a stop token)
    # (fragment of a parameter name, part), first match wins; anything else is the language model
    parts: tuple[tuple[str, str], ...] = ()
    language_module: str = ""  # regex of the language model's module path (LoRA targets live under it)
    lora_targets: tuple[str, ...] = (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    )
    vision_lora_targets: tuple[str, ...] = ()  # the tower's linear layers, adapted when it is not frozen
    # projector modules (name endings) trained whole under LoRA when the projection is not frozen; the
    # projector's bare parameters (no module of their own), trained whole and saved with the adapter
    projection_modules: tuple[str, ...] = ()
    projection_parameters: tuple[str, ...] = ()
    # module names (from the model's root) kept unquantised under QLoRA: vision tower, projector, lm_head
    quantization_skip: tuple[str, ...] = ()
    cost_knobs: tuple[str, ...] = ()  # processor settings that trade image tokens (memory, speed) for detail
    # memory-sensible knob values for the real checkpoints (for presets)
    recommended_cost: ClassVar[dict[str, Any]] = {}
    hub_ids: tuple[str, ...] = ()  # the real checkpoints, smallest first
    # transformers' processor minus its video processor, for machines without torchvision (transformers' video
    # processors need it, and its video-capable processors refuse to be built without one); None: not needed
    image_only_processor: type | None = None

    # ---- prompts and answers ---------------------------------------------------------------------------

    def messages(self, question: str, answer: str | None = None) -> list[dict[str, Any]]:
        """A one-photo conversation in the transformers chat format (user: image + question[, assistant])."""
        out = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        if answer is not None:
            out.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
        return out

    def prompt(self, processor: Any, question: str) -> str:
        """The generation prompt for one photo, from the checkpoint's own chat template."""
        return self.render(processor, self.messages(question), add_generation_prompt=True)

    def render(
        self, processor: Any, messages: list[dict[str, Any]], add_generation_prompt: bool = False
    ) -> str:
        """Messages -> text through the checkpoint's chat template (the processor's, else the tokenizer's)."""
        template = getattr(processor, "chat_template", None) or processor.tokenizer.chat_template
        if not template:
            raise ValueError(
                f"this {self.name} checkpoint has no chat template; use an instruction-tuned one"
            )
        return processor.tokenizer.apply_chat_template(
            messages, chat_template=template, add_generation_prompt=add_generation_prompt, tokenize=False
        )

    def completion(self, processor: Any, question: str, answer: str) -> str:
        """What the model must write after the prompt: the answer as its chat template renders an assistant
        turn, up to and including the end-of-turn token (e.g. 'Product: ...<|im_end|>')."""
        prompt = self.prompt(processor, question)
        full = self.render(processor, self.messages(question, answer))
        start = full.find(answer, len(prompt))
        end = full.find(self.end_of_turn, start + len(answer)) if start >= 0 else -1
        if not full.startswith(prompt) or end < 0:
            raise ValueError(
                f"the {self.name} chat template does not render an assistant turn as the generation prompt "
                f"followed by the answer and {self.end_of_turn!r}; check the checkpoint's chat_template"
            )
        return full[len(prompt) : end + len(self.end_of_turn)]

    def stop_token_ids(self, processor: Any) -> list[int]:
        """Ids that end generation: the end-of-turn token, then the tokenizer's eos if it differs."""
        tokenizer = processor.tokenizer
        end = tokenizer.convert_tokens_to_ids(self.end_of_turn)
        if end is None or end == tokenizer.unk_token_id:
            raise ValueError(
                f"the tokenizer has no {self.end_of_turn!r} token; is this a {self.name} checkpoint?"
            )
        return list(
            dict.fromkeys([end, tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [end])
        )

    def pad_token_id(self, processor: Any) -> int:
        tokenizer = processor.tokenizer
        return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    # ---- inputs ----------------------------------------------------------------------------------------

    def encode(
        self,
        processor: Any,
        prompts: Sequence[str],
        images: Sequence[Image.Image],
        padding_side: str = "left",
    ) -> Any:
        """Prompts + one photo each -> the processor's padded BatchFeature (input_ids [B, L], attention_mask,
        pixel values and the family's other image inputs). The rendered template is complete: no extra BOS."""
        return processor(
            text=list(prompts),
            images=[[image.convert("RGB")] for image in images],
            padding=True,
            padding_side=padding_side,
            add_special_tokens=False,
            return_tensors="pt",
        )

    def training_batch(
        self,
        processor: Any,
        prompts: Sequence[str],
        completions: Sequence[str],
        images: Sequence[Image.Image],
        max_length: int | None = None,
    ) -> Any:
        """Rows -> right-padded BatchFeature with labels (see families.collate.training_batch)."""
        from productlens.families.collate import training_batch

        return training_batch(self, processor, prompts, completions, images, max_length)

    def image_tokens(self, processor: Any, width: int, height: int) -> int:
        """Image-feature tokens (what the vision side feeds the language model) a photo of this size takes."""
        return _encoded(self, processor, "?", int(width), int(height))[1]

    def prompt_length(self, processor: Any, question: str, width: int, height: int) -> int:
        """Tokens of the encoded prompt for one photo of this size (image tokens and markers included)."""
        return _encoded(self, processor, question, int(width), int(height))[0]

    def image_token_id(self, processor: Any) -> int:
        """The id the processor repeats once per image-feature token."""
        return int(processor.image_token_id)

    def image_features(self, model: Any, processor: Any, inputs: Any) -> list[Any]:
        """Encoded one-photo prompts -> one [hidden] tensor per row: the image embeddings the language model
        sees (its input embeddings at the image-token positions), mean-pooled."""
        out = model(**inputs, output_hidden_states=True)
        embedded = out.hidden_states[0]  # [B, L, hidden], image features in place
        where = inputs["input_ids"] == self.image_token_id(processor)  # [B, L]
        return [row[mask].mean(0) for row, mask in zip(embedded, where, strict=True)]

    # ---- chat (the OpenAI-compatible endpoint) --------------------------------------------------------

    def chat_prompt(self, processor: Any, turns: Sequence[tuple[str, list[str], int]]) -> str:
        """Chat turns (role, texts, number of photos) -> the prompt, through the checkpoint's chat template;
        ends with the assistant's generation prompt unless the last turn is the assistant's."""
        messages = [
            {
                "role": role,
                "content": [{"type": "image"}] * photos + [{"type": "text", "text": t} for t in texts],
            }
            for role, texts, photos in turns
        ]
        return self.render(processor, messages, add_generation_prompt=turns[-1][0] != "assistant")

    def encode_chat(
        self, processor: Any, prompts: Sequence[str], images: Sequence[Sequence[Image.Image]]
    ) -> Any:
        """Chat prompts + their photos (any number each) -> one left-padded BatchFeature."""
        photos = [[image.convert("RGB") for image in row] for row in images]
        return processor(
            text=list(prompts),
            images=photos if any(photos) else None,
            padding=True,
            padding_side="left",
            add_special_tokens=False,
            return_tensors="pt",
        )

    # ---- parts of the model ----------------------------------------------------------------------------

    def part_of(self, name: str) -> str:
        """Parameter name -> 'vision' (tower), 'projection' (projector) or 'language'."""
        return next((part for fragment, part in self.parts if fragment in name), "language")

    def lora_target_modules(self, targets: Iterable[str] | None = None) -> str:
        """PEFT `target_modules` regex: the named linear layers of the language model only."""
        names = "|".join(map(re.escape, targets or self.lora_targets))
        return rf".*{self.language_module}\..*\.({names})"

    def vision_lora_modules(self, model: Any, targets: Iterable[str] | None = None) -> str:
        """PEFT `target_modules` regex: the named linear layers of the vision tower (not the projector)."""
        names = "|".join(map(re.escape, targets or self.vision_lora_targets))
        tower = next(fragment for fragment, part in self.parts if part == "vision")
        projector = "|".join(re.escape(fragment) for fragment, part in self.parts if part == "projection")
        return rf"(?!.*(?:{projector})).*{re.escape(tower)}.*\.({names})"

    def unused_parameters(self, model: Any) -> set[str]:
        """Parameters that never reach the loss (e.g. vision layers past the feature layer): never trained."""
        return set()

    def quantization_skip_modules(self) -> list[str]:
        """Modules kept unquantised under QLoRA: the vision tower, the projector and the output layer."""
        return list(self.quantization_skip)

    # ---- loading and tiny models -----------------------------------------------------------------------

    def load_processor(self, path: str | os.PathLike, **cost: Any) -> Any:
        """The checkpoint's processor (AutoProcessor), with cost knobs (see `cost_knobs`) overridden."""
        from transformers import AutoProcessor
        from transformers.utils import is_torchvision_available

        self._check_cost(cost)
        if self.image_only_processor is not None and not is_torchvision_available():
            return self.image_only_processor.from_pretrained(str(path), **cost)
        return AutoProcessor.from_pretrained(str(path), **cost)

    def load_model(self, path: str | os.PathLike, **kwargs: Any) -> Any:
        """The checkpoint through transformers' own class (safetensors only, no remote code)."""
        from transformers import AutoModelForImageTextToText

        return AutoModelForImageTextToText.from_pretrained(str(path), use_safetensors=True, **kwargs)

    def save_tiny(
        self,
        folder: str | os.PathLike,
        texts: Iterable[str],
        *,
        seed: int = 0,
        overwrite: bool = False,
        **sizes: Any,
    ) -> Path:
        """A random tiny model of this architecture (weights drawn from `seed`) + a locally built tokenizer and
        processor -> `folder`, crash-safe; a non-empty folder only with `overwrite`. `sizes` go to `tiny`."""
        from productlens.families.tiny import seeded, write_folder

        model_class, config, processor = self.tiny(list(texts), **sizes)
        model = seeded(lambda: model_class(config), seed)
        return write_folder(folder, model, processor, overwrite)

    def tiny(
        self,
        texts: Iterable[str],
        *,
        vocab_size: int = 600,
        text: dict[str, Any] | None = None,
        vision: dict[str, Any] | None = None,
    ) -> tuple[type, Any, Any]:
        """-> (model class, its tiny config, processor): a locally built tokenizer (`vocab_size` tokens, learned on
        `texts`) and processor, the architecture at CPU-test sizes; `text` / `vision` override the decoder's and
        the vision tower's config (e.g. the quickstart's sizes)."""
        raise NotImplementedError

    def _check_cost(self, cost: dict[str, Any]) -> None:
        unknown = sorted(set(cost) - set(self.cost_knobs))
        if unknown:
            raise ValueError(
                f"{self.name} has no cost setting {', '.join(unknown)}; its settings are: {', '.join(self.cost_knobs)}"
            )

    def __repr__(self) -> str:
        return f"<family {self.name}>"


@functools.lru_cache(maxsize=4096)
def _encoded(family: Family, processor: Any, question: str, width: int, height: int) -> tuple[int, int]:
    """(prompt length, image-feature tokens) of one blank photo of this size, exact (through the processor)."""
    image = Image.new("RGB", (width, height), (127, 127, 127))
    ids = family.encode(processor, [family.prompt(processor, question)], [image])["input_ids"][0]  # [L]
    return len(ids), int((ids == family.image_token_id(processor)).sum())


def get_family(name: str) -> Family:
    """A family by name or model_type ('phi3v', 'qwen2_5_vl', 'qwen3_vl', 'smolvlm', 'gemma3'), e.g. --family."""
    key = str(name).strip().lower().replace("-", "_").replace(".", "_")
    key = MODEL_TYPES.get(key, key)
    if key not in MODULES:
        raise ValueError(f"unknown model family {name!r}; choose one of {', '.join(names())}")
    return importlib.import_module(f"productlens.families.{MODULES[key]}").FAMILIES[key]


def family_for(config: Any, override: str | None = None) -> Family:
    """The family of a checkpoint config (its `model_type`); `override` (--family) wins when given."""
    if override:
        return get_family(override)
    model_type = config.get("model_type") if isinstance(config, dict) else getattr(config, "model_type", None)
    if model_type not in MODEL_TYPES:
        raise ValueError(
            f"no productlens model family for model_type {model_type!r}; supported: {', '.join(MODEL_TYPES)} "
            "(pass --family NAME if this checkpoint is one of them under another name)"
        )
    return get_family(MODEL_TYPES[model_type])


def checkpoint_family(path: str | os.PathLike, override: str | None = None) -> Family:
    """The family of a checkpoint (a folder or hub id) by its config.json's model_type; `override` (--family,
    `model.family`) wins when given, without reading the config."""
    if override:
        return get_family(override)
    from transformers import PretrainedConfig

    return family_for(PretrainedConfig.get_config_dict(str(path))[0])


def names() -> list[str]:
    """The family names, in registry order."""
    return list(MODULES)


__all__ = [
    "IGNORE_INDEX",
    "MODEL_TYPES",
    "MODULES",
    "Family",
    "checkpoint_family",
    "family_for",
    "get_family",
    "names",
]
