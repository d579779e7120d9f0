"""Every entry of SOURCES, read the way the commands read it: each entry's ``examples`` writes tiny sources of
its kind and says what reading them must give, and this test reads them through the public API
(resolve_source, iter_images: ``shortlist ingest``; source_paths: its ``--meta-csv`` check; load_array:
``pretrain --data``, the benchmarks). A newly registered source is covered with no test of its own."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import shortlist.datasets as datasets
from shortlist.datasets import (
    SOURCES,
    ExampleImage,
    Source,
    SourceExample,
    iter_images,
    load_array,
    resolve_source,
    source_paths,
)


def check_source(source: Source, folder: Path) -> None:
    """Write ``source``'s examples into ``folder`` and read each as every command does (``source`` is in
    datasets.SOURCES, the registry those functions ask)."""
    examples = source.examples(folder)
    assert examples, f"{source.name}: examples() wrote none"
    if source.with_splits:  # it says it holds a train and a test split: one example must show it
        assert any({"train", "test"} <= set(ex.splits) for ex in examples), source.name
    for ex in examples:
        first = next(s for s in datasets.SOURCES if s.detect(ex.path))
        assert first.name == source.name, f"{ex.path} is taken by '{first.name}', asked before '{source.name}'"
        for split, want in ex.splits.items():
            _check_split(ex, split, {w.id: w for w in want})
        with pytest.raises(FileNotFoundError, match="'holdout'"):  # a split it does not hold: refused up front
            resolve_source(ex.path, "holdout")
    stray = folder / "notes.not-an-image"
    stray.write_text("x")
    with pytest.raises(FileNotFoundError, match="none of the image sources") as e:
        resolve_source(stray)
    assert source.says in str(e.value)  # the registry's own words name it (sources_said)


def _check_split(ex: SourceExample, split: str, want: dict[str, ExampleImage]) -> None:
    where = f"{ex.path} ({split})"
    items = list(iter_images(ex.path, split))
    again = list(iter_images(resolve_source(ex.path, split)))
    ids = [it.id for it in items]
    assert len(set(ids)) == len(ids), f"{where}: ids repeat: {ids}"
    assert [it.id for it in again] == ids, f"{where}: a second read gives other ids or another order"
    assert sorted(ids) == sorted(want), f"{where}: ids"
    assert {it.id: it.label for it in items} == {i: w.label for i, w in want.items()}, f"{where}: labels"
    assert all((it.encoded is None) != (it.pixels is None) for it in items), f"{where}: encoded or pixels, one"
    assert [it.id for it in iter_images(ex.path, split, id_prefix="site/")] == [f"site/{i}" for i in ids]
    assert source_paths(resolve_source(ex.path, split)) == ids, f"{where}: source_paths"

    arr = load_array(ex.path, split, size=None)
    assert arr.ids == ids and not arr.skipped, f"{where}: load_array skipped {arr.skipped}"
    assert [arr.classes[y] if y >= 0 else None for y in arr.labels] == [it.label for it in items]
    for i, got in zip(ids, arr.images, strict=True):
        pixels = want[i].pixels
        assert got.shape == pixels.shape, f"{where}: {i} is {got.shape}, written {pixels.shape}"
        diff = int(np.abs(got.astype(np.int16) - pixels.astype(np.int16)).max())
        assert diff <= ex.tolerance, f"{where}: {i} differs by {diff} levels (tolerance {ex.tolerance})"


@pytest.mark.parametrize("source", SOURCES, ids=[s.name for s in SOURCES])
def test_every_source_reads_its_example_as_written(source: Source, tmp_path: Path) -> None:
    check_source(source, tmp_path)
