"""agent/memory.py and agent/threads.py: the process settings of `shortlist serve` (malloc, BLAS threads)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from agent.threads import THREAD_ENV

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


BLAS_CHECK = """
from threadpoolctl import threadpool_info
from agent.threads import one_blas_thread_per_call
print(one_blas_thread_per_call(), sorted({i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}))
"""


def test_one_blas_thread_unless_the_environment_says_otherwise() -> None:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_ENV}
    out = subprocess.run([sys.executable, "-c", BLAS_CHECK], capture_output=True, text=True, timeout=60, check=True,
                         env=env)
    assert out.stdout.strip() in {"True [1]", "True []"}  # [] only where numpy has no BLAS threadpool
    env["OMP_NUM_THREADS"] = "2"
    out = subprocess.run([sys.executable, "-c", BLAS_CHECK], capture_output=True, text=True, timeout=60, check=True,
                         env=env)
    assert out.stdout.startswith("False")
