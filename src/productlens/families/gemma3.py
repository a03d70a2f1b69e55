"""Gemma 3 (4B and up, with vision): '<start_of_turn>user ... <end_of_turn>' turns, the assistant role named
'model'; a photo becomes `<start_of_image>` + a fixed number of `<image_soft_token>`s (256 in the real model) +
`<end_of_image>`. Cost knob: pan-and-scan (`do_pan_and_scan`: extra crops of large, elongated photos; off by
default). Tower `vision_tower` (SigLIP), projector `multi_modal_projector`, decoder `language_model`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from productlens.families import Family
from productlens.families.tiny import TINY_TEXT, byte_level_tokenizer, sized

SPECIAL_TOKENS = [
    "<pad>",
    "<eos>",
    "<bos>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<start_of_image>",
    "<end_of_image>",
    "<image_soft_token>",
]
# The Gemma 3 format for text and image turns; written for the tiny models (real checkpoints bring their own).
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] | trim }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<start_of_image>' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] | trim }}{% endif %}"
    "{% endfor %}{% endif %}{{ '<end_of_turn>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)
SIDE, PATCH = 32, 8  # tiny: 32-px photos, 4x4 patches pooled to 2x2 = 4 image tokens


class Gemma3(Family):
    name = "gemma3"
    model_types = ("gemma3",)
    end_of_turn = "<end_of_turn>"
    parts = (("multi_modal_projector.", "projection"), ("vision_tower.", "vision"))
    language_module = "language_model"
    vision_lora_targets = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
    projection_modules = ("multi_modal_projector",)
    quantization_skip = ("model.vision_tower", "model.multi_modal_projector", "lm_head")
    cost_knobs = ("do_pan_and_scan", "pan_and_scan_max_num_crops", "pan_and_scan_min_crop_size")
    # one 896-px view = 256 image tokens per photo; pan-and-scan would add up to 4 crops of 256 each
    recommended_cost: ClassVar[dict[str, Any]] = {"do_pan_and_scan": False}
    hub_ids = ("google/gemma-3-4b-it", "google/gemma-3-12b-it")

    def image_token_id(self, processor: Any) -> int:
        """The soft token (the processor's own `image_token_id` is the `<start_of_image>` placeholder)."""
        return int(processor.tokenizer.image_token_id)

    def tiny(
        self,
        texts: Iterable[str],
        *,
        vocab_size: int = 600,
        text: dict[str, Any] | None = None,
        vision: dict[str, Any] | None = None,
    ) -> tuple[type, Any, Any]:
        """Tiny Gemma 3: 2 decoder layers (hidden 32, sliding + global attention), a 2-layer SigLIP tower on
        32-px photos (8-px patches), the real average-pool projector: 4 image tokens per photo."""
        from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3Processor
        from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

        tokenizer = byte_level_tokenizer(
            texts,
            SPECIAL_TOKENS,
            vocab_size=vocab_size,
            bos_token="<bos>",
            eos_token="<eos>",
            pad_token="<pad>",
            chat_template=CHAT_TEMPLATE,
            extra_special_tokens={
                "boi_token": "<start_of_image>",
                "eoi_token": "<end_of_image>",
                "image_token": "<image_soft_token>",
            },
        )
        vision = sized(
            {
                "hidden_size": 16,
                "intermediate_size": 24,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "image_size": SIDE,
                "patch_size": PATCH,
                "vision_use_head": False,
            },
            vision,
        )
        side = vision["image_size"]
        tokens = (side // vision["patch_size"] // 2) ** 2  # patches pooled 2x2
        text = sized({**TINY_TEXT, "sliding_window": 16}, text)
        head = text["hidden_size"] // text["num_attention_heads"]
        image_processor = Gemma3ImageProcessorPil(size={"height": side, "width": side}, do_pan_and_scan=False)
        processor = Gemma3Processor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            chat_template=CHAT_TEMPLATE,
            image_seq_length=tokens,
        )
        ids = tokenizer.convert_tokens_to_ids
        config = Gemma3Config(
            text_config={
                "vocab_size": len(tokenizer),
                **text,
                "head_dim": head,
                "query_pre_attn_scalar": head,
                # sliding-window and global attention taking turns (the real model: 5 to 1)
                "layer_types": [
                    ("sliding_attention", "full_attention")[k % 2] for k in range(text["num_hidden_layers"])
                ],
                "bos_token_id": ids("<bos>"),
                "eos_token_id": [ids("<eos>"), ids("<end_of_turn>")],
                "pad_token_id": ids("<pad>"),
            },
            vision_config=vision,
            mm_tokens_per_image=tokens,
            boi_token_index=ids("<start_of_image>"),
            eoi_token_index=ids("<end_of_image>"),
            image_token_index=ids("<image_soft_token>"),
            initializer_range=0.15,
        )
        return Gemma3ForConditionalGeneration, config, processor


FAMILY = Gemma3()
FAMILIES = {FAMILY.name: FAMILY}
