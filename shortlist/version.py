"""Which shortlist this is: the package version (importlib.metadata) and, when it runs from a git checkout, the
checkout's commit. ``shortlist --version`` prints them; the agent reports them in GetStatus."""

from __future__ import annotations

import importlib.metadata
import subprocess
from functools import cache
from pathlib import Path

# The folder holding the shortlist package: a git checkout's root when it runs from one (an editable install or
# the source tree), site-packages otherwise.
ROOT = Path(__file__).resolve().parent.parent


@cache
def package_version() -> str:
    """The installed distribution's version ("unknown" when shortlist runs from a tree that is not installed)."""
    try:
        return importlib.metadata.version("shortlist")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@cache
def git_commit() -> str:
    """The commit checked out where the code runs from (12 hex digits), or "" when that is no git checkout (an
    installed wheel) or git cannot say (not installed, another user's checkout). One ``git rev-parse``, once."""
    if not (ROOT / ".git").exists():
        return ""
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return ""
    commit = out.stdout.strip()
    return commit if commit and all(c in "0123456789abcdef" for c in commit) else ""


def version_text(schema: int | None = None) -> str:
    """``shortlist 0.1.0 (commit 2d8e9cf0a1b2)``, with ``, data folder schema version N`` when ``schema`` is given."""
    commit = git_commit()
    text = f"shortlist {package_version()}" + (f" (commit {commit})" if commit else "")
    return text + (f", data folder schema version {schema}" if schema is not None else "")
