"""Shared pieces of the tiny random models the native families build for CPU tests (no hub downloads).

In: some texts, the family's special tokens and chat template. Out: a byte-level BPE `PreTrainedTokenizerFast`
(the GPT-2 / Qwen / SmolLM style) trained locally with `tokenizers`, and `write_folder`, which saves a model and
its processor into a folder in the model's own transformers layout, atomically.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from productlens.files import save_pretrained_atomic


def byte_level_tokenizer(
    texts: Iterable[str],
    special_tokens: Sequence[str],
    *,
    vocab_size: int = 600,
    bos_token: str | None = None,
    **kwargs: Any,
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (any text round-trips) learned on `texts`, `special_tokens` added last.

    `bos_token`: prepended to every encoding with special tokens (Gemma style); `kwargs` go to
    PreTrainedTokenizerFast (eos_token, pad_token, chat_template, extra_special_tokens, ...).
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special_tokens])
    if bos_token is not None:
        bos = tokenizer.token_to_id(bos_token)
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos_token} $A", pair=f"{bos_token} $A {bos_token} $B", special_tokens=[(bos_token, bos)]
        )
    else:
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=bos_token, **kwargs)


def seeded(build: Any, seed: int) -> Any:
    """`build()` with torch's global generator seeded, the caller's random state left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


# The decoder sizes every family's tiny model shares (odd intermediate size: a transposed weight is a shape error).
TINY_TEXT = {
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
    "initializer_range": 0.15,  # peaked outputs: a random tiny model still answers order-sensitively
}


def sized(defaults: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """A tiny config section with the caller's overrides (e.g. the quickstart's wider decoder) on top."""
    return {**defaults, **(overrides or {})}


def write_folder(folder: str | os.PathLike, model: Any, processor: Any, overwrite: bool = False) -> Path:
    """model.save_pretrained + processor.save_pretrained into `folder`, crash-safe (files.save_pretrained_atomic).
    Refuses a non-empty folder unless `overwrite`."""
    return save_pretrained_atomic(folder, model, processor, overwrite=overwrite)


__all__ = ["TINY_TEXT", "byte_level_tokenizer", "seeded", "sized", "write_folder"]
