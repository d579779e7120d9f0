"""The package as it is installed where the agent is deployed (`pip install .`, not editable): every file the
code reads beside its modules is in it. A non-editable install once lacked agent/web/static and templates,
so `serve --web-port` stopped at start ("Directory .../agent/web/static does not exist")."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("agent", "shortlist", "training", "exporters", "bench")


def test_the_wheel_holds_every_file_of_the_packages(tmp_path: Path) -> None:
    # built from a copy: a build writes build/ and *.egg-info beside the sources, and a stale build/ from an
    # earlier one would hide a missing file
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("shortlist-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    wanted = {p.relative_to(ROOT).as_posix() for pkg in PACKAGES for p in (ROOT / pkg).rglob("*")
              if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    missing = sorted(wanted - names)
    assert not missing, f"not in the wheel (pyproject.toml [tool.setuptools.package-data]): {missing[:20]}"


def test_a_training_command_where_torch_is_not_installed_says_so_in_one_line(tmp_path: Path) -> None:
    """An agent-only install (requirements.txt alone) has the training commands too: run, they say what is
    missing and how to get it (exit 2), not a ModuleNotFoundError traceback."""
    code = f"""
import sys
sys.modules["torch"] = None  # as where torch is not installed
sys.argv = ["shortlist", "export", "--run", {str(tmp_path / "run")!r}, "--models", {str(tmp_path / "m")!r}]
from shortlist.cli import main
main()
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "`shortlist export` needs torch, which this installation lacks" in done.stderr, done.stderr[-3000:]
    assert "requirements-train.txt" in done.stderr and "Traceback" not in done.stderr
