"""The `productlens` command line: subcommands in pipeline order, each with help that shows an example."""

import re
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from productlens.cli import app

PIPELINE = ["synth", "prepare", "train", "evaluate", "predict", "serve", "quickstart"]


def _commands(help_text: str) -> list[str]:
    return [name for name in re.findall(r"^[│| ]\s+([a-z][a-z-]+)\s{2,}", help_text, flags=re.M)]


def test_help_lists_subcommands_in_pipeline_order():
    result = CliRunner().invoke(app, ["--help"], terminal_width=160)
    assert result.exit_code == 0, result.output
    names = [n for n in _commands(result.output) if n in PIPELINE]
    assert names == PIPELINE, result.output


@pytest.mark.parametrize("command", PIPELINE)
def test_every_subcommand_help_shows_an_example(command):
    result = CliRunner().invoke(app, [command, "--help"], terminal_width=160)
    assert result.exit_code == 0, result.output
    assert f"productlens {command}" in result.output and "Example" in result.output, result.output


def test_console_script_and_module_entry_point_agree():
    out = subprocess.run([sys.executable, "-m", "productlens", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "quickstart" in out.stdout, out.stderr
