"""The `productlens` command line: one subcommand per pipeline stage, in the order data flows.

    productlens synth -> prepare -> train -> evaluate -> predict -> serve   (or: productlens quickstart)

Each command is a thin shell over a function in the module that owns the stage; heavy imports happen
inside the command so that `productlens --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="Teach Phi-3-Vision to read product photos: title, category and price.\n\n"
    "Pipeline: synth -> prepare -> train -> evaluate -> predict -> serve. "
    "Example: productlens quickstart",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
)


# ---- synth ------------------------------------------------------------------------------------------------
# ---- prepare ----------------------------------------------------------------------------------------------
# ---- train ------------------------------------------------------------------------------------------------
# ---- evaluate ---------------------------------------------------------------------------------------------
# ---- predict ----------------------------------------------------------------------------------------------
# ---- serve ------------------------------------------------------------------------------------------------
# ---- quickstart -------------------------------------------------------------------------------------------
