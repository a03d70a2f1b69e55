"""Phi3VProcessor: official token ids, image slots, batching and padding, training labels, save/load."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, AutoTokenizer, LlamaTokenizer

import productlens.phi3v  # noqa: F401  (registers phi3_v)
from productlens.phi3v import Phi3VImageProcessor, Phi3VProcessor

MODEL_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "phi3v-reference" / "model"
USER_NL = [1, 32010, 29871, 13]  # "<|user|>\n" with the official tokenizer.json (design facts 5.2)
QUESTION_IDS = [
    1,
    29871,
    13,
    5618,
    338,
    4318,
    297,
    445,
    1967,
    29973,
    32007,
    29871,
    13,
    32001,
]  # after the image


@pytest.fixture(scope="module")
def processor() -> Phi3VProcessor:
    return AutoProcessor.from_pretrained(MODEL_DIR, num_crops=1)  # 313 slots per image keeps the tests fast


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_chat_prompt_format():
    assert (
        Phi3VProcessor.chat_prompt("What is it?")
        == "<|user|>\n<|image_1|>\nWhat is it?<|end|>\n<|assistant|>\n"
    )
    two = Phi3VProcessor.chat_prompt("Compare.", num_images=2)
    assert two == "<|user|>\n<|image_1|>\n<|image_2|>\nCompare.<|end|>\n<|assistant|>\n"
    assert Phi3VProcessor.chat_prompt("Hi", num_images=0) == "<|user|>\nHi<|end|>\n<|assistant|>\n"


def test_official_ids_with_per_chunk_bos_and_negative_slots(processor):
    inputs = processor(text=processor.chat_prompt("What is shown in this image?"), images=photo(64, 48))
    ids = inputs["input_ids"][0].tolist()
    assert ids == USER_NL + [-1] * 313 + QUESTION_IDS
    assert inputs["attention_mask"].tolist() == [[1] * len(ids)]
    assert set(inputs) == {"input_ids", "attention_mask", "pixel_values", "image_sizes"}


def test_two_images_get_their_own_slot_ids_and_order(processor):
    inputs = processor(
        text=processor.chat_prompt("Same?", num_images=2), images=[photo(64, 48, 1), photo(30, 90, 2)]
    )
    ids = inputs["input_ids"][0]
    assert (ids == -1).sum() == 313 and (ids == -2).sum() == 313
    assert (ids == -1).nonzero().max() < (ids == -2).nonzero().min()
    assert inputs["pixel_values"].shape == (2, 2, 3, 336, 336)
    single = processor.image_processor(photo(30, 90, 2))
    assert torch.equal(inputs["pixel_values"][1], single["pixel_values"][0])


def test_v5_llama_tokenizer_is_refused():
    llama = LlamaTokenizer.from_pretrained(MODEL_DIR)  # transformers 5 rebuilds the normaliser: other ids
    assert llama("<|user|>\n").input_ids == [1, 32010, 13] != USER_NL
    assert AutoTokenizer.from_pretrained(MODEL_DIR)("<|user|>\n").input_ids == USER_NL  # phi3_v registered
    with pytest.raises(TypeError, match="PreTrainedTokenizerFast"):
        Phi3VProcessor(Phi3VImageProcessor(), llama)


@pytest.mark.parametrize(
    ("prompt", "n_images", "match"),
    [
        ("<|user|>\n<|image_2|>\n<|image_1|>\nHi<|end|>\n<|assistant|>\n", 2, "in order"),
        ("<|user|>\n<|image_1|>\nHi<|end|>\n<|assistant|>\n", 2, "2 image"),
        ("<|user|>\nHi<|end|>\n<|assistant|>\n", 1, "1 image"),
        ("<|user|>\n<|image_1|>\n<|image_1|>\nHi<|end|>\n<|assistant|>\n", 1, "each once"),
    ],
)
def test_tag_mismatches_raise(processor, prompt, n_images, match):
    with pytest.raises(ValueError, match=match):
        processor(text=prompt, images=[photo(40, 40, k) for k in range(n_images)])


def test_generation_batch_is_left_padded_with_length_masks(processor):
    prompts = [processor.chat_prompt("What is shown in this image?"), "<|user|>\nHello<|endoftext|>"]
    batch = processor(text=prompts, images=[photo(64, 48), None])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    single = [
        processor(text=p, images=i)["input_ids"][0]
        for p, i in zip(prompts, [photo(64, 48), None], strict=True)
    ]
    width = ids.shape[1]
    for row, alone in enumerate(single):
        pad = width - len(alone)
        assert ids[row, pad:].tolist() == alone.tolist()
        assert mask[row].tolist() == [0] * pad + [1] * len(alone)
        assert (ids[row, :pad] == 32000).all()
    assert ids[1, -1] == 32000 and mask[1, -1] == 1  # a genuine final <|endoftext|> stays attended
    assert batch["pixel_values"].shape[0] == 1  # only the first prompt has an image
    with pytest.raises(ValueError, match="one entry per prompt"):
        processor(text=prompts, images=[photo(64, 48)])


def test_training_batch_labels_and_right_padding(processor):
    prompts = [processor.chat_prompt("What is it?"), processor.chat_prompt("Price?")]
    answers = ["Product: Lola Bag, Category: BAGS, Full Price: 2490.0", "Full Price: 10.0"]
    images = [photo(64, 48, 1), photo(48, 64, 2)]
    batch = processor.training_batch(prompts, answers, images)
    answer_ids = processor.tokenizer(
        [a + "<|end|>\n<|endoftext|>" for a in answers], add_special_tokens=False
    )
    for row in range(2):
        prompt_ids = processor(text=prompts[row], images=images[row])["input_ids"][0].tolist()
        target = answer_ids["input_ids"][row]
        assert target[-4:] == [32007, 29871, 13, 32000]  # <|end|> "\n" <|endoftext|>, all supervised
        n = len(prompt_ids) + len(target)
        assert batch["input_ids"][row, :n].tolist() == prompt_ids + target
        assert batch["labels"][row, :n].tolist() == [-100] * len(prompt_ids) + target
        assert (batch["labels"][row, n:] == -100).all() and (batch["input_ids"][row, n:] == 32000).all()
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (batch["input_ids"].shape[1] - n)
    assert (batch["labels"][batch["input_ids"] < 0] == -100).all()
    assert torch.equal(batch["pixel_values"], processor.image_processor(images)["pixel_values"])
    assert batch["image_sizes"].tolist() == [[336, 336], [336, 336]]


def test_training_batch_max_length_errors(processor):
    prompt = processor.chat_prompt("What is it?")
    with pytest.raises(ValueError, match="num_crops"):
        processor.training_batch(
            [prompt], ["A bag"], [photo(64, 48)], max_length=100
        )  # would cut image slots
    with pytest.raises(ValueError, match="answer tokens would be cut"):
        processor.training_batch([prompt], ["A bag " * 20], [photo(64, 48)], max_length=340)
    ok = processor.training_batch([prompt], ["A bag"], [photo(64, 48)], max_length=340)
    assert ok["input_ids"].shape[1] <= 340


def test_stop_ids_and_decoding(processor):
    assert processor.stop_token_ids == [32007, 32000]
    ids = torch.tensor([[-1, -1, 1, 450, 1234, 32007]])
    assert processor.batch_decode(ids, skip_special_tokens=True) == ["The answer"]
    assert processor.decode(ids[0]) == "<s> The answer<|end|>"


def test_save_and_reload_give_the_same_inputs(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "preprocessor_config.json").read_text())["num_crops"] == 1
    reloaded = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(reloaded, Phi3VProcessor) and reloaded.image_processor.num_crops == 1
    prompt, image = processor.chat_prompt("What is shown in this image?"), photo(80, 60)
    a, b = processor(text=prompt, images=image), reloaded(text=prompt, images=image)
    assert all(torch.equal(a[k], b[k]) for k in a)
    with_4 = AutoProcessor.from_pretrained(tmp_path, num_crops=4)
    assert with_4.image_processor.num_crops == 4
