"""Phi3VConfig: the official Phi-3-Vision / Phi-3.5-Vision `config.json`, read unchanged, as a transformers 5 config.

In: the flat official dict (Phi-3 text fields + `embd_layer` + `img_processor`, rope type `su`, optional
`vision_config`). Out: a `Phi3Config` (the text part, rope `longrope`) that also holds a `CLIPVisionConfig`.
Used through `AutoConfig.from_pretrained(folder)` once `productlens.phi3v` is imported.
"""

from __future__ import annotations

import importlib.util
from typing import Any, ClassVar

from huggingface_hub.dataclasses import strict
from transformers import CLIPVisionConfig, Phi3Config
from transformers.configuration_utils import SubConfigSpec

# The CLIP tower the official image embedding builds when config.json has no `vision_config`
# (`openai/clip-vit-large-patch14-336`, hard-coded in the official `image_embedding_phi3_v.py`).
CLIP_VIT_LARGE_PATCH14_336: dict[str, Any] = {
    "attention_dropout": 0.0,
    "dropout": 0.0,
    "hidden_act": "quick_gelu",
    "hidden_size": 1024,
    "image_size": 336,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 4096,
    "layer_norm_eps": 1e-05,
    "num_attention_heads": 16,
    "num_channels": 3,
    "num_hidden_layers": 24,
    "patch_size": 14,
    "projection_dim": 768,
}

# The one image-embedding layout the released checkpoints use (and the only one implemented here).
SUPPORTED_EMBD_LAYER: dict[str, Any] = {
    "embedding_cls": "image",
    "hd_transform_order": "sub_glb",
    "projection_cls": "mlp",
    "use_hd_transform": True,
    "with_learnable_separator": True,
}

# Official vocabulary: `<|end|>` and `<|endoftext|>`, the tokens a chat turn really ends with. The official
# config.json says eos 2 (`</s>`), which the instruct models never emit, so generation would not stop.
OFFICIAL_VOCAB_SIZE = 32064
OFFICIAL_STOP_TOKEN_IDS = [32007, 32000]
MERGE = 2  # the 2x2 patch merge of the official image embedding

# The official config.json keys in the official file's order (`vision_config`, when present, comes last).
OFFICIAL_KEYS = (
    "_name_or_path", "architectures", "attention_dropout", "auto_map", "bos_token_id", "embd_layer",
    "eos_token_id", "hidden_act", "hidden_size", "img_processor", "initializer_range", "intermediate_size",
    "max_position_embeddings", "model_type", "num_attention_heads", "num_hidden_layers", "num_key_value_heads",
    "original_max_position_embeddings", "rms_norm_eps", "rope_scaling", "rope_theta", "sliding_window",
    "tie_word_embeddings", "torch_dtype", "transformers_version", "use_cache", "vocab_size", "_attn_implementation",
)  # fmt: skip
# Arguments of the official Phi3VConfig that the released file leaves out: written only when they differ.
OFFICIAL_DEFAULTS: dict[str, Any] = {"embd_pdrop": 0.0, "resid_pdrop": 0.0, "pad_token_id": 32000}
OFFICIAL_AUTO_MAP = {
    "AutoConfig": "configuration_phi3_v.Phi3VConfig",
    "AutoModelForCausalLM": "modeling_phi3_v.Phi3VForCausalLM",
}


