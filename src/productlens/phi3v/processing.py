"""Phi3VProcessor: prompts + images -> model inputs (ids with image slots, pixel values), batched and padded.

In: chat prompts with `<|image_1|>`... tags, PIL images, and for training the answers. Out: a BatchFeature with
`input_ids` (image slots are -k for `<|image_k|>`, like the official processor), `attention_mask`, `pixel_values`,
`image_sizes` (and `labels`). Loaded by `AutoProcessor.from_pretrained(folder)` once `productlens.phi3v` is imported.
"""

import os
import re
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from transformers import PreTrainedTokenizerFast
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessingKwargs, ProcessorMixin, Unpack

from productlens.phi3v.image_processing import Phi3VImageProcessor, Phi3VImagesKwargs

IMAGE_TAG = re.compile(r"<\|image_(\d+)\|>")
END_TOKEN = "<|end|>"
# Phi-3 CookBook fine-tuning convention: the answer is followed by the turn end and end-of-text, both supervised.
ANSWER_SUFFIX = "<|end|>\n<|endoftext|>"
IGNORE_INDEX = -100

ImageArg = Image.Image | Sequence[Image.Image] | None


class Phi3VProcessorKwargs(ProcessingKwargs, total=False):
    """`Phi3VProcessor.__call__` options; defaults: pad to the longest row on the left, PyTorch tensors."""

    images_kwargs: Phi3VImagesKwargs
    _defaults = {  # noqa: RUF012  (transformers' ProcessingKwargs convention)
        "text_kwargs": {"padding": True, "padding_side": "left"},
        "common_kwargs": {"return_tensors": "pt"},
    }


