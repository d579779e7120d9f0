"""Every source kind Shortlist reads, built small in a temporary folder."""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import struct
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from PIL import Image

from shortlist.datasets import MissingSplit, iter_images, load_array, resolve_source, source_paths
from shortlist.images import decode_image, encode_png

CLASSES = ["cat", "dog"]


def _png(color: int, size: tuple[int, int] = (8, 6)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size[1], size[0]), (color, 0, 255 - color)).save(buf, format="PNG")
    return buf.getvalue()


def _image_folder(root: Path, n: int = 3) -> None:
    for ci, c in enumerate(CLASSES):
        (root / c).mkdir(parents=True)
        for i in range(n):
            (root / c / f"{i:04d}.png").write_bytes(_png(100 * ci + i))


def test_image_folder_labels_and_ids(tmp_path: Path) -> None:
    _image_folder(tmp_path / "tree")
    items = list(iter_images(tmp_path / "tree"))
    assert [it.id for it in items][:2] == ["cat/0000.png", "cat/0001.png"]
    assert [it.label for it in items] == ["cat"] * 3 + ["dog"] * 3
    arr = load_array(tmp_path / "tree", size=(4, 4))
    assert arr.images.shape == (6, 4, 4, 3) and arr.images.dtype == np.uint8
    assert arr.classes == CLASSES and arr.labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_symlinked_folders_are_followed_and_a_loop_is_skipped_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A folder linked into a class folder, and a linked class folder, are read like real ones (Path.rglob
    skipped them without a word, while linked files were read); a link to a folder the walk is inside of
    would never end: it is skipped, and said so."""
    tree, night, dogs = tmp_path / "tree", tmp_path / "elsewhere" / "night", tmp_path / "elsewhere" / "dogs"
    (tree / "cat").mkdir(parents=True)
    (night / "deeper").mkdir(parents=True)
    dogs.mkdir()
    (tree / "cat" / "a.png").write_bytes(_png(1))
    (night / "n1.png").write_bytes(_png(2))
    (night / "deeper" / "n2.png").write_bytes(_png(3))
    (dogs / "d.png").write_bytes(_png(4))
    (tmp_path / "loose.png").write_bytes(_png(5))
    (tree / "cat" / "linked_folder").symlink_to(night)
    (tree / "dog").symlink_to(dogs)
    (tree / "cat" / "linked_file.png").symlink_to(tmp_path / "loose.png")
    (night / "deeper" / "back").symlink_to(tree)  # a loop through the linked folder
    (tree / "cat" / "gone").symlink_to(tmp_path / "missing")  # a broken link
    with caplog.at_level("WARNING", logger="shortlist.datasets"):
        items = list(iter_images(tree))
    assert [(it.id, it.label) for it in items] == [
        ("cat/a.png", "cat"), ("cat/linked_file.png", "cat"), ("cat/linked_folder/deeper/n2.png", "cat"),
        ("cat/linked_folder/n1.png", "cat"), ("dog/d.png", "dog")]
    loops = [r.getMessage() for r in caplog.records]
    assert loops == [f"skipped the folder {tree}/cat/linked_folder/deeper/back: it is a link to "
                     f"{os.path.realpath(tree)}, which it is inside of (a loop)",
                     f"skipped in {tree}: 1 link(s) that point to nothing (cat/gone)"]


def test_a_file_name_that_is_not_utf8_gets_an_escaped_id_and_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A Latin-1 name (old cameras, Windows zips) made the whole ingest fail on the proto's UTF-8 string; it
    is read with an id whose bytes that are not UTF-8 are written as \\xNN, the same on every run, and the
    rest of the folder is read."""
    root = tmp_path / "latin"
    (root / "cat").mkdir(parents=True)
    (root / "cat" / "ok.png").write_bytes(_png(1))
    latin = os.path.join(os.fsencode(root / "cat"), b"caf\xe9.png")
    with open(latin, "wb") as f:
        f.write(_png(2))
    with caplog.at_level("WARNING", logger="shortlist.datasets"):
        items = list(iter_images(root, id_prefix="lat/"))
    assert [(it.id, it.label) for it in items] == [("lat/cat/caf\\xe9.png", "cat"), ("lat/cat/ok.png", "cat")]
    for it in items:
        it.id.encode("utf-8")  # what the proto's string field needs
        it.uri.encode("utf-8")
    assert items[0].encoded == _png(2)
    assert [r.getMessage() for r in caplog.records] == [
        "the file name cat/caf\\xe9.png is not UTF-8: in its sample id, each byte that is not UTF-8 is written as "
        "\\xNN"]
    assert source_paths(resolve_source(root)) == ["cat/caf\\xe9.png", "cat/ok.png"]  # --meta-csv's paths


