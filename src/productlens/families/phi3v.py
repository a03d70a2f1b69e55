"""Phi-3-Vision / Phi-3.5-Vision (productlens.phi3v, registered with the Auto classes): '<|user|>\\n<|image_1|>\\n
question<|end|>\\n<|assistant|>\\n' prompts; a photo becomes HD crops of 12x12 merged patches (image slots are
negative ids); the answer is followed by '<|end|>\\n<|endoftext|>' (the Phi-3 CookBook's training convention).
Cost knob: `num_crops`. Tower `vision_embed_tokens.img_processor` (CLIP), projector the rest of
`vision_embed_tokens`, decoder `model.layers`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from PIL import Image

from productlens.families import Family

VISION = "vision_embed_tokens.img_processor."  # the CLIP tower


def _used_vision_layers(model: Any) -> int:
    """CLIP encoder layers that reach the features."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model.vision_embed_tokens.num_layers


class Phi3V(Family):
    name = "phi3v"
    model_types = ("phi3_v",)
    end_of_turn = "<|end|>"
    parts = (("vision_embed_tokens.img_processor.", "vision"), ("vision_embed_tokens.", "projection"))
    lora_targets = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
    vision_lora_targets = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
    projection_modules = ("img_projection.0", "img_projection.2")
    projection_parameters = ("vision_embed_tokens.glb_GN", "vision_embed_tokens.sub_GN")  # image separators
    # transformers 5 matches a skip entry from the start of a module name (up to a dot) or as its ending, and
    # every name starts with `model.`: a bare `vision_embed_tokens` would match nothing
    quantization_skip = ("model.vision_embed_tokens", "lm_head")
    cost_knobs = ("num_crops",)
    recommended_cost: ClassVar[dict[str, Any]] = {
        "num_crops": 4
    }  # Phi-3.5-V's own setting; 16 (Phi-3-V's) quadruples the image tokens
    hub_ids = ("microsoft/Phi-3.5-vision-instruct", "microsoft/Phi-3-vision-128k-instruct")

    def prompt(self, processor: Any, question: str) -> str:
        return processor.chat_prompt(question, num_images=1)

    def completion(self, processor: Any, question: str, answer: str) -> str:
        from productlens.phi3v.processing import ANSWER_SUFFIX

        return answer + ANSWER_SUFFIX

    def stop_token_ids(self, processor: Any) -> list[int]:
        return processor.stop_token_ids

    def pad_token_id(self, processor: Any) -> int:
        return processor.pad_token_id

    def encode(
        self,
        processor: Any,
        prompts: Sequence[str],
        images: Sequence[Image.Image],
        padding_side: str = "left",
    ) -> Any:
        return processor(
            text=list(prompts), images=[image.convert("RGB") for image in images], padding_side=padding_side
        )

    def training_batch(
        self,
        processor: Any,
        prompts: Sequence[str],
        completions: Sequence[str],
        images: Sequence[Image.Image],
        max_length: int | None = None,
    ) -> Any:
        """Phi3VProcessor.training_batch (completions already end with the answer suffix)."""
        images = [image.convert("RGB") for image in images]
        return processor.training_batch(
            list(prompts), list(completions), images, max_length, answer_suffix=""
        )

    def image_tokens(self, processor: Any, width: int, height: int) -> int:
        return processor.num_image_tokens(width, height)

    def image_token_id(self, processor: Any) -> int:
        return -1  # the slots of a prompt's first (here: only) image

    def image_features(self, model: Any, processor: Any, inputs: Any) -> list[Any]:
        """The projected image features straight from the image embedding (no decoder pass), mean-pooled."""
        from productlens.phi3v.modeling import Phi3VImageEmbedding

        embed = next(m for m in model.modules() if isinstance(m, Phi3VImageEmbedding))
        # [T, hidden]: every image's features in turn, as many as its prompt has image slots
        features = embed(inputs["pixel_values"], inputs["image_sizes"])
        counts = (inputs["input_ids"] < 0).sum(dim=1).tolist()  # [B]
        return [part.mean(0) for part in features.split(counts)]

    def chat_prompt(self, processor: Any, turns: Sequence[tuple[str, list[str], int]]) -> str:
        """Phi-3 turns with numbered image tags first in each message, as vLLM writes them."""
        prompt, seen = "", 0
        for role, texts, photos in turns:
            tags = "".join(f"<|image_{seen + k + 1}|>\n" for k in range(photos))
            seen += photos
            prompt += f"<|{role}|>\n{tags}{chr(10).join(texts)}<|end|>\n"
        return prompt if turns[-1][0] == "assistant" else prompt + "<|assistant|>\n"

    def encode_chat(
        self, processor: Any, prompts: Sequence[str], images: Sequence[Sequence[Image.Image]]
    ) -> Any:
        return processor(
            text=list(prompts),
            images=[[im.convert("RGB") for im in row] or None for row in images],
            padding_side="left",
        )

    def lora_target_modules(self, targets: Iterable[str] | None = None) -> str:
        names = "|".join(map(re.escape, targets or self.lora_targets))
        return rf"(?!.*vision_embed_tokens)(?:.*\.)?({names})"

    def vision_lora_modules(self, model: Any, targets: Iterable[str] | None = None) -> str:
        """CLIP's linear layers in the encoder layers that reach the features."""
        names = "|".join(map(re.escape, targets or self.vision_lora_targets))
        layers = "|".join(str(i) for i in range(_used_vision_layers(model)))
        return rf".*{re.escape(VISION)}.*encoder\.layers\.({layers})\..*\.({names})"

    def unused_parameters(self, model: Any) -> set[str]:
        """CLIP layers past the feature layer, and post_layernorm: they never get a gradient."""
        used = _used_vision_layers(model)
        out = set()
        for name, _ in model.named_parameters():
            layer = re.search(r"encoder\.layers\.(\d+)\.", name)
            if VISION in name and ("post_layernorm" in name or (layer and int(layer.group(1)) >= used)):
                out.add(name)
        return out

    def load_processor(self, path: str | os.PathLike, **cost: Any) -> Any:
        import productlens.phi3v  # noqa: F401  (registers phi3_v with the Auto classes)

        return super().load_processor(path, **cost)

    def load_model(self, path: str | os.PathLike, **kwargs: Any) -> Any:
        import productlens.phi3v  # noqa: F401

        return super().load_model(path, **kwargs)

    def save_tiny(
        self,
        folder: str | os.PathLike,
        texts: Iterable[str],
        *,
        seed: int = 0,
        overwrite: bool = False,
        vocab_size: int = 400,
        text: dict[str, Any] | None = None,
        vision: dict[str, Any] | None = None,
        image_size: int = 56,
        num_crops: int = 1,
    ) -> Path:
        """productlens.phi3v.tiny's model (test size by default): `image_size`-px crops (56: 4 tokens each),
        `num_crops` crops + the global view; `text` overrides the decoder's config, `vision` CLIP's."""
        from productlens.phi3v.tiny import save_tiny_model

        return save_tiny_model(
            folder,
            texts,
            vocab_size=vocab_size,
            image_size=image_size,
            num_crops=num_crops,
            seed=seed,
            overwrite=overwrite,
            **(text or {}),
            **({"vision_config": vision} if vision else {}),
        )


FAMILY = Phi3V()
FAMILIES = {FAMILY.name: FAMILY}