class Phi3VProcessor(ProcessorMixin):
    r"""Phi-3-Vision processor: `Phi3VImageProcessor` + the official `tokenizer.json` pipeline.

    The tokenizer must be the tokenizer.json pipeline (`PreTrainedTokenizerFast`, as `from_pretrained` loads it);
    transformers 5's `LlamaTokenizer` rewrites the normaliser and gives other ids than the official model saw.
    Each text chunk between image tags is tokenised separately with BOS, as the official processor does.
    """

    valid_processor_kwargs = Phi3VProcessorKwargs

    def __init__(self, image_processor=None, tokenizer=None, chat_template: str | None = None, **kwargs: Any):
        if type(tokenizer).__name__ in ("LlamaTokenizer", "LlamaTokenizerFast"):
            raise TypeError(
                "transformers 5's LlamaTokenizer changes Phi-3 token ids; load the tokenizer with "
                "PreTrainedTokenizerFast.from_pretrained(folder) (or use Phi3VProcessor.from_pretrained(folder))."
            )
        super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)

    # ---- prompts -------------------------------------------------------------------------------------------

    @staticmethod
    def chat_prompt(question: str, num_images: int = 1) -> str:
        """The official chat prompt: `<|user|>\\n<|image_1|>\\n...{question}<|end|>\\n<|assistant|>\\n`."""
        tags = "".join(f"<|image_{k}|>\n" for k in range(1, num_images + 1))
        return f"<|user|>\n{tags}{question}<|end|>\n<|assistant|>\n"

    @property
    def stop_token_ids(self) -> list[int]:
        """[`<|end|>` id, `<|endoftext|>` id]: a chat turn ends with these (pass as `eos_token_id`)."""
        end_id = self.tokenizer.convert_tokens_to_ids(END_TOKEN)
        if end_id is None or end_id == self.tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer has no {END_TOKEN} token; use a Phi-3 tokenizer.")
        return [end_id, self.tokenizer.eos_token_id]

    @property
    def pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return self.tokenizer.eos_token_id if pad is None else pad

    def num_image_tokens(self, width: int, height: int) -> int:
        """Image slots an image of this size takes in the prompt (no resizing)."""
        return self.image_processor.num_image_tokens(width, height)

    # ---- inputs --------------------------------------------------------------------------------------------

    def __call__(
        self,
        text: str | list[str] | None = None,
        images: ImageArg | Sequence[ImageArg] = None,
        **kwargs: Unpack[Phi3VProcessorKwargs],
    ) -> BatchFeature:
        """Prompt(s) + images -> BatchFeature(input_ids, attention_mask[, pixel_values, image_sizes]).

        One prompt: `images` is an image or a list of images. A batch (list of prompts): `images` has one entry
        per prompt (an image, a list of images or None). Options, flat or in transformers' `text_kwargs` /
        `images_kwargs` / `common_kwargs` dicts (tokenizer init values are defaults, except `padding_side`):
        * padding: True / "longest" (default) pads rows to the longest, "max_length" to `max_length`, False /
          "do_not_pad" not at all; pads go on `padding_side` (default left, for generation).
        * truncation: True / "longest_first" / "only_first" cuts rows longer than `max_length` on the
          tokenizer's truncation side; a cut into image slots raises an error instead.
        * return_tensors: "pt" (default), "np" or None (lists).
        * image options (num_crops, do_rescale, rescale_factor, do_normalize, ...) go to the image processor.
        """
        for modality in ("videos", "audio"):
            if kwargs.pop(modality, None) is not None:
                raise ValueError(f"Phi-3-Vision takes text and images only, not {modality}.")
        init = {k: v for k, v in self.tokenizer.init_kwargs.items() if k != "padding_side"}
        merged = self._merge_kwargs(Phi3VProcessorKwargs, tokenizer_init_kwargs=init, **kwargs)
        text_kwargs, image_kwargs = merged["text_kwargs"], merged["images_kwargs"]
        padding, truncation = text_kwargs.pop("padding", True), text_kwargs.pop("truncation", None)
        max_length, padding_side = (
            text_kwargs.pop("max_length", None),
            text_kwargs.pop("padding_side", "left"),
        )
        return_tensors = text_kwargs.pop("return_tensors", "pt")
        image_kwargs.pop("return_tensors", None)
        unsupported = sorted(k for k, v in text_kwargs.items() if v not in (None, False))
        extras = ("return_mm_token_type_ids", "return_text_replacement_offsets")
        unsupported = sorted({*unsupported, *(k for k in extras if merged.get(k))})
        if unsupported:
            raise TypeError(f"Phi3VProcessor does not support {unsupported}; see Phi3VProcessor.__call__.")
        if text is None:
            raise ValueError(
                "text is required: a prompt or a list of prompts (see Phi3VProcessor.chat_prompt)."
            )
        if return_tensors not in ("pt", "np", None):
            raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}.")
        prompts = [text] if isinstance(text, str) else list(text)
        rows, image_inputs = self._encode(
            prompts, self._images_per_prompt(prompts, images, single=isinstance(text, str)), image_kwargs
        )
        if truncation not in (None, False, "do_not_truncate"):
            rows = self._truncate(rows, max_length or self.tokenizer.model_max_length)
        data = self._padded(rows, padding, max_length, padding_side, return_tensors is not None)
        if return_tensors == "np":
            image_inputs = {k: v.numpy() for k, v in image_inputs.items()}
            data = {k: v.numpy() for k, v in data.items()}
        return BatchFeature(data={**data, **image_inputs})

    def _truncate(self, rows: list[list[int]], max_length: int) -> list[list[int]]:
        """Cut rows to max_length on the tokenizer's truncation side; never through image slots."""
        right = self.tokenizer.truncation_side == "right"
        kept = []
        for i, row in enumerate(rows):
            cut = row[max_length:] if right else row[: max(len(row) - max_length, 0)]
            if any(t < 0 for t in cut):
                raise ValueError(
                    f"prompt {i} is {len(row)} tokens and truncation to max_length={max_length} would cut image "
                    "slots; raise max_length or use fewer crops (e.g. num_crops=4)."
                )
            kept.append(row[:max_length] if right else row[len(cut) :])
        return kept

    def _padded(
        self, rows: list[list[int]], padding: bool | str, max_length: int | None, side: str, tensors: bool
    ) -> dict[str, Any]:
        """Rows -> {"input_ids", "attention_mask"}: tensors [B, L] when `tensors`, else lists."""
        if padding in (True, "longest", "max_length"):
            if padding == "max_length" and max_length is None:
                raise ValueError("padding='max_length' needs max_length=N.")
            width = max(max(len(row) for row in rows), max_length if padding == "max_length" else 0)
            ids, mask = self._pad(rows, side, width=width)
            return (
                {"input_ids": ids, "attention_mask": mask}
                if tensors
                else {
                    "input_ids": ids.tolist(),
                    "attention_mask": mask.tolist(),
                }
            )
        if padding not in (False, None, "do_not_pad"):
            raise ValueError(
                f"padding must be True, False, 'longest', 'max_length' or 'do_not_pad', got {padding!r}."
            )
        if not tensors:
            return {"input_ids": rows, "attention_mask": [[1] * len(row) for row in rows]}
        if len({len(row) for row in rows}) > 1:
            raise ValueError(
                "the prompts have different lengths and padding=False; pass padding=True (or return_tensors=None)."
            )
        ids = torch.tensor(rows, dtype=torch.long)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def training_batch(
        self,
        prompts: list[str],
        answers: list[str],
        images: Sequence[ImageArg],
        max_length: int | None = None,
        answer_suffix: str = ANSWER_SUFFIX,
    ) -> BatchFeature:
        """Training examples -> right-padded BatchFeature(input_ids, attention_mask, labels, pixel_values, image_sizes).

        Each row is the prompt (with image slots) + `answer + answer_suffix` tokenised without special tokens.
        Labels are -100 on the prompt, the image slots and the padding; the answer, `<|end|>` and
        `<|endoftext|>` are supervised. Rows longer than `max_length` raise an error (nothing is cut silently).
        """
        if len(prompts) != len(answers):
            raise ValueError(
                f"got {len(prompts)} prompts but {len(answers)} answers; give one answer per prompt."
            )
        rows, image_inputs = self._encode(prompts, self._images_per_prompt(prompts, images, single=False))
        answer_ids = self.tokenizer([a + answer_suffix for a in answers], add_special_tokens=False)[
            "input_ids"
        ]
        for i, (prompt_ids, ids) in enumerate(zip(rows, answer_ids, strict=True)):
            if max_length is not None and len(prompt_ids) + len(ids) > max_length:
                raise ValueError(self._too_long(i, prompt_ids, ids, max_length))
        labels = [[IGNORE_INDEX] * len(p) + a for p, a in zip(rows, answer_ids, strict=True)]
        input_ids, attention_mask = self._pad([p + a for p, a in zip(rows, answer_ids, strict=True)], "right")
        label_ids, _ = self._pad(labels, "right", pad_id=IGNORE_INDEX)
        data = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": label_ids, **image_inputs}
        return BatchFeature(data=data)

    @staticmethod
    def _too_long(i: int, prompt_ids: list[int], answer_ids: list[int], max_length: int) -> str:
        slots = sum(1 for t in prompt_ids if t < 0)
        if len(prompt_ids) > max_length:
            return (
                f"example {i}: the prompt alone is {len(prompt_ids)} tokens ({slots} image slots) but max_length is "
                f"{max_length}, so image slots or the question would be cut; raise max_length or use fewer crops "
                "(e.g. Phi3VProcessor.from_pretrained(folder, num_crops=4))."
            )
        return (
            f"example {i}: prompt {len(prompt_ids)} + answer {len(answer_ids)} tokens = "
            f"{len(prompt_ids) + len(answer_ids)} > max_length {max_length}, so answer tokens would be cut; raise "
            "max_length, shorten the answer, or use fewer crops (num_crops) to free room."
        )

    def _images_per_prompt(self, prompts: list[str], images: Any, single: bool) -> list[list[Image.Image]]:
        if not prompts:
            raise ValueError("no prompts given.")

        def as_list(entry: Any) -> list:
            return [] if entry is None else list(entry) if isinstance(entry, (list, tuple)) else [entry]

        if single:
            return [as_list(images)]
        if images is None:
            return [[] for _ in prompts]
        if not isinstance(images, (list, tuple)) or len(images) != len(prompts):
            raise ValueError(
                f"got {len(prompts)} prompts; give `images` as a list with one entry per prompt "
                "(an image, a list of images, or None)."
            )
        return [as_list(entry) for entry in images]

    def _encode(
        self, prompts: list[str], images: list[list[Image.Image]], image_kwargs: dict[str, Any] | None = None
    ) -> tuple[list[list[int]], dict[str, torch.Tensor]]:
        """Prompts + their images -> ids per prompt (image k of a prompt = -k repeated) and image tensors."""
        flat = [image for per_prompt in images for image in per_prompt]
        image_inputs, counts = {}, []
        if flat:
            processed = self.image_processor(flat, **(image_kwargs or {}), return_tensors="pt")
            image_inputs = {
                "pixel_values": processed["pixel_values"],
                "image_sizes": processed["image_sizes"],
            }
            counts = processed["num_img_tokens"]
        chunks = []
        for i, (prompt, per_prompt) in enumerate(zip(prompts, images, strict=True)):
            tags = [int(k) for k in IMAGE_TAG.findall(prompt)]
            if tags != list(range(1, len(per_prompt) + 1)):
                raise ValueError(
                    f"prompt {i} has image tags {[f'<|image_{k}|>' for k in tags]} for {len(per_prompt)} image(s); "
                    "tag the images in order, <|image_1|> ... <|image_K|>, each once (see Phi3VProcessor.chat_prompt)."
                )
            chunks.append(IMAGE_TAG.split(prompt)[::2])  # text between tags (split also returns the numbers)
        flat_chunks = [chunk for per_prompt in chunks for chunk in per_prompt]
        encoded = iter(
            self.tokenizer(flat_chunks, add_special_tokens=True)["input_ids"]
        )  # BOS on every chunk
        counts = iter(counts)
        rows = []
        for per_prompt in chunks:
            ids = list(next(encoded))
            for k in range(1, len(per_prompt)):
                ids += [-k] * next(counts) + next(encoded)
            rows.append(ids)
        return rows, image_inputs

    def _pad(
        self, rows: list[list[int]], side: str, pad_id: int | None = None, width: int | None = None
    ) -> tuple[torch.LongTensor, torch.LongTensor]:
        """Rows -> (ids [B, L], attention mask [B, L]) padded on `side` to the longest row (or `width`)."""
        if side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}.")
        pad_id = self.pad_token_id if pad_id is None else pad_id
        width = max(len(row) for row in rows) if width is None else width
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            cols = slice(width - len(row), width) if side == "left" else slice(0, len(row))
            ids[i, cols] = torch.tensor(row, dtype=torch.long)
            mask[i, cols] = 1
        return ids, mask

    # ---- outputs -------------------------------------------------------------------------------------------

    def batch_decode(self, sequences: Any, skip_special_tokens: bool = False, **kwargs: Any) -> list[str]:
        """Token id rows -> texts; image slots (negative ids) are dropped."""
        rows = sequences.tolist() if isinstance(sequences, torch.Tensor) else [list(row) for row in sequences]
        rows = [[int(t) for t in row if t >= 0] for row in rows]
        return self.tokenizer.batch_decode(rows, skip_special_tokens=skip_special_tokens, **kwargs)

    def decode(self, token_ids: Any, skip_special_tokens: bool = False, **kwargs: Any) -> str:
        """Token ids -> text; image slots (negative ids) are dropped."""
        ids = token_ids.tolist() if isinstance(token_ids, torch.Tensor) else list(token_ids)
        return self.batch_decode([ids], skip_special_tokens=skip_special_tokens, **kwargs)[0]

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values", "image_sizes"]

    # ---- saving / loading ----------------------------------------------------------------------------------

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs: Any):
        """Write tokenizer files, processor_config.json and (official layout) preprocessor_config.json."""
        files = super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)
        files += self.image_processor.save_pretrained(save_directory)
        return files

    @classmethod
    def _load_tokenizer_from_pretrained(
        cls,
        sub_processor_type: str,
        pretrained_model_name_or_path: str | os.PathLike,
        subfolder: str = "",
        **kwargs,
    ):
        """Load tokenizer.json as-is (AutoTokenizer would build transformers 5's LlamaTokenizer, other ids)."""
        image_keys = set(Phi3VImageProcessor.valid_kwargs.__annotations__)
        kwargs = {k: v for k, v in kwargs.items() if k not in image_keys}
        return PreTrainedTokenizerFast.from_pretrained(
            pretrained_model_name_or_path, subfolder=subfolder, **kwargs
        )


__all__ = ["ANSWER_SUFFIX", "Phi3VProcessor"]