def test_folder_reads_every_format_pillow_opens_and_says_what_it_skipped(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """.avif (which Pillow reads, and Ingest accepts) was skipped without a word, as were .heic files and
    links that point nowhere: the formats are Pillow's, and one line says what was left out."""
    root = tmp_path / "weird"
    (root / "cat").mkdir(parents=True)
    Image.new("RGB", (8, 8), (200, 10, 10)).save(root / "cat" / "a.avif")
    Image.new("RGB", (8, 8), (10, 200, 10)).save(root / "cat" / "b.tga")
    (root / "cat" / "c.png").write_bytes(_png(3))
    (root / "cat" / "x.heic").write_bytes(b"\0\0\0\x18ftypheic" + bytes(16))
    (root / "cat" / "y.HEIC").write_bytes(b"\0\0\0\x18ftypheic" + bytes(16))
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "cat" / "gone.jpg").symlink_to(tmp_path / "missing.jpg")
    with caplog.at_level("WARNING", logger="shortlist.datasets"):
        items = list(iter_images(root))
    assert [it.id for it in items] == ["cat/a.avif", "cat/b.tga", "cat/c.png"]
    assert [r.getMessage() for r in caplog.records] == [
        f"skipped in {root}: 3 file(s) that are not images Pillow reads (2 .heic, 1 .txt; HEIC is not supported: "
        "convert to JPEG or PNG) and 1 link(s) that point to nothing (cat/gone.jpg)"]
    assert decode_image(items[0].encoded or b"").shape == (8, 8, 3)


def test_plain_folder_has_no_labels(tmp_path: Path) -> None:
    tmp_path.joinpath("a.png").write_bytes(_png(1))
    tmp_path.joinpath("notes.txt").write_text("not an image")
    arr = load_array(tmp_path, size=None)
    assert arr.ids == ["a.png"] and arr.labels.tolist() == [-1] and arr.images.shape == (1, 8, 6, 3)


def test_split_folder_of_tars_like_shared_cifar(tmp_path: Path) -> None:
    for split in ("train", "test"):
        _image_folder(tmp_path / "src" / split, n=2)
        with tarfile.open(tmp_path / f"{split}.tar", "w") as tar:
            tar.add(tmp_path / "src" / split, arcname=split)
    (tmp_path / "data").mkdir()
    for split in ("train", "test"):
        (tmp_path / f"{split}.tar").rename(tmp_path / "data" / f"{split}.tar")
    test = load_array(tmp_path / "data", split="test", size=(8, 8))
    assert test.ids[0] == "test/cat/0000.png" and test.classes == CLASSES and test.labels.tolist() == [0, 0, 1, 1]
    assert resolve_source(tmp_path / "data").kind == "tar"
    with pytest.raises(FileNotFoundError, match="no 'val' split"):
        resolve_source(tmp_path / "data", "val")


def test_torchvision_cifar10_folder(tmp_path: Path) -> None:
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    names = [b"airplane", b"automobile"]
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": names}, f)
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, size=(4, 3 * 32 * 32), dtype=np.uint8)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(root / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": [0, 1, 1, 0]}, f)
    train = load_array(tmp_path)  # the parent folder, as torchvision's root= takes it
    assert train.images.shape == (20, 32, 32, 3) and train.classes == ["airplane", "automobile"]
    assert train.ids[:2] == ["data_batch_1/00000", "data_batch_1/00001"]
    np.testing.assert_array_equal(train.images[1], data[1].reshape(3, 32, 32).transpose(1, 2, 0))
    assert load_array(root, "test").labels.tolist() == [0, 1, 1, 0]


def _partial_cifar10(root: Path, files: list[str]) -> Path:
    """A torchvision cifar-10-batches-py in ``root`` with only ``files`` of it (a partial download)."""
    cifar = root / "cifar-10-batches-py"
    cifar.mkdir(parents=True)
    data = np.zeros((2, 3 * 32 * 32), dtype=np.uint8)
    for name in files:
        obj = {b"label_names": [b"cat", b"dog"]} if name == "batches.meta" else {b"data": data, b"labels": [0, 1]}
        (cifar / name).write_bytes(pickle.dumps(obj))
    return cifar


def test_incomplete_cifar10_folder_is_refused_naming_the_missing_files(tmp_path: Path) -> None:
    """batches.meta, data_batch_1 and test_batch only (data_batch_2..5 missing): the train split is refused when
    the source is resolved (before any image is read: ingest stopped after data_batch_1's images), naming the
    missing batches and what a complete folder holds; the test split, which is all there, still reads."""
    cifar = _partial_cifar10(tmp_path / "c10", ["batches.meta", "data_batch_1", "test_batch"])
    for source in (tmp_path / "c10", cifar):
        with pytest.raises(FileNotFoundError, match=r"incomplete CIFAR-10 folder: data_batch_2, data_batch_3, "
                           r"data_batch_4, data_batch_5 are missing for the 'train' split \(a complete folder "
                           r"holds batches.meta, data_batch_1, .*, test_batch\).*extract cifar-10-python.tar.gz"):
            resolve_source(source)
        with pytest.raises(FileNotFoundError, match="data_batch_2"):
            load_array(source)
    assert load_array(cifar, "test").labels.tolist() == [0, 1]
    no_meta = _partial_cifar10(tmp_path / "nometa", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"])
    with pytest.raises(FileNotFoundError, match=r"batches.meta is missing for the 'test' split"):
        resolve_source(no_meta, "test")
    hundred = tmp_path / "cifar-100-python"
    hundred.mkdir()
    (hundred / "meta").write_bytes(pickle.dumps({b"fine_label_names": [b"apple"]}))
    (hundred / "train").write_bytes(pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"fine_labels": [0]}))
    assert resolve_source(hundred).kind == "cifar"
    with pytest.raises(FileNotFoundError, match=r"incomplete CIFAR-100 folder: test is missing for the 'test' split"):
        resolve_source(hundred, "test")


