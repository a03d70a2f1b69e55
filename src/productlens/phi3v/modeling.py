"""Phi3VForCausalLM: CLIP features -> 2x2 merge -> separators -> projection -> Phi-3 decoder (transformers 5).

In: `input_ids` with image slots as negative ids (from Phi3VProcessor, as the official processor writes them) or as
`image_token_id` (transformers' convention), `pixel_values` [N, crops+1, 3, S, S] and `image_sizes` [N, 2].
Out: logits / loss / generated tokens, and with `output_hidden_states` / `output_attentions` the CLIP tower's too. The module tree and parameter names are those of the
official checkpoint, so `Phi3VForCausalLM.from_pretrained("microsoft/Phi-3-vision-128k-instruct")` needs no mapping.
"""

from typing import Any, ClassVar

import torch
from torch import nn
from transformers import CLIPVisionModel, GenerationConfig, GenerationMixin
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    MultimodalBaseModelOutputWithPast,
    MultimodalCausalLMOutputWithPast,
)
from transformers.modeling_utils import slice_logits_to_keep
from transformers.models.phi3.modeling_phi3 import Phi3Model, Phi3PreTrainedModel
from transformers.utils import can_return_tuple
from transformers.utils.deprecation import deprecate_kwarg

from productlens.phi3v.configuration import MERGE, OFFICIAL_VOCAB_SIZE, Phi3VConfig

IGNORE_INDEX = -100
OFFICIAL_IMAGE_TOKEN_ID = 32044  # `<|image|>` in the official vocabulary


def image_token_id(config: Phi3VConfig) -> int:
    """The in-vocabulary id that marks an image slot (besides the official negative ids).

    `config.image_token_id` when set; else `<|image|>` (32044) for the official vocabulary; else the last id
    (`<|image|>` in the tiny tokenizers of `productlens.phi3v.tiny`).
    """
    explicit = getattr(config, "image_token_id", None)
    if explicit is not None:
        return int(explicit)
    return OFFICIAL_IMAGE_TOKEN_ID if config.vocab_size == OFFICIAL_VOCAB_SIZE else config.vocab_size - 1


class Phi3VVisionTower(nn.Module):
    """Holds transformers' `CLIPVisionModel` under the official name `img_processor.vision_model`."""

    def __init__(self, vision_config):
        super().__init__()
        self.vision_model = CLIPVisionModel(vision_config)


