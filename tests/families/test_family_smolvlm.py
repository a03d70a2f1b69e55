"""SmolVLM2 (Idefics3) on its tiny model: the shared family checks (family_checks.py) and its cost knob, image
splitting."""

from family_checks import (  # noqa: F401  (pytest runs the imported tests on this family)
    photo,
    test_batched_generation_equals_one_by_one,
    test_full_step_through_the_trainer,
    test_label_mask_on_real_token_ids,
    test_lora_step_through_the_trainer,
    test_predict_and_serve_answer_photos,
    test_save_reload_and_merged_export_give_identical_logits,
)

NAME = "smolvlm"


def test_image_splitting_is_the_cost_knob(tiny):
    family, processor, _, folder = tiny
    whole = family.load_processor(folder, do_image_splitting=False)
    assert family.image_tokens(processor, 64, 40) == 5 * 4  # 2x2 crops + the global view, 4 tokens each
    assert family.image_tokens(whole, 64, 40) == 4
    prompt = family.prompt(processor, "?")
    split = processor.tokenizer.decode(
        family.encode(processor, [prompt], [photo((64, 40), 0)])["input_ids"][0]
    )
    assert "<row_2_col_2>" in split and "<global-img>" in split  # the real Idefics3 image layout