def test_incomplete_cifar100_folder_given_directly_is_refused_naming_the_missing_files(tmp_path: Path) -> None:
    """A cifar-100-python with any one of its files (only meta; meta and test without train) is a CIFAR-100
    folder whether it or its parent is given, so the missing files are named rather than the folder read as one
    without images or without splits; a split that is all there reads. A plain folder of images that holds a
    text file called "test" is still a folder of images."""
    cifar = tmp_path / "c100" / "cifar-100-python"
    cifar.mkdir(parents=True)
    (cifar / "meta").write_bytes(pickle.dumps({b"fine_label_names": [b"apple", b"bee"]}))
    for source in (cifar, cifar.parent):
        with pytest.raises(FileNotFoundError, match=r"incomplete CIFAR-100 folder: train is missing for the 'train' "
                           r"split \(a complete folder holds meta, train, test\).*cifar-100-python.tar.gz"):
            resolve_source(source)
        with pytest.raises(FileNotFoundError, match=r"CIFAR-100 folder: test is missing for the 'test' split"):
            resolve_source(source, "test")
    (cifar / "test").write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [1, 0]}))
    for source in (cifar, cifar.parent):
        assert resolve_source(source, "test").kind == "cifar"
        assert load_array(source, "test").labels.tolist() == [1, 0]
        with pytest.raises(FileNotFoundError, match="train is missing for the 'train' split"):
            load_array(source)
    renamed = tmp_path / "downloads"  # any one file, in a folder of another name, when it is a pickle
    renamed.mkdir()
    (renamed / "test").write_bytes((cifar / "test").read_bytes())
    with pytest.raises(FileNotFoundError, match="meta is missing for the 'test' split"):
        resolve_source(renamed, "test")
    plain = tmp_path / "plain"
    plain.mkdir()
    plain.joinpath("a.png").write_bytes(_png(1))
    plain.joinpath("test").write_text("notes, not CIFAR")
    assert resolve_source(plain).kind == "folder" and load_array(plain, size=None).ids == ["a.png"]


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined,misc]
    """Writes pickles as CIFAR's originals are (Python 2's cPickle, protocol 2, numpy 1.x): str and bytes as
    Python 2 strings (SHORT_BINSTRING / BINSTRING), numpy's _reconstruct under numpy.core.multiarray."""

    dispatch: ClassVar[dict[type, Any]] = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def _save_py2_str(self, obj: str | bytes) -> None:
        raw = obj.encode("latin-1") if isinstance(obj, str) else obj
        n = len(raw)
        self.write((pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else  # type: ignore[attr-defined]
                    pickle.BINSTRING + struct.pack("<i", n)) + raw)

    dispatch[bytes] = _save_py2_str
    dispatch[str] = _save_py2_str


def _py2_pickle(obj: object) -> bytes:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def test_cifar10_folder_pickled_like_the_originals(tmp_path: Path) -> None:
    """The layout and pickle form of cifar-10-python.tar.gz's files (Python 2, protocol 2, numpy 1.x's module
    names; with their other keys), and a Python 3 protocol-2 pickle (bytes through _codecs.encode), read with
    the restricted unpickler."""
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    (root / "batches.meta").write_bytes(_py2_pickle({"num_cases_per_batch": 2, "label_names": ["cat", "dog"],
                                                     "num_vis": 3072}))
    data = np.random.default_rng(0).integers(0, 256, size=(2, 3 * 32 * 32), dtype=np.uint8)
    for name in [f"data_batch_{i}" for i in range(1, 6)]:
        (root / name).write_bytes(_py2_pickle({"batch_label": f"training batch {name[-1]} of 5", "labels": [1, 0],
                                               "data": data, "filenames": ["a.png", "b.png"]}))
    (root / "test_batch").write_bytes(pickle.dumps({b"data": data, b"labels": [0, 1]}, protocol=2))
    train = load_array(tmp_path)
    assert train.images.shape == (10, 32, 32, 3) and train.classes == ["cat", "dog"]
    np.testing.assert_array_equal(train.images[0], data[0].reshape(3, 32, 32).transpose(1, 2, 0))
    assert train.labels.tolist()[:2] == [1, 0] and load_array(root, "test").labels.tolist() == [0, 1]


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"echo ran > {self.marker}",)


