#!/usr/bin/env python3
"""Set up productlens on a fresh machine and run it: needs only Python >= 3.11 and pip.

    python3 dev.py quickstart [ARGS...]   # make .venv, install, run `productlens quickstart`
    python3 dev.py test [PYTEST ARGS...]  # make .venv, install with dev extras, run the test suite
    python3 dev.py lint                   # ruff check + ruff format --check
    python3 dev.py run ARGS...            # run `productlens ARGS...` inside .venv

Set-up is idempotent: a stamp file skips the install when pyproject.toml has not changed.
When no torch is installed, torch==2.13.0 is installed first (on CPU-only machines that is the CPU build);
an existing torch (a user's CUDA build, say) is kept.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("PRODUCTLENS_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / "python"
STAMP = VENV / ".productlens-stamp"
TORCH_PIN = "torch==2.13.0"


def _run(*args: str | os.PathLike) -> None:
    print("+", " ".join(str(a) for a in args), flush=True)
    subprocess.run([str(a) for a in args], check=True)


def _has_torch() -> bool:
    return subprocess.run([str(PYTHON), "-c", "import torch"], capture_output=True).returncode == 0


def setup() -> None:
    """Create the virtual environment and install productlens with its dev extras (once per pyproject)."""
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py may be run by an older python3
        sys.exit(f"productlens needs Python >= 3.11; this is {sys.version.split()[0]}")
    if not PYTHON.exists():
        _run(sys.executable, "-m", "venv", VENV)
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == want:
        return
    pip = [PYTHON, "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    if not _has_torch():
        _run(*pip, TORCH_PIN)
    _run(*pip, "-e", f"{ROOT}[dev]")
    STAMP.write_text(want)


def ensure_chromium() -> None:
    """Browser tests drive Debian's chromium; install it with apt-get when missing and we may (root)."""
    if shutil.which("chromium") or os.environ.get("PRODUCTLENS_CHROMIUM"):
        return
    if shutil.which("apt-get") and hasattr(os, "geteuid") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=False, env=env)
    if not shutil.which("chromium"):
        print(
            "note: no chromium found; browser tests will fail. Install Debian's `chromium` package "
            "or set PRODUCTLENS_CHROMIUM=/path/to/chrome.",
            flush=True,
        )


def main(argv: list[str]) -> int:
    if not argv or argv[0] in {"-h", "--help"}:
        print(__doc__)
        return 0
    command, rest = argv[0], argv[1:]
    setup()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    if command == "quickstart":
        cmd = [BIN / "productlens", "quickstart", *rest]
    elif command == "test":
        ensure_chromium()
        cmd = [PYTHON, "-m", "pytest", *rest]
    elif command == "lint":
        rc = subprocess.run([str(PYTHON), "-m", "ruff", "check", str(ROOT)], env=env).returncode
        return (
            rc
            or subprocess.run([str(PYTHON), "-m", "ruff", "format", "--check", str(ROOT)], env=env).returncode
        )
    elif command == "run":
        cmd = [BIN / "productlens", *rest]
    else:
        print(f"unknown command {command!r}; use quickstart, test, lint or run", file=sys.stderr)
        return 2
    return subprocess.run([str(c) for c in cmd], cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
