"""Image sources Shortlist reads, without torch: one image file, a plain folder of images, an ImageFolder
tree (``root/<class>/<image>``), torchvision's CIFAR-10/100 python folders, a folder that holds splits
(``train.tar``/``test.tar`` or ``train/``/``test/``, like ../shared/datasets/cifar10), and a tar of any of
these folders, read as that folder (its ``train/``, ``test/``, ... top folders are its splits). One registry,
SOURCES, holds the kinds (a new one is a ``Source`` unit, with the tiny example of its format that the
registry test reads, plus its entry); a source without splits is the train split only, and asking a source
for a split it does not have raises MissingSplit (CIFAR: a FileNotFoundError naming its two; an incomplete CIFAR
folder, one that lacks a file of the split asked for, is a FileNotFoundError naming the missing files).

Sample ids are stable across runs: the path inside the source (``cat/0001.jpg`` for a folder, the member
name ``train/cat/0001.jpg`` for a tar, the file name for one image file) or, for CIFAR pickles,
``<batch file>/<index>``; ``id_prefix`` is put in front of each (two folders that both hold
``photo.jpg`` need different prefixes). Labels are the class folder names (CIFAR: the class names); a
file at the top of a plain folder has no label. In a folder, symlinked files and folders are followed; a
link to a folder it is inside of (a loop) is skipped with a logged warning. Image files are those with an
extension of a format Shortlist opens (IMAGE_EXTENSIONS: .avif, .tga, .jp2, ... too; not .eps); the other files
of a folder or tar, links that point to nothing, hidden and system folders (a leading dot, @eaDir, __MACOSX, ...:
SYSTEM_FOLDERS; neither data nor classes) and hidden files (._IMG_0001.JPG) are left out and counted in one
logged warning line. In a tar, hard-link members and symlinks to a file of the archive are read as that file.
A name that is not UTF-8 (a Latin-1 ``café.jpg``) gets an id with each such byte written as ``\\xNN``
(``caf\\xe9.jpg``; stable across runs) and a logged warning. Nothing is ever downloaded.
"""

from __future__ import annotations

import codecs
import io
import logging
import lzma
import os
import pickle
import re
import tarfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

try:  # numpy 2; numpy 1's numpy.core (numpy 2 keeps it as a deprecated alias)
    from numpy._core import multiarray as _multiarray
except ImportError:  # pragma: no cover
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]

from shortlist.images import RASTER_FORMATS, decode_payload, encode_png, resize_array
from shortlist.manifest import Preprocess


