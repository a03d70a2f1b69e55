"""Gemma 3 on its tiny model: the shared family checks (family_checks.py) and its cost knob, pan-and-scan."""

from family_checks import (  # noqa: F401  (pytest runs the imported tests on this family)
    photo,
    test_batched_generation_equals_one_by_one,
    test_full_step_through_the_trainer,
    test_label_mask_on_real_token_ids,
    test_lora_step_through_the_trainer,
    test_predict_and_serve_answer_photos,
    test_save_reload_and_merged_export_give_identical_logits,
)

NAME = "gemma3"


def test_pan_and_scan_is_the_cost_knob(tiny):
    family, processor, _, folder = tiny
    scan = family.load_processor(folder, do_pan_and_scan=True, pan_and_scan_min_crop_size=8)
    wide = photo((160, 40), 1)
    prompt = family.prompt(processor, "?")
    assert family.image_tokens(processor, *wide.size) == 4  # one view of the photo, mm_tokens_per_image
    assert family.image_tokens(scan, *wide.size) > 4  # plus crops of the elongated photo
    ids = family.encode(processor, [prompt], [wide])["input_ids"][0].tolist()
    assert ids.count(processor.tokenizer.convert_tokens_to_ids("<start_of_image>")) == 1
    assert ids[:2] == [
        processor.tokenizer.bos_token_id,
        processor.tokenizer.convert_tokens_to_ids("<start_of_turn>"),
    ]
