"""Qwen2.5-VL and Qwen3-VL: ChatML turns closed by `<|im_end|>`, a photo as `<|vision_start|><|image_pad|>...
<|vision_end|>` with one `<|image_pad|>` per 28x28 pixels (Qwen3-VL: 32x32; 2x2 merged patches); cost knob: the
photo's pixel budget `min_pixels` / `max_pixels`. Tower `visual.*`, projector `visual.merger` (Qwen3-VL also
`visual.deepstack_merger_list`), decoder `language_model`. Qwen3-VL differs only in the tower, the patch size
and its template (no default system turn).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, ClassVar

import transformers

from productlens.families import Family
from productlens.families.tiny import TINY_TEXT, byte_level_tokenizer, sized

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# The Qwen2.5-VL format for text and image turns (default system turn first); written for the tiny models, real
# checkpoints bring their own template.
SYSTEM_TURN = (
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
)
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "SYSTEM_TURN"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
PIXELS_PER_TOKEN = 28 * 28  # one merged 2x2 group of 14-pixel patches (Qwen3-VL: 16-pixel patches)


def mrope_section(head_dim: int) -> list[int]:
    """Rotary pairs per (time, height, width) for a head size, in the real checkpoints' 1 : 1.5 : 1.5 split."""
    pairs = head_dim // 2
    time = max(1, head_dim // 8)
    height = (pairs - time) // 2
    return [time, height, pairs - time - height]


class Qwen2_5_VLProcessor(transformers.Qwen2_5_VLProcessor):
    """transformers' processor without its video processor (which needs torchvision): photos are processed the
    same, and a saved folder names the real class (so it loads as usual where torchvision is installed)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class Qwen3VLProcessor(transformers.Qwen3VLProcessor):
    """transformers' processor without its video processor (which needs torchvision); see Qwen2_5_VLProcessor."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class Qwen25VL(Family):
    name = "qwen2_5_vl"
    model_types = ("qwen2_5_vl",)
    end_of_turn = "<|im_end|>"
    parts = (("visual.merger.", "projection"), ("visual.", "vision"))
    language_module = "language_model"
    vision_lora_targets = ("qkv", "proj", "gate_proj", "up_proj", "down_proj")
    projection_modules = ("visual.merger",)
    quantization_skip = ("model.visual", "lm_head")
    cost_knobs = ("min_pixels", "max_pixels", "size")
    # at most 512 image tokens per photo (the checkpoint allows 16384): product photos need no more
    recommended_cost: ClassVar[dict[str, Any]] = {
        "min_pixels": 64 * PIXELS_PER_TOKEN,
        "max_pixels": 512 * PIXELS_PER_TOKEN,
    }
    hub_ids = ("Qwen/Qwen2.5-VL-3B-Instruct", "Qwen/Qwen2.5-VL-7B-Instruct")
    image_only_processor = Qwen2_5_VLProcessor
    patch_size = 14
    system_turn = True  # the template opens with a default system turn

    def load_processor(self, path: str | os.PathLike, **cost: Any) -> Any:
        """AutoProcessor, with `min_pixels` / `max_pixels` (pixels per photo after resizing) set as the image
        processor's size edges (transformers 5 deprecates them as call arguments)."""
        from transformers.image_utils import SizeDict

        pixels = {k: int(cost.pop(k)) for k in ("min_pixels", "max_pixels") if k in cost}
        processor = super().load_processor(path, **cost)
        if pixels:
            size = processor.image_processor.size
            low = pixels.get("min_pixels", size["shortest_edge"])
            high = pixels.get("max_pixels", size["longest_edge"])
            if not self.pixels_per_token <= low <= high:
                raise ValueError(
                    f"need {self.pixels_per_token} <= min_pixels <= max_pixels, got {low} and {high} "
                    f"(each image token covers {self.pixels_per_token} pixels)"
                )
            processor.image_processor.size = SizeDict(shortest_edge=low, longest_edge=high)
        return processor

    @property
    def pixels_per_token(self) -> int:
        return (2 * self.patch_size) ** 2

    def image_tokens(self, processor: Any, width: int, height: int) -> int:
        """Image tokens from the size alone (the processor's own arithmetic; no pixels processed)."""
        return int(processor._get_num_multimodal_tokens(image_sizes=[(height, width)])["num_image_tokens"][0])

    def tiny_processor(self, texts: Iterable[str], vocab_size: int = 600) -> Any:
        """A locally built tokenizer (ChatML special tokens) + the PIL image processor: 4 to 16 image tokens."""
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        template = CHAT_TEMPLATE.replace("SYSTEM_TURN", SYSTEM_TURN if self.system_turn else "")
        tokenizer = byte_level_tokenizer(
            texts,
            SPECIAL_TOKENS,
            vocab_size=vocab_size,
            eos_token="<|im_end|>",
            pad_token="<|endoftext|>",
            chat_template=template,
        )
        image_processor = Qwen2VLImageProcessorPil(
            patch_size=self.patch_size,
            size={"shortest_edge": 4 * self.pixels_per_token, "longest_edge": 16 * self.pixels_per_token},
        )
        return self.image_only_processor(
            image_processor=image_processor, tokenizer=tokenizer, chat_template=template
        )

    def tiny_text_config(self, tokenizer: Any, text: dict[str, Any] | None) -> dict[str, Any]:
        ids = tokenizer.convert_tokens_to_ids
        return {
            "vocab_size": len(tokenizer),
            **sized(TINY_TEXT, text),
            "tie_word_embeddings": False,
            "bos_token_id": None,
            "eos_token_id": ids("<|im_end|>"),
            "pad_token_id": ids("<|endoftext|>"),
        }

    def tiny_token_ids(self, tokenizer: Any) -> dict[str, int]:
        ids = tokenizer.convert_tokens_to_ids
        return {
            "image_token_id": ids("<|image_pad|>"),
            "video_token_id": ids("<|video_pad|>"),
            "vision_start_token_id": ids("<|vision_start|>"),
            "vision_end_token_id": ids("<|vision_end|>"),
        }

    def tiny(
        self,
        texts: Iterable[str],
        *,
        vocab_size: int = 600,
        text: dict[str, Any] | None = None,
        vision: dict[str, Any] | None = None,
    ) -> tuple[type, Any, Any]:
        """Tiny Qwen2.5-VL: 2 decoder layers (hidden 32, GQA 4/2, mrope), a 2-block windowed vision tower, the
        real 14-pixel patches and 2x2 merge, 4 to 16 image tokens per photo."""
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

        processor = self.tiny_processor(texts, vocab_size)
        text = self.tiny_text_config(processor.tokenizer, text)
        text["rope_parameters"] = {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": mrope_section(text["hidden_size"] // text["num_attention_heads"]),
        }
        config = Qwen2_5_VLConfig(
            text_config=text,
            vision_config=sized(
                {
                    "depth": 2,
                    "hidden_size": 16,
                    "intermediate_size": 24,
                    "num_heads": 2,
                    "out_hidden_size": text["hidden_size"],
                    "patch_size": 14,
                    "spatial_merge_size": 2,
                    "temporal_patch_size": 2,
                    "window_size": 56,
                    "fullatt_block_indexes": [1],
                    "initializer_range": 0.15,
                },
                vision,
            ),
            **self.tiny_token_ids(processor.tokenizer),
            eos_token_id=text["eos_token_id"],
            pad_token_id=text["pad_token_id"],
            tie_word_embeddings=False,
        )
        return Qwen2_5_VLForConditionalGeneration, config, processor


class Qwen3VL(Qwen25VL):
    name = "qwen3_vl"
    model_types = ("qwen3_vl",)
    parts = (
        ("visual.merger.", "projection"),
        ("visual.deepstack_merger_list.", "projection"),
        ("visual.", "vision"),
    )
    vision_lora_targets = ("qkv", "proj", "linear_fc1", "linear_fc2")
    projection_modules = ("visual.merger", "visual.deepstack_merger_list")
    recommended_cost: ClassVar[dict[str, Any]] = {"min_pixels": 64 * 32 * 32, "max_pixels": 512 * 32 * 32}
    hub_ids = ("Qwen/Qwen3-VL-2B-Instruct", "Qwen/Qwen3-VL-4B-Instruct", "Qwen/Qwen3-VL-8B-Instruct")
    image_only_processor = Qwen3VLProcessor
    patch_size = 16
    system_turn = False

    def tiny(
        self,
        texts: Iterable[str],
        *,
        vocab_size: int = 600,
        text: dict[str, Any] | None = None,
        vision: dict[str, Any] | None = None,
    ) -> tuple[type, Any, Any]:
        """Tiny Qwen3-VL: 2 decoder layers (interleaved mrope), a 2-block tower with one deepstack merger, the
        real 16-pixel patches and 2x2 merge, 4 to 16 image tokens per photo."""
        from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

        processor = self.tiny_processor(texts, vocab_size)
        text = self.tiny_text_config(processor.tokenizer, text)
        text["head_dim"] = text["hidden_size"] // text["num_attention_heads"]
        text["rope_parameters"] = {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": mrope_section(text["head_dim"]),
            "mrope_interleaved": True,
        }
        config = Qwen3VLConfig(
            text_config=text,
            vision_config=sized(
                {
                    "depth": 2,
                    "hidden_size": 16,
                    "intermediate_size": 24,
                    "num_heads": 2,
                    "out_hidden_size": text["hidden_size"],
                    "patch_size": 16,
                    "spatial_merge_size": 2,
                    "temporal_patch_size": 2,
                    "num_position_embeddings": 64,
                    "deepstack_visual_indexes": [0],
                    "initializer_range": 0.15,
                },
                vision,
            ),
            **self.tiny_token_ids(processor.tokenizer),
            tie_word_embeddings=False,
        )
        return Qwen3VLForConditionalGeneration, config, processor


FAMILY = Qwen25VL()
FAMILIES = {f.name: f for f in (FAMILY, Qwen3VL())}
