"""A real `productlens serve` subprocess for tests: started, read until it prints its URL, stopped at the end."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def serve_process(command: list[str], env: dict[str, str]) -> Iterator[str]:
    """Run `command` (a `productlens serve ...`); yield the http://127.0.0.1:PORT it prints; terminate it after."""
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    ) as proc:
        try:
            lines = []
            for line in proc.stdout:
                lines.append(line)
                if "serving" in line:
                    break
            url = next((w for w in lines[-1].split() if w.startswith("http://127.0.0.1:")), None)
            assert url, "".join(lines)
            threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep the pipe drained
            yield url.rstrip("/")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
