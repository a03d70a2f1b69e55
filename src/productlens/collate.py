"""Training batches from the prepared dataset: rows {image, title, category, price} -> the processor's
right-padded batch (padded to the longest row, labels -100 on prompt, image slots and padding), plus cheap
per-row lengths and a seeded length-grouped sampler so that rows of a batch have similar lengths.

Used by `productlens train` (train.py); `python bench/bench_train.py` measures what it saves.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from PIL import Image
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices

from productlens.catalog.schema import Product
from productlens.phi3v.processing import ANSWER_SUFFIX
from productlens.task.prompts import AnswerTemplate


def product_of(row: Mapping[str, Any]) -> Product:
    """A prepared-dataset row -> the Product whose answer the model learns."""
    return Product(
        id=str(row["id"]), title=str(row["title"]), category=str(row["category"]), price=float(row["price"])
    )


class TrainingCollator:
    """Rows (with decoded PIL images) -> BatchFeature(input_ids, attention_mask, labels, pixel_values, image_sizes).

    Deterministic (no randomness), so a resumed run sees exactly the batches an uninterrupted one would.
    `max_length` is a guard, not a cut: a row longer than it is an error (see Phi3VProcessor.training_batch).
    """

    def __init__(self, processor: Any, template: AnswerTemplate, max_length: int | None = None) -> None:
        self.processor = processor
        self.template = template
        self.max_length = max_length
        self.prompt = processor.chat_prompt(template.question, num_images=1)

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> Any:
        answers = [self.template.render_answer(product_of(row)) for row in rows]
        images = [row["image"] for row in rows]
        return self.processor.training_batch(
            [self.prompt] * len(rows), answers, images, max_length=self.max_length
        )


def image_size(value: Any) -> tuple[int, int]:
    """(width, height) of a datasets image cell (PIL image or undecoded {bytes, path}); reads the header only."""
    if isinstance(value, Image.Image):
        return value.size
    if isinstance(value, Mapping):
        source = io.BytesIO(value["bytes"]) if value.get("bytes") else value.get("path")
        if source is None:
            raise ValueError("an image cell has neither bytes nor a path; re-run `productlens prepare`")
        with Image.open(source) as image:
            return image.size
    raise TypeError(f"cannot read an image size from {type(value).__name__}")


def example_lengths(dataset: Any, processor: Any, template: AnswerTemplate) -> list[int]:
    """Tokens per row (prompt + image slots + answer + end tokens), from image headers and the answer text.

    No image is decoded: the image slots come from the image size through the processor's token count, and
    the text is tokenised in one batch. Exact for one-image rows; used to group rows of similar length.
    """
    from datasets import Image as ImageFeature

    prompt = processor.chat_prompt(template.question, num_images=1)
    before, after = prompt.split("<|image_1|>")
    tokenizer = processor.tokenizer
    prompt_tokens = sum(len(ids) for ids in tokenizer([before, after], add_special_tokens=True)["input_ids"])
    answers = [template.render_answer(product_of(row)) + ANSWER_SUFFIX for row in _text_rows(dataset)]
    answer_tokens = [len(ids) for ids in tokenizer(answers, add_special_tokens=False)["input_ids"]]
    cells = dataset.cast_column("image", ImageFeature(decode=False))["image"]
    image_tokens = [processor.num_image_tokens(*image_size(cell)) for cell in cells]
    return [prompt_tokens + i + a for i, a in zip(image_tokens, answer_tokens, strict=True)]


def _text_rows(dataset: Any) -> Iterable[Mapping[str, Any]]:
    columns = dataset.select_columns(["id", "title", "category", "price"])
    return columns.to_list() if hasattr(columns, "to_list") else list(columns)


class SeededLengthGroupedSampler(LengthGroupedSampler):
    """transformers' length-grouped order, drawn from (seed, epoch) alone: the same on every process and
    after a resume, whatever else used the global random state in between."""

    def __init__(self, batch_size: int, lengths: Sequence[int], seed: int) -> None:
        super().__init__(batch_size, lengths=list(lengths))
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))


def padding_efficiency(batches: Iterable[Mapping[str, torch.Tensor]]) -> tuple[int, int]:
    """-> (real tokens, tokens computed) over batches: attention-mask ones vs. the padded tensor size."""
    real = computed = 0
    for batch in batches:
        mask = batch["attention_mask"]  # [B, L]
        real += int(mask.sum())
        computed += mask.numel()
    return real, computed
