"""Predictor.chat on a tiny random Phi-3-V: rows with their own prompt, photos, budget, sampling and stop strings
share one generate call and each gets what it gets alone; usage counts and streaming pieces are exact."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from productlens.chat import ChatJob
from productlens.phi3v.tiny import save_tiny_model
from productlens.predict import Predictor

TEXTS = [
    "Product: Check Wool Scarf, Category: SCARVES, Full Price: 450.00",
    "What is shown in this image?",
] * 5


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    folder = save_tiny_model(tmp_path_factory.mktemp("chat") / "model", TEXTS, vocab_size=420)
    return Predictor.load(folder, max_new_tokens=10)


def photo(seed: int, size=(90, 110)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def test_greedy_chat_equals_predict_and_counts_real_tokens(predictor):
    image = photo(0)
    prompt = predictor.processor.chat_prompt(predictor.template.question)
    [result] = predictor.chat([ChatJob(prompt, [image], max_new_tokens=10)])
    assert result.text == predictor.predict([image])[0].raw_text
    assert result.prompt_tokens == predictor.processor(text=prompt, images=[image])["input_ids"].shape[1]
    assert 1 <= result.completion_tokens <= 10
    assert (result.finish_reason == "length") == (result.completion_tokens == 10)


def test_rows_with_different_settings_share_a_batch_and_match_running_alone(predictor):
    prompt = predictor.processor.chat_prompt(predictor.template.question)
    a, b = photo(1), photo(2, (200, 80))
    full = predictor.chat([ChatJob(prompt, [a], max_new_tokens=10)])[0]
    stop = full.text[3:5]
    assert stop.strip(), full.text
    jobs = [
        ChatJob(prompt, [a], max_new_tokens=10),
        ChatJob(prompt, [b], max_new_tokens=6),
        ChatJob(prompt, [a], max_new_tokens=10, stop=(stop,)),
        ChatJob("<|user|>\nhello<|end|>\n<|assistant|>\n", [], max_new_tokens=4, temperature=0.9, top_p=0.9),
        ChatJob(prompt, [a], max_new_tokens=3),
    ]
    together = predictor.chat(jobs)
    alone = [
        predictor.chat([ChatJob(j.prompt, j.images, j.max_new_tokens, stop=j.stop)])[0] for j in jobs[:3]
    ]
    assert together[:3] == alone  # greedy rows: text, counts and finish reason as if alone
    assert together[0] == full
    assert together[2].text == full.text[: full.text.index(stop)] and together[2].finish_reason == "stop"
    assert together[2].completion_tokens < full.completion_tokens
    assert together[3].completion_tokens <= 4 and together[3].prompt_tokens < together[0].prompt_tokens
    short = together[4]
    assert short.completion_tokens == 3 and short.finish_reason == "length"
    assert full.text.startswith(short.text)


def test_streaming_pieces_join_into_the_answer(predictor):
    prompt = predictor.processor.chat_prompt(predictor.template.question)
    pieces: list[str] = []
    [result] = predictor.chat([ChatJob(prompt, [photo(3)], max_new_tokens=10, on_text=pieces.append)])
    assert "".join(pieces) == result.text
