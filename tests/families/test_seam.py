"""The family seam: families found by model_type, --family overrides, clear errors, parts and LoRA targets by
parameter name, and a chat template that cannot express an answer refused."""

import re

import pytest

from productlens.families import MODEL_TYPES, family_for, get_family, names


def test_every_family_is_found_by_its_model_type_and_by_name():
    assert names() == ["phi3v", "qwen2_5_vl", "qwen3_vl", "smolvlm", "gemma3"]
    for model_type in MODEL_TYPES:
        family = family_for({"model_type": model_type})
        assert model_type in family.model_types and get_family(family.name) is family
    assert get_family("Qwen2.5-VL") is get_family("qwen2_5_vl") is family_for({"model_type": "qwen2_5_vl"})


def test_family_flag_overrides_and_unknown_names_say_what_to_do():
    assert family_for({"model_type": "phi3_v"}, override="gemma3").name == "gemma3"
    with pytest.raises(ValueError, match=r"model_type 'llava'.*--family"):
        family_for({"model_type": "llava"})
    with pytest.raises(ValueError, match="choose one of phi3v, qwen2_5_vl, qwen3_vl, smolvlm, gemma3"):
        get_family("llama")


@pytest.mark.parametrize(
    ("family", "vision", "projection", "language"),
    [
        (
            "phi3v",
            "model.vision_embed_tokens.img_processor.vision_model.encoder.layers.0.mlp.fc1.weight",
            "model.vision_embed_tokens.img_projection.0.weight",
            "model.layers.0.self_attn.qkv_proj.weight",
        ),
        (
            "qwen2_5_vl",
            "model.visual.blocks.0.mlp.gate_proj.weight",
            "model.visual.merger.mlp.0.weight",
            "model.language_model.layers.0.mlp.gate_proj.weight",
        ),
        (
            "qwen3_vl",
            "model.visual.blocks.0.mlp.linear_fc1.weight",
            "model.visual.deepstack_merger_list.0.linear_fc1.weight",
            "model.language_model.layers.0.mlp.down_proj.weight",
        ),
        (
            "smolvlm",
            "model.vision_model.encoder.layers.0.self_attn.q_proj.weight",
            "model.connector.modality_projection.proj.weight",
            "model.text_model.layers.0.self_attn.q_proj.weight",
        ),
        (
            "gemma3",
            "model.vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.weight",
            "model.multi_modal_projector.mm_input_projection_weight",
            "model.language_model.layers.0.self_attn.q_proj.weight",
        ),
    ],
)
def test_parts_and_lora_targets_by_parameter_name(family, vision, projection, language):
    family = get_family(family)
    assert [family.part_of(n) for n in (vision, projection, language)] == ["vision", "projection", "language"]
    pattern = family.lora_target_modules()
    module = language.rsplit(".", 1)[0]
    assert re.fullmatch(pattern, module)  # PEFT full-matches target_modules regexes against module names
    assert not re.fullmatch(pattern, vision.rsplit(".", 1)[0])  # same layer names in the tower: not adapted


def test_a_template_that_drops_the_answer_is_refused():
    family = get_family("qwen2_5_vl")

    class Tokenizer:
        chat_template = None

        @staticmethod
        def apply_chat_template(messages, chat_template, add_generation_prompt, tokenize):
            return "<|im_start|>user\nhi<|im_end|>\n" + "<|im_start|>assistant\n" * add_generation_prompt

    class Processor:
        chat_template = "{{ messages }}"
        tokenizer = Tokenizer()

    with pytest.raises(ValueError, match="chat template does not render an assistant turn"):
        family.completion(Processor(), "What is it?", "Product: Belt")


def test_unknown_cost_setting_names_the_family_settings(tmp_path):
    with pytest.raises(
        ValueError, match="gemma3 has no cost setting num_crops; its settings are: do_pan_and_scan"
    ):
        get_family("gemma3").load_processor(tmp_path, num_crops=4)