def _image_extensions() -> tuple[str, ...]:
    """The file extensions of the formats Shortlist opens (shortlist.images.RASTER_FORMATS, as Pillow registers
    them: ``Image.registered_extensions``); MPO files are opened by the JPEG plugin. The common ones first, for
    messages. Not .eps or .ps: Pillow would run Ghostscript on them (a folder's EPS files are counted among the
    files skipped)."""
    common = (".jpg", ".jpeg", ".png", ".webp", ".avif", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")
    registered = Image.registered_extensions()  # first: it loads every plugin (Image.init)
    opened = RASTER_FORMATS | {"MPO"}
    rest = sorted(ext for ext, fmt in registered.items() if fmt in opened and ext not in common)
    return (*common, *rest)


IMAGE_EXTENSIONS = _image_extensions()
# Formats Pillow cannot read, with what to do (said in the summary of the files a folder's ingest skipped).
UNSUPPORTED_HINTS = {".heic": "HEIC is not supported: convert to JPEG or PNG", ".heif": "HEIF is not supported: "
                     "convert to JPEG or PNG", ".eps": "EPS/PostScript is not read: convert to PNG",
                     ".ps": "EPS/PostScript is not read: convert to PNG"}
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
SPLIT_DIRS = ("train", "test", "val", "validation")
DEFAULT_SPLIT = "train"  # what a source without splits is
CIFAR_DIRS = ("cifar-10-batches-py", "cifar-100-python")

log = logging.getLogger(__name__)


@dataclass
class ImageItem:
    """One image of a source. Exactly one of ``encoded`` (file bytes) and ``pixels`` (HxWx3 uint8) is set."""

    id: str
    label: str | None
    uri: str
    encoded: bytes | None = None
    pixels: np.ndarray | None = None


@dataclass
class ImageArray:
    """A whole source decoded: images NxHxWx3 uint8, labels N int64 (-1 = unknown), classes in index order;
    ``skipped``: (uri, reason) of each file that is not a readable image (left out of the N)."""

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    ids: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Resolved:
    """Where a source's split is: ``kind`` names the Source in SOURCES that reads it, ``path`` what it reads
    (a split folder: ``root/train``); ``inner``: the folder inside a tar that is the tree's root ("" for the
    archive's top, ``train``, ``photos/train``); ``of_splits``: the split is one of a source that holds
    several (a split folder or tar, CIFAR), so messages name it."""

    kind: str
    path: Path
    split: str
    inner: str = ""
    of_splits: bool = False


class MissingSplit(FileNotFoundError):
    """A source with splits (train/, test/, train.tar, ...) but not the one asked for. Its message ends with
    ``hint``, by default that of the commands with a ``--split`` option (ingest); a caller without that option
    says what it takes instead with ``said``."""

    def __init__(self, path: Path, split: str, found: list[str], hint: str = "choose one with --split") -> None:
        self.path, self.split, self.found = path, split, found
        super().__init__(self.said(hint))

    def said(self, hint: str) -> str:
        """The message with another ``hint`` ("" for none)."""
        return (f"{self.path} has no '{self.split}' split (splits found: {', '.join(self.found) or 'none'}"
                f"{'; ' + hint if hint else ''})")


def choose_split(path: Path, split: str, here: Resolved | None, found: Sequence[str],
                 whole: Resolved | None) -> Resolved:
    """The split rule of every source that may hold splits (a folder's, so a tar or a new source says the same):
    ``here``, the split itself, when the source holds it; else MissingSplit naming the splits ``found`` when
    it holds others, or when the whole source is not that split (``whole`` None: a source without splits is
    the DEFAULT_SPLIT only); else ``whole``."""
    if here is not None:
        return here
    if found or whole is None:
        raise MissingSplit(path, split, list(found))
    return whole


@dataclass(frozen=True)
class ExampleImage:
    """One image of a source's example, as reading it must give it: ``id`` (without a prefix), ``label`` (None:
    none), ``pixels`` HxWx3 uint8 as written."""

    id: str
    label: str | None
    pixels: np.ndarray


@dataclass(frozen=True)
class SourceExample:
    """A tiny source of one kind that a Source's ``examples`` wrote, and what reading it must give: ``path``,
    what resolve_source takes; ``splits``: each split it holds -> its images (any order; those of a split all
    of one size); ``tolerance``: the largest difference of a pixel channel after decoding (0: lossless; a few
    levels for a JPEG)."""

    path: Path
    splits: dict[str, list[ExampleImage]]
    tolerance: int = 0


@dataclass(frozen=True)
class Source:
    """One kind of image source, registered in SOURCES (a new kind is one such unit plus its entry there; then
    ``shortlist ingest``, ``pretrain``, ``finetune`` and the benchmarks read it, and their help texts name it).

    - ``name``: the ``Resolved.kind`` of what it resolves.
    - ``detect(path)``: whether an existing ``path`` is of this kind; SOURCES are asked in order, the first
      that says yes reads it (``folder`` takes every directory: the CIFAR folder, and any new kind of
      directory, go before it).
    - ``resolve(path, split)``: where ``split`` is, as a Resolved (of this kind, or of another for a split
      stored as one: a folder's ``train.tar``); MissingSplit (``choose_split``: the rule folders follow) or
      FileNotFoundError when it has no such split. It is where every "this source cannot be used" error is
      raised, before any image is read.
    - ``iterate(resolved, id_prefix)``: its images, in a stable order, each id preceded by ``id_prefix``.
    - ``says``: how help texts name it; ``with_splits``: how it holds a train and a test split, for the
      commands that need both ("" when it cannot).
    - ``examples(folder)``: writes one or more tiny sources of this kind into ``folder`` (an empty one) and
      returns them as SourceExamples (with train and test splits in one when ``with_splits``); the registry
      test (tests/shortlist/test_sources.py) reads each through resolve_source, iter_images, source_paths
      and load_array and checks the ids, labels, splits and pixels against it.
    - ``paths(resolved)`` (optional): the ids ``iterate`` gives without a prefix, in its order, without reading
      the images (``source_paths``: ``ingest --meta-csv`` checks its paths against them); left out, they are
      ``iterate``'s ids (every image is read)."""

    name: str
    says: str
    with_splits: str
    detect: Callable[[Path], bool]
    resolve: Callable[[Path, str], Resolved]
    iterate: Callable[[Resolved, str], Iterator[ImageItem]]
    examples: Callable[[Path], list[SourceExample]]
    paths: Callable[[Resolved], list[str]] | None = None


def _is_tar(path: Path) -> bool:
    return path.is_file() and path.name.endswith(TAR_SUFFIXES)


def _tar_stem(path: Path) -> str:
    stem = path.name
    for suffix in TAR_SUFFIXES:
        stem = stem.removesuffix(suffix)
    return stem


# The files of a complete torchvision CIFAR folder, per split ("meta": the class names, read for either split).
CIFAR10_FILES = {"meta": ["batches.meta"], "train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
CIFAR100_FILES = {"meta": ["meta"], "train": ["train"], "test": ["test"]}


def _is_cifar10(path: Path) -> bool:
    """Any file of CIFAR-10's (not only batches.meta), so a folder missing some of them is still taken as one and
    its missing files named (``_check_cifar_files``), not read as a folder without images."""
    return any((path / name).is_file() for names in CIFAR10_FILES.values() for name in names)


def _is_cifar100(path: Path) -> bool:
    """Any file of CIFAR-100's, as for CIFAR-10 (``_is_cifar10``), so an incomplete folder given directly has its
    missing files named. Its names (meta, train, test) are common words, unlike CIFAR-10's, so one of them alone
    counts only in a folder named cifar-100-python or when it is a pickle (protocol 2 or later, as the originals
    are: its first byte is PROTO), not in any folder that holds a file called "test"."""
    files = [path / name for names in CIFAR100_FILES.values() for name in names if (path / name).is_file()]
    if not files:
        return False
    if path.name == "cifar-100-python" or ((path / "meta").is_file() and (path / "train").is_file()):
        return True
    return any(_starts_with(f, pickle.PROTO) for f in files)


def _starts_with(path: Path, prefix: bytes) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(prefix)) == prefix
    except OSError:
        return False


def _cifar_dir(path: Path) -> Path | None:
    if _is_cifar10(path) or _is_cifar100(path):
        return path
    for name in CIFAR_DIRS:
        if (path / name).is_dir():
            return path / name
    return None


def resolve_source(source: str | Path, split: str = DEFAULT_SPLIT) -> Resolved:
    """Which reader handles ``source`` for ``split`` (the first of SOURCES that detects it). A plain folder,
    tar or image file without splits is the train split.

    Raises FileNotFoundError with what was looked for when the source or the split is missing (MissingSplit
    for a split; call it before streaming, so the error comes before any work).
    """
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"image source {path} does not exist")
    kind = next((s for s in SOURCES if s.detect(path)), None)
    if kind is None:
        # The registry's own words (sources_said), so a kind registered later is named here too.
        raise FileNotFoundError(f"{path} is none of the image sources Shortlist reads: {sources_said()} (an image "
                                f"file is one of {', '.join(IMAGE_EXTENSIONS)})")
    return kind.resolve(path, split)


