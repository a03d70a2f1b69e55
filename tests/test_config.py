"""Run config: defaults <- preset YAML <- --set overrides; unknown names are errors; the resolved config
round-trips through the run folder's config.yaml."""

import pytest

from productlens.config import (
    DEFAULT_TRAINING,
    RunConfig,
    from_dict,
    load_config,
    merge,
    parse_overrides,
    parse_value,
    resolve_preset,
    save_config,
)


def test_defaults_hold_the_project_training_settings():
    config = load_config()
    assert config == RunConfig()
    assert config.training == DEFAULT_TRAINING
    assert config.training["remove_unused_columns"] is False  # the collator needs the raw columns
    assert config.finetune.method == "lora"
    assert (
        config.lora.targets is None
    )  # the family's own (Phi-3-V: qkv_proj, o_proj, gate_up_proj, down_proj)
    assert config.model.family is None and config.model.cost == {}


def test_values_read_as_yaml_but_without_yaml_1_1_surprises():
    assert parse_value("1e-4") == pytest.approx(1e-4)
    assert parse_value("-2.5E-5") == pytest.approx(-2.5e-5)
    assert parse_value("true") is True and parse_value("False") is False
    for word in ("no", "off", "yes", "on"):  # eval_strategy: no must stay a string
        assert parse_value(word) == word
    assert parse_value("null") is None
    assert parse_value("[a, b]") == ["a", "b"]
    assert parse_value("16") == 16


def test_overrides_nest_and_win_over_the_preset(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("# a preset\nlora:\n  r: 32\ntraining:\n  learning_rate: 1e-3\n  eval_strategy: no\n")
    config = load_config(preset, ["lora.r=8", "lora.targets=[qkv_proj]", "training.learning_rate=5e-5"])
    assert config.lora.r == 8
    assert config.lora.targets == ("qkv_proj",)
    assert config.training["learning_rate"] == pytest.approx(5e-5)
    assert config.training["eval_strategy"] == "no"
    assert config.training["save_steps"] == DEFAULT_TRAINING["save_steps"]  # untouched defaults stay


def test_merge_is_deep_and_does_not_touch_its_inputs():
    base = {"a": {"x": 1, "y": 2}, "b": 1}
    out = merge(base, {"a": {"y": 3}, "c": 4})
    assert out == {"a": {"x": 1, "y": 3}, "b": 1, "c": 4}
    assert base == {"a": {"x": 1, "y": 2}, "b": 1}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"lora": {"rank": 8}}, "unknown key(s) ['rank'] in section 'lora'"),
        ({"optimizer": {}}, "unknown config section(s) ['optimizer']"),
        ({"training": {"learning_rat": 1e-4}}, "unknown training setting(s) ['learning_rat']"),
        ({"finetune": {"method": "adapter"}}, "choose one of lora, dora, qlora, full"),
        ({"model": {"num_crops": 32}}, "use 1..16"),
        ({"model": {"dtype": "fp8"}}, "choose one of auto"),
    ],
)
def test_bad_settings_say_what_is_wrong(raw, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        from_dict(raw)


@pytest.mark.parametrize("bad", ["training.learning_rate", "learning_rate=1", ".x=1", "a..b=1"])
def test_malformed_overrides_are_errors(bad):
    with pytest.raises(ValueError, match=r"section\.key=value"):
        parse_overrides([bad])


def test_resolved_config_round_trips_through_yaml(tmp_path):
    config = load_config(
        "phi3v-lora", ["task.question=What product is this?", "training.output_dir=/tmp/r", "lora.r=4"]
    )
    path = save_config(config, tmp_path / "run" / "config.yaml")
    assert load_config(path) == config
    assert not list(path.parent.glob(".*tmp"))


def test_presets_are_found_by_name_and_missing_ones_listed():
    assert resolve_preset("phi3v-lora").name == "phi3v-lora.yaml"
    assert load_config("quickstart").finetune.method == "full"  # its quickstart: section is the quickstart's
    with pytest.raises(FileNotFoundError, match="phi3v-lora"):
        resolve_preset("no-such-preset")
