"""Phi3VForCausalLM on a tiny random model: names, loading, image placement, generation, training, LoRA."""

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from PIL import Image
from safetensors import safe_open
from transformers import AutoModelForCausalLM

import productlens.phi3v  # noqa: F401  (registers phi3_v)
from productlens.phi3v import Phi3VForCausalLM, Phi3VImageProcessor, Phi3VProcessor
from productlens.phi3v.tiny import build_tokenizer, tiny_config

TEXTS = [
    "Product: Medium Lola Bag, Category: CROSSBODY, Full Price: 2490.0",
    "What is shown in this image? Describe the product, its category and its price.",
    "The quick brown fox jumps over the lazy dog.",
] * 20
LORA_TARGETS = [
    "qkv_proj", "o_proj", "gate_up_proj", "down_proj",  # Phi-3 decoder
    "q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2",  # CLIP
    "img_projection.0", "img_projection.2",  # projector
]  # fmt: skip


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(TEXTS, vocab_size=500)


@pytest.fixture(scope="module")
def config(tokenizer):
    stop = [tokenizer.convert_tokens_to_ids("<|end|>"), tokenizer.eos_token_id]
    return tiny_config(len(tokenizer), image_size=56, pad_token_id=tokenizer.pad_token_id, eos_token_id=stop)


@pytest.fixture(scope="module")
def processor(config, tokenizer) -> Phi3VProcessor:
    return Phi3VProcessor(Phi3VImageProcessor.for_model(config, num_crops=4), tokenizer)


@pytest.fixture(scope="module")
def model(config) -> Phi3VForCausalLM:
    torch.manual_seed(0)
    return Phi3VForCausalLM(config).eval()


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(folder)
    return folder


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_parameter_names_follow_the_official_checkpoint(model, saved):
    names = set(model.state_dict())
    assert names == {name for name, _ in model.named_parameters()}  # no buffers (rotary, position_ids) saved
    expected = {
        "lm_head.weight",
        "model.embed_tokens.weight",
        "model.norm.weight",
        "model.layers.1.self_attn.qkv_proj.weight",
        "model.layers.1.mlp.gate_up_proj.weight",
        "model.vision_embed_tokens.glb_GN",
        "model.vision_embed_tokens.sub_GN",
        "model.vision_embed_tokens.img_projection.0.weight",
        "model.vision_embed_tokens.img_projection.2.bias",
        "model.vision_embed_tokens.img_processor.vision_model.embeddings.class_embedding",
        "model.vision_embed_tokens.img_processor.vision_model.encoder.layers.2.mlp.fc2.weight",
        "model.vision_embed_tokens.img_processor.vision_model.post_layernorm.weight",
    }
    assert expected <= names
    assert not [n for n in names if "wte" in n]
    with safe_open(saved / "model.safetensors", "pt") as f:
        assert set(f.keys()) == names


def test_from_pretrained_round_trip_and_bf16(model, saved):
    loaded, info = AutoModelForCausalLM.from_pretrained(saved, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True)
    )
    bf16 = AutoModelForCausalLM.from_pretrained(saved, dtype=torch.bfloat16)
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}


def test_module_init_on_meta_device_allocates_nothing(config):
    # transformers 5 from_pretrained builds the model under torch.device("meta"); nothing may escape it
    with torch.device("meta"):
        model = Phi3VForCausalLM(config)
    assert {t.device.type for t in model.parameters()} == {"meta"}


