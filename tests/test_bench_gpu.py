"""bench/bench_gpu.py cannot rot: its --tiny mode runs the same code on the CPU (the presets loaded through
productlens.train, a few steps each, the bf16-against-fp32 check, batched generation) and fills a RESULTS.md
section; its full-size config is the official 4.15B-parameter Phi-3-Vision. QLoRA needs bitsandbytes and CUDA:
on the CPU the preset's path goes as far as productlens' refusal, which is recorded."""

import importlib.util
import json
import math
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_gpu.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_full_size_config_is_the_official_phi3v():
    bench = _bench()
    config = bench.phi3v_config(False, 600, 500, [502, 500])
    with torch.device("meta"):
        model = bench.Phi3VForCausalLM(config)
    assert sum(p.numel() for p in model.parameters()) == 4_146_621_440  # the official checkpoint's count
    assert config.rope_parameters["rope_type"] == "longrope" and len(bench.SHORT) == len(bench.LONG) == 48
    # model FLOPs of one full fine-tuning token: 6 x the decoder and head parameters, attention aside
    lm = 32 * (3072 * 3 * 3072 + 3072 * 3072 + 3 * 3072 * 8192) + 3072 * 32064
    flops = bench.model_flops(config, 1, 0, "full", True)
    clip = 23 * (4 * 1024**2 + 2 * 1024 * 4096) * 577 * 2  # frozen CLIP, one crop, forward only
    assert math.isclose(flops, 6 * lm + clip + 12 * 32 * 3072 / 2, rel_tol=1e-9)


def test_tiny_mode_runs_every_measurement_and_fills_the_results(tmp_path):
    results_md = tmp_path / "RESULTS.md"
    results_md.write_text(
        "# Results\n\nbefore\n<!-- bench_gpu:begin -->\nold\n<!-- bench_gpu:end -->\nafter\n"
    )
    results = _bench().main(["--tiny", "--out", str(tmp_path), "--results", str(results_md)])
    assert json.loads((tmp_path / "gpu-results.json").read_text())["training"] == results["training"]

    rows = {(r["method"], r["num_crops"]): r for r in results["training"]}
    assert set(rows) == {(m, c) for m in ("lora", "qlora", "full") for c in (4, 16)}
    for method in ("lora", "full"):
        small, large = rows[method, 4], rows[method, 16]
        assert large["tokens_per_sample"] > small["tokens_per_sample"] > 0
        for row in (small, large):
            assert row["samples_per_s"] > 0 and row["achieved_tflop_per_s"] > 0
            assert math.isclose(row["tokens_per_s"], row["tokens_per_sample"] * row["samples_per_s"])
    assert rows["full", 4]["trainable_parameters"] > rows["lora", 4]["trainable_parameters"]
    assert rows["full", 4]["batch_size"] == 1 and rows["lora", 4]["gradient_accumulation_steps"] == 16
    for crops in (4, 16):
        assert "QLoRA needs" in rows["qlora", crops]["error"]

    check = results["bf16_check"]
    assert check["share_changed_fp32"] > 0.9  # fp32 moves (nearly) every decoder weight
    assert 0 <= check["share_changed_preset"] <= 1 and -1 <= check["update_cosine"] <= 1

    generation = {g["num_crops"]: g for g in results["generation"]}
    assert generation[16]["prompt_tokens"] > generation[4]["prompt_tokens"]
    for g in generation.values():
        assert math.isclose(g["catalog_minutes"], 3040 / g["photos_per_s"] / 60)

    text = results_md.read_text()
    assert text.startswith("# Results\n\nbefore\n") and text.endswith("<!-- bench_gpu:end -->\nafter\n")
    assert "old" not in text and "tiny CPU mode" in text and "| lora | 16 | 2 x 16 |" in text
