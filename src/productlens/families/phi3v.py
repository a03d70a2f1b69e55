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


class Phi3V(Family):
    name = "phi3v"
    model_types = ("phi3_v",)
    end_of_turn = "<|end|>"
    parts = (("vision_embed_tokens.img_processor.", "vision"), ("vision_embed_tokens.", "projection"))
    lora_targets = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
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

    def lora_target_modules(self, targets: Iterable[str] | None = None) -> str:
        names = "|".join(map(re.escape, targets or self.lora_targets))
        return rf"(?!.*vision_embed_tokens)(?:.*\.)?({names})"

    def quantization_skip_modules(self) -> list[str]:
        return ["vision_embed_tokens", "lm_head"]

    def load_processor(self, path: str | os.PathLike, **cost: Any) -> Any:
        import productlens.phi3v  # noqa: F401  (registers phi3_v with the Auto classes)

        return super().load_processor(path, **cost)

    def load_model(self, path: str | os.PathLike, **kwargs: Any) -> Any:
        import productlens.phi3v  # noqa: F401

        return super().load_model(path, **kwargs)

    def save_tiny(
        self, folder: str | os.PathLike, texts: Iterable[str], *, seed: int = 0, overwrite: bool = False
    ) -> Path:
        """productlens.phi3v.tiny's model at CPU-test size: 56-px crops (4 tokens each), 1 crop + global view."""
        from productlens.phi3v.tiny import save_tiny_model

        return save_tiny_model(
            folder, texts, vocab_size=400, image_size=56, num_crops=1, seed=seed, overwrite=overwrite
        )


FAMILY = Phi3V()
FAMILIES = {FAMILY.name: FAMILY}
