"""Phi3VConfig reads the official config.json (3V and 3.5V) unchanged and round-trips through save/load."""

import json
import math

import pytest
import torch
from transformers import AutoConfig, CLIPVisionConfig, Phi3Config
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

import productlens.phi3v  # noqa: F401  (registers phi3_v)
from productlens.phi3v import Phi3VConfig, Phi3VForCausalLM

# Phi-3-vision-128k-instruct config.json values (design facts 1.1)
LONG_FACTOR = [
    1.0299999713897705, 1.0499999523162842, 1.0499999523162842, 1.0799999237060547, 1.2299998998641968,
    1.2299998998641968, 1.2999999523162842, 1.4499999284744263, 1.5999999046325684, 1.6499998569488525,
    1.8999998569488525, 2.859999895095825, 3.68999981880188, 5.419999599456787, 5.489999771118164,
    5.489999771118164, 9.09000015258789, 11.579999923706055, 15.65999984741211, 15.769999504089355,
    15.789999961853027, 18.360000610351562, 21.989999771118164, 23.079999923706055, 30.009998321533203,
    32.35000228881836, 32.590003967285156, 35.56000518798828, 39.95000457763672, 53.840003967285156,
    56.20000457763672, 57.95000457763672, 59.29000473022461, 59.77000427246094, 59.920005798339844,
    61.190006256103516, 61.96000671386719, 62.50000762939453, 63.3700065612793, 63.48000717163086,
    63.48000717163086, 63.66000747680664, 63.850006103515625, 64.08000946044922, 64.760009765625,
    64.80001068115234, 64.81001281738281, 64.81001281738281,
]  # fmt: skip
SHORT_FACTOR = (
    [1.05] * 3 + [1.1] * 3 + [1.2500000000000002] * 2
    + [1.4000000000000004, 1.4500000000000004, 1.5500000000000005, 1.8500000000000008, 1.9000000000000008]
    + [2.000000000000001] * 19 + [2.1000000000000005] * 2 + [2.2] + [2.3499999999999996] * 4
    + [2.3999999999999995] * 2 + [2.6499999999999986, 2.6999999999999984, 2.8999999999999977, 2.9499999999999975]
    + [3.049999999999997] * 3
)  # fmt: skip


def official_3v_config() -> dict:
    """The official Phi-3-vision-128k-instruct config.json (no vision_config, rope su, flash_attention_2)."""
    return {
        "_name_or_path": "Phi-3-vision-128k-instruct",
        "architectures": ["Phi3VForCausalLM"],
        "attention_dropout": 0.0,
        "auto_map": {
            "AutoConfig": "configuration_phi3_v.Phi3VConfig",
            "AutoModelForCausalLM": "modeling_phi3_v.Phi3VForCausalLM",
        },
        "bos_token_id": 1,
        "embd_layer": {
            "embedding_cls": "image",
            "hd_transform_order": "sub_glb",
            "projection_cls": "mlp",
            "use_hd_transform": True,
            "with_learnable_separator": True,
        },
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": 3072,
        "img_processor": {
            "image_dim_out": 1024,
            "model_name": "openai/clip-vit-large-patch14-336",
            "name": "clip_vision_model",
            "num_img_tokens": 144,
        },
        "initializer_range": 0.02,
        "intermediate_size": 8192,
        "max_position_embeddings": 131072,
        "model_type": "phi3_v",
        "num_attention_heads": 32,
        "num_hidden_layers": 32,
        "num_key_value_heads": 32,
        "original_max_position_embeddings": 4096,
        "rms_norm_eps": 1e-05,
        "rope_scaling": {"long_factor": LONG_FACTOR, "short_factor": SHORT_FACTOR, "type": "su"},
        "rope_theta": 10000.0,
        "sliding_window": 131072,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.38.1",
        "use_cache": True,
        "vocab_size": 32064,
        "_attn_implementation": "flash_attention_2",
    }


def test_official_3v_dict_gives_clip_large_and_longrope():
    config = Phi3VConfig.from_dict(official_3v_config())
    assert isinstance(config, Phi3Config) and config.text_config is config
    vision = config.vision_config
    assert isinstance(vision, CLIPVisionConfig)
    assert (
        vision.hidden_size,
        vision.intermediate_size,
        vision.num_hidden_layers,
        vision.num_attention_heads,
    ) == (
        1024,
        4096,
        24,
        16,
    )
    assert (vision.image_size, vision.patch_size, vision.hidden_act) == (336, 14, "quick_gelu")
    rope = config.rope_parameters
    assert rope["rope_type"] == "longrope"
    assert rope["long_factor"] == LONG_FACTOR and rope["short_factor"] == SHORT_FACTOR
    assert rope["original_max_position_embeddings"] == 4096 and rope["rope_theta"] == 10000.0
    assert (config.crop_size, config.crop_grid, config.tokens_per_crop, config.feature_layer) == (
        336,
        12,
        144,
        -2,
    )
    assert config.pad_token_id == 32000  # absent from the file: the official class default
    assert config.eos_token_id == [32007, 32000]  # eos 2 (never emitted) translated to <|end|>, <|endoftext|>
    assert config._attn_implementation is None  # flash_attention_2 dropped: flash_attn is not installed
    assert not hasattr(config, "auto_map")


