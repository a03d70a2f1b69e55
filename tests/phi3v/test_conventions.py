"""transformers' conventions kept by productlens.phi3v (issue 11): each defect transformers' own tests found.

generate with logits processors and assisted decoding on image prompts, processor padding/truncation/
return_tensors, inputs_embeds with pixel_values, AutoModel, missing-weight initialisation, tensor-parallel plan,
the vision tower's outputs, and the image processor's standard options.
"""

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoModelForCausalLM
from transformers.generation import (
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    SequenceBiasLogitsProcessor,
)

import productlens.phi3v  # noqa: F401  (registers phi3_v)
from productlens.phi3v import Phi3VForCausalLM, Phi3VImageProcessor, Phi3VModel, Phi3VProcessor
from productlens.phi3v.tiny import build_tokenizer, tiny_config

TEXTS = [
    "Product: Medium Lola Bag, Category: CROSSBODY, Full Price: 2490.0",
    "What is shown in this image? Describe the product, its category and its price.",
] * 20


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(TEXTS, vocab_size=400)


@pytest.fixture(scope="module")
def config(tokenizer):
    return tiny_config(len(tokenizer), image_size=56, pad_token_id=tokenizer.pad_token_id)


@pytest.fixture(scope="module")
def processor(config, tokenizer) -> Phi3VProcessor:
    return Phi3VProcessor(Phi3VImageProcessor.for_model(config, num_crops=2), tokenizer)


@pytest.fixture(scope="module")
def model(config) -> Phi3VForCausalLM:
    torch.manual_seed(0)
    return Phi3VForCausalLM(config).eval()


