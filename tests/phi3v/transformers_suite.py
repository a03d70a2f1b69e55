"""transformers' own common test mixins, for the installed transformers version, fetched from PyPI at test time.

The transformers wheel ships no tests; its sdist on PyPI ships `tests/*.py` (ModelTesterMixin, ProcessorTesterMixin,
ConfigTester, ...) but not the sub-packages those files import. `load()` downloads the sdist matching the
installed version once with pip (about 20 s, 11 MB) into `$PRODUCTLENS_TEST_CACHE` (default
`~/.cache/productlens`), extracts `tests/*.py` as the package `transformers_tests` and adds stand-ins for the
modules the sdist lacks. Nothing of transformers' test code lives in this repository.

Stand-ins (the sdist has no such files):
* `generation/test_utils.py`: an empty `GenerationTesterMixin`; the generation checks are in test_generation.py.
* `exporters/test_export.py`: an empty `ExportTesterMixin` (torch.export tests are not run).
* `utils/test_configuration_utils.py`: empty `config_common_kwargs` (ConfigTester skips it for composite configs).
* `utils/fetch_hub_objects_for_ci.py`: `url_to_local_path` maps the hub's sample images to a local random PNG.
"""

import importlib
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from types import ModuleType

import numpy as np
import transformers
from filelock import FileLock
from PIL import Image

VERSION = transformers.__version__
PACKAGE = "transformers_tests"
STAND_INS = {
    f"{PACKAGE}/__init__.py": "",
    f"{PACKAGE}/generation/__init__.py": "",
    f"{PACKAGE}/generation/test_utils.py": "class GenerationTesterMixin:\n    pass\n",
    f"{PACKAGE}/exporters/__init__.py": "",
    f"{PACKAGE}/exporters/test_export.py": "class ExportTesterMixin:\n    pass\n",
    f"{PACKAGE}/utils/__init__.py": "",
    f"{PACKAGE}/utils/test_configuration_utils.py": "config_common_kwargs = {}\n",
    "utils/fetch_hub_objects_for_ci.py": (
        "from pathlib import Path\n\n"
        "SAMPLE = Path(__file__).resolve().parent / 'sample.png'\n\n\n"
        "def url_to_local_path(url):\n"
        "    return str(SAMPLE) if url.endswith('.png') else url\n"
    ),
}


class Unavailable(RuntimeError):
    """transformers' sdist could not be downloaded (no access to PyPI)."""


def cache_dir() -> Path:
    root = Path(os.environ.get("PRODUCTLENS_TEST_CACHE", Path.home() / ".cache" / "productlens"))
    return root / f"transformers-{VERSION}-tests"


def _download(target: Path) -> None:
    """pip-download the sdist and extract tests/*.py into target/transformers_tests, plus the stand-ins."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        cmd += ["--no-build-isolation", "--quiet", f"transformers=={VERSION}", "-d", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        archives = list(Path(tmp).glob("transformers-*.tar.gz"))
        if done.returncode or not archives:
            raise Unavailable(f"pip could not download transformers=={VERSION}'s sdist: {done.stderr[-500:]}")
        staging = Path(tempfile.mkdtemp(dir=target.parent))
        with tarfile.open(archives[0]) as tar:
            for member in tar.getmembers():
                parts = Path(member.name).parts
                if member.isfile() and len(parts) == 3 and parts[1] == "tests" and parts[2].endswith(".py"):
                    member.name = f"{PACKAGE}/{parts[2]}"
                    tar.extract(member, staging, filter="data")
    for name, text in STAND_INS.items():
        path = staging / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.write_text(text)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(
        staging / "utils" / "sample.png"
    )
    staging.rename(target)


def load(module: str) -> ModuleType:
    """Import `transformers_tests.<module>` (e.g. "test_modeling_common"), downloading the sdist on first use."""
    target = cache_dir()
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not (target / PACKAGE / "test_modeling_common.py").exists():
            _download(target)
    if str(target) not in sys.path:
        sys.path.insert(0, str(target))
    return importlib.import_module(f"{PACKAGE}.{module}")
