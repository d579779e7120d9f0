"""Which commit a tree of shortlist is: from git in a checkout, from the file `git archive` writes outside one."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import pytest

from shortlist import version


def test_an_archive_of_the_repository_says_its_commit() -> None:
    """`git archive` (a release tarball, GitHub's source download) has no .git: the commit is written into
    shortlist/COMMIT (export-subst), so `shortlist --version` and GetStatus can still tell releases apart."""
    if not (version.ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    head = subprocess.run(["git", "-C", str(version.ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    tar = subprocess.run(["git", "-C", str(version.ROOT), "archive", "--format=tar", "HEAD", "shortlist/COMMIT"],
                         capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        member = t.extractfile("shortlist/COMMIT")
        assert member is not None and member.read().decode().strip() == head


@pytest.mark.parametrize(("written", "said"), [
    ("0123456789abcdef0123456789abcdef01234567\n", "0123456789ab"),
    ("fedcba9876543210" * 4 + "\n", "fedcba987654"),  # a SHA-256 repository's commit
    ("$Format:%H$\n", ""),  # the repository's own text: not an archive
    ("not a commit", ""),
])
def test_outside_a_checkout_the_commit_is_read_from_the_archive_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, written: str, said: str) -> None:
    (tmp_path / "COMMIT").write_text(written)
    monkeypatch.setattr(version, "ROOT", tmp_path)  # no .git there
    monkeypatch.setattr(version, "ARCHIVE_COMMIT", tmp_path / "COMMIT")
    version.git_commit.cache_clear()
    try:
        assert version.git_commit() == said
    finally:
        version.git_commit.cache_clear()
