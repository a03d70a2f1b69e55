"""Family-generic training batches: (photo, question, answer) rows -> padded tensors with labels.

In: a `Family`, its processor, and rows {image, title, category, price} (plus an `AnswerTemplate`). Out: the
processor's right-padded BatchFeature with `labels`: -100 on the prompt (image tokens included) and the padding,
the token ids of the completion (answer + end-of-turn token) everywhere else. The prompt is encoded exactly as
generation encodes it (same processor call), so training and inference see the same prompt ids.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from PIL import Image
from transformers.feature_extraction_utils import BatchFeature

from productlens.collate import image_size, product_of
from productlens.families import IGNORE_INDEX, Family
from productlens.task.prompts import AnswerTemplate

TOKEN_KEYS = (
    "input_ids",
    "attention_mask",
)  # the rest of a [B, L] processor output is a per-token side input


def training_batch(
    family: Family,
    processor: Any,
    prompts: Sequence[str],
    completions: Sequence[str],
    images: Sequence[Image.Image],
    max_length: int | None = None,
) -> BatchFeature:
    """Prompts + completions + one photo each -> BatchFeature(input_ids, attention_mask, labels, image inputs).

    Each row is its encoded prompt followed by its completion tokenised without special tokens; labels supervise
    the completion only. Per-token side inputs (e.g. token_type_ids) are extended with 0 over the completion.
    A row longer than `max_length` is an error (nothing is cut silently).
    """
    if not len(prompts) == len(completions) == len(images):
        raise ValueError(
            f"got {len(prompts)} prompts, {len(completions)} completions and {len(images)} images; give one each"
        )
    encoded = family.encode(processor, prompts, images, padding_side="right")
    answers = processor.tokenizer(list(completions), add_special_tokens=False)["input_ids"]
    ids = encoded["input_ids"]  # [B, Lp], right-padded
    lengths = encoded["attention_mask"].sum(dim=1).tolist()  # [B] real prompt tokens
    side = [k for k, v in encoded.items() if k not in TOKEN_KEYS and _per_token(v, ids)]
    width = max(n + len(a) for n, a in zip(lengths, answers, strict=True))
    for i, (n, answer) in enumerate(zip(lengths, answers, strict=True)):
        if max_length is not None and n + len(answer) > max_length:
            raise ValueError(
                f"example {i}: prompt {n} (with image tokens) + answer {len(answer)} tokens > max_length "
                f"{max_length}; raise data.max_length or lower the {family.name} image cost "
                f"({', '.join(family.cost_knobs)})"
            )
    batch = len(answers)
    out = {
        "input_ids": torch.full((batch, width), family.pad_token_id(processor), dtype=torch.long),
        "attention_mask": torch.zeros((batch, width), dtype=torch.long),
        "labels": torch.full((batch, width), IGNORE_INDEX, dtype=torch.long),
        **{k: encoded[k].new_zeros((batch, width)) for k in side},
    }
    for i, (n, answer) in enumerate(zip(lengths, answers, strict=True)):
        tail = torch.tensor(answer, dtype=torch.long)  # [A]
        out["input_ids"][i, : n + len(answer)] = torch.cat([ids[i, :n], tail])
        out["attention_mask"][i, : n + len(answer)] = 1
        out["labels"][i, n : n + len(answer)] = tail
        for k in side:
            out[k][i, :n] = encoded[k][i, :n]
    rest = {k: v for k, v in encoded.items() if k not in TOKEN_KEYS and k not in side}
    return BatchFeature(data={**out, **rest})


def _per_token(value: Any, ids: torch.Tensor) -> bool:
    return isinstance(value, torch.Tensor) and value.shape == ids.shape


class FamilyCollator:
    """Rows (decoded PIL images + product fields) -> a training batch for any family. Deterministic."""

    def __init__(
        self, family: Family, processor: Any, template: AnswerTemplate, max_length: int | None = None
    ) -> None:
        self.family, self.processor, self.template, self.max_length = family, processor, template, max_length
        self.prompt = family.prompt(processor, template.question)

    def completion(self, row: Mapping[str, Any]) -> str:
        """The text the model learns for a row: its answer and the family's end-of-turn token."""
        answer = self.template.render_answer(product_of(row))
        return self.family.completion(self.processor, self.template.question, answer)

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> BatchFeature:
        return self.family.training_batch(
            self.processor,
            [self.prompt] * len(rows),
            [self.completion(row) for row in rows],
            [row["image"] for row in rows],
            self.max_length,
        )


def example_lengths(family: Family, processor: Any, template: AnswerTemplate, dataset: Any) -> list[int]:
    """Tokens per row of a prepared dataset (prompt with image tokens + completion), as FamilyCollator builds
    it; photos are not decoded (the prompt length comes from the photo's size, computed once per size)."""
    from datasets import Image as ImageFeature

    completions = [
        family.completion(processor, template.question, template.render_answer(product_of(row)))
        for row in dataset.select_columns(["id", "title", "category", "price"]).to_list()
    ]
    answers = processor.tokenizer(completions, add_special_tokens=False)["input_ids"]
    cells = dataset.cast_column("image", ImageFeature(decode=False))["image"]
    prompts = [family.prompt_length(processor, template.question, *image_size(cell)) for cell in cells]
    return [p + len(a) for p, a in zip(prompts, answers, strict=True)]


__all__ = ["FamilyCollator", "example_lengths", "training_batch"]