@pytest.mark.parametrize("bad_file", ["batches.meta", "test_batch", "meta"])
def test_cifar_pickle_that_names_code_is_refused_and_runs_nothing(tmp_path: Path, bad_file: str) -> None:
    """A CIFAR folder is data from elsewhere: a pickle naming os.system (the security review's batches.meta)
    is refused with the file's name, and the command never runs."""
    root = tmp_path / ("cifar-100-python" if bad_file == "meta" else "cifar-10-batches-py")
    root.mkdir()
    marker = tmp_path / "ran"
    evil = pickle.dumps({b"label_names": [b"a"], b"fine_label_names": [b"a"], b"data": _RunsCode(marker)})
    if bad_file == "meta":
        (root / "meta").write_bytes(evil)
        (root / "train").write_bytes(pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"fine_labels": [0]}))
        (root / "test").write_bytes(pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"fine_labels": [0]}))
    else:
        (root / "batches.meta").write_bytes(evil if bad_file == "batches.meta" else
                                            pickle.dumps({b"label_names": [b"a"]}))
        (root / "test_batch").write_bytes(evil)
    with pytest.raises(ValueError, match=rf"{bad_file} is not a CIFAR python file .*refused.*"
                                         r"(posix|os)\.system"):
        list(iter_images(root, "test"))
    assert not marker.exists()
    (root / "test_batch").write_bytes(pickle.dumps([1, 2]))
    if bad_file == "test_batch":
        with pytest.raises(ValueError, match=r"test_batch .* holds a list, not a dict"):
            list(iter_images(root, "test"))


def test_decode_rejects_garbage_and_resizes() -> None:
    with pytest.raises(ValueError, match="not a readable image"):
        decode_image(b"definitely not an image")
    with pytest.raises(ValueError, match="empty"):
        decode_image(b"")
    with pytest.raises(ValueError):
        decode_image(_png(3)[:40])  # truncated
    px = np.zeros((5, 7, 3), np.uint8)
    assert decode_image(encode_png(px), (3, 2)).shape == (3, 2, 3)
    np.testing.assert_array_equal(decode_image(encode_png(px)), px)


def test_id_prefix_and_one_image_file(tmp_path: Path) -> None:
    _image_folder(tmp_path / "tree", n=1)
    assert [it.id for it in iter_images(tmp_path / "tree", id_prefix="site2/")] == ["site2/cat/0000.png",
                                                                                 "site2/dog/0000.png"]
    one = tmp_path / "tree" / "cat" / "0000.png"
    assert resolve_source(one).kind == "file"
    items = list(iter_images(one, id_prefix="x/"))
    assert [(it.id, it.label, it.uri) for it in items] == [("x/0000.png", None, str(one))]


def test_sources_that_cannot_be_read_fail_in_resolve(tmp_path: Path) -> None:
    """resolve_source is where every 'this source cannot be used' error is raised, so a caller can check
    a source before streaming it."""
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_source(tmp_path / "missing")
    tmp_path.joinpath("notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match=r"none of the image sources Shortlist reads: an image file; .*; or a "
                       r"tar of such a folder"):
        resolve_source(tmp_path / "notes.txt")
    cifar = tmp_path / "cifar-10-batches-py"
    cifar.mkdir()
    (cifar / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"a"]}))
    with pytest.raises(FileNotFoundError, match="only the 'train' and 'test' splits"):
        resolve_source(tmp_path, "val")
    bad_tar = tmp_path / "broken.tar"
    bad_tar.write_bytes(b"\x00" * 100 + b"garbage" * 200)
    with pytest.raises(OSError, match="not a complete, readable tar archive"):
        list(iter_images(bad_tar))


def test_unreadable_files_are_left_out_with_their_reasons_not_stopping_the_load(tmp_path: Path) -> None:
    """A truncated JPEG, a zero-byte file and a macOS AppleDouble file renamed without its ``._`` (what a messy
    folder or an SD card holds) are left out and listed with Ingest's reasons (decode_payload), all of them at
    once; only a source with no readable image at all is refused (the load stopped at the first bad file, one
    per run). A ``._`` file itself is hidden: not read at all."""
    from shortlist.images import decode_payload

    _image_folder(tmp_path / "tree")
    apple_double = b"\x00\x05\x16\x07\x00\x02\x00\x00" + b"Mac OS X        " + bytes(40)
    bad = {"cat/truncated.jpg": _png(7)[:40], "dog/zero_bytes.jpg": b"", "dog/0001_copy.png": apple_double}
    for name, data in bad.items():
        (tmp_path / "tree" / name).write_bytes(data)
    (tmp_path / "tree" / "dog" / "._0001.png").write_bytes(apple_double)
    arr = load_array(tmp_path / "tree", size=(4, 4))
    assert arr.images.shape == (6, 4, 4, 3) and arr.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert "cat/truncated.jpg" not in arr.ids
    assert sorted(Path(uri).relative_to(tmp_path / "tree").as_posix() for uri, _ in arr.skipped) == sorted(bad)
    for uri, reason in arr.skipped:  # the reason Ingest gives for the same bytes
        with pytest.raises(ValueError) as ingest:
            decode_payload("image", Path(uri).read_bytes(), "", (), None)
        assert reason == str(ingest.value)
    assert load_array(tmp_path / "tree", size=None).images.shape == (6, 8, 6, 3)  # size from a readable one

    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "a.jpg").write_bytes(b"")
    (only_bad / "b.png").write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match=r"none of the 2 files of .* is a readable image: .*a.jpg: empty image"):
        load_array(only_bad)