def _label_of(parts: tuple[str, ...]) -> str | None:
    """ImageFolder rule: the first folder under the root is the class; files at the root have none."""
    return parts[0] if len(parts) > 1 else None


def readable_name(name: str) -> str:
    """A path (or a tar member name) as UTF-8 text fit for a sample id: as it is when it is UTF-8; else its
    bytes as the file system holds them (Python keeps undecodable ones as surrogates: surrogateescape), each
    byte that is not UTF-8 written as ``\\xNN`` (``caf\\xe9.jpg`` for a Latin-1 ``café.jpg``), the same on
    every run."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        try:
            raw = name.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # surrogates that are not escaped bytes
            return name.encode("utf-8", "backslashreplace").decode("utf-8")
        return raw.decode("utf-8", "backslashreplace")


def _readable_path(rel: str) -> str:
    """``readable_name`` of a relative path, with one logged warning when it is not UTF-8."""
    text = readable_name(rel)
    if text != rel:
        log.warning("the file name %s is not UTF-8: in its sample id, each byte that is not UTF-8 is written as "
                    "\\xNN", text)
    return text


# Folders that cameras, NASes, operating systems and tools write beside the photos: never data, never classes
# (a Synology's @eaDir thumbnails would be read as labelled images, a Jupyter checkpoint folder as a class). A
# name starting with a dot (.thumbs, .git, macOS's ._ AppleDouble files, .DS_Store) is hidden too. Compared in
# lower case.
SYSTEM_FOLDERS = frozenset({"@eadir", "__macosx", ".ipynb_checkpoints", "$recycle.bin", "system volume information",
                            "#recycle", "#snapshot", "lost+found"})


def _hidden(name: str) -> bool:
    """Whether a file or folder ``name`` (one path part) is hidden or a system folder: never read as data."""
    return name.startswith(".") or name.lower() in SYSTEM_FOLDERS


def _shown(names: list[str]) -> str:
    """The first three of ``names`` and how many more."""
    more = f" and {len(names) - 3:,} more" if len(names) > 3 else ""
    return ", ".join(names[:3]) + more


@dataclass
class _Scan:
    """What a folder walk (or a tar's member list) found: the image files (sorted), and what it left out, each
    as a path inside the source: other files by extension (lower case; "" for none), links that point nowhere,
    hidden or system folders (not looked into) and hidden files."""

    files: list[Path]
    skipped: dict[str, int] = field(default_factory=dict)
    dangling: list[str] = field(default_factory=list)
    hidden_dirs: list[str] = field(default_factory=list)
    hidden_files: list[str] = field(default_factory=list)
    earlier_copies: int = 0  # a tar's members passed over for a later one of the same name (``_tar_scan``)

    def other_file(self, name: str) -> None:
        """Count a file that is not an image by its extension (lower case; "" for none)."""
        ext = os.path.splitext(name)[1].lower()
        self.skipped[ext] = self.skipped.get(ext, 0) + 1

    def summary(self, root: str) -> str:
        """One line about the files left out of the source ``root`` ("" when none): counts by extension, links
        that point nowhere, hidden or system folders and hidden files."""
        parts = []
        if self.skipped:
            counts = ", ".join(f"{n:,} {ext or '(no extension)'}" for ext, n in
                               sorted(self.skipped.items(), key=lambda kv: (-kv[1], kv[0])))
            hints = "; ".join(UNSUPPORTED_HINTS[ext] for ext in sorted(self.skipped) if ext in UNSUPPORTED_HINTS)
            total = sum(self.skipped.values())
            parts.append(f"{total:,} file(s) that are not images Pillow reads ({counts}"
                         f"{'; ' + hints if hints else ''})")
        if self.dangling:
            parts.append(f"{len(self.dangling):,} link(s) that point to nothing ({_shown(sorted(self.dangling))})")
        if self.hidden_dirs:
            parts.append(f"{len(self.hidden_dirs):,} hidden or system folder(s), not read "
                         f"({_shown(sorted(self.hidden_dirs))})")
        if self.hidden_files:
            parts.append(f"{len(self.hidden_files):,} hidden file(s) ({_shown(sorted(self.hidden_files))})")
        return f"skipped in {readable_name(root)}: {' and '.join(parts)}" if parts else ""


def _folder_scan(root: Path) -> _Scan:
    """The image files under ``root``, sorted, and the files left out. Symlinked files and folders are
    followed (Path.rglob skipped a symlinked folder without a word, e.g. a folder inside a class folder linked
    from elsewhere), except a link to a folder the walk is inside of (a loop: it would never end), which is
    skipped with a warning. Hidden and system folders (``_hidden``: .thumbs, @eaDir, __MACOSX, ...) are not
    looked into, and hidden files (._IMG_0001.JPG, .DS_Store) not read: both counted."""
    def identity(path: str) -> tuple[int, int]:
        st = os.stat(path)  # follows links: the folder itself
        return st.st_dev, st.st_ino

    def rel(path: str | Path) -> str:
        return readable_name(Path(path).relative_to(root).as_posix())

    inside: dict[str, frozenset[tuple[int, int]]] = {}  # folder -> the folders it is in, itself included
    scan = _Scan([])
    for folder, dirs, names in os.walk(root, followlinks=True):
        here = inside.pop(folder, None) or frozenset({identity(folder)})
        keep = []
        for d in dirs:
            path = os.path.join(folder, d)
            if _hidden(d):
                scan.hidden_dirs.append(rel(path))
                continue
            try:
                key = identity(path)
            except OSError:  # a broken link: nothing to read there
                scan.dangling.append(rel(path))
                continue
            if key in here:
                log.warning("skipped the folder %s: it is a link to %s, which it is inside of (a loop)", path,
                            os.path.realpath(path))
                continue
            inside[path] = here | {key}
            keep.append(d)
        dirs[:] = keep  # os.walk descends into these only
        for n in names:
            p = Path(folder, n)
            if _hidden(n):
                scan.hidden_files.append(rel(p))
            elif not p.exists():  # a link to nothing (os.walk lists a broken link with the files)
                scan.dangling.append(rel(p))
            elif p.suffix.lower() in IMAGE_EXTENSIONS:
                if p.is_file():
                    scan.files.append(p)
            elif p.is_file():
                scan.other_file(n)
    scan.files.sort()
    return scan


def _folder_images(root: Path) -> list[Path]:
    """The image files under ``root``, sorted (``_folder_scan``)."""
    return _folder_scan(root).files


def _iter_folder(root: Path, prefix: str) -> Iterator[ImageItem]:
    scan = _folder_scan(root)
    said = scan.summary(str(root))
    if said:
        log.warning("%s", said)
    for p in scan.files:
        rel = _readable_path(p.relative_to(root).as_posix())
        yield ImageItem(id=f"{prefix}{rel}", label=_label_of(tuple(rel.split("/"))), uri=readable_name(str(p)),
                        encoded=p.read_bytes())


def _iter_file(path: Path, prefix: str) -> Iterator[ImageItem]:
    yield ImageItem(id=f"{prefix}{_readable_path(path.name)}", label=None, uri=readable_name(str(path)),
                    encoded=path.read_bytes())


def _member_parts(name: str) -> tuple[str, ...]:
    """A tar member's name as path parts, without the leading ``./``, ``../`` or ``/`` some tars write (a dot
    that begins a name is kept: ``.thumbs/a.png`` is a hidden folder's file)."""
    return Path(re.sub(r"^(?:\.{0,2}/)+", "", name)).parts


def _iter_tar(path: Path, inner: str, prefix: str) -> Iterator[ImageItem]:
    try:
        yield from _iter_tar_members(path, inner, prefix)
    except (tarfile.TarError, EOFError) as e:  # truncated download, not a tar, corrupt compression
        raise OSError(f"{path} is not a complete, readable tar archive ({type(e).__name__}: {e})") from e


def _link_target(tar: tarfile.TarFile, m: tarfile.TarInfo) -> bool:
    """Whether a symlink or hard-link member points to a file inside the archive (tarfile follows it there:
    ``extractfile`` of the link reads the file; it never looks outside the archive)."""
    try:
        return tar.extractfile(m) is not None
    except (KeyError, RecursionError, tarfile.TarError):  # nothing of that name in it; a loop of links
        return False


def _tar_scan(tar: tarfile.TarFile, inner: str) -> tuple[list[tuple[tarfile.TarInfo, tuple[str, ...]]], _Scan]:
    """The image members under the folder ``inner`` of the archive (its root: "" for the top), sorted by
    name, with their name's parts; and what was left out, as a folder's walk says it (``_Scan``): other files
    by extension, links that point to nothing in the archive, hidden or system folders and hidden files.
    Hard links (GNU tar's form of a file stored twice) and symlinks to a file in the archive are read as that
    file. A name stored more than once is its last member only (what ``tar -x`` leaves); the earlier copies
    of images are counted in ``_Scan.earlier_copies``."""
    root = tuple(inner.split("/")) if inner else ()
    scan = _Scan([])
    images = []
    hidden_dirs: set[str] = set()
    # One member per name, the last: `tar -r` appends a new copy of a name and `tar -x` leaves the last one
    # (sending both rejected the second as a repeated id, keeping the first). Names as parts: ./a.png is a.png.
    last: dict[tuple[str, ...], tarfile.TarInfo] = {}
    for m in tar.getmembers():
        parts = _member_parts(m.name)
        earlier = last.get(parts)
        if (earlier is not None and not earlier.isdir() and parts[:len(root)] == root
                and earlier.name.lower().endswith(IMAGE_EXTENSIONS)):
            scan.earlier_copies += 1  # (counted: images of this source; a folder's entry added again is not)
        last[parts] = m
    for m in sorted(last.values(), key=lambda m: m.name):
        parts = _member_parts(m.name)
        if parts[:len(root)] != root or len(parts) <= len(root) or not (m.isfile() or m.issym() or m.islnk()):
            continue
        below = parts[len(root):]
        where = next((i for i, part in enumerate(below[:-1]) if _hidden(part)), None)
        if where is not None:
            hidden_dirs.add(readable_name("/".join(below[:where + 1])))
        elif _hidden(below[-1]):
            scan.hidden_files.append(readable_name("/".join(below)))
        elif not m.name.lower().endswith(IMAGE_EXTENSIONS):
            scan.other_file(below[-1])
        elif m.isfile() or _link_target(tar, m):
            images.append((m, parts))
        else:
            scan.dangling.append(readable_name("/".join(below)))
    scan.hidden_dirs = sorted(hidden_dirs)
    return images, scan


def _iter_tar_members(path: Path, inner: str, prefix: str) -> Iterator[ImageItem]:
    """The image members under the folder ``inner`` of the archive (its root: "" for the top), labelled by
    the class folder below it; ids are the whole member names. What was left out is said in one logged
    warning line, as for a folder."""
    root = tuple(inner.split("/")) if inner else ()
    with tarfile.open(path) as tar:
        images, scan = _tar_scan(tar, inner)
        said = scan.summary(str(path))
        if said:
            log.warning("%s", said)
        if scan.earlier_copies:
            log.warning("%s holds %s earlier cop%s of member names that appear again later (tar -r appends): "
                        "read the last copy of each, as tar -x leaves it", readable_name(str(path)),
                        f"{scan.earlier_copies:,}", "y" if scan.earlier_copies == 1 else "ies")
        for m, parts in images:
            f = tar.extractfile(m)
            if f is None:
                continue
            rel = _readable_path("/".join(parts))
            yield ImageItem(id=prefix + rel, label=_label_of(tuple(rel.split("/"))[len(root):]),
                            uri=readable_name(f"{path}:{m.name}"), encoded=f.read())


def _folder_paths(r: Resolved) -> list[str]:
    return [readable_name(p.relative_to(r.path).as_posix()) for p in _folder_images(r.path)]


def _file_paths(r: Resolved) -> list[str]:
    return [readable_name(r.path.name)]


def _tar_paths(r: Resolved) -> list[str]:
    """The member list only (no member is extracted)."""
    try:
        with tarfile.open(r.path) as tar:
            return [readable_name("/".join(parts)) for _, parts in _tar_scan(tar, r.inner)[0]]
    except (tarfile.TarError, EOFError) as e:
        raise OSError(f"{r.path} is not a complete, readable tar archive ({type(e).__name__}: {e})") from e


def source_paths(r: Resolved) -> list[str]:
    """The ids ``iterate`` gives ``r``'s images without a prefix (the paths inside the source), in the same
    order: its Source's ``paths`` where it has one (a folder, a file, a tar's member list: no image read), else
    the ids of every image read (CIFAR pickles)."""
    source = source_named(r.kind)
    if source.paths is not None:
        return source.paths(r)
    return [item.id for item in source.iterate(r, "")]


# What torchvision's CIFAR python pickles reference: dicts, lists, bytes and ints need no global; a batch's
# ``data`` is a numpy array, rebuilt by numpy's _reconstruct (``numpy.core.multiarray``: the originals, written
# by Python 2's cPickle with numpy 1.x; ``numpy._core.multiarray``: numpy 2), ndarray and dtype (scalar: a numpy
# number, for labels saved as such); ``_codecs.encode``: how Python 3 writes bytes at pickle protocols 0-2.
# Nothing else is looked up, so a pickle that names any other callable (os.system, builtins.eval, ...) is
# refused before it runs.
_CIFAR_GLOBALS: dict[tuple[str, str], object] = {
    **{(m, "_reconstruct"): _multiarray._reconstruct for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(m, "scalar"): _multiarray.scalar for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype, ("_codecs", "encode"): codecs.encode}


class _CifarUnpickler(pickle.Unpickler):
    """pickle.Unpickler that only builds plain containers and numpy arrays (Python docs, "Restricting
    Globals"): a CIFAR folder is data from elsewhere, and an unrestricted pickle.load runs what it names."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _CIFAR_GLOBALS:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which a CIFAR file never holds")
        return _CIFAR_GLOBALS[module, name]


def _load_cifar_pickle(path: Path) -> dict[Any, Any]:
    """The dict a CIFAR python file holds, read with _CifarUnpickler; ValueError naming the file for one that
    names anything but numpy's array rebuilding or is not a pickled dict."""
    try:
        with open(path, "rb") as f:
            obj = _CifarUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError) as e:
        raise ValueError(f"{path} is not a CIFAR python file Shortlist reads (refused, nothing in it was run: "
                         f"{type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path} is not a CIFAR python file Shortlist reads: it holds a {type(obj).__name__}, "
                         "not a dict")
    return obj


def _cifar_field(d: dict[Any, Any], key: str, path: Path) -> Any:
    """``d[key]`` of a CIFAR pickle's dict, whose keys are bytes in the originals (Python 2's cPickle, read with
    encoding="bytes") and str in a folder written by Python 3 (torchvision reads both); ValueError naming the file
    and the keys it has when neither is there."""
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    keys = ", ".join(sorted(repr(k) for k in d)[:10])
    raise ValueError(f"{path} is not a CIFAR python file Shortlist reads: it has no {key!r} entry (it has: "
                     f"{keys or 'none'})")


def _text(name: object) -> str:
    """A class name as a CIFAR pickle holds it (bytes in the originals, str when written by Python 3)."""
    return name.decode() if isinstance(name, bytes) else str(name)


def _iter_cifar(root: Path, split: str, prefix: str) -> Iterator[ImageItem]:
    if (root / "batches.meta").is_file():  # CIFAR-10
        meta, names_key = root / "batches.meta", "label_names"
        files, label_key = CIFAR10_FILES[split], "labels"
    else:  # CIFAR-100
        meta, names_key = root / "meta", "fine_label_names"
        files, label_key = CIFAR100_FILES[split], "fine_labels"
    classes = [_text(c) for c in _cifar_field(_load_cifar_pickle(meta), names_key, meta)]
    for name in files:
        batch = _load_cifar_pickle(root / name)
        data = np.asarray(_cifar_field(batch, "data", root / name), dtype=np.uint8)
        data = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        labels = _cifar_field(batch, label_key, root / name)
        for i, (img, y) in enumerate(zip(data, labels, strict=True)):
            yield ImageItem(id=f"{prefix}{name}/{i:05d}", label=classes[int(y)], uri=f"{root / name}#{i}",
                            pixels=np.ascontiguousarray(img))


# The sources, one unit each: how it is detected, where a split is, how its images are read.

def _resolve_file(path: Path, split: str) -> Resolved:
    return choose_split(path, split, None, (), Resolved("file", path, split) if split == DEFAULT_SPLIT else None)


def _resolve_tar(path: Path, split: str) -> Resolved:
    """A tar reads as the folder it was made of: top folders named after splits (train/, test/, val/, ... or
    ``split``) hold the splits; a single top folder named like the archive (``tar cf data.tar data``) is
    its root, looked into the same way; else it is a plain tree, the default split, or the split it is named
    after (a folder's ``test.tar``). Only the member names are read, up to the split's folder when it is
    at the top (the shared CIFAR-10's train.tar: its first member). A damaged archive is judged on the
    members that could be read: reading its images then says what is wrong, after those before it."""
    stem = _tar_stem(path)
    tops: set[str] = set()  # folders at the top
    below: set[str] = set()  # folders in the top folder named like the archive
    image_tops: set[str | None] = set()  # the top folder of every image (None: one at the top)
    try:
        with tarfile.open(path) as tar:
            for m in tar:
                parts = _member_parts(m.name)
                if not parts or any(_hidden(part) for part in parts):  # "./", the archive's own top; __MACOSX/
                    continue
                if m.isdir() or len(parts) > 1:  # a folder at the top
                    tops.add(parts[0])
                    if parts[0] == split:
                        break  # the split's folder: nothing else matters
                    if parts[0] == stem and (len(parts) > 2 or (len(parts) == 2 and m.isdir())):
                        below.add(parts[1])
                if (m.isfile() or m.issym() or m.islnk()) and m.name.lower().endswith(IMAGE_EXTENSIONS):
                    image_tops.add(parts[0] if len(parts) > 1 else None)
    except PermissionError:
        raise  # the source cannot be used: said before any work
    except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError):
        pass  # damaged: decided on the members read; reading the images says what is wrong
    root = ""
    if split not in tops and not any(s in tops for s in SPLIT_DIRS) and image_tops == {stem}:
        root, tops = stem, below
    if split in tops:
        return Resolved("tar", path, split, inner=f"{root}/{split}".lstrip("/"), of_splits=True)
    whole = Resolved("tar", path, split, inner=root, of_splits=split == stem) \
        if split in (DEFAULT_SPLIT, stem) else None
    return choose_split(path, split, None, [s for s in SPLIT_DIRS if s in tops], whole)


