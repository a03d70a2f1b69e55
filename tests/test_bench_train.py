"""bench/bench_train.py measures against what the reference recipe does: batch 1, each row padded on its own,
one optimizer step per 64 products (as many steps as productlens' grouped batches take)."""

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_train.py"


def test_the_baseline_is_the_recipe_and_both_take_the_same_optimizer_steps(tmp_path):
    args = ["--rows", "20", "--batch-size", "4", "--per-step", "8", "--num-crops", "1", "--image-size", "56"]
    done = subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {}
    for line in done.stdout.splitlines():
        found = re.match(
            r"(reference recipe|productlens) \((.*?)\)\s+(\d+)\s+([\d.]+)%\s+([\d.]+)\s+(\d+)$", line
        )
        if found:
            rows[found[1]] = found.groups()[1:]
    assert rows["reference recipe"][0] == "batch 1, 8 accumulation"
    assert float(rows["reference recipe"][2]) == 100.0  # each row padded on its own: no padding computed
    assert rows["productlens"][0] == "grouped 4, 2 accumulation"
    assert rows["reference recipe"][4] == rows["productlens"][4]  # the same optimizer steps
    assert re.search(r"ratio \(productlens / reference\): [\d.]+x tokens/s", done.stdout)