def test_a_new_source_is_one_unit_and_one_registration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sources are one registry (SOURCES): a kind added there is detected, resolved and read by the functions
    every command uses (resolve_source, iter_images, load_array), follows the split rule folders follow, is
    named in the commands' help texts, and its example passes the registry test, without any other change."""
    import typer.main

    import shortlist.datasets as datasets
    from shortlist.cli import app
    from shortlist.datasets import (
        SOURCES,
        ExampleImage,
        ImageItem,
        MissingSplit,
        Resolved,
        Source,
        SourceExample,
        choose_split,
    )
    from tests.shortlist.test_sources import check_source

    def resolve(path: Path, split: str) -> Resolved:
        return choose_split(path, split, None, (), Resolved("list", path, split) if split == "train" else None)

    def iterate(r: Resolved, prefix: str) -> Iterator[ImageItem]:
        for line in r.path.read_text().split():
            label, name = line.split("=")
            yield ImageItem(id=prefix + name, label=label, uri=str(r.path.parent / name),
                            encoded=(r.path.parent / name).read_bytes())

    def examples(folder: Path) -> list[SourceExample]:
        px = np.full((6, 4, 3), 200, np.uint8)
        (folder / "p.png").write_bytes(encode_png(px))
        (folder / "e.list").write_text("cat=p.png\n")
        return [SourceExample(folder / "e.list", {"train": [ExampleImage("p.png", "cat", px)]})]

    listing = Source("list", "a .list file of label=image lines", "", lambda p: p.suffix == ".list", resolve, iterate,
                     examples)
    monkeypatch.setattr(datasets, "SOURCES", (listing, *SOURCES))
    (tmp_path / "a.png").write_bytes(_png(1))
    (tmp_path / "b.png").write_bytes(_png(2))
    (tmp_path / "x.list").write_text("dog=b.png\ncat=a.png\n")
    assert resolve_source(tmp_path / "x.list").kind == "list"
    assert [(it.id, it.label) for it in iter_images(tmp_path / "x.list", id_prefix="p/")] == [
        ("p/b.png", "dog"), ("p/a.png", "cat")]
    arr = load_array(tmp_path / "x.list", size=(4, 4))
    assert arr.classes == CLASSES and arr.labels.tolist() == [1, 0]
    with pytest.raises(MissingSplit, match="has no 'test' split"):
        load_array(tmp_path / "x.list", "test")
    assert "a .list file of label=image lines" in datasets.sources_said()
    (tmp_path / "notes.txt").write_text("x")  # no kind takes it: the error names the registered kind too
    with pytest.raises(FileNotFoundError, match=r"Shortlist reads: a \.list file of label=image lines; an image"):
        resolve_source(tmp_path / "notes.txt")

    (tmp_path / "example").mkdir()
    check_source(listing, tmp_path / "example")  # what test_sources.py runs for every registered entry

    ingest = typer.main.get_command(app).commands["ingest"]  # type: ignore[attr-defined]
    source_help = next(p.help for p in ingest.params if p.name == "source")
    assert all(s.says in source_help for s in SOURCES)
    embeddings = typer.main.get_command(app).commands["bench"].commands["embeddings"]  # type: ignore[attr-defined]
    data_help = next(p.help for p in embeddings.params if p.name == "data")
    assert all(s.with_splits in data_help for s in SOURCES if s.with_splits)


def _split_tree(root: Path) -> None:
    _image_folder(root / "train", n=3)
    _image_folder(root / "test", n=2)


def _tar_of(path: Path, folder: Path, *names: str) -> Path:
    with tarfile.open(path, "w") as tar:
        for name in names:
            tar.add(folder / name, arcname=name)
    return path


def _read(source: Path, split: str) -> list[tuple[str, str | None]]:
    return [(it.id, it.label) for it in iter_images(source, split)]


def _error(source: Path, split: str) -> str:
    with pytest.raises(MissingSplit) as e:
        resolve_source(source, split)
    return str(e.value).replace(str(source), "SOURCE")