def _resolve_cifar(path: Path, split: str) -> Resolved:
    cifar = _cifar_dir(path)
    assert cifar is not None  # detected
    if split not in ("train", "test"):
        raise FileNotFoundError(f"{cifar} has only the 'train' and 'test' splits, not '{split}' (--split)")
    _check_cifar_files(cifar, split)
    return Resolved("cifar", cifar, split, of_splits=True)


def _check_cifar_files(cifar: Path, split: str) -> None:
    """FileNotFoundError naming the files of ``split`` (and the class names' file) that ``cifar`` lacks, and what
    a complete folder holds: checked when the source is resolved, so every command that reads the folder
    (ingest, pretrain, finetune, bench) refuses it before any image is read or sent, rather than stopping in
    the middle at the first missing batch. A partial download or extraction is the usual cause, so it is
    refused rather than read as the batches it has (which would silently train or label on part of it)."""
    ten = _is_cifar10(cifar)
    files = CIFAR10_FILES if ten else CIFAR100_FILES
    missing = [name for name in (*files["meta"], *files[split]) if not (cifar / name).is_file()]
    if missing:
        whole = ", ".join(name for names in files.values() for name in names)
        archive = "cifar-10-python.tar.gz" if ten else "cifar-100-python.tar.gz"
        raise FileNotFoundError(
            f"{cifar} is an incomplete CIFAR-{10 if ten else 100} folder: {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} missing for the '{split}' split (a complete folder holds "
            f"{whole}); a partial download or extraction is the usual cause: extract {archive} again")


