"""Chat requests through one batched `generate`: each row with its own prompt, photos, token budget, temperature,
stop strings, optional JSON schema and optional streaming callback.

In: `ChatJob`s (a prompt from the family's chat template, with its images). Out: a `ChatResult` per job: the
answer text, real token counts and why it ended. Used by `Predictor.chat` (behind the OpenAI-compatible endpoint).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image
from transformers import LogitsProcessor, StoppingCriteria, TopPLogitsWarper

from productlens.task.structured import JsonRule

if TYPE_CHECKING:
    from productlens.predictor import Predictor

BYTE_TOKEN = re.compile(r"<0x[0-9A-F]{2}>")


@dataclass
class ChatJob:
    """One chat answer to generate. `temperature` 0 is greedy; `on_text(piece)` (called from the model's thread)
    receives the answer as it grows, never past a stop string."""

    prompt: str  # e.g. "<|user|>\n<|image_1|>\nWhat is shown in this image?<|end|>\n<|assistant|>\n"
    images: list[Image.Image] = field(default_factory=list)
    max_new_tokens: int = 96
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    json_schema: dict[str, Any] | None = None
    on_text: Callable[[str], None] | None = None
    sent: int = 0  # characters handed to on_text so far (kept when the batcher retries the job alone)


@dataclass(frozen=True)
class ChatResult:
    text: str
    prompt_tokens: int  # image slots included
    completion_tokens: int  # generated tokens, the closing stop token included
    finish_reason: str  # "stop" (a stop token or string) or "length" (max_new_tokens)


@dataclass
class _Row:
    job: ChatJob
    rule: JsonRule | None
    length: int | None = None  # tokens generated when the row finished
    reason: str = "length"
    text: str = ""  # the answer so far (stop string cut off)


def run_chat(predictor: Predictor, jobs: Sequence[ChatJob]) -> list[ChatResult]:
    """Jobs -> results, in order, from one left-padded `generate` call."""
    processor, family = predictor.processor, predictor.family
    stop_ids = family.stop_token_ids(processor)
    vocab = predictor.model.get_output_embeddings().weight.shape[0]
    rows = [
        _Row(
            job, JsonRule(job.json_schema, processor.tokenizer, vocab, stop_ids) if job.json_schema else None
        )
        for job in jobs
    ]
    batch = family.encode_chat(processor, [j.prompt for j in jobs], [j.images for j in jobs])
    inputs = predictor._on_device(batch)
    prompt_length = inputs["input_ids"].shape[1]
    budget = max(j.max_new_tokens for j in jobs)
    sample = any(j.temperature > 0 for j in jobs)
    tracker = _Tracker(rows, prompt_length, processor, stop_ids)
    with torch.inference_mode():
        sequences = predictor.model.generate(
            **inputs,
            max_new_tokens=budget,
            do_sample=sample,
            **({"temperature": 1.0, "top_p": 1.0, "top_k": 0} if sample else {}),
            eos_token_id=stop_ids,
            pad_token_id=family.pad_token_id(processor),
            logits_processor=[_RowLogits(rows, prompt_length, sample)],
            stopping_criteria=[tracker],
        )
    tracker(sequences, None)  # rows that ran to the shared budget
    prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()  # [batch]
    out = []
    for row, count in zip(rows, prompt_tokens, strict=True):
        if row.job.on_text is not None and len(row.text) > row.job.sent:
            row.job.on_text(row.text[row.job.sent :])  # the rest (what was streamed is a prefix of the text)
        out.append(ChatResult(row.text, int(count), row.length or 0, row.reason))
    return out


class _RowLogits(LogitsProcessor):
    """Per row: the JSON rule's mask, then greedy (all but the best token masked) or temperature and top-p."""

    def __init__(self, rows: list[_Row], prompt_length: int, sample: bool) -> None:
        self.rows, self.prompt_length, self.sample = rows, prompt_length, sample

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        # input_ids: (batch, prompt + new); scores: (batch, vocab)
        for i, row in enumerate(self.rows):
            if row.length is not None:
                continue  # finished: generate pads it
            if row.rule is not None:
                allowed = row.rule.allowed(input_ids[i, self.prompt_length :].tolist())
                keep = torch.full_like(scores[i], float("-inf"))
                index = torch.tensor(allowed, dtype=torch.long, device=scores.device)
                keep[index] = scores[i, index]
                scores[i] = keep
            if not self.sample:
                continue
            if row.job.temperature <= 0:
                best = scores[i].argmax()
                greedy = torch.full_like(scores[i], float("-inf"))
                greedy[best] = scores[i, best]
                scores[i] = greedy
            else:
                scores[i] = scores[i] / row.job.temperature
                if row.job.top_p < 1.0:
                    scores[i] = TopPLogitsWarper(row.job.top_p)(input_ids[i : i + 1], scores[i : i + 1])[0]
        return scores


class _Tracker(StoppingCriteria):
    """Per row after every step: the text so far, whether a stop token, stop string or the row's own budget
    ended it, and the new text for its streaming callback."""

    def __init__(self, rows: list[_Row], prompt_length: int, processor: Any, stop_ids: list[int]) -> None:
        self.rows, self.prompt_length, self.processor = rows, prompt_length, processor
        self.stop_ids = set(stop_ids)
        self.byte_ids = _byte_ids(processor.tokenizer) if any(r.job.on_text for r in rows) else frozenset()

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        new = input_ids[:, self.prompt_length :].tolist()  # [batch][steps]
        done = []
        for row, ids in zip(self.rows, new, strict=True):
            if row.length is None:
                self._advance(row, ids)
            done.append(row.length is not None)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    def _advance(self, row: _Row, ids: list[int]) -> None:
        ended = bool(ids) and ids[-1] in self.stop_ids
        text = self.processor.decode(ids, skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in row.job.stop) if i >= 0), default=-1)
        if cut >= 0:
            text, ended = text[:cut], True
        row.text = text
        if ended or len(ids) >= row.job.max_new_tokens:
            row.length, row.reason = len(ids), "stop" if ended else "length"
            return
        if row.job.on_text is not None:
            # SentencePiece byte-fallback tokens may still join the next ones into one character: wait for them
            stable = len(ids)
            while stable and ids[stable - 1] in self.byte_ids:
                stable -= 1
            if stable < len(ids):
                text = self.processor.decode(ids[:stable], skip_special_tokens=True)
            # byte-level BPE (Qwen, SmolLM, Gemma): a character whose bytes are still coming decodes as U+FFFD
            text = text.rstrip("\ufffd")
            safe = len(text) - _partial_stop(text, row.job.stop)
            if safe > row.job.sent:
                row.job.on_text(text[row.job.sent : safe])
                row.job.sent = safe


def _partial_stop(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters of `text` could be the start of a stop string (held back when streaming)."""
    return max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)


@functools.lru_cache(maxsize=4)
def _byte_ids(tokenizer: Any) -> frozenset[int]:
    """Ids of the byte-fallback tokens (<0x00>...<0xFF>): several of them may spell one character."""
    return frozenset(i for token, i in tokenizer.get_vocab().items() if BYTE_TOKEN.fullmatch(token))
