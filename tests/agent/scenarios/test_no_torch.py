"""Design rule 1: agent/ never imports torch or torchvision; it runs where only onnxruntime is installed
(README, "Architecture"). Checked twice: by reading every agent/ module's imports (a lazy import inside a
function counts too), and by importing every agent/ module, and the CLI that serves it, with torch made
unimportable (what a deployment from requirements.txt alone is)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
# torch itself, and the packages of this repository that import it (training, exporters) or may (bench)
FORBIDDEN = ("torch", "torchvision", "training", "exporters", "bench")


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in a file, at any depth (functions included)."""
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
    return out


def test_no_agent_module_imports_torch_or_the_packages_that_need_it() -> None:
    found = [f"{path.relative_to(ROOT)}:{line} imports {module}"
             for path in sorted((ROOT / "agent").rglob("*.py")) for line, module in _imports(path)
             if module.split(".")[0] in FORBIDDEN]
    assert not found, ("agent/ must run where only onnxruntime is installed (no torch): "
                       + "; ".join(found))


def test_every_agent_module_and_the_cli_import_without_torch() -> None:
    code = """
import importlib, pkgutil, sys
for name in ("torch", "torchvision"):
    sys.modules[name] = None  # `import torch` now raises ImportError, as where it is not installed
import agent
for m in pkgutil.walk_packages(agent.__path__, "agent."):
    importlib.import_module(m.name)
import shortlist.cli  # the command that serves the agent, with every command registered
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