def _resolve_folder(path: Path, split: str) -> Resolved:
    """A folder of split folders or tars (``train/``, ``test.tar``: the split's own source), else a folder
    of images or an ImageFolder tree (the default split)."""
    here: Resolved | None = None
    if (path / split).is_dir():
        here = Resolved("folder", path / split, split, of_splits=True)
    else:
        tar = next((path / f"{split}{x}" for x in TAR_SUFFIXES if (path / f"{split}{x}").is_file()), None)
        here = _resolve_tar(tar, split) if tar is not None else None
    found = [s for s in SPLIT_DIRS if (path / s).is_dir() or any((path / f"{s}{x}").is_file() for x in TAR_SUFFIXES)]
    return choose_split(path, split, here, found, Resolved("folder", path, split) if split == DEFAULT_SPLIT else None)


# The sources' examples (Source.examples): a few images each, small and varied enough that a reader that loses
# labels, splits, ids or pixel order (a transposed or channel-swapped image) reads something else.

def _example_pixels(seed: int, size: tuple[int, int] = (8, 6), smooth: bool = False) -> np.ndarray:
    """HxWx3 uint8 at ``size`` = (H, W): noise, or (``smooth``, for a JPEG) a flat colour on the top half and the
    same colour 100 levels lighter below, which a JPEG keeps within a few levels (the halves are whole 8x8
    blocks, and the edge is in brightness only: a JPEG's colour planes are halved and blurred)."""
    rng = np.random.default_rng(seed)
    if not smooth:
        return rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
    top = rng.integers(0, 150, size=3, dtype=np.uint8)
    px = np.empty((*size, 3), np.uint8)
    px[: size[0] // 2], px[size[0] // 2:] = top, top + 100
    return px


def _encoded(pixels: np.ndarray, name: str) -> bytes:
    """``pixels`` as the file ``name`` holds them: a JPEG of quality 75 (the shared CIFAR-10's) or a PNG."""
    if not name.endswith(".jpg"):
        return encode_png(pixels)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=75)
    return buf.getvalue()