def test_longrope_matches_the_official_su_formula():
    config = Phi3VConfig.from_dict(official_3v_config())
    head_dim = 3072 // 32
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim
    short_inv_freq, scaling = ROPE_INIT_FUNCTIONS["longrope"](config)
    long_inv_freq, _ = ROPE_INIT_FUNCTIONS["longrope"](config, seq_len=4097)
    official = 1.0 / (torch.tensor(SHORT_FACTOR) * 10000.0**exponents)
    torch.testing.assert_close(short_inv_freq, official, atol=0, rtol=1e-6)
    torch.testing.assert_close(
        long_inv_freq, 1.0 / (torch.tensor(LONG_FACTOR) * 10000.0**exponents), atol=0, rtol=1e-6
    )
    assert scaling == pytest.approx(math.sqrt(17 / 12))  # sqrt(1 + ln(131072/4096) / ln(4096))


def test_official_35v_differences_load():
    values = official_3v_config()
    values.update(pad_token_id=32000, embd_pdrop=0.0, resid_pdrop=0.0, sliding_window=262144)
    values["rope_scaling"] = {
        "type": "su",
        "long_factor": LONG_FACTOR[::-1],
        "short_factor": SHORT_FACTOR[::-1],
    }
    config = Phi3VConfig.from_dict(values)
    assert config.sliding_window == 262144 and config.pad_token_id == 32000
    assert config.rope_parameters["long_factor"] == LONG_FACTOR[::-1]


def test_hub_layout_folder_loads_with_autoconfig_without_remote_code(tmp_path):
    values = official_3v_config()
    # tiny text sizes; the CLIP tower stays the implicit ViT-L/14-336 as in the hub file
    values.update(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4)
    values["num_key_value_heads"] = 4
    values["rope_scaling"] = {"type": "su", "long_factor": LONG_FACTOR[:8], "short_factor": SHORT_FACTOR[:8]}
    (tmp_path / "config.json").write_text(json.dumps(values))
    config = AutoConfig.from_pretrained(tmp_path)  # no trust_remote_code: auto_map must be ignored
    assert type(config) is Phi3VConfig
    assert config.vision_config.hidden_size == 1024 and config.hidden_size == 64
    eager = AutoConfig.from_pretrained(tmp_path, attn_implementation="eager")
    assert eager._attn_implementation == "eager" and eager.vision_config._attn_implementation == "eager"
    with torch.device("meta"):  # the layout builds (CLIP-L + tiny LM) without allocating
        model = Phi3VForCausalLM(config)
    assert {p.device.type for p in model.parameters()} == {"meta"}


def test_full_size_model_has_the_official_checkpoint_layout():
    with torch.device("meta"):
        model = Phi3VForCausalLM(Phi3VConfig.from_dict(official_3v_config()))
    keys = list(model.state_dict())
    assert len(keys) == 592  # design facts 2.2: LM 195, CLIP 391, projection 4, separators 2
    assert sum(p.numel() for p in model.parameters()) == 4_146_621_440
    assert sum(".img_processor.vision_model." in k for k in keys) == 391
    assert {"model.vision_embed_tokens.glb_GN", "model.vision_embed_tokens.sub_GN", "lm_head.weight"} <= set(
        keys
    )
    assert not [k for k in keys if "wte" in k or "rotary" in k or "position_ids" in k or "inv_freq" in k]


def test_save_and_reload_round_trip(tmp_path):
    config = Phi3VConfig.from_dict(official_3v_config())
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "phi3_v" and saved["rope_parameters"]["rope_type"] == "longrope"
    assert "auto_map" not in saved and "_attn_implementation" not in saved
    reloaded = AutoConfig.from_pretrained(tmp_path)
    assert reloaded.to_diff_dict() == config.to_diff_dict()


def test_explicit_vision_config_is_honoured():
    values = official_3v_config()
    values["img_processor"]["image_dim_out"] = 32
    values["vision_config"] = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 3,
                               "num_attention_heads": 2, "image_size": 112, "patch_size": 14}  # fmt: skip
    config = Phi3VConfig.from_dict(values)
    assert (config.vision_config.hidden_size, config.crop_size, config.tokens_per_crop) == (32, 112, 16)


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"embd_layer": {"hd_transform_order": "glb_sub"}}, NotImplementedError, "embd_layer"),
        ({"img_processor": {"image_dim_out": 768}}, ValueError, "image_dim_out"),
        (
            {"img_processor": {"image_dim_out": 1024, "type_feature": "cls_patch"}},
            NotImplementedError,
            "type_feature",
        ),
        ({"vision_config": {"image_size": 322, "patch_size": 14}}, ValueError, "even number of patches"),
    ],
)
def test_unsupported_values_raise_clear_errors(change, error, match):
    values = official_3v_config()
    values.update(change)
    if "vision_config" in change:
        values["img_processor"]["image_dim_out"] = 768  # CLIPVisionConfig default width
        values["vision_config"]["hidden_size"] = 768
    with pytest.raises(error, match=match):
        Phi3VConfig.from_dict(values)
