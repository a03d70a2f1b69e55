"""Qwen2.5-VL on its tiny model: the shared family checks (family_checks.py) and its cost knob, the pixel budget."""

import pytest
from family_checks import (  # noqa: F401  (pytest runs the imported tests on this family)
    photo,
    test_batched_generation_equals_one_by_one,
    test_full_step_through_the_trainer,
    test_label_mask_on_real_token_ids,
    test_lora_step_through_the_trainer,
    test_predict_and_serve_answer_photos,
    test_save_reload_and_merged_export_give_identical_logits,
)

NAME = "qwen2_5_vl"


def test_pixel_budget_is_the_cost_knob(tiny):
    family, processor, _, folder = tiny
    assert family.pixels_per_token == 28 * 28
    small = family.load_processor(folder, max_pixels=4 * family.pixels_per_token)
    assert family.image_tokens(processor, 200, 200) == 16  # the tiny model's own budget: 16 x 28x28 pixels
    assert family.image_tokens(small, 200, 200) == 4
    inputs = family.encode(small, [family.prompt(small, "?")], [photo((200, 200), 0)])
    assert int((inputs["input_ids"] == family.image_token_id(small)).sum()) == 4  # the arithmetic is exact
    with pytest.raises(ValueError, match="min_pixels, max_pixels"):
        family.load_processor(folder, num_crops=4)
    with pytest.raises(ValueError, match="min_pixels <= max_pixels"):
        family.load_processor(folder, min_pixels=8 * 28 * 28, max_pixels=4 * 28 * 28)