def test_image_features_fill_the_slots_in_order(model, processor):
    images = [photo(90, 60, 1), photo(40, 120, 2)]
    inputs = processor(text=processor.chat_prompt("Same?", num_images=2), images=images)
    ids = inputs["input_ids"].clone()
    seen = []
    hook = model.model.embed_tokens.register_forward_pre_hook(lambda _, args: seen.append(int(args[0].min())))
    try:
        with torch.no_grad():
            embeds = model.model.embed_inputs(
                inputs["input_ids"], inputs["pixel_values"], inputs["image_sizes"]
            )
            first = model.model.vision_embed_tokens(inputs["pixel_values"][:1], inputs["image_sizes"][:1])
            second = model.model.vision_embed_tokens(inputs["pixel_values"][1:], inputs["image_sizes"][1:])
    finally:
        hook.remove()
    assert min(seen) >= 0  # negative ids never reach the embedding lookup
    assert torch.equal(inputs["input_ids"], ids)  # the caller's tensor is not modified
    torch.testing.assert_close(embeds[0, ids[0] == -1], first, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(embeds[0, ids[0] == -2], second, atol=1e-6, rtol=1e-6)
    text = ids[0] >= 0
    assert torch.equal(embeds[0, text], model.model.embed_tokens(ids[0, text]))


def test_bad_inputs_raise_clear_errors(model, processor):
    inputs = processor(text=processor.chat_prompt("What?"), images=photo(60, 60))
    with pytest.raises(ValueError, match="no pixel_values"):
        model(input_ids=inputs["input_ids"])
    ids = inputs["input_ids"]
    first_slot = int((ids[0] < 0).nonzero()[0])
    fewer_slots = torch.cat([ids[:, :first_slot], ids[:, first_slot + 1 :]], dim=1)
    with pytest.raises(ValueError, match="image slots but the images give"):
        model(input_ids=fewer_slots, pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"])
    big = Phi3VImageProcessor(num_crops=4)(photo(60, 60))  # 336-pixel crops for a 56-pixel model
    with pytest.raises(ValueError, match="crop_size"):
        model(input_ids=inputs["input_ids"], pixel_values=big["pixel_values"], image_sizes=big["image_sizes"])
    with pytest.raises(ValueError, match="-100"):
        model(**inputs, labels=inputs["input_ids"])


def test_left_padded_forward_equals_single_rows(model, processor):
    prompts = [
        processor.chat_prompt("What is shown in this image? Describe it."),
        processor.chat_prompt("Price?"),
    ]
    images = [photo(100, 70, 3), photo(50, 150, 4)]
    batch = processor(text=prompts, images=images)
    with torch.no_grad():
        batch_logits = model(**batch).logits
        for row, (prompt, image) in enumerate(zip(prompts, images, strict=True)):
            single = processor(text=prompt, images=image)
            n = single["input_ids"].shape[1]
            torch.testing.assert_close(
                batch_logits[row, -n:], model(**single).logits[0], atol=1e-5, rtol=1e-5
            )


def test_batched_generation_equals_one_prompt_at_a_time(model, processor):
    prompts = [
        processor.chat_prompt(q) for q in ["What is shown in this image?", "Price?", "Describe the product."]
    ]
    images = [photo(100, 70, 5), photo(50, 150, 6), [photo(80, 80, 7)]]
    settings = {"max_new_tokens": 8, "min_new_tokens": 8, "do_sample": False}
    batch = processor(text=prompts, images=images)
    out = model.generate(**batch, **settings)[:, batch["input_ids"].shape[1] :]
    for row, (prompt, image) in enumerate(zip(prompts, images, strict=True)):
        single = processor(text=prompt, images=image)
        alone = model.generate(**single, **settings)[0, single["input_ids"].shape[1] :]
        assert out[row].tolist() == alone.tolist()


def test_pixels_are_used_on_the_prefill_only_and_cache_matches_no_cache(model, processor):
    inputs = processor(text=processor.chat_prompt("What is it?"), images=photo(70, 90, 8))
    calls = []
    hook = model.model.vision_embed_tokens.register_forward_hook(lambda *_: calls.append(1))
    try:
        cached = model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    finally:
        hook.remove()
    assert len(calls) == 1
    uncached = model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
    assert torch.equal(
        cached[:, : inputs["input_ids"].shape[1]], inputs["input_ids"]
    )  # slots kept, not zeroed


def test_generation_stops_on_end_by_default(model, processor):
    assert model.generation_config.eos_token_id == processor.stop_token_ids
    end_id = processor.stop_token_ids[0]

    def favour_end(module, args, logits):
        logits = logits.clone()
        logits[..., end_id] += 1e4
        return logits

    inputs = processor(text=processor.chat_prompt("What is it?"), images=photo(60, 60, 9))
    hook = model.lm_head.register_forward_hook(favour_end)
    try:
        out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    finally:
        hook.remove()
    assert out[0, inputs["input_ids"].shape[1] :].tolist() == [end_id]


def test_text_only_prompt(model, processor):
    inputs = processor(text="<|user|>\nHello<|end|>\n<|assistant|>\n")
    assert "pixel_values" not in inputs
    out = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3


def test_loss_is_mean_cross_entropy_over_supervised_tokens(model, processor):
    batch = processor.training_batch(
        [processor.chat_prompt("What is it?")] * 2,
        ["A bag", "Full Price: 12.5"],
        [photo(60, 60, 1), photo(90, 40, 2)],
    )
    with torch.no_grad():
        out = model(**batch)
    logits, labels = out.logits[:, :-1].float(), batch["labels"][:, 1:]
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
    torch.testing.assert_close(out.loss, expected, atol=1e-5, rtol=1e-5)


def _grads(model, batch) -> dict[str, torch.Tensor]:
    model.zero_grad()
    model(**batch).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_backward(config, processor):
    torch.manual_seed(1)
    model = Phi3VForCausalLM(config).train()
    batch = processor.training_batch([processor.chat_prompt("What is it?")], ["A bag"], [photo(60, 60, 3)])
    plain = _grads(model, batch)
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    assert model.model.layers[0].gradient_checkpointing
    assert model.model.vision_embed_tokens.img_processor.vision_model.encoder.layers[0].gradient_checkpointing
    checkpointed = _grads(model, batch)
    for name in [
        "model.layers.0.self_attn.qkv_proj.weight",
        "model.vision_embed_tokens.img_processor.vision_model.encoder.layers.0.mlp.fc1.weight",
        "model.vision_embed_tokens.glb_GN",
        "model.vision_embed_tokens.sub_GN",
        "model.vision_embed_tokens.img_projection.0.weight",
    ]:
        assert checkpointed[name].abs().sum() > 0
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-5, rtol=1e-4)


def test_peft_lora_on_decoder_clip_and_projector(config, processor):
    torch.manual_seed(2)
    model = get_peft_model(
        Phi3VForCausalLM(config), LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS)
    )
    wrapped = {n.split(".lora_A")[0] for n, _ in model.named_parameters() if ".lora_A." in n}
    assert any(n.endswith("layers.0.self_attn.qkv_proj") for n in wrapped)
    assert any(n.endswith("vision_model.encoder.layers.0.self_attn.q_proj") for n in wrapped)
    assert any(n.endswith("img_projection.0") for n in wrapped) and any(
        n.endswith("img_projection.2") for n in wrapped
    )
    batch = processor.training_batch([processor.chat_prompt("What is it?")], ["A bag"], [photo(60, 60, 4)])
    model.train()
    for name, param in model.named_parameters():  # B starts at zero; nudge it so A gets a gradient too
        if ".lora_B." in name:
            torch.nn.init.normal_(param, std=0.01)
    model(**batch).loss.backward()
    lora = {n: p for n, p in model.named_parameters() if "lora_" in n}
    unused = f"vision_model.encoder.layers.{config.vision_config.num_hidden_layers - 1}."  # after the feature layer
    assert all(p.grad is None for n, p in lora.items() if unused in n)
    used = {n: p for n, p in lora.items() if unused not in n}
    assert len(used) > 40 and all(p.grad is not None and p.grad.abs().sum() > 0 for p in used.values())
    assert all(p.grad is None for n, p in model.named_parameters() if "lora_" not in n)
