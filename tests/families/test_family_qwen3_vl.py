"""Qwen3-VL on its tiny model: the Qwen2.5-VL code with its own tower (deepstack mergers), 16-pixel patches and
template; the shared family checks (family_checks.py) run on it too."""

from family_checks import (  # noqa: F401  (pytest runs the imported tests on this family)
    test_batched_generation_equals_one_by_one,
    test_full_step_through_the_trainer,
    test_label_mask_on_real_token_ids,
    test_lora_step_through_the_trainer,
    test_predict_and_serve_answer_photos,
    test_save_reload_and_merged_export_give_identical_logits,
)

NAME = "qwen3_vl"


def test_own_tower_patches_and_template(tiny):
    family, processor, model, folder = tiny
    assert family.pixels_per_token == 32 * 32 and family.image_tokens(processor, 200, 200) == 16
    assert family.image_tokens(family.load_processor(folder, max_pixels=4 * 32 * 32), 200, 200) == 4
    assert family.prompt(processor, "?").startswith("<|im_start|>user\n")  # no default system turn
    assert {family.part_of(n) for n, _ in model.named_parameters() if "deepstack" in n} == {"projection"}