def photo(width: int = 90, height: int = 60, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def inputs(processor):
    return processor(text=processor.chat_prompt("What is it?"), images=photo())


def greedy(model, ids, pixel_values, image_sizes, steps, processors=()) -> list[int]:
    """Reference decoder: full forward each step (no cache), logits processors on the ids, argmax."""
    ids = ids.clone()
    with torch.no_grad():
        for _ in range(steps):
            logits = model(input_ids=ids, pixel_values=pixel_values, image_sizes=image_sizes).logits[:, -1]
            for process in processors:
                logits = process(ids, logits)
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    return ids[0, -steps:].tolist()


@pytest.mark.parametrize(
    ("kwargs", "processor_of"),
    [
        ({"repetition_penalty": 1.2}, lambda: RepetitionPenaltyLogitsProcessor(1.2)),
        ({"no_repeat_ngram_size": 1}, lambda: NoRepeatNGramLogitsProcessor(1)),
        ({"sequence_bias": [[[7], 5.0]]}, lambda: SequenceBiasLogitsProcessor([[[7], 5.0]])),
    ],
    ids=["repetition_penalty", "no_repeat_ngram_size", "sequence_bias"],
)
def test_generate_with_image_and_logits_processors(model, inputs, kwargs, processor_of):
    steps = 6
    with torch.no_grad():
        out = model.generate(
            **inputs,
            max_new_tokens=steps,
            do_sample=False,
            output_scores=True,
            return_dict_in_generate=True,
            **kwargs,
        )
        raw = model(**inputs).logits[:, -1]  # [1, vocab] first-step logits before any processor
    ids = inputs["input_ids"]
    assert torch.equal(out.sequences[:, : ids.shape[1]], ids)  # the caller's ids (negative slots) come back
    # the processors saw in-vocabulary ids: the image slots as image_token_id
    swapped = ids.masked_fill(ids < 0, model.model.image_token_id)
    torch.testing.assert_close(out.scores[0], processor_of()(swapped, raw.clone()))
    assert not torch.equal(out.scores[0], raw)  # the processor changed the scores
    expected = greedy(model, swapped, inputs["pixel_values"], inputs["image_sizes"], steps, [processor_of()])
    assert out.sequences[0, ids.shape[1] :].tolist() == expected


def test_assisted_and_prompt_lookup_decoding_with_images(model, config, inputs):
    torch.manual_seed(1)
    assistant = Phi3VForCausalLM(config).eval()
    with torch.no_grad():
        greedy_out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
        assisted = model.generate(**inputs, max_new_tokens=5, do_sample=False, assistant_model=assistant)
        lookup = model.generate(**inputs, max_new_tokens=5, do_sample=False, prompt_lookup_num_tokens=3)
    assert torch.equal(assisted, greedy_out)  # assisted greedy decoding gives greedy's tokens
    assert torch.equal(lookup, greedy_out)


def test_image_token_id_equals_official_negative_ids(model, inputs):
    ids = inputs["input_ids"]
    swapped = ids.masked_fill(ids < 0, model.model.image_token_id)
    with torch.no_grad():
        official = model(**inputs).logits
        native = model(**{**inputs, "input_ids": swapped}).logits
        text_only = model(input_ids=swapped).logits  # without images the id is an ordinary token
    torch.testing.assert_close(native, official, rtol=0, atol=0)
    assert not torch.allclose(text_only, official)


def test_inputs_embeds_with_pixel_values_uses_the_image(model, inputs):
    ids = inputs["input_ids"]
    swapped = ids.masked_fill(ids < 0, model.model.image_token_id)
    embeds = model.get_input_embeddings()(swapped)
    images = {"pixel_values": inputs["pixel_values"], "image_sizes": inputs["image_sizes"]}
    with torch.no_grad():
        from_embeds = model(inputs_embeds=embeds, **images).logits
        from_ids = model(input_ids=ids, **images).logits
        generated = model.generate(inputs_embeds=embeds, **images, max_new_tokens=3, do_sample=False)
        from_ids_generated = model.generate(input_ids=ids, **images, max_new_tokens=3, do_sample=False)
    torch.testing.assert_close(from_embeds, from_ids)
    assert generated.tolist() == from_ids_generated[:, ids.shape[1] :].tolist()
    no_slots = model.get_input_embeddings()(ids.clamp(min=0))
    with pytest.raises(ValueError, match="image_token_id"):
        model(inputs_embeds=no_slots, **images)


def test_automodel_loads_the_base_model(model, inputs, tmp_path):
    model.save_pretrained(tmp_path)
    base = AutoModel.from_pretrained(tmp_path).eval()
    assert type(base) is Phi3VModel
    with torch.no_grad():
        expected = model.model(**inputs).last_hidden_state
        got = base(**inputs).last_hidden_state
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_weights_missing_from_a_checkpoint_are_initialised_as_by_the_constructor(config, tmp_path):
    torch.manual_seed(0)
    built = Phi3VForCausalLM(config)
    built.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    kept = {k: v for k, v in weights.items() if "img_processor" not in k}  # drop the whole CLIP tower
    save_file(kept, tmp_path / "model.safetensors", metadata={"format": "pt"})
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    vision = config.vision_config
    clip_rule = vision.hidden_size**-0.5 * (2 * vision.num_hidden_layers) ** -0.5  # CLIP's q/k/v std, 0.083
    assert abs(clip_rule - vision.initializer_range) > 0.05  # the two rules are far apart in this config
    params = dict(loaded.named_parameters())
    for name, param in built.named_parameters():
        if "img_processor" in name and name.endswith("proj.weight") and "out_proj" not in name:
            ctor, missing = param.std().item(), params[name].std().item()
            assert ctor == pytest.approx(clip_rule, rel=0.2), name
            assert missing == pytest.approx(clip_rule, rel=0.2), name
    for name in kept:  # weights present in the checkpoint are loaded as they are
        torch.testing.assert_close(params[name], weights[name], rtol=0, atol=0)


def test_tensor_parallel_plan_has_lm_head_with_embed_tokens(model):
    plan = model.tp_plan
    assert "model.embed_tokens" in plan
    assert plan["lm_head"] == "colwise_gather_output"
    assert model._pp_plan["lm_head"] == (["hidden_states"], ["logits"])


def test_vision_hidden_states_and_attentions_when_asked(config, inputs):
    torch.manual_seed(0)
    model = Phi3VForCausalLM(config).eval()
    model.set_attn_implementation("eager")
    with torch.no_grad():
        plain = model(**inputs)
        full = model(**inputs, output_hidden_states=True, output_attentions=True)
        (height, width), size = inputs["image_sizes"][0].tolist(), config.vision_config.image_size
        used = 1 + (height // size) * (width // size)  # global image + HD crops
        crops = inputs["pixel_values"][0, :used]
        features = model.model.vision_embed_tokens.patch_features(crops)
    assert plain.image_outputs is None
    vision = full.image_outputs
    layers = config.vision_config.num_hidden_layers
    assert len(vision.hidden_states) == layers + 1 and len(vision.attentions) == layers
    assert vision.hidden_states[0].shape == (
        used,
        1 + 16,
        config.vision_config.hidden_size,
    )  # 4x4 patches + CLS
    assert vision.attentions[0].shape == (used, config.vision_config.num_attention_heads, 17, 17)
    torch.testing.assert_close(vision.hidden_states[layers - 1][:, 1:], features)  # the feature layer (-2)
    assert len(vision.pooler_output) == 1  # one embedding sequence per image
    assert len(full.hidden_states) == config.num_hidden_layers + 1  # the decoder's own stay as they were
    torch.testing.assert_close(full.logits, plain.logits)


def test_processor_padding_truncation_max_length_return_tensors(processor):
    prompts = [
        processor.chat_prompt("What is it?"),
        processor.chat_prompt("What is shown in this image now?"),
    ]
    images = [photo(seed=1), photo(seed=2)]
    longest = processor(text=prompts, images=images, padding=True, return_tensors="pt")
    width = longest["input_ids"].shape[1]
    padded = processor(text=prompts, images=images, padding="max_length", max_length=width + 5)
    assert padded["input_ids"].shape == (2, width + 5)
    assert torch.equal(padded["input_ids"][:, 5:], longest["input_ids"])  # left padding by default
    assert padded["attention_mask"][:, :5].sum() == 0
    as_np = processor(text=prompts, images=images, return_tensors="np")
    assert isinstance(as_np["input_ids"], np.ndarray) and isinstance(as_np["pixel_values"], np.ndarray)
    np.testing.assert_array_equal(as_np["input_ids"], longest["input_ids"].numpy())
    lists = processor(text=prompts, images=images, padding=False, return_tensors=None)
    assert [len(row) for row in lists["input_ids"]] == longest["attention_mask"].sum(1).tolist()
    with pytest.raises(ValueError, match="padding=True"):
        processor(text=prompts, images=images, padding=False, return_tensors="pt")
    # truncation: text after the image may be cut, image slots never
    one = processor(text=prompts[1], images=images[1])["input_ids"][0]
    last_slot = int((one < 0).nonzero().max())
    cut = processor(text=prompts[1], images=images[1], truncation=True, max_length=last_slot + 3)
    assert torch.equal(cut["input_ids"][0], one[: last_slot + 3])
    with pytest.raises(ValueError, match="would cut image slots"):
        processor(text=prompts[1], images=images[1], truncation=True, max_length=last_slot)
    # transformers' nested kwargs and image options reach their processor
    nested = processor(
        text=prompts, images=images, text_kwargs={"padding": "max_length", "max_length": width + 1}
    )
    assert nested["input_ids"].shape == (2, width + 1)
    assert processor(text=prompts[0], images=images[0], num_crops=1)["pixel_values"].shape[1] == 2


def test_image_processor_honours_rescale_and_normalize_and_refuses_the_rest(processor):
    image_processor = processor.image_processor
    image = photo(seed=3)
    default = image_processor(image)["pixel_values"]
    raw = image_processor(image, do_rescale=False, do_normalize=False)["pixel_values"]
    hd = raw[0, 1]  # first HD crop: byte values, unchanged
    assert float(hd.max()) > 1.5 and torch.equal(hd, hd.round())
    mean = torch.tensor(image_processor.image_mean)[:, None, None]
    std = torch.tensor(image_processor.image_std)[:, None, None]
    torch.testing.assert_close(default[0, 1], (hd / 255 - mean) / std)
    negated = Phi3VImageProcessor(
        num_crops=2, num_img_tokens=4, crop_size=56, do_rescale=True, rescale_factor=-1.0, do_normalize=False
    )
    torch.testing.assert_close(negated(image)["pixel_values"][0, 1], -hd)
    with pytest.raises(ValueError, match="do_resize: the HD transform"):
        image_processor(image, do_resize=True)
    with pytest.raises(ValueError, match="size: the HD transform sets the size"):
        Phi3VImageProcessor(size={"height": 10, "width": 10})
    with pytest.raises(TypeError, match="unexpected arguments"):
        image_processor(image, brightness=2)