def test_a_tar_of_split_folders_gives_the_split_asked_for_as_the_folder_does(tmp_path: Path) -> None:
    """A tar whose top folders are train/ and test/ gave every image for either split, with the classes 'train'
    and 'test' (pretrain's held-out kNN ran on its own training images, bench embeddings' test rows were the
    pool's): it reads like the folder it was made of: the split's members, classes from the level below,
    the same splits found and errors."""
    _split_tree(tmp_path / "data")
    r = _tar_of(tmp_path / "r.tar", tmp_path / "data", "train", "test")
    for split, n in (("train", 6), ("test", 4)):
        items = _read(r, split)
        assert items == [(f"{split}/{i}", c) for i, c in _read(tmp_path / "data", split)]  # ids: member names
        assert len(items) == n and {c for _, c in items} == set(CLASSES)
        arr = load_array(r, split, size=(4, 4))
        assert arr.classes == CLASSES and arr.labels.tolist() == [0] * (n // 2) + [1] * (n // 2)
    assert resolve_source(r, "test").of_splits
    assert _error(r, "val") == _error(tmp_path / "data", "val") == \
        "SOURCE has no 'val' split (splits found: train, test; choose one with --split)"
    only_test = _tar_of(tmp_path / "only_test.tar", tmp_path / "data", "test")  # like a folder with test/ alone
    assert _read(only_test, "test") == _read(r, "test")
    (tmp_path / "test_only").mkdir()
    (tmp_path / "data" / "test").rename(tmp_path / "test_only" / "test")
    assert _error(only_test, "train") == _error(tmp_path / "test_only", "train") == \
        "SOURCE has no 'train' split (splits found: test; choose one with --split)"


def test_a_tar_of_the_folder_itself_reads_like_that_folder(tmp_path: Path) -> None:
    """`tar cf data.tar data`: the one top folder named like the archive is its root (as before), and its
    split folders are splits."""
    _split_tree(tmp_path / "data")
    d = _tar_of(tmp_path / "data.tar", tmp_path, "data")
    assert _read(d, "test") == [(f"data/test/{i}", c) for i, c in _read(tmp_path / "data", "test")]
    assert _error(d, "val") == "SOURCE has no 'val' split (splits found: train, test; choose one with --split)"
    one_split = _tar_of(tmp_path / "train.tar", tmp_path / "data", "train")  # as the shared CIFAR-10's train.tar
    assert _read(one_split, "train") == [(f"train/{i}", c) for i, c in _read(tmp_path / "data", "train")]
    assert _error(one_split, "test") == "SOURCE has no 'test' split (splits found: train; choose one with --split)"


def test_a_tar_or_file_without_splits_is_the_train_split_only_as_a_plain_folder_is(tmp_path: Path) -> None:
    """A tar of class folders, like a plain class-folder tree, is the train split; another split is refused
    with the folder's error (it gave all its images for any split: `ingest --split test` ingested everything).
    So is one image file. A split tar beside others (data/test.tar holding class folders) is that split."""
    _image_folder(tmp_path / "tree")
    plain = _tar_of(tmp_path / "plain.tar", tmp_path / "tree", *CLASSES)
    assert _read(plain, "train") == _read(tmp_path / "tree", "train")
    assert not resolve_source(plain).of_splits
    for split in ("test", "val"):
        assert _error(plain, split) == _error(tmp_path / "tree", split) == \
            f"SOURCE has no '{split}' split (splits found: none; choose one with --split)"
    one = tmp_path / "tree" / "cat" / "0000.png"
    assert _error(one, "test") == "SOURCE has no 'test' split (splits found: none; choose one with --split)"
    (tmp_path / "data").mkdir()
    plain.rename(tmp_path / "data" / "test.tar")
    assert _read(tmp_path / "data", "test") == _read(tmp_path / "tree", "train")
    assert resolve_source(tmp_path / "data", "test").of_splits


def test_the_benchmarks_test_rows_are_the_test_split_of_a_tar(tmp_path: Path) -> None:
    """bench embeddings (load_pool_and_test) on a tar of train/ and test/: the test rows are the test split's,
    none of them a pool row (they were the pool's own images)."""
    from bench.cifar10.data import load_pool_and_test

    _split_tree(tmp_path / "data")
    train, pool_idx, test_set, _ = load_pool_and_test(
        _tar_of(tmp_path / "r.tar", tmp_path / "data", "train", "test"), None, None)
    assert train.classes == CLASSES and len(pool_idx) == 6 and len(test_set.ids) == 4
    assert all(i.startswith("test/") for i in test_set.ids) and not {train.ids[i] for i in pool_idx} & set(test_set.ids)


def test_bench_commands_refusing_a_missing_split_name_only_their_own_options(tmp_path: Path) -> None:
    """bench embeddings (and bench cifar10 / recipe, which check --data the same way) said "choose one with
    --split", an option none of them has; they say what --data must hold."""
    import typer.main
    from typer.testing import CliRunner

    from shortlist.cli import app
    from shortlist.datasets import split_sources_said

    _image_folder(tmp_path / "data" / "train")  # no test split
    command = typer.main.get_command(app).commands["bench"].commands["embeddings"]  # type: ignore[attr-defined]
    options = {o for p in command.params for o in p.opts}
    res = CliRunner().invoke(app, ["bench", "embeddings", "--encoder", str(tmp_path / "none"), "--data",
                                   str(tmp_path / "data"), "--out", str(tmp_path / "out")], env={"COLUMNS": "300"})
    said = " ".join(res.output.split())
    assert res.exit_code == 2 and "has no 'test' split (splits found: train)" in said, said
    assert f"pass --data: {split_sources_said()}" in said
    assert not [w for w in (w.strip(":;,.()") for w in said.split()) if w.startswith("--") and w not in options]


def test_a_new_source_lists_its_paths_itself_and_names_are_unique(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """source_paths asks the Source unit (its ``paths``), not a ladder of kind names: a new kind's listing is
    used without reading an image, one without ``paths`` falls back to its ids; a name registered twice is
    refused."""
    import shortlist.datasets as datasets
    from shortlist.datasets import SOURCES, ImageItem, Resolved, Source, sources

    def iterate(r: Resolved, prefix: str) -> Iterator[ImageItem]:
        for name in r.path.read_text().split():
            yield ImageItem(id=prefix + name, label=None, uri=name, encoded=_png(1))
        read.append(r.path.name)

    read: list[str] = []
    listed = Source("list", "a .list file", "", lambda p: p.suffix == ".list",
                    lambda p, split: Resolved("list", p, split), iterate, lambda folder: [],
                    paths=lambda r: r.path.read_text().split())
    unlisted = dataclasses.replace(listed, name="plain", detect=lambda p: p.suffix == ".plain",
                                   resolve=lambda p, split: Resolved("plain", p, split), paths=None)
    monkeypatch.setattr(datasets, "SOURCES", (listed, unlisted, *SOURCES))
    (tmp_path / "x.list").write_text("b.png a.png\n")
    (tmp_path / "x.plain").write_text("c.png\n")
    assert source_paths(resolve_source(tmp_path / "x.list")) == ["b.png", "a.png"] and read == []
    assert source_paths(resolve_source(tmp_path / "x.plain")) == ["c.png"] and read == ["x.plain"]
    with pytest.raises(ValueError, match="two image sources are named 'folder'"):
        sources(*SOURCES, dataclasses.replace(listed, name="folder"))


def test_source_paths_are_the_ids_without_prefix_and_without_reading_images(tmp_path: Path) -> None:
    """``ingest --meta-csv`` checks its paths against these before anything is sent: the same paths as the
    ids ``iter_images`` gives (before --id-prefix), for a folder, one file and a tar."""
    _image_folder(tmp_path / "tree")
    with tarfile.open(tmp_path / "tree.tar", "w") as tar:
        tar.add(tmp_path / "tree", arcname="tree")
    for src in (tmp_path / "tree", tmp_path / "tree.tar", tmp_path / "tree" / "cat" / "0001.png"):
        r = resolve_source(src)
        assert source_paths(r) == [it.id for it in iter_images(r)], src
    assert source_paths(resolve_source(tmp_path / "tree"))[:2] == ["cat/0000.png", "cat/0001.png"]


def _tar_of_contents(folder: Path, tar_path: Path) -> Path:
    """``folder``'s contents as a tar (its entries at the archive's top; links stored as links, a file's second
    hard link as a hard-link member, as GNU tar does)."""
    with tarfile.open(tar_path, "w") as tar:
        for child in sorted(folder.iterdir()):
            tar.add(child, arcname=child.name)
    return tar_path


def _read_with_warnings(source: Path, caplog: pytest.LogCaptureFixture) -> tuple[list[tuple[str, str | None]],
                                                                                 list[str]]:
    """(id, label) of each image of ``source``, and the warnings reading it logged, each without its
    "skipped in SOURCE: " head (the same words for a folder and its tar)."""
    caplog.clear()
    with caplog.at_level("WARNING", logger="shortlist.datasets"):
        items = [(it.id, it.label) for it in iter_images(source)]
    head = f"skipped in {source}: "
    said = [r.getMessage() for r in caplog.records]
    assert all(m.startswith(head) for m in said), said
    return items, [m.removeprefix(head) for m in said]


def test_a_tar_says_what_it_skipped_as_its_folder_does(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A tar of two .heic, a .txt and a .png said only "accepted 1" where the same files in a folder got a
    warning counting them (with the HEIC hint): the tar's line is the folder's."""
    root = tmp_path / "heicdir"
    (root / "cat").mkdir(parents=True)
    for name in ("IMG_1.HEIC", "IMG_2.heic"):
        (root / "cat" / name).write_bytes(b"\0\0\0\x18ftypheic" + bytes(16))
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "cat" / "ok.png").write_bytes(_png(1))
    folder = _read_with_warnings(root, caplog)
    tar = _read_with_warnings(_tar_of_contents(root, tmp_path / "heic.tar"), caplog)
    assert folder == tar == ([("cat/ok.png", "cat")], [
        "3 file(s) that are not images Pillow reads (2 .heic, 1 .txt; HEIC is not supported: convert to JPEG or "
        "PNG)"])


def test_a_tars_hard_links_and_symlinks_are_read_as_their_file(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """GNU tar stores a file's second name as a hard-link member, and a symlink as a symlink member: both
    vanished from a tar source without a word. They are read as the file they point to in the archive, as a
    folder's links are; one that points to nothing in the archive (outside it, a loop) is counted."""
    root = tmp_path / "weird"
    (root / "cat").mkdir(parents=True)
    (root / "cat" / "a.png").write_bytes(_png(1))
    os.link(root / "cat" / "a.png", root / "cat" / "hard.png")
    (root / "cat" / "link.png").symlink_to("a.png")
    (root / "cat" / "outside.png").symlink_to("/etc/hostname")
    (root / "cat" / "loop1.png").symlink_to("loop2.png")
    (root / "cat" / "loop2.png").symlink_to("loop1.png")
    tar_path = _tar_of_contents(root, tmp_path / "weird.tar")
    with tarfile.open(tar_path) as t:
        kinds = {m.name: (m.islnk(), m.issym()) for m in t.getmembers()}
    assert kinds["cat/hard.png"] == (True, False) and kinds["cat/link.png"] == (False, True)
    items, said = _read_with_warnings(tar_path, caplog)
    assert items == [("cat/a.png", "cat"), ("cat/hard.png", "cat"), ("cat/link.png", "cat")]
    assert {it.encoded for it in iter_images(tar_path)} == {_png(1)}
    assert said == ["3 link(s) that point to nothing (cat/loop1.png, cat/loop2.png, cat/outside.png)"]
    assert source_paths(resolve_source(tar_path)) == ["cat/a.png", "cat/hard.png", "cat/link.png"]


def test_hidden_and_system_folders_are_not_data_nor_classes(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A Synology's @eaDir thumbnails, a .thumbs folder and a .hidden class were read as labelled images,
    .ipynb_checkpoints was refused as a label, macOS's __MACOSX/._ files were counted as unreadable images:
    hidden (a leading dot) and system folders are not looked into and hidden files not read, in a folder and in
    its tar alike, and the skip line counts them."""
    root = tmp_path / "photos"
    files = {"cat/a.png": 1, "dog/b.png": 2, "cat/.thumbs/t.png": 3, "cat/@eaDir/IMG_0.JPG/SYNOPHOTO_THUMB_S.jpg": 4,
             ".hidden/h.png": 5, ".ipynb_checkpoints/x.png": 6, "__MACOSX/cat/._a.png": 7, "cat/._a.png": 8,
             "$RECYCLE.BIN/old.png": 9, "System Volume Information/x.png": 10, "#recycle/y.png": 11}
    for name, colour in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(_png(colour))
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    expected = ([("cat/a.png", "cat"), ("dog/b.png", "dog")], [
        "8 hidden or system folder(s), not read (#recycle, $RECYCLE.BIN, .hidden and 5 more) and 2 hidden file(s) "
        "(.DS_Store, cat/._a.png)"])
    assert _read_with_warnings(root, caplog) == expected
    tar_path = _tar_of_contents(root, tmp_path / "photos.tar")
    assert _read_with_warnings(tar_path, caplog) == expected
    assert source_paths(resolve_source(root)) == source_paths(resolve_source(tar_path)) == ["cat/a.png", "dog/b.png"]
    assert load_array(root, size=None).classes == ["cat", "dog"]


@pytest.mark.parametrize("keys", ["bytes", "str"])
def test_cifar_folders_with_bytes_or_str_keys_read_alike(tmp_path: Path, keys: str) -> None:
    """A CIFAR folder written by Python 3 (``{"label_names": [...]}``, ``{"data": ..., "labels": ...}``: str keys,
    which torchvision reads) stopped with a bare KeyError b'label_names'; the originals' bytes keys and str keys
    read alike, for CIFAR-10 and CIFAR-100."""
    def key(name: str) -> str | bytes:
        return name.encode() if keys == "bytes" else name

    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, size=(2, 3 * 32 * 32), dtype=np.uint8)
    ten = tmp_path / "c10" / "cifar-10-batches-py"
    ten.mkdir(parents=True)
    (ten / "batches.meta").write_bytes(pickle.dumps({key("label_names"): [key("airplane"), key("automobile")]}))
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (ten / name).write_bytes(pickle.dumps({key("data"): data, key("labels"): [1, 0]}))
    hundred = tmp_path / "cifar-100-python"
    hundred.mkdir()
    (hundred / "meta").write_bytes(pickle.dumps({key("fine_label_names"): [key("apple"), key("bee")]}))
    for name in ("train", "test"):
        (hundred / name).write_bytes(pickle.dumps({key("data"): data, key("fine_labels"): [0, 1]}))
    for source, classes, labels in ((ten, ["airplane", "automobile"], [1, 0]), (hundred, ["apple", "bee"], [0, 1])):
        arr = load_array(source, "test")
        assert arr.classes == classes and arr.labels.tolist() == labels
        np.testing.assert_array_equal(arr.images[1], data[1].reshape(3, 32, 32).transpose(1, 2, 0))
    (ten / "test_batch").write_bytes(pickle.dumps({key("data"): data}))  # no labels: the file and key named
    with pytest.raises(ValueError, match=r"test_batch is not a CIFAR python file Shortlist reads: it has no "
                                         r"'labels' entry \(it has: .*'data'\)"):
        load_array(ten, "test")


def test_a_tar_holding_a_name_twice_gives_its_last_copy_as_tar_x_does(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """`tar -r` appends a second copy of a name and extraction keeps the last; the source gave both copies
    (the agent then kept the first and rejected the second as a repeated id). One item per name, the last
    copy's bytes, and one warning line counting the copies passed over; the member list agrees."""
    old, new, other = _png(1), _png(2), _png(3)
    path = tmp_path / "appended.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in (("cat/a.png", old), ("cat/b.png", other), ("./cat/a.png", new), ("cat/notes.txt", b"1"),
                           ("cat/notes.txt", b"2")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    caplog.clear()
    with caplog.at_level("WARNING", logger="shortlist.datasets"):
        items = list(iter_images(path))
    assert [(it.id, it.label, it.encoded) for it in items] == [("cat/a.png", "cat", new), ("cat/b.png", "cat", other)]
    assert [r.getMessage() for r in caplog.records] == [
        f"skipped in {path}: 1 file(s) that are not images Pillow reads (1 .txt)",
        f"{path} holds 1 earlier copy of member names that appear again later (tar -r appends): read the last copy "
        "of each, as tar -x leaves it"]
    assert source_paths(resolve_source(path)) == ["cat/a.png", "cat/b.png"]
