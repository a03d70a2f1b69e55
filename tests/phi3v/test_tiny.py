"""tiny.py: the self-built tokenizer, tiny configs and a saved tiny model folder that loads back."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import decoders, normalizers, processors
from transformers import AutoModelForCausalLM, AutoProcessor

import productlens.phi3v  # noqa: F401  (registers phi3_v)
from productlens.phi3v import Phi3VConfig, Phi3VForCausalLM, Phi3VProcessor
from productlens.phi3v.tiny import CHAT_TOKENS, build_tokenizer, save_tiny_model, tiny_config

TEXTS = [
    "Product: Medium Lola Bag, Category: CROSSBODY, Full Price: 2490.0",
    "Product: Check Scarf, Category: SCARVES, Full Price: 590.0",
    "What is shown in this image? Give the product, category and full price.",
] * 30


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(TEXTS, vocab_size=600)


def test_tokenizer_layout_matches_the_official_style(tokenizer):
    assert len(tokenizer) <= 600
    ids = tokenizer.convert_tokens_to_ids
    assert (ids("<unk>"), ids("<s>"), ids("</s>"), ids("<0x00>"), ids("<0x0A>")) == (0, 1, 2, 3, 13)
    chat_ids = [ids(token) for token, _ in CHAT_TOKENS]
    assert chat_ids == list(
        range(len(tokenizer) - len(CHAT_TOKENS), len(tokenizer))
    )  # appended last, in order
    assert tokenizer.bos_token_id == 1 and tokenizer.eos_token_id == tokenizer.pad_token_id == ids(
        "<|endoftext|>"
    )
    backend = tokenizer.backend_tokenizer
    assert isinstance(backend.normalizer, normalizers.Sequence) and backend.pre_tokenizer is None
    assert isinstance(backend.decoder, decoders.Sequence)
    assert isinstance(backend.post_processor, processors.TemplateProcessing)


def test_special_token_whitespace_rules_like_the_official_tokenizer(tokenizer):
    ids = tokenizer.convert_tokens_to_ids
    user = tokenizer("<|user|>\n").input_ids
    assert user == [1, ids("<|user|>"), ids("▁"), 13]  # Prepend "▁" on every segment, "\n" by byte fallback
    tail = tokenizer("Hi<|end|>\n<|assistant|>\n", add_special_tokens=False).input_ids
    assert tail[-4:] == [ids("<|end|>"), ids("▁"), 13, ids("<|assistant|>")]  # rstrip eats the final "\n"


@pytest.mark.parametrize("text", ["Full Price: 2490.0", "Ünïcödé ✓ 日本語 🙂", "two  spaces\nand\ttabs", ""])
def test_any_text_round_trips(tokenizer, text):
    ids = tokenizer(text).input_ids
    assert ids[0] == 1 and tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_vocab_size_too_small_is_refused():
    with pytest.raises(ValueError, match="vocab_size"):
        build_tokenizer(TEXTS, vocab_size=100)


@pytest.mark.parametrize(("image_size", "tokens"), [(112, 16), (56, 4)])
def test_tiny_config_keeps_the_architecture(image_size, tokens):
    config = tiny_config(500, image_size, pad_token_id=3)
    assert isinstance(config, Phi3VConfig)
    assert (config.crop_size, config.tokens_per_crop) == (image_size, tokens)
    assert config.intermediate_size == 37 and config.vision_config.intermediate_size == 37
    assert config.rope_parameters["rope_type"] == "longrope"  # written as the official "su"
    assert (
        len(config.rope_parameters["short_factor"]) == config.hidden_size // config.num_attention_heads // 2
    )
    assert tiny_config(500, num_hidden_layers=3).num_hidden_layers == 3


def test_saved_tiny_model_loads_with_auto_classes_and_runs(tmp_path):
    folder = save_tiny_model(tmp_path / "tiny", TEXTS, vocab_size=600, image_size=112, num_crops=4)
    assert {p.name for p in tmp_path.iterdir()} == {"tiny"}  # no temporary folder left behind
    files = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= files
    assert {"preprocessor_config.json", "generation_config.json"} <= files
    assert json.loads((folder / "config.json").read_text())["model_type"] == "phi3_v"

    model = AutoModelForCausalLM.from_pretrained(folder)
    processor = AutoProcessor.from_pretrained(folder)
    assert isinstance(model, Phi3VForCausalLM) and isinstance(processor, Phi3VProcessor)
    assert model.generation_config.eos_token_id == processor.stop_token_ids
    assert (processor.image_processor.crop_size, processor.image_processor.num_img_tokens) == (112, 16)

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (120, 200, 3), dtype=np.uint8))
    batch = processor.training_batch([processor.chat_prompt("What is it?")], ["Category: SCARVES"], [image])
    loss = model(**batch).loss
    assert torch.isfinite(loss) and loss > 0
    inputs = processor(text=processor.chat_prompt("What is it?"), images=image)
    out = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert isinstance(processor.batch_decode(out[:, inputs["input_ids"].shape[1] :])[0], str)

    with pytest.raises(FileExistsError, match="overwrite"):
        save_tiny_model(folder, TEXTS, vocab_size=600)
    save_tiny_model(folder, TEXTS, vocab_size=600, seed=1, overwrite=True)
    reloaded = AutoModelForCausalLM.from_pretrained(folder)
    assert not torch.equal(reloaded.lm_head.weight, model.lm_head.weight)  # another seed, really rewritten
