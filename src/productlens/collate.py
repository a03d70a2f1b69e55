"""Shared pieces of training batches: a prepared-dataset row -> its Product, an image cell's size from its header,
a seeded length-grouped sampler (rows of a batch have similar lengths) and the padding a set of batches computes.
The batches themselves come from `families.collate.FamilyCollator`, one family at a time.

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


def product_of(row: Mapping[str, Any]) -> Product:
    """A prepared-dataset row -> the Product whose answer the model learns."""
    return Product(
        id=str(row["id"]), title=str(row["title"]), category=str(row["category"]), price=float(row["price"])
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
