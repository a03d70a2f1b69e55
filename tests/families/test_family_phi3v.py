"""Phi-3-Vision as one family among others (productlens.phi3v behind the seam): the shared family checks
(family_checks.py) and its cost knob, num_crops."""

from family_checks import (  # noqa: F401  (pytest runs the imported tests on this family)
    photo,
    test_batched_generation_equals_one_by_one,
    test_full_step_through_the_trainer,
    test_label_mask_on_real_token_ids,
    test_lora_step_through_the_trainer,
    test_predict_and_serve_answer_photos,
    test_save_reload_and_merged_export_give_identical_logits,
)

NAME = "phi3v"


def test_num_crops_is_the_cost_knob(tiny):
    family, processor, _, folder = tiny
    more = family.load_processor(folder, num_crops=4)
    assert family.image_tokens(processor, 120, 60) < family.image_tokens(more, 120, 60)
    assert family.completion(processor, "?", "Product: Belt").endswith("<|end|>\n<|endoftext|>")  # CookBook
