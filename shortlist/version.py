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
# "$Format:%H$" in the repository; `git archive` writes the commit there (.gitattributes: export-subst), so a tree
# unpacked from an archive (no .git) still says which commit it is.
ARCHIVE_COMMIT = Path(__file__).resolve().parent / "COMMIT"


@cache
def package_version() -> str:
    """The installed distribution's version ("unknown" when shortlist runs from a tree that is not installed)."""
    try:
        return importlib.metadata.version("shortlist")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@cache
def git_commit() -> str:
    """The commit checked out where the code runs from (12 hex digits): one ``git rev-parse``, once; outside a
    git checkout, the commit ``git archive`` wrote into ``ARCHIVE_COMMIT``. "" when neither says (a wheel built
    from a checkout, git not installed, another user's checkout)."""
    if not (ROOT / ".git").exists():
        try:
            written = ARCHIVE_COMMIT.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            return ""
        # 40 hex digits (SHA-1), or 64 in a repository that names objects by SHA-256
        return written[:12] if len(written) in (40, 64) and all(c in "0123456789abcdef" for c in written) else ""
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
