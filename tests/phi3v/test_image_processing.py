"""Phi3VImageProcessor: HD transform sizes, token counts, batching, slots, normalisation, save/load."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor

import productlens.phi3v  # noqa: F401  (registers phi3_v)
from productlens.phi3v import Phi3VImageProcessor

MODEL_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "phi3v-reference" / "model"
MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)


def photo(width: int, height: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    channels = len(mode)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)
    return Image.fromarray(pixels, mode=mode)


@pytest.mark.parametrize(
    ("num_crops", "width", "height", "padded_hw", "tokens"),
    [  # design facts, section 4
        (16, 1000, 1000, (1344, 1344), 2509),
        (16, 1920, 1080, (1008, 1680), 2353),
        (16, 640, 480, (1008, 1344), 1921),
        (16, 240, 310, (1344, 1344), 2509),
        (16, 5000, 100, (336, 5376), 2473),
        (4, 500, 500, (672, 672), 757),
        (4, 1000, 400, (336, 672), 457),
        (1, 123, 457, (336, 336), 313),
    ],
)
def test_token_counts_and_padded_sizes_match_the_official_table(num_crops, width, height, padded_hw, tokens):
    processor = Phi3VImageProcessor(num_crops=num_crops)
    assert processor.num_image_tokens(width, height) == tokens
    if width * height <= 1000 * 1000:  # keep the test fast: full processing only for the smaller photos
        out = processor(photo(width, height))
        assert out["image_sizes"].tolist() == [list(padded_hw)]
        assert out["num_img_tokens"] == [tokens]


def test_token_range_at_num_crops_4_and_16():
    for num_crops, low, high in [(4, 457, 781), (16, 1321, 2653)]:
        processor = Phi3VImageProcessor(num_crops=num_crops)
        counts = {processor.num_image_tokens(w, 100) for w in range(20, 3000, 7)}
        counts |= {processor.num_image_tokens(100, h) for h in range(20, 3000, 7)}
        assert (min(counts), max(counts)) == (low, high)


def test_batch_of_different_sizes_equals_one_by_one():
    processor = Phi3VImageProcessor(num_crops=4)
    images = [photo(300, 200, 1), photo(90, 400, 2), photo(64, 64, 3)]
    batch = processor(images)
    assert batch["pixel_values"].shape == (3, 5, 3, 336, 336)
    for i, image in enumerate(images):
        single = processor(image)
        assert torch.equal(batch["pixel_values"][i], single["pixel_values"][0])
        assert batch["image_sizes"][i].tolist() == single["image_sizes"][0].tolist()
        assert batch["num_img_tokens"][i] == single["num_img_tokens"][0]


def test_slots_crops_padding_and_normalisation():
    processor = Phi3VImageProcessor(num_crops=4)
    image = photo(1000, 400, 4)  # landscape: 1x2 grid, resized to 672x268, white bars top and bottom
    out = processor(image)
    pixel_values = out["pixel_values"][0]
    assert out["image_sizes"].tolist() == [[336, 672]]
    assert torch.count_nonzero(pixel_values[3:]) == 0  # slots 3 and 4 unused: zeros
    white = torch.from_numpy((1.0 - MEAN) / STD)
    top = (336 - int(672 / 2.5)) // 2
    assert torch.allclose(pixel_values[1, :, :top, :], white[:, None, None].expand(3, top, 336))
    # the right crop starts where the left one ends: column 336 of the resized photo
    resized = np.asarray(image.resize((672, 268), Image.Resampling.BILINEAR)).astype(np.float32) / 255
    expected = torch.from_numpy(((resized[:, 336:] - MEAN) / STD).transpose(2, 0, 1))
    torch.testing.assert_close(pixel_values[2, :, top : top + 268], expected, atol=1e-6, rtol=0)


def test_portrait_images_are_padded_left_and_right():
    processor = Phi3VImageProcessor(num_crops=4)
    out = processor(photo(400, 1000, 5))  # transposed for the HD transform, so the bars end up at the sides
    assert out["image_sizes"].tolist() == [[672, 336]]
    white = torch.from_numpy((1.0 - MEAN) / STD)[:, None]
    crop = out["pixel_values"][0, 1]
    assert torch.allclose(crop[:, :, 0], white.expand(3, 336)) and torch.allclose(
        crop[:, :, -1], white.expand(3, 336)
    )
    assert not torch.allclose(crop[:, :, 168], white.expand(3, 336))


def test_rgba_alpha_is_dropped_not_composited():
    processor = Phi3VImageProcessor(num_crops=4)
    rgba = photo(300, 200, 6, mode="RGBA")
    assert torch.equal(processor(rgba)["pixel_values"], processor(rgba.convert("RGB"))["pixel_values"])


def test_crop_size_comes_from_the_model(tmp_path):
    processor = Phi3VImageProcessor(num_crops=4, crop_size=112, num_img_tokens=16)
    out = processor(photo(250, 120, 7))
    assert out["pixel_values"].shape == (1, 5, 3, 112, 112)
    rows, cols = (s // 112 for s in out["image_sizes"][0].tolist())
    assert out["num_img_tokens"] == [(rows * cols + 1) * 16 + 1 + (rows + 1) * 4]
    assert processor.num_image_tokens(250, 120) == out["num_img_tokens"][0]


def test_numpy_input_and_np_tensors():
    processor = Phi3VImageProcessor(num_crops=1)
    array = np.asarray(photo(50, 70, 8))
    out = processor(array, return_tensors="np")
    assert isinstance(out["pixel_values"], np.ndarray) and out["pixel_values"].shape == (1, 2, 3, 336, 336)


def test_official_preprocessor_config_loads_and_round_trips(tmp_path):
    processor = AutoImageProcessor.from_pretrained(MODEL_DIR)
    assert isinstance(processor, Phi3VImageProcessor)
    assert (processor.num_crops, processor.num_img_tokens, processor.crop_size) == (16, 144, 336)
    assert AutoImageProcessor.from_pretrained(MODEL_DIR, num_crops=4).num_crops == 4
    processor.num_crops = 4
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["processor_class"] == "Phi3VProcessor" and "auto_map" not in saved
    reloaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert reloaded.to_dict() == processor.to_dict()


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(TypeError, match="PIL image"):
        Phi3VImageProcessor()("not an image")
    with pytest.raises(ValueError, match="square"):
        Phi3VImageProcessor(num_img_tokens=150)
    with pytest.raises(ValueError, match="num_crops"):
        Phi3VImageProcessor(num_crops=0)
