"""Training batches: labels on real token ids (the official tokenizer from the shared fixture, and a tiny
self-built one), padding to the longest row only, exact cheap lengths, no silent truncation, and a
length-grouped order that depends on (seed, epoch) alone."""

from pathlib import Path

import datasets
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor

import productlens.phi3v  # noqa: F401  (registers phi3_v)
from productlens.collate import (
    SeededLengthGroupedSampler,
    image_size,
    padding_efficiency,
)
from productlens.families import get_family
from productlens.families.collate import FamilyCollator, example_lengths
from productlens.phi3v.tiny import save_tiny_model
from productlens.task.prompts import AnswerTemplate

PHI3V = get_family("phi3v")

FIXTURE_MODEL = (
    Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "phi3v-reference" / "model"
)
IGNORE = -100
# Official ids (fixture README, train.npz): "Product: Medium Lola Bag, Category: CROSSBODY, Full Price: 2490.0<|end|>"
LOLA_ANSWER_IDS = [
    10969,
    29901,
    3436,
    1974,
    365,
    2963,
    18341,
    29892,
    17943,
    29901,
    315,
    1672,
    29903,
    1744,
    13668,
]
LOLA_ANSWER_IDS += [29979, 29892, 14846, 20743, 29901, 29871, 29906, 29946, 29929, 29900, 29889, 29900, 32007]
END_IDS = [29871, 13, 32000]  # "\n<|endoftext|>" after <|end|>: the model learns to stop


def _rows():
    return [
        {
            "id": "1",
            "image": Image.new("RGB", (800, 800), "red"),
            "title": "Medium Lola Bag",
            "category": "CROSSBODY",
            "price": 2490.0,
        },
        {
            "id": "2",
            "image": Image.new("RGB", (900, 300), "blue"),
            "title": "Belt",
            "category": "BELTS",
            "price": 390.0,
        },
        {
            "id": "3",
            "image": Image.new("RGBA", (300, 700), "green"),
            "title": "Check Wool Scarf, Large",
            "category": "SCARVES",
            "price": 650.0,
        },
    ]


@pytest.fixture(scope="module")
def official():
    return AutoProcessor.from_pretrained(FIXTURE_MODEL, num_crops=4)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    template = AnswerTemplate()
    texts = [f"{template.question} Product: {r['title']}, Category: {r['category']}" for r in _rows()] * 5
    folder = save_tiny_model(
        tmp_path_factory.mktemp("tiny") / "model", texts, vocab_size=400, image_size=56, num_crops=4
    )
    return AutoProcessor.from_pretrained(folder)


def test_labels_supervise_exactly_the_answer_and_the_end_tokens_official_ids(official):
    batch = FamilyCollator(PHI3V, official, AnswerTemplate())(_rows())
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    supervised = labels[0][labels[0] != IGNORE].tolist()
    assert supervised == LOLA_ANSWER_IDS + END_IDS
    for row in range(len(ids)):
        n = int(mask[row].sum())
        prompt = n - int((labels[row] != IGNORE).sum())
        assert (labels[row, :prompt] == IGNORE).all()  # the prompt, BOS tokens and image slots
        assert (ids[row, :prompt] < 0).sum() > 0  # ...which hold the image slots
        assert torch.equal(labels[row, prompt:n], ids[row, prompt:n])  # the answer is its own label
        assert (labels[row, n:] == IGNORE).all() and (ids[row, n:] == official.pad_token_id).all()
        assert labels[row, n - 1] == 32000 and 32007 in labels[row, prompt:n].tolist()


def test_labels_with_a_self_built_tokenizer(tiny):
    template = AnswerTemplate()
    batch = FamilyCollator(PHI3V, tiny, template)(_rows())
    end_id, eos_id = tiny.stop_token_ids
    for row in range(3):
        supervised = batch["labels"][row][batch["labels"][row] != IGNORE].tolist()
        assert supervised[-1] == eos_id and end_id in supervised[-4:]
        text = tiny.tokenizer.decode(supervised, skip_special_tokens=True)
        assert text.strip().startswith("Product: " + _rows()[row]["title"])


def test_padding_is_to_the_longest_row_of_the_batch(official):
    rows = _rows()
    batch = FamilyCollator(PHI3V, official, AnswerTemplate())(rows)
    lengths = batch["attention_mask"].sum(1).tolist()
    assert batch["input_ids"].shape[1] == max(lengths) < 2000
    assert len(set(lengths)) == 3  # different image grids -> different lengths, nothing padded to a constant
    alone = [FamilyCollator(PHI3V, official, AnswerTemplate())([r])["input_ids"].shape[1] for r in rows]
    assert alone == lengths
    real, computed = padding_efficiency([batch])
    assert real == sum(lengths) and computed == 3 * max(lengths)


def test_lengths_come_from_image_headers_and_match_the_batches(official, tmp_path):
    rows = _rows()
    for row in rows:  # as prepare stores them: encoded files, decoded lazily
        path = tmp_path / f"{row['id']}.png"
        row["image"].save(path)
        row["image"] = str(path)
    dataset = datasets.Dataset.from_list(rows).cast_column("image", datasets.Image())
    lengths = example_lengths(PHI3V, official, AnswerTemplate(), dataset)
    batch = FamilyCollator(PHI3V, official, AnswerTemplate())([dataset[i] for i in range(3)])
    assert lengths == batch["attention_mask"].sum(1).tolist()
    assert image_size(dataset.cast_column("image", datasets.Image(decode=False))[1]["image"]) == (900, 300)


def test_a_length_limit_that_would_cut_is_an_error_not_a_truncation(official):
    collator = FamilyCollator(PHI3V, official, AnswerTemplate(), max_length=100)
    with pytest.raises(ValueError, match="image slots"):
        collator(_rows()[:1])
    full = FamilyCollator(PHI3V, official, AnswerTemplate())(_rows()[:1])["input_ids"].shape[1]
    with pytest.raises(ValueError, match="answer tokens would be cut"):
        FamilyCollator(PHI3V, official, AnswerTemplate(), max_length=full - 2)(_rows()[:1])


def test_the_collator_is_deterministic(tiny):
    collator = FamilyCollator(PHI3V, tiny, AnswerTemplate(question="Which product is this?"))
    a, b = collator(_rows()), collator(_rows())
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert "Which product" in tiny.tokenizer.decode([t for t in a["input_ids"][0].tolist() if t >= 0])


def test_length_grouped_order_depends_on_seed_and_epoch_only():
    lengths = [10 + (i * 37) % 90 for i in range(64)]
    sampler = SeededLengthGroupedSampler(4, lengths, seed=3)
    first = list(sampler)
    torch.manual_seed(123)  # the global random state does not matter
    assert list(sampler) == first
    assert sorted(first) == list(range(64))
    assert lengths[first[0]] == max(lengths)  # transformers' grouping: the longest batch comes first
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first and sorted(second) == list(range(64))
    assert list(SeededLengthGroupedSampler(4, lengths, seed=4)) != first
    # grouping: batches are much more uniform in length than a random order
    spread = [
        max(lengths[i] for i in first[k : k + 4]) - min(lengths[i] for i in first[k : k + 4])
        for k in range(0, 64, 4)
    ]
    assert sum(spread) / len(spread) < 20