class Phi3VImageEmbedding(nn.Module):
    """The official `vision_embed_tokens` glue: HD crops -> CLIP -> 2x2 merge -> separators -> MLP projection."""

    def __init__(self, config: Phi3VConfig):
        super().__init__()
        vision = config.vision_config
        width = vision.hidden_size * MERGE**2
        self.img_processor = Phi3VVisionTower(vision)
        self.glb_GN = nn.Parameter(torch.zeros(1, 1, width))  # separator between HD crops and global image
        self.sub_GN = nn.Parameter(torch.zeros(1, 1, 1, width))  # "newline" ending every token row
        self.img_projection = nn.Sequential(
            nn.Linear(width, config.hidden_size), nn.GELU(), nn.Linear(config.hidden_size, config.hidden_size)
        )
        self.num_layers = config.feature_layer % (
            vision.num_hidden_layers + 1
        )  # layers before the feature layer
        self.crop_size = config.crop_size
        self.grid = config.crop_grid

    def patch_features(self, crops: torch.Tensor) -> torch.Tensor:
        """CLIP features of crops [M, 3, S, S] -> [M, P*P, D]: `hidden_states[feature_layer]`, CLS dropped.

        Runs CLIP's own embeddings, pre-norm and encoder layers up to the feature layer (the official model's
        last layer and `post_layernorm` never affect an output, so they are loaded but not run). Calling the
        layers directly also keeps clear of output-capturing hooks, which nested models may install twice.
        """
        clip = self.img_processor.vision_model
        hidden = clip.pre_layrnorm(clip.embeddings(crops))  # [M, 1 + P*P, D]
        for layer in clip.encoder.layers[: self.num_layers]:
            hidden = layer(hidden, None)
        return hidden[:, 1:]

    def crop_grids(self, pixel_values: torch.Tensor, image_sizes: torch.Tensor) -> list[tuple[int, int]]:
        """(rows, cols) of HD crops per image, from the padded sizes; checks the inputs fit this model."""
        if pixel_values.dim() != 5 or pixel_values.shape[-1] != self.crop_size:
            raise ValueError(
                f"pixel_values must be [images, crops+1, 3, {self.crop_size}, {self.crop_size}] for this model, got "
                f"{list(pixel_values.shape)}; build them with a Phi3VImageProcessor whose crop_size matches "
                "the model's vision_config.image_size."
            )
        if image_sizes is None or len(image_sizes) != len(pixel_values):
            raise ValueError("image_sizes must give one (height, width) per image of pixel_values.")
        grids = [(h // self.crop_size, w // self.crop_size) for h, w in torch.as_tensor(image_sizes).tolist()]
        slots = pixel_values.shape[1]
        for rows, cols in grids:
            if rows * cols + 1 > slots:
                raise ValueError(
                    f"an image_size asks for {rows}x{cols} crops but pixel_values has {slots - 1} crop slots."
                )
        return grids

    def vision_outputs(
        self, crops: torch.Tensor, output_attentions: bool = False
    ) -> BaseModelOutputWithPooling:
        """Crops [M, 3, S, S] -> the whole CLIP tower's hidden states (embeddings + every layer, [M, 1 + P*P, D]
        each) and, with `output_attentions` and eager attention, each layer's attention weights.

        Runs the layers directly, as `patch_features` does: CLIP's own output capturing would record every layer
        twice inside this model (the decoder's capture hooks also sit on CLIP's layers).
        """
        clip = self.img_processor.vision_model
        hidden = clip.pre_layrnorm(clip.embeddings(crops))  # [M, 1 + P*P, D]
        states, attentions, hooks = [hidden], [], []
        if output_attentions:
            for layer in clip.encoder.layers:
                hooks.append(
                    layer.self_attn.register_forward_hook(lambda _m, _i, out: attentions.append(out[1]))
                )
        try:
            for layer in clip.encoder.layers:
                hidden = layer(hidden, None)
                states.append(hidden)
        finally:
            for hook in hooks:
                hook.remove()
        kept = tuple(a for a in attentions if a is not None)
        return BaseModelOutputWithPooling(
            last_hidden_state=hidden, hidden_states=tuple(states), attentions=kept or None
        )

    def merged_features(
        self, pixel_values: torch.Tensor, image_sizes: torch.Tensor, record: dict | None = None
    ) -> torch.Tensor:
        """pixel_values [N, C+1, 3, S, S], image_sizes [N, 2] -> projection input [T, 4D], images in order.

        Per image: HD crop grid (rows of merged tokens, each row ended by `sub_GN`), then `glb_GN`, then the
        global image (g rows of g tokens + `sub_GN`). Only used crop slots go through CLIP. With a `record`
        dict (holding `output_attentions` if wanted), the whole CLIP tower runs and its output is stored there
        under "clip"; the features are the same.
        """
        grids = self.crop_grids(pixel_values, image_sizes)
        slots = pixel_values.shape[1]
        used = [i * slots + j for i, (rows, cols) in enumerate(grids) for j in range(1 + rows * cols)]
        crops = pixel_values.flatten(0, 1)[torch.tensor(used, device=pixel_values.device)]  # [M, 3, S, S]
        crops = crops.to(self.glb_GN.device)
        if record is None:
            features = self.patch_features(crops)  # [M, P*P, D]
        else:
            record["clip"] = self.vision_outputs(crops, bool(record.get("output_attentions")))
            features = record["clip"].hidden_states[self.num_layers][:, 1:]  # [M, P*P, D]
        g = self.grid
        m, _, d = features.shape
        # 2x2 merge: [M, (g 2)(g 2), D] -> [M, g, g, 4D], channels ordered (dy, dx, D)
        merged = features.reshape(m, g, MERGE, g, MERGE, d).permute(0, 1, 3, 2, 4, 5).reshape(m, g, g, -1)
        merged = merged.to(self.glb_GN.dtype)
        sequences = []
        for (rows, cols), image in zip(grids, merged.split([1 + r * c for r, c in grids]), strict=True):
            # crops [rows*cols, g, g, 4D] -> grid [rows*g, cols*g, 4D], crop k at (k // cols, k % cols)
            hd = (
                image[1:].reshape(rows, cols, g, g, -1).permute(0, 2, 1, 3, 4).reshape(rows * g, cols * g, -1)
            )
            sequences += [
                self._rows_with_newline(hd),
                self.glb_GN.reshape(1, -1),
                self._rows_with_newline(image[0]),
            ]
        return torch.cat(sequences)  # [T, 4D]

    def tokens(self, rows: int, cols: int) -> int:
        """Image embeddings for an HD grid of rows x cols crops: (rows*cols + 1) * g^2 + 1 + (rows + 1) * g."""
        g = self.grid
        return (rows * cols + 1) * g * g + 1 + (rows + 1) * g

    def _rows_with_newline(self, grid: torch.Tensor) -> torch.Tensor:
        """[rows, cols, 4D] -> [rows * (cols + 1), 4D], `sub_GN` appended to every row."""
        newline = self.sub_GN.reshape(1, 1, -1).expand(grid.shape[0], 1, -1)
        return torch.cat([grid, newline], dim=1).flatten(0, 1)

    def forward(
        self, pixel_values: torch.Tensor, image_sizes: torch.Tensor, record: dict | None = None
    ) -> torch.Tensor:
        """pixel_values [N, C+1, 3, S, S], image_sizes [N, 2] -> image embeddings [T, hidden], images in order.

        `record`: see `merged_features`."""
        merged = self.merged_features(pixel_values, image_sizes, record)
        weight = next(self.img_projection.parameters())  # survives PEFT wrapping the whole projection
        return self.img_projection(merged.to(weight.dtype))


class Phi3VPreTrainedModel(Phi3PreTrainedModel):
    config: Phi3VConfig
    input_modalities = ("image", "text")
    _no_split_modules: ClassVar[list[str]] = ["Phi3DecoderLayer", "Phi3VImageEmbedding"]
    # Some Phi-3.5-V exports carry the official model's shared `wte` alias of `embed_tokens`.
    _keys_to_ignore_on_load_unexpected: ClassVar[list[str]] = [r"vision_embed_tokens\.wte\.weight"]
    _supports_flex_attn = False
    _can_compile_fullgraph = False

    @classmethod
    def is_custom_code(cls) -> bool:
        """False: `_init_weights` uses `transformers.initialization`, so transformers may dispatch it per module.

        As "custom code", modules without parameters of their own (CLIPAttention, CLIPMLP) would be skipped when
        weights missing from a checkpoint are initialised, leaving CLIP's 0.02 default instead of its own rules.
        """
        return False

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, Phi3VImageEmbedding):
            init.normal_(module.glb_GN, mean=0.0, std=self.config.initializer_range)
            init.normal_(module.sub_GN, mean=0.0, std=self.config.initializer_range)


class Phi3VModel(Phi3VPreTrainedModel, Phi3Model):
    """transformers' Phi-3 decoder (`embed_tokens`, `layers`, `norm`) plus the official `vision_embed_tokens`."""

    def __init__(self, config: Phi3VConfig):
        super().__init__(config)
        self.vision_embed_tokens = Phi3VImageEmbedding(config)
        self.image_token_id = image_token_id(config)
        self.post_init()

    @can_return_tuple
    def get_image_features(
        self, pixel_values: torch.Tensor, image_sizes: torch.Tensor, **kwargs: Any
    ) -> BaseModelOutputWithPooling:
        """pixel_values [N, C+1, 3, S, S], image_sizes [N, 2] -> CLIP's output (every hidden state, attentions
        if asked) with `pooler_output` = the projected image embeddings, one [T_i, hidden] per image."""
        asked = {k: kwargs.get(k) for k in ("output_hidden_states", "output_attentions")}
        asked = {k: getattr(self.config, k) if v is None else v for k, v in asked.items()}
        record = {"output_attentions": asked["output_attentions"]}
        embedding = self.vision_embed_tokens
        features = embedding(pixel_values, image_sizes, record)  # [T, hidden]
        sizes = [
            embedding.tokens(rows, cols) for rows, cols in embedding.crop_grids(pixel_values, image_sizes)
        ]
        out = record["clip"]
        out.pooler_output = list(features.split(sizes))
        if not asked["output_hidden_states"]:
            out.hidden_states = None
        return out

    def image_slots(
        self, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor, with_images: bool
    ) -> torch.Tensor:
        """Bool [B, L]: image slots = negative ids (official) or `image_token_id` when images are given.

        Without input_ids, the rows of inputs_embeds equal to the embedding of `image_token_id` (as transformers'
        VLMs do). Without images, `image_token_id` is an ordinary token (the official model treats it so).
        """
        if input_ids is not None:
            slots = input_ids < 0
            return slots | (input_ids == self.image_token_id) if with_images else slots
        if not with_images:
            return torch.zeros(inputs_embeds.shape[:2], dtype=torch.bool, device=inputs_embeds.device)
        marker = self.embed_tokens(torch.tensor(self.image_token_id, device=self.embed_tokens.weight.device))
        return (inputs_embeds == marker.to(inputs_embeds)).all(-1)

    def embed_inputs(
        self,
        input_ids: torch.LongTensor,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids [B, L] (image slots < 0 or image_token_id) -> inputs_embeds [B, L, hidden], images in order.

        `input_ids` is not modified. pixel_values are only used when input_ids hold image slots.
        """
        embeds = self.embed_tokens(input_ids.clamp(min=0))  # negative ids never reach the lookup
        return self._merge_images(input_ids, embeds, pixel_values, image_sizes, {})[0]

    def _merge_images(
        self,
        input_ids: torch.LongTensor | None,
        embeds: torch.Tensor,
        pixel_values: torch.Tensor | None,
        image_sizes: torch.Tensor | None,
        kwargs: dict,
    ) -> tuple[torch.Tensor, BaseModelOutputWithPooling | None]:
        """Write the image embeddings into the slots of embeds [B, L, hidden]; also CLIP's outputs (or None)."""
        slots = self.image_slots(input_ids, embeds, pixel_values is not None)  # [B, L]
        if not bool(slots.any()):
            if input_ids is None and pixel_values is not None:
                raise ValueError(
                    "pixel_values were given with inputs_embeds that hold no image slots; mark each image slot with "
                    f"the embedding of image_token_id {self.image_token_id}, or pass input_ids instead."
                )
            return embeds, None
        if pixel_values is None:
            raise ValueError(
                "input_ids contain image slots (negative ids) but no pixel_values were given; pass the "
                "pixel_values and image_sizes that Phi3VProcessor returned with these input_ids."
            )
        if kwargs.get("output_hidden_states") or kwargs.get("output_attentions"):
            vision = self.get_image_features(pixel_values, image_sizes, return_dict=True, **kwargs)
            features = torch.cat(vision.pooler_output)  # [T, hidden]
        else:
            vision, features = None, self.vision_embed_tokens(pixel_values, image_sizes)  # [T, hidden]
        n_slots = int(slots.sum())
        if n_slots != features.shape[0]:
            raise ValueError(
                f"the prompts have {n_slots} image slots but the images give {features.shape[0]} features; build "
                "input_ids and pixel_values together with one Phi3VProcessor (same num_crops, same images)."
            )
        merged = embeds.masked_scatter(
            slots.unsqueeze(-1), features.to(device=embeds.device, dtype=embeds.dtype)
        )
        return merged, vision

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> MultimodalBaseModelOutputWithPast:
        """Decoder outputs; `image_outputs` holds CLIP's hidden states / attentions when they are asked for."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Give exactly one of input_ids or inputs_embeds.")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids.clamp(min=0))  # negative ids never reach the lookup
        asked = {
            k: kwargs.get(k, getattr(self.config, k)) for k in ("output_hidden_states", "output_attentions")
        }
        inputs_embeds, vision = self._merge_images(input_ids, inputs_embeds, pixel_values, image_sizes, asked)
        if position_ids is None and attention_mask is not None and attention_mask.dim() == 2:
            # positions count attended tokens only, so a left-padded row equals the same row unpadded
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -inputs_embeds.shape[1] :]
        outputs = super().forward(
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            return_dict=True,
            **kwargs,
        )
        return MultimodalBaseModelOutputWithPast(**outputs, image_outputs=vision)


class Phi3VForCausalLM(Phi3VPreTrainedModel, GenerationMixin):
    """Phi-3-Vision / Phi-3.5-Vision: `model` (Phi3VModel) + `lm_head`, with the official parameter names."""

    _tied_weights_keys: ClassVar[dict[str, str]] = {
        "lm_head.weight": "model.embed_tokens.weight"
    }  # only when tie_word_embeddings
    _tp_plan: ClassVar[dict[str, str]] = {"lm_head": "colwise_gather_output"}  # as Phi3ForCausalLM
    _pp_plan: ClassVar[dict[str, tuple]] = {"lm_head": (["hidden_states"], ["logits"])}

    def __init__(self, config: Phi3VConfig):
        super().__init__(config)
        self.model = Phi3VModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def adjust_generation_fn(self, *args, **kwargs) -> None:
        """After loading: without a generation_config.json, take generation defaults from the translated config.

        transformers would re-read the raw config.json (eos 2, which the official models never emit); the
        translated `Phi3VConfig` says eos [`<|end|>`, `<|endoftext|>`] for the official vocabulary.
        """
        super().adjust_generation_fn(*args, **kwargs)
        if getattr(self.generation_config, "_from_model_config", False):
            self.generation_config = GenerationConfig.from_model_config(self.config)

    def get_image_features(
        self, pixel_values: torch.Tensor, image_sizes: torch.Tensor, **kwargs: Any
    ) -> BaseModelOutputWithPooling:
        """See `Phi3VModel.get_image_features`."""
        return self.model.get_image_features(pixel_values, image_sizes, **kwargs)

    def generate(self, inputs: torch.Tensor | None = None, *args: Any, **kwargs: Any):
        """transformers' `generate`; the official negative image-slot ids are accepted.

        Logits processors (repetition_penalty, no_repeat_ngram_size, sequence_bias, ...) and assisted decoding
        index by token id, so negative slots are swapped for `image_token_id` while generating and put back in
        the returned sequences (their prompt part equals the caller's input_ids).
        """
        ids = kwargs["input_ids"] if inputs is None and "input_ids" in kwargs else inputs
        if not torch.is_tensor(ids) or ids.dim() != 2 or not bool((ids < 0).any()):
            return super().generate(inputs, *args, **kwargs)
        swapped = ids.masked_fill(ids < 0, self.model.image_token_id)
        if inputs is None:
            kwargs["input_ids"] = swapped
        else:
            inputs = swapped
        out = super().generate(inputs, *args, **kwargs)
        sequences = out if torch.is_tensor(out) else out.sequences  # [B * n, L + new]
        prompt = ids.repeat_interleave(sequences.shape[0] // ids.shape[0], dim=0).to(sequences.device)
        head = sequences[:, : ids.shape[1]]
        sequences[:, : ids.shape[1]] = torch.where(prompt < 0, prompt, head)
        return out

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> MultimodalCausalLMOutputWithPast:
        """Logits [B, L, vocab] (model dtype); with `labels` (-100 = ignored) also the mean next-token loss."""
        if labels is not None and bool(((labels < 0) & (labels != IGNORE_INDEX)).any()):
            raise ValueError(
                "labels contain negative ids other than -100 (image slots?); mask them with -100, as "
                "Phi3VProcessor.training_batch does."
            )
        outputs: MultimodalBaseModelOutputWithPast = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            image_sizes=image_sizes,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)
        logits = self.lm_head(hidden_states)
        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs
            )
        return MultimodalCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_outputs=outputs.image_outputs,
        )


__all__ = ["Phi3VForCausalLM", "Phi3VImageEmbedding", "Phi3VModel", "Phi3VPreTrainedModel", "image_token_id"]
