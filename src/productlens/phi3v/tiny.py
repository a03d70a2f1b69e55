"""Tiny Phi-3-Vision models for tests and the CPU quickstart: same architecture, toy sizes, self-built tokenizer.

In: some texts (to train a small BPE tokenizer) and sizes. Out: a `PreTrainedTokenizerFast` in the official
tokenizer style, a tiny `Phi3VConfig`, or a folder in the official layout (config.json, model.safetensors, tokenizer
files, preprocessor_config.json) that `AutoModelForCausalLM` / `AutoProcessor.from_pretrained` load back.
"""

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from tokenizers import (
    AddedToken,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import PreTrainedTokenizerFast

from productlens.files import save_pretrained_atomic
from productlens.phi3v.configuration import Phi3VConfig
from productlens.phi3v.image_processing import Phi3VImageProcessor
from productlens.phi3v.modeling import Phi3VForCausalLM
from productlens.phi3v.processing import Phi3VProcessor

BASE_SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]  # ids 0, 1, 2 as in the official vocabulary
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]  # byte fallback: any text round-trips
# (token, rstrip) after the base vocabulary, in the official order; rstrip flags as in the official tokenizer.json
CHAT_TOKENS = [
    ("<|endoftext|>", False),
    ("<|assistant|>", True),
    ("<|system|>", False),
    ("<|end|>", False),
    ("<|user|>", False),
    ("<|image|>", True),
]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|' + message['role'] + '|>' + '\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt and messages[-1]['role'] != 'assistant' %}{{- '<|assistant|>\n' -}}"
    "{% endif %}"
)
MIN_VOCAB = len(BASE_SPECIAL_TOKENS) + len(BYTE_TOKENS) + len(CHAT_TOKENS) + 64


def build_tokenizer(texts: Iterable[str], vocab_size: int = 2000) -> PreTrainedTokenizerFast:
    """Train a byte-fallback BPE tokenizer (at most `vocab_size` tokens, chat tokens included) on `texts`.

    Same style as the official Phi-3 tokenizer.json: `<unk>`, `<s>`, `</s>`, `<0x00>`...`<0xFF>` first,
    normaliser Prepend("▁") + Replace(" " -> "▁"), no pre-tokeniser, BOS post-processor, the chat tokens
    (`<|endoftext|>` = eos = pad, `<|assistant|>`, `<|system|>`, `<|end|>`, `<|user|>`, `<|image|>`) last.
    """
    if vocab_size < MIN_VOCAB:
        raise ValueError(
            f"vocab_size must be at least {MIN_VOCAB} (bytes and special tokens), got {vocab_size}."
        )
    normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    learner = Tokenizer(models.BPE(unk_token="<unk>"))
    learner.normalizer = normalizer
    learner.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(BYTE_TOKENS) - len(CHAT_TOKENS),
        special_tokens=BASE_SPECIAL_TOKENS,
        show_progress=False,
    )
    learner.train_from_iterator(texts, trainer)
    learned = json.loads(learner.to_str())["model"]
    pieces = [
        p for p, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1]) if p not in BASE_SPECIAL_TOKENS
    ]
    vocab = {token: i for i, token in enumerate(BASE_SPECIAL_TOKENS + BYTE_TOKENS + pieces)}
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned["merges"]]

    tokenizer = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    )
    tokenizer.normalizer = normalizer
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tokenizer.add_special_tokens(
        [AddedToken(t, normalized=False, special=True) for t in BASE_SPECIAL_TOKENS[:2]]
    )
    tokenizer.add_tokens([AddedToken("</s>", rstrip=True, normalized=False, special=False)])
    tokenizer.add_special_tokens(
        [AddedToken(token, rstrip=rstrip, normalized=False, special=True) for token, rstrip in CHAT_TOKENS]
    )
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s>:0 $A:0", pair="<s>:0 $A:0 <s>:1 $B:1", special_tokens=[("<s>", vocab["<s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="<|endoftext|>",
        unk_token="<unk>",
        pad_token="<|endoftext|>",
        padding_side="right",
        model_max_length=131072,
        clean_up_tokenization_spaces=False,
        chat_template=CHAT_TEMPLATE,
    )


def tiny_config(
    vocab_size: int,
    image_size: int = 112,
    *,
    pad_token_id: int | None = None,
    eos_token_id: int | list[int] | None = None,
    **overrides: Any,
) -> Phi3VConfig:
    """A tiny Phi3VConfig with the real architecture (su RoPE, CLIP tower, 2x2 merge, MLP projection).

    Odd sizes (MLP 37) make a transposed weight a shape error. `image_size` is the crop side (patch 14): 112 gives
    8x8 patches -> 16 tokens per crop, 56 gives 4 tokens per crop. Keyword `overrides` set any config field.
    """
    hidden, heads = overrides.pop("hidden_size", 48), overrides.pop("num_attention_heads", 4)
    half = hidden // heads // 2  # rope factors: one per rotary frequency
    vision = {
        "hidden_size": 24,
        "intermediate_size": 37,
        "num_hidden_layers": 3,
        "num_attention_heads": 2,
        "image_size": image_size,
        "patch_size": 14,
        "projection_dim": 24,
        "hidden_act": "quick_gelu",
    }
    vision.update(overrides.pop("vision_config", {}))
    values = {
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "max_position_embeddings": 131072,
        "original_max_position_embeddings": 4096,
        "rope_scaling": {
            "type": "su",
            "short_factor": [1.0 + 0.1 * i for i in range(half)],
            "long_factor": [1.0 + 2.0 * i for i in range(half)],
        },
        "sliding_window": 131072,
        "initializer_range": 0.15,  # larger than 0.02 so a random tiny model has peaked, order-sensitive outputs
        "bos_token_id": 1,
        "eos_token_id": eos_token_id,
        "pad_token_id": pad_token_id,
        "tie_word_embeddings": False,
        "vision_config": vision,
        "img_processor": {
            "image_dim_out": vision["hidden_size"],
            "model_name": "tiny-clip",
            "name": "clip_vision_model",
            "num_img_tokens": (image_size // vision["patch_size"] // 2) ** 2,
        },
    }
    values.update(overrides)
    return Phi3VConfig(**values)


def save_tiny_model(
    folder: str | os.PathLike,
    texts: Iterable[str],
    *,
    vocab_size: int = 2000,
    image_size: int = 112,
    num_crops: int = 4,
    seed: int = 0,
    overwrite: bool = False,
    **config_overrides: Any,
) -> Path:
    """Write a random tiny model + tokenizer + processor to `folder` (official layout); returns the folder.

    Written to a temporary folder beside it first, then renamed, so no half-written model survives a crash.
    """
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{folder} exists and is not empty; pass overwrite=True or choose another folder."
        )
    tokenizer = build_tokenizer(texts, vocab_size)
    stop_ids = [tokenizer.convert_tokens_to_ids("<|end|>"), tokenizer.eos_token_id]
    config = tiny_config(
        len(tokenizer),
        image_size,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=stop_ids,
        **config_overrides,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Phi3VForCausalLM(config)
    processor = Phi3VProcessor(Phi3VImageProcessor.for_model(config, num_crops=num_crops), tokenizer)
    return save_pretrained_atomic(folder, model, processor, overwrite=True)  # emptiness was checked above


__all__ = ["build_tokenizer", "save_tiny_model", "tiny_config"]