def _example_files(names: Sequence[str], seed: int, smooth: bool = False) -> dict[str, np.ndarray]:
    """Each file name (``split/class/name`` or ``class/name``) -> its pixels, of one size (32x16: H != W)."""
    return {name: _example_pixels(seed + i, (32, 16), smooth) for i, name in enumerate(names)}


def _write_files(root: Path, files: dict[str, np.ndarray]) -> None:
    for name, px in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(_encoded(px, name))


def _write_tar(path: Path, files: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, px in files.items():
            data = _encoded(px, name)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _expected(files: dict[str, np.ndarray], root: str = "") -> list[ExampleImage]:
    """What reading ``files`` gives: ids are the names, labels the folder below ``root`` (none at its top)."""
    depth = len(root.split("/")) if root else 0
    return [ExampleImage(name, _label_of(tuple(name.split("/"))[depth:]), px) for name, px in files.items()]


def _file_examples(folder: Path) -> list[SourceExample]:
    px = _example_pixels(0)
    (folder / "one.png").write_bytes(encode_png(px))
    return [SourceExample(folder / "one.png", {DEFAULT_SPLIT: [ExampleImage("one.png", None, px)]})]


def _folder_examples(folder: Path) -> list[SourceExample]:
    """A tree with a class-less file at its top; a folder of split folders; a folder of train.tar and test.tar
    of JPEGs, the layout of the shared CIFAR-10 (read by the tar unit, as the folder hands it over)."""
    tree = _example_files(["cat/0000.png", "cat/0001.png", "dog/0000.png", "loose.png"], 10)
    _write_files(folder / "tree", tree)
    splits = {s: _example_files(["cat/a.png", "dog/b.png"], seed) for s, seed in (("train", 20), ("test", 30))}
    for s, files in splits.items():  # a split folder's ids are the paths inside it, as a plain folder's
        _write_files(folder / "splits" / s, files)
    jpegs = {s: _example_files([f"{s}/airplane/0000.jpg", f"{s}/airplane/0001.jpg", f"{s}/truck/0000.jpg"], seed,
                               smooth=True) for s, seed in (("train", 40), ("test", 50))}
    for s, files in jpegs.items():
        _write_tar(folder / "cifar10" / f"{s}.tar", files)
    return [SourceExample(folder / "tree", {DEFAULT_SPLIT: _expected(tree)}),
            SourceExample(folder / "splits", {s: _expected(files) for s, files in splits.items()}),
            SourceExample(folder / "cifar10", {s: _expected(files, s) for s, files in jpegs.items()}, tolerance=4)]


def _tar_examples(folder: Path) -> list[SourceExample]:
    """A tar of split folders, and a tar of a plain tree (the train split)."""
    splits = {s: _example_files([f"{s}/cat/a.png", f"{s}/cat/b.png", f"{s}/dog/c.png"], seed)
              for s, seed in (("train", 60), ("test", 70))}
    _write_tar(folder / "data.tar", {**splits["train"], **splits["test"]})
    tree = _example_files(["cat/0000.png", "dog/0000.png"], 80)
    _write_tar(folder / "photos.tar", tree)
    return [SourceExample(folder / "data.tar", {s: _expected(files, s) for s, files in splits.items()}),
            SourceExample(folder / "photos.tar", {DEFAULT_SPLIT: _expected(tree)})]


def _cifar_examples(folder: Path) -> list[SourceExample]:
    """torchvision's CIFAR-10 folder (given as its parent, as torchvision's root= is) and CIFAR-100 folder:
    pickled dicts of N x 3072 rows (channel planes of 32x32) and class indices."""
    rng = np.random.default_rng(90)

    def batch(path: Path, labels: list[int], key: bytes, classes: list[str]) -> list[ExampleImage]:
        data = rng.integers(0, 256, size=(len(labels), 3 * 32 * 32), dtype=np.uint8)
        path.write_bytes(pickle.dumps({b"data": data, key: labels}))
        return [ExampleImage(f"{path.name}/{i:05d}", classes[y], row.reshape(3, 32, 32).transpose(1, 2, 0))
                for i, (row, y) in enumerate(zip(data, labels, strict=True))]

    ten, hundred = folder / "c10" / "cifar-10-batches-py", folder / "cifar-100-python"
    ten.mkdir(parents=True)
    hundred.mkdir()
    classes = ["airplane", "automobile"]
    (ten / "batches.meta").write_bytes(pickle.dumps({b"label_names": [c.encode() for c in classes]}))
    train = [x for i in range(1, 6) for x in batch(ten / f"data_batch_{i}", [i % 2], b"labels", classes)]
    test = batch(ten / "test_batch", [1, 0], b"labels", classes)
    fine = ["apple", "bee", "cloud"]
    (hundred / "meta").write_bytes(pickle.dumps({b"fine_label_names": [c.encode() for c in fine]}))
    splits = {"train": batch(hundred / "train", [2, 0, 1], b"fine_labels", fine),
              "test": batch(hundred / "test", [1], b"fine_labels", fine)}
    return [SourceExample(folder / "c10", {"train": train, "test": test}), SourceExample(hundred, splits)]


def sources(*entries: Source) -> tuple[Source, ...]:
    """A SOURCES registry: the entries in the order given; ValueError when two share a name (``Resolved.kind``
    names one Source: the second would never be read, or read the first's splits)."""
    seen: set[str] = set()
    for s in entries:
        if s.name in seen:
            raise ValueError(f"two image sources are named {s.name!r}: give each its own name")
        seen.add(s.name)
    return entries


SOURCES: tuple[Source, ...] = sources(  # asked in this order: CIFAR's folder before the folder that is any other
    Source("file", "an image file", "",
           lambda p: p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS, _resolve_file,
           lambda r, prefix: _iter_file(r.path, prefix), _file_examples, paths=_file_paths),
    Source("cifar", "torchvision's CIFAR-10/100 folder", "torchvision's CIFAR-10/100 folder",
           lambda p: p.is_dir() and _cifar_dir(p) is not None, _resolve_cifar,
           lambda r, prefix: _iter_cifar(r.path, r.split, prefix), _cifar_examples),
    Source("folder", "a folder of images, an ImageFolder tree (class folders) or a folder of splits (train/ and "
           "test/, or train.tar and test.tar)",
           "an ImageFolder tree with train/ and test/ or the folder of train.tar and test.tar (the shared CIFAR-10's)",
           Path.is_dir, _resolve_folder, lambda r, prefix: _iter_folder(r.path, prefix), _folder_examples,
           paths=_folder_paths),
    Source("tar", f"a tar of such a folder ({', '.join(TAR_SUFFIXES)})", "a tar of an ImageFolder tree with train/ "
           "and test/",
           _is_tar, _resolve_tar, lambda r, prefix: _iter_tar(r.path, r.inner, prefix), _tar_examples,
           paths=_tar_paths),
)


def source_named(kind: str) -> Source:
    """The entry of SOURCES called ``kind`` (a Resolved's)."""
    for s in SOURCES:
        if s.name == kind:
            return s
    raise KeyError(f"no image source kind {kind!r}; known: {', '.join(s.name for s in SOURCES)}")


def _listed(parts: Sequence[str]) -> str:
    """"a; b; or c" (the entries hold commas of their own)."""
    return parts[0] if len(parts) == 1 else "; ".join(parts[:-1]) + "; or " + parts[-1]


def sources_said() -> str:
    """The kinds of source, for help texts ("an image file, ..., or a folder of images, ...")."""
    return _listed([s.says for s in SOURCES])


def split_sources_said() -> str:
    """The kinds of source that can hold a train and a test split, for the commands that need both."""
    return _listed([s.with_splits for s in SOURCES if s.with_splits])


def iter_images(source: str | Path | Resolved, split: str = DEFAULT_SPLIT, limit: int | None = None,
                id_prefix: str = "") -> Iterator[ImageItem]:
    """Every image of ``source`` (see the module docstring; or what ``resolve_source`` made of it) for
    ``split``, in a stable order, each id preceded by ``id_prefix``."""
    r = source if isinstance(source, Resolved) else resolve_source(source, split)
    for n, item in enumerate(source_named(r.kind).iterate(r, id_prefix)):
        if limit is not None and n >= limit:
            return
        yield item


def _decode(item: ImageItem, size: tuple[int, int] | None) -> np.ndarray:
    """HxWx3 uint8 at ``size`` (any size when None). ValueError with the reason when the file is not a readable
    image: the agent's Ingest check (``decode_payload``: the pixel limit from the header, then decoding), so a
    file that ingest rejects is the file that training skips, for the same reason."""
    if item.pixels is not None:
        return resize_array(item.pixels, size)
    assert item.encoded is not None
    return decode_payload("image", item.encoded, "", (), None if size is None else Preprocess(size=size))


def _try_decode(item: ImageItem, size: tuple[int, int] | None) -> np.ndarray | str:
    """``_decode``'s image, or the reason it is not readable."""
    try:
        return _decode(item, size)
    except ValueError as e:
        return str(e)


def first_reasons(skipped: list[tuple[str, str]], shown: int = 3) -> str:
    """The first ``shown`` (uri, reason) pairs of ``skipped`` as "uri: reason; ...", and how many more."""
    first = "; ".join(f"{uri}: {reason}" for uri, reason in skipped[:shown])
    return first + (f"; and {len(skipped) - shown:,} more" if len(skipped) > shown else "")


def skipped_summary(skipped: list[tuple[str, str]], total: int, shown: int = 3) -> str:
    """One line about the unreadable images of a source: how many of ``total``, and the first ``shown`` with
    their reasons ("2 of 1,220 images are not readable and were left out (a.jpg: empty image payload; ...)")."""
    return (f"{len(skipped):,} of {total:,} images are not readable and were left out "
            f"({first_reasons(skipped, shown)})")


def load_array(source: str | Path, split: str = "train", size: tuple[int, int] | None = (32, 32),
               limit: int | None = None, classes: list[str] | None = None, workers: int = 2) -> ImageArray:
    """Decode a whole source into memory: images NxHxWx3 uint8 at ``size`` = (H, W) (None: the first readable
    image's size).

    A file that is not a readable image (truncated, empty, a macOS ``._`` AppleDouble file, ...; what Ingest
    rejects) is left out and listed in ``skipped`` with its reason: one bad file in a folder does not stop the
    load. ValueError when no file is readable, naming the first ones and why. ``classes`` fixes the class
    index order (e.g. the train split's classes when loading the test split); by default the sorted label
    names found among the readable images. Labels outside ``classes`` raise ValueError.
    """
    items = list(iter_images(source, split, limit))
    if not items:
        raise ValueError(f"no images found in {source} (split '{split}')")
    if size is None:  # the first readable image's size (the ones before it are decoded again below: a few)
        first = next((x for x in (_try_decode(it, None) for it in items) if not isinstance(x, str)), None)
        size = (first.shape[0], first.shape[1]) if first is not None else (32, 32)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # Pillow releases the GIL while decoding
        decoded = list(pool.map(lambda it: _try_decode(it, size), items, chunksize=256))
    skipped = [(it.uri, x) for it, x in zip(items, decoded, strict=True) if isinstance(x, str)]
    if len(skipped) == len(items):
        raise ValueError(f"none of the {len(items):,} files of {source} (split '{split}') is a readable image: "
                         f"{first_reasons(skipped)}")
    items = [it for it, x in zip(items, decoded, strict=True) if not isinstance(x, str)]
    images = np.stack([x for x in decoded if not isinstance(x, str)])
    found = sorted({it.label for it in items if it.label is not None})
    class_list = list(classes) if classes is not None else found
    index = {c: i for i, c in enumerate(class_list)}
    unknown = [c for c in found if c not in index]
    if unknown:
        raise ValueError(f"labels {unknown[:5]} of {source} (split '{split}') are not among the classes "
                         f"{class_list}")
    labels = np.asarray([index[it.label] if it.label is not None else -1 for it in items], dtype=np.int64)
    return ImageArray(images=images, labels=labels, classes=class_list, ids=[it.id for it in items], skipped=skipped)
