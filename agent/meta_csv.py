"""``shortlist ingest --meta-csv FILE``: per-image metadata from a CSV, checked before anything is sent.

The file: UTF-8 (a byte order mark, Excel's "CSV UTF-8", is dropped), comma-separated, or tab-separated
when its header line holds a tab and no comma (other delimiters are refused: a semicolon file read with
commas would be one column). The header's first column names the image's path inside the source (the
path the sample id is made of, before ``--id-prefix``: ``cam03/IMG_0001.JPG``), every other column a
metadata key; each row gives one image's values. An empty cell sets nothing (the key is absent for that
image). A cell an export escaped against spreadsheet formulas (a leading ``'`` before ``= + - @``:
agent.exports.csv_escape) is read unescaped. Blank lines are skipped; cells are stripped.

Whole-file problems raise MetaFileError (the CLI prints it and exits 2, nothing sent): an unreadable file,
a header without a key column, an empty, repeated or malformed key (agent.limits.metadata_problem, the
agent's own check), a row with more cells than the header, a path given twice, and (``check_paths``)
paths that are not images of the source. The size limits (entries and characters per key or value) are
the agent's to enforce, since an operator may raise them (``serve --max-metadata-chars``): ``over_limits``
lists the rows over the default ones, and the agent rejects such samples one by one, with the reason.
"""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from agent import exports
from agent.limits import Limits, metadata_problem

SHOWN = 10  # problems (lines, paths) named in one message, then a count


class MetaFileError(ValueError):
    """A metadata CSV that cannot be used (nothing is sent): the message says why, naming lines."""


@dataclass
class MetaTable:
    """A metadata CSV read: ``rows`` = path -> {key: value} (the non-empty cells), ``lines`` = path -> its
    line in the file, ``keys`` = the header's metadata keys."""

    path: Path
    keys: list[str]
    rows: dict[str, dict[str, str]]
    lines: dict[str, int]


def _listed(problems: list[str]) -> str:
    more = f"\n  ... and {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
    return "\n  " + "\n  ".join(problems[:SHOWN]) + more


# metadata_problem without the size limits (those are the agent's: an operator may raise them)
_UNBOUNDED = Limits(max_metadata_entries=sys.maxsize, max_metadata_chars=sys.maxsize)


def read_meta_csv(path: Path) -> MetaTable:
    """The metadata CSV at ``path`` (see the module docstring); MetaFileError when it cannot be used."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise MetaFileError(f"{path} is not UTF-8 text ({e}); save it as CSV UTF-8") from None
    except OSError as e:
        raise MetaFileError(f"cannot read {path}: {e.strerror or e}") from None
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    delimiter = "\t" if "\t" in first and "," not in first else ","
    # the csv module reads the text itself: split into lines first, a quoted cell's line break was lost
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        rows = [(reader.line_num, [exports.csv_unescape(c.strip()) for c in cells]) for cells in reader
                if any(c.strip() for c in cells)]
    except csv.Error as e:  # a NUL byte, an unterminated quote, a huge field
        raise MetaFileError(f"{path} line {reader.line_num}: not readable as CSV ({e})") from None
    if not rows:
        raise MetaFileError(f"{path} is empty: it needs a header line 'path,key1,key2,...' and one row per image")
    (_, header), body = rows[0], rows[1:]
    if len(header) < 2:
        other = next((d for d in ";|" if d in first), "")
        why = (f"it looks {other!r}-separated; save it comma- or tab-separated" if other else
               "the first column is the image's path inside the source, the others metadata keys")
        raise MetaFileError(f"{path}: the header line {first[:80]!r} has no metadata column ({why})")
    if [h.lower() for h in header[:2]] == ["id", "uri"]:  # export-labels' samples.csv (agent/exports.py)
        raise MetaFileError(f"{path} looks like an export's samples.csv: it is keyed by sample id and lists labelled "
                            "samples only, while --meta-csv is keyed by each image's path inside the source. "
                            "Ingest with the metadata CSV first used for the pool, or move the whole data folder "
                            "with shortlist backup (docs/app.md, \"Moving labels to another agent\")")
    if header[0].lower() != "path":  # a file without its header line would make its first image's values keys
        raise MetaFileError(f"{path}: the first line is the header, and its first column must be named 'path' (got "
                            f"{header[0][:80]!r}); add the line 'path,key1,key2,...' at the top")
    keys = header[1:]
    problems: list[str] = []
    seen_keys: set[str] = set()
    for k in keys:
        problem = metadata_problem({k: ""}, _UNBOUNDED, "--meta-csv header") if k else \
            "--meta-csv header has an empty column name: name every metadata column"
        if problem is None and k in seen_keys:
            problem = f"the column {k!r} appears twice in the header"
        seen_keys.add(k)
        if problem:
            problems.append(problem)
    if problems:
        raise MetaFileError(f"{path}: the header names keys that cannot be used; nothing was sent:" + _listed(problems))
    table = MetaTable(path, keys, {}, {})
    for n, cells in body:
        sample = cells[0]
        if not sample:
            problems.append(f"line {n}: no path in the first column")
        elif len(cells) > len(header):
            problems.append(f"line {n}: {len(cells)} cells, more than the header's {len(header)} (a quote missing?)")
        elif sample in table.lines:
            problems.append(f"line {n}: path {sample!r} again (first on line {table.lines[sample]}): one row per "
                            "image")
        else:
            table.lines[sample] = n
            table.rows[sample] = {k: v for k, v in zip(keys, cells[1:], strict=False) if v}
    if problems:
        raise MetaFileError(f"{path}: rows that cannot be used; nothing was sent:" + _listed(problems))
    return table


def check_paths(table: MetaTable, source_paths: Iterable[str], source: str) -> None:
    """MetaFileError when a row's path is not an image of the source, naming the first few and an example of
    the source's paths (a CSV written with another root or with the --id-prefix is the usual cause)."""
    known = list(source_paths)
    have = set(known)
    unknown = [p for p in table.rows if p not in have]
    if not unknown:
        return
    shown = ", ".join(f"{p!r} (line {table.lines[p]})" for p in unknown[:SHOWN])
    more = f" and {len(unknown) - SHOWN} more" if len(unknown) > SHOWN else ""
    example = f"; its paths look like {known[0]!r}" if known else ""
    raise MetaFileError(f"{table.path}: {len(unknown)} of its {len(table.rows)} paths are not images of {source}: "
                        f"{shown}{more}{example} (the first column is the path inside the source, without "
                        "--id-prefix); nothing was sent")


def over_limits(table: MetaTable, meta: Mapping[str, str], limits: Limits | None = None) -> list[str]:
    """'line N (path): why' for each row whose merged metadata (``meta`` then the row) is over ``limits``
    (the agent's defaults): what an agent serving with those limits rejects."""
    limits = limits or Limits()
    out = []
    for sample, row in table.rows.items():
        problem = metadata_problem({**meta, **row}, limits)
        if problem:
            out.append(f"line {table.lines[sample]} ({sample}): {problem}")
    return out