@strict
class Phi3VConfig(Phi3Config):
    r"""Configuration of Phi-3-Vision (`microsoft/Phi-3-vision-128k-instruct`, `microsoft/Phi-3.5-vision-instruct`).

    It is a `Phi3Config` (the language model; `config.text_config` is the config itself) with three additions:

    vision_config (`dict` or `CLIPVisionConfig`, *optional*):
        The CLIP vision tower. Real checkpoints have none: CLIP ViT-L/14-336 is used, as in the official code.
    embd_layer (`dict`, *optional*):
        The official image-embedding switches; only the released layout (HD transform, `sub_glb`, learnable
        separators, MLP projection) is supported.
    img_processor (`dict`, *optional*):
        The official vision-tower entry: `image_dim_out` (CLIP width), `layer_idx` (default -2, the penultimate
        layer), `type_feature` (default `patch`: CLS dropped), `num_img_tokens` (tokens per crop).

    Translations made when reading the official file (see the design facts, 1.3 and 6):
    * rope `{"type": "su", ...}` becomes `longrope` (transformers 5 raises a KeyError on `su`); same maths;
    * a stored `_attn_implementation: flash_attention_2` is dropped unless `flash_attn` is installed (sdpa then);
    * `auto_map` (remote code) is dropped: this class is registered natively by `import productlens.phi3v`;
    * eos 2 with the official 32064 vocabulary becomes `[32007, 32000]` (`<|end|>`, `<|endoftext|>`).
    """

    model_type = "phi3_v"
    sub_configs_defaults: ClassVar[dict[str, SubConfigSpec]] = {
        "vision_config": SubConfigSpec(config_class=CLIPVisionConfig, init_kwargs=CLIP_VIT_LARGE_PATCH14_336)
    }

    vision_config: dict | CLIPVisionConfig | None = None
    embd_layer: dict | str | None = None
    img_processor: dict | None = None

    def __post_init__(self, **kwargs):
        kwargs.pop("auto_map", None)
        stored_attn = kwargs.get("_attn_implementation")
        flash = isinstance(stored_attn, str) and stored_attn.startswith("flash_attention")
        if flash and (importlib.util.find_spec("flash_attn") is None or "attn_implementation" in kwargs):
            kwargs.pop("_attn_implementation")  # sdpa then, unless the caller asks for something else
        if self.embd_layer is None or self.embd_layer == "default":
            self.embd_layer = dict(SUPPORTED_EMBD_LAYER)
        if self.img_processor is None:
            self.img_processor = {}
        if self.eos_token_id == 2 and self.vocab_size == OFFICIAL_VOCAB_SIZE:
            self.eos_token_id = list(OFFICIAL_STOP_TOKEN_IDS)
        super().__post_init__(**kwargs)
        self._check_vision()

    def convert_rope_params_to_dict(self, **kwargs):
        """Rename the official rope type `su` to `longrope` before the Phi3Config machinery sees it."""
        rope = kwargs.get("rope_scaling")
        if isinstance(rope, dict) and (rope.get("type") == "su" or rope.get("rope_type") == "su"):
            rope = {k: v for k, v in rope.items() if k != "type"}
            rope["rope_type"] = "longrope"
            kwargs["rope_scaling"] = rope
        return super().convert_rope_params_to_dict(**kwargs)

    def _check_vision(self) -> None:
        unsupported = {
            k: self.embd_layer[k] for k, v in SUPPORTED_EMBD_LAYER.items() if self.embd_layer.get(k, v) != v
        }
        if unsupported:
            raise NotImplementedError(
                f"embd_layer {unsupported} is not supported; only the released Phi-3-Vision layout "
                f"{SUPPORTED_EMBD_LAYER} is implemented."
            )
        if self.img_processor.get("type_feature", "patch") != "patch":
            raise NotImplementedError(
                "img_processor.type_feature must be 'patch' (CLS dropped), as released."
            )
        vision = self.vision_config
        dim_out = self.img_processor.get("image_dim_out", vision.hidden_size)
        if dim_out != vision.hidden_size:
            raise ValueError(
                f"img_processor.image_dim_out={dim_out} but the CLIP tower is {vision.hidden_size} wide; "
                "add a matching `vision_config` to config.json."
            )
        if vision.image_size % vision.patch_size or (vision.image_size // vision.patch_size) % MERGE:
            raise ValueError(
                f"vision_config image_size {vision.image_size} / patch_size {vision.patch_size} must give an even "
                "number of patches per side (the 2x2 merge); e.g. image_size 112 or 336 with patch_size 14."
            )
        if not -vision.num_hidden_layers <= self.feature_layer < vision.num_hidden_layers + 1:
            raise ValueError(f"img_processor.layer_idx {self.feature_layer} is outside the CLIP tower.")

    def to_official_dict(self) -> dict[str, Any]:
        """This config as the official `config.json` dict: rope `su` + `rope_theta`, `torch_dtype`, official keys
        and order, eos 2 again for the official vocabulary, `vision_config` only when not the ViT-L/14-336 tower.
        `Phi3VConfig(**d)` reads it back to an equal config."""
        rope = self.rope_parameters or {}
        scaling = None
        if rope.get("rope_type") == "longrope":
            scaling = {"long_factor": list(rope["long_factor"]), "short_factor": list(rope["short_factor"])}
            scaling["type"] = "su"
        eos = self.eos_token_id
        if eos == OFFICIAL_STOP_TOKEN_IDS and self.vocab_size == OFFICIAL_VOCAB_SIZE:
            eos = 2  # the official file's value; the stop ids belong in generation_config.json
        dtype = self.dtype if self.dtype is not None else "float32"
        values = {
            **{k: getattr(self, k) for k in OFFICIAL_KEYS if hasattr(self, k)},
            "_name_or_path": self.name_or_path or "Phi-3-vision-128k-instruct",
            "architectures": ["Phi3VForCausalLM"],
            "auto_map": dict(OFFICIAL_AUTO_MAP),
            "eos_token_id": eos,
            "rope_scaling": scaling,
            "rope_theta": rope.get("rope_theta", 10000.0),
            "torch_dtype": str(dtype).removeprefix("torch."),
            "transformers_version": "4.40.2",  # the model card's pin, which reads this layout
        }
        official = {k: values[k] for k in OFFICIAL_KEYS if k != "_attn_implementation"}
        official |= {k: getattr(self, k) for k, v in OFFICIAL_DEFAULTS.items() if getattr(self, k, v) != v}
        clip = self.vision_config.to_dict()
        vision = {k: clip.get(k, v) for k, v in CLIP_VIT_LARGE_PATCH14_336.items()}
        if vision != CLIP_VIT_LARGE_PATCH14_336:
            official["vision_config"] = {"model_type": "clip_vision_model", **vision}
        return official

    @property
    def text_config(self) -> Phi3VConfig:
        """The language-model config: this config itself (a `Phi3Config`)."""
        return self

    @property
    def feature_layer(self) -> int:
        """Index into CLIP `hidden_states` of the image features (official default -2: penultimate layer)."""
        return int(self.img_processor.get("layer_idx", -2))

    @property
    def crop_size(self) -> int:
        """Side in pixels of one HD crop (= CLIP image_size; 336 for the real model)."""
        return self.vision_config.image_size

    @property
    def crop_grid(self) -> int:
        """Side of one crop's token grid after the 2x2 merge (12 for the real model)."""
        return self.vision_config.image_size // self.vision_config.patch_size // MERGE

    @property
    def tokens_per_crop(self) -> int:
        """Image tokens per crop before separators (144 for the real model)."""
        return self.crop_grid**2


__all__ = ["OFFICIAL_AUTO_MAP", "OFFICIAL_KEYS", "Phi3VConfig"]
