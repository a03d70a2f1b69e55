"""SmolVLM2 (the Idefics3 architecture): 'User:<image>question<end_of_utterance>\\nAssistant:' turns; a photo is
split into a grid of crops plus a global view, each crop `image_seq_len` `<image>` tokens between markers.
Cost knob: `do_image_splitting`, and `size` / `max_image_size` (longest edges of the photo and of a crop).
Tower `vision_model`, projector `connector`, decoder `text_model` (a Llama).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import transformers

from productlens.families import Family
from productlens.families.tiny import TINY_TEXT, byte_level_tokenizer, sized

GRID = 4  # row/column marker tokens <row_r_col_c> for r, c in 1..GRID
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<fake_token_around_image>",
    "<image>",
    "<global-img>",
    "<end_of_utterance>",
    *(f"<row_{r}_col_{c}>" for r in range(1, GRID + 1) for c in range(1, GRID + 1)),
]
# The SmolVLM2 format for text and image turns; written for the tiny models (real checkpoints bring their own).
CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}{% elif part['type'] == 'image' %}{{ '<image>' }}{% endif %}"
    "{% endfor %}{{ '<end_of_utterance>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


class SmolVLMProcessor(transformers.SmolVLMProcessor):
    """transformers' processor without its video processor (which needs torchvision): photos are processed the
    same, and a saved folder names the real class (so it loads as usual where torchvision is installed)."""

    def __init__(self, image_processor, tokenizer, image_seq_len: int = 169, chat_template=None, **kwargs):
        super().__init__(
            image_processor, tokenizer, None, image_seq_len, chat_template=chat_template, **kwargs
        )


CROP, PATCH = 32, 8  # tiny crop side and patch: 4x4 patches, merged 2x2 -> 4 image tokens per crop


class SmolVLM(Family):
    name = "smolvlm"
    model_types = ("smolvlm",)
    end_of_turn = "<end_of_utterance>"
    parts = (("connector.", "projection"), ("vision_model.", "vision"))
    language_module = "text_model"
    vision_lora_targets = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
    projection_modules = ("connector",)
    quantization_skip = ("model.vision_model", "model.connector", "lm_head")
    cost_knobs = ("do_image_splitting", "size", "max_image_size")
    # photo resized to at most 768 px: a 2x2 grid of 384-px crops + the global view (the checkpoint: up to 4x4)
    recommended_cost: ClassVar[dict[str, Any]] = {"size": {"longest_edge": 768}}
    hub_ids = ("HuggingFaceTB/SmolVLM2-2.2B-Instruct", "HuggingFaceTB/SmolVLM2-500M-Video-Instruct")
    image_only_processor = SmolVLMProcessor

    def tiny(
        self,
        texts: Iterable[str],
        *,
        vocab_size: int = 600,
        text: dict[str, Any] | None = None,
        vision: dict[str, Any] | None = None,
    ) -> tuple[type, Any, Any]:
        """Tiny SmolVLM: 2 Llama layers (hidden 32), a 2-layer SigLIP tower on 32-px crops (8-px patches), the
        real pixel-shuffle connector; a photo of up to 64 px is split into at most 2x2 crops + the global view."""
        from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration
        from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil

        tokenizer = byte_level_tokenizer(
            texts,
            SPECIAL_TOKENS,
            vocab_size=vocab_size,
            eos_token="<end_of_utterance>",
            pad_token="<|endoftext|>",
            chat_template=CHAT_TEMPLATE,
        )
        image_processor = SmolVLMImageProcessorPil(
            size={"longest_edge": 2 * CROP}, max_image_size={"longest_edge": CROP}, do_image_splitting=True
        )
        seq_len = (CROP // PATCH) ** 2 // 4  # scale_factor 2: 2x2 patches -> 1 token
        processor = SmolVLMProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            image_seq_len=seq_len,
            chat_template=CHAT_TEMPLATE,
        )
        ids = tokenizer.convert_tokens_to_ids
        config = SmolVLMConfig(
            vision_config=sized(
                {
                    "hidden_size": 16,
                    "intermediate_size": 24,
                    "num_hidden_layers": 2,
                    "num_attention_heads": 2,
                    "image_size": CROP,
                    "patch_size": PATCH,
                    "initializer_range": 0.15,
                },
                vision,
            ),
            text_config={
                "model_type": "llama",
                "vocab_size": len(tokenizer),
                **sized(TINY_TEXT, text),
                "tie_word_embeddings": False,
                "bos_token_id": None,
                "eos_token_id": ids("<end_of_utterance>"),
                "pad_token_id": ids("<|endoftext|>"),
            },
            scale_factor=2,
            image_token_id=ids("<image>"),
            pad_token_id=ids("<|endoftext|>"),
            tie_word_embeddings=False,
        )
        return SmolVLMForConditionalGeneration, config, processor


FAMILY = SmolVLM()
FAMILIES = {FAMILY.name: FAMILY}
