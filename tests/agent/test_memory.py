"""agent/memory.py: the malloc settings are accepted by glibc, and an environment variable wins."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

CHECK = """
from agent.memory import tune_malloc
print(tune_malloc())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc settings")
def test_tune_malloc_is_accepted_in_a_fresh_process() -> None:
    # In a child process: the settings are process-wide, and the test process keeps its own.
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() in {"True", "False"}  # False only off glibc (e.g. musl)
    if platform.libc_ver()[0] == "glibc":
        assert out.stdout.strip() == "True"
