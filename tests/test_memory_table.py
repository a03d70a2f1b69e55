"""bench/memory_table.py counts what the real checkpoints hold (parameter totals the model cards publish), its image
tokens are the processors' own, and every family's QLoRA skip list keeps the vision tower and projector out of
transformers' 4-bit plan while every language-model Linear but lm_head goes in (on each family's tiny model)."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig

from productlens.families import get_family, names

BENCH = Path(__file__).resolve().parents[1] / "bench" / "memory_table.py"
TEXTS = ["Product: Bag, Category: BAGS, Full Price: 1290.0"] * 8


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("memory_table", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def _row(bench, hub_id):
    return next(row for row in bench.ROWS if row.hub_id == hub_id)


# the model cards' counts (safetensors totals; tied embeddings once)
PUBLISHED = {
    "microsoft/Phi-3-vision-128k-instruct": 4.15e9,
    "Qwen/Qwen2.5-VL-3B-Instruct": 3.75e9,
    "Qwen/Qwen2.5-VL-7B-Instruct": 8.29e9,
    "HuggingFaceTB/SmolVLM2-2.2B-Instruct": 2.25e9,
    "google/gemma-3-4b-it": 4.30e9,
}


@pytest.mark.parametrize("hub_id", PUBLISHED)
def test_parameter_counts_match_the_published_totals(bench, hub_id):
    row = _row(bench, hub_id)
    family = get_family(row.family)
    counts = bench.parameter_counts(family, bench.meta_model(family, row.config()))
    assert sum(counts.values()) == pytest.approx(PUBLISHED[hub_id], rel=0.01)
    assert all(counts[part] > 0 for part in ("vision", "projection", "language"))
    assert counts["language"] > counts["vision"] > counts["projection"]


def test_the_phi3v_count_is_the_official_one(bench):
    row = _row(bench, "microsoft/Phi-3-vision-128k-instruct")
    family = get_family("phi3v")
    counts = bench.parameter_counts(family, bench.meta_model(family, row.config()))
    assert sum(counts.values()) == 4_146_621_440  # bench_gpu.py's official 3V config


def test_image_tokens_per_photo_at_the_recommended_cost(bench):
    def tokens(hub_id, cost, width=1600, height=1600):
        row = _row(bench, hub_id)
        return bench.image_tokens(get_family(row.family), row.config(), cost, width, height)[0]

    phi = "microsoft/Phi-3.5-vision-instruct"
    assert tokens(phi, {"num_crops": 4}) == 757 and tokens(phi, {"num_crops": 16}) == 2509  # (README)
    qwen = get_family("qwen2_5_vl").recommended_cost
    assert tokens("Qwen/Qwen2.5-VL-3B-Instruct", qwen, 1792, 896) == 512  # max_pixels / 28^2, on a 32x16 grid
    assert 450 < tokens("Qwen/Qwen2.5-VL-3B-Instruct", qwen, 1600, 1200) < 512  # 26x19 after rounding down
    assert tokens("Qwen/Qwen2.5-VL-3B-Instruct", qwen, 200, 200) == 64  # min_pixels / 28^2
    smol = get_family("smolvlm").recommended_cost
    assert (
        tokens("HuggingFaceTB/SmolVLM2-2.2B-Instruct", smol) == 5 * 81
    )  # 2x2 crops + global, 27^2 / 3^2 each
    assert tokens("HuggingFaceTB/SmolVLM2-2.2B-Instruct", {"size": {"longest_edge": 1536}}) == 17 * 81
    assert tokens("google/gemma-3-4b-it", {"do_pan_and_scan": False}) == 256


def test_the_table_has_every_row_and_a_bigger_model_needs_more(bench, capsys):
    results = {r["row"].hub_id: r for r in bench.main([])}
    out = capsys.readouterr().out
    assert sum(line.startswith("| ") for line in out.splitlines()) == len(bench.ROWS) + 1  # header + rows
    for r in results.values():
        assert 0 < r["qlora_gib"] < r["lora_gib"] < 80
        assert r["seq"] == r["image_tokens"] + bench.TEXT_TOKENS
    assert (
        results["Qwen/Qwen2.5-VL-7B-Instruct"]["lora_gib"]
        > results["Qwen/Qwen2.5-VL-3B-Instruct"]["lora_gib"]
    )
    assert bench.smallest_card(14.0) == "16 GB" and bench.smallest_card(15.0) == "24 GB"
    assert bench.smallest_card(200.0) == "> 80 GB"


@pytest.mark.parametrize("name", names())
def test_qlora_quantises_the_language_model_only(bench, name, tmp_path):
    """transformers' own plan (`get_modules_to_not_convert` + `should_convert_module`, as `replace_with_bnb_linear`
    runs it) with llm_int8_skip_modules = the family's skip list, on its tiny model built on the meta device."""
    from transformers.quantizers.quantizer_bnb_4bit import Bnb4BitHfQuantizer
    from transformers.quantizers.quantizers_utils import should_convert_module

    family = get_family(name)
    folder = family.save_tiny(tmp_path / "tiny", TEXTS)
    config = AutoConfig.from_pretrained(folder)
    model = bench.meta_model(family, config)
    skip = Bnb4BitHfQuantizer.get_modules_to_not_convert(
        model, family.quantization_skip_modules(), model._keep_in_fp32_modules
    )
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    quantised = {n for n in linears if should_convert_module(n, skip)}
    part = {n: family.part_of(f"{n}.weight") for n in linears}
    tower_and_projector = {n for n in linears if part[n] in ("vision", "projection")}
    assert any(part[n] == "vision" for n in linears)
    assert not quantised & tower_and_projector, sorted(quantised & tower_and_projector)
    language = {n for n in linears if part[n] == "language" and n != "lm_head"}
    assert language and quantised == language, sorted(quantised ^ language)
    assert bench.quantized_parameters(family, model) == sum(linears[n].weight.numel() for n in language)
