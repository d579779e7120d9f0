"""The model manifest and registry layout: the one definition shared by exporters/ (which write it)
and agent/ (which reads it). Pure Python and numpy only: the agent must run without torch.

Registry layout (a folder, ``--models M``)::

    M/
      v0001/                 one complete published version
        encoder.onnx         inputs: ``image`` (Nx3xHxW float32, preprocessed); outputs: ``embedding``
                             (NxD float32), optionally ``logits`` (NxC) and ``rotation_logits`` (Nx4)
        encoder.ts           optional TorchScript export of the same encoder
        manifest.json        this module's ``Manifest``; written last inside the temporary folder
      .tmp-v0002-1234/       a publish in progress: never loaded (starts with a dot)

A version is *complete* when its folder name matches ``v<digits>``, holds ``manifest.json`` and every
file the manifest lists with the sha256 it records. The newest complete version has the highest number.
Publishing writes ``.tmp-*`` and renames it to ``vNNNN`` (``os.rename`` is atomic on POSIX, and fails
if the target exists, so two publishers never overwrite each other).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MANIFEST_NAME = "manifest.json"
ONNX_NAME = "encoder.onnx"
TORCHSCRIPT_NAME = "encoder.ts"
VERSION_RE = re.compile(r"^v(\d+)$")
MANIFEST_FORMAT = 1

# Output names of an exported encoder (the agent looks them up by these names).
INPUT_NAME = "image"
EMBEDDING_OUTPUT = "embedding"
LOGITS_OUTPUT = "logits"
ROTATION_OUTPUT = "rotation_logits"


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes the model's input: the single definition of preprocessing.

    An RGB image is resized to ``size`` = (height, width) pixels (bilinear; an image already that size
    is left as is), scaled to [0, 1], then normalised per channel: ``(x - mean) / std``. The result
    is a 3xHxW float32 array (CHW).
    """

    size: tuple[int, int] = (32, 32)
    mean: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
    std: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)
    interpolation: str = "bilinear"

    def to_dict(self) -> dict[str, Any]:
        return {"size": list(self.size), "mean": list(self.mean), "std": list(self.std),
                "interpolation": self.interpolation}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Preprocess:
        size = tuple(int(v) for v in d["size"])
        mean = tuple(float(v) for v in d["mean"])
        std = tuple(float(v) for v in d["std"])
        if len(size) != 2 or len(mean) != 3 or len(std) != 3 or min(size) <= 0 or min(std) <= 0:
            raise ValueError(f"invalid preprocess block in manifest: {d!r}")
        return Preprocess(size=(size[0], size[1]), mean=(mean[0], mean[1], mean[2]),
                          std=(std[0], std[1], std[2]), interpolation=str(d.get("interpolation", "bilinear")))

    def normalize(self, images_hwc_uint8: np.ndarray) -> np.ndarray:
        """NxHxWx3 uint8 (already at ``size``) -> Nx3xHxW float32, normalised."""
        scale = np.float32(1.0 / 255.0)
        mean = np.asarray(self.mean, np.float32)
        std = np.asarray(self.std, np.float32)
        x: np.ndarray = (images_hwc_uint8.astype(np.float32) * scale - mean) / std
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


# Per data set defaults, used by training and written into every export's manifest.
CIFAR10_PREPROCESS = Preprocess()
CIFAR100_PREPROCESS = Preprocess(mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762))
IMAGENET_PREPROCESS = Preprocess(size=(224, 224), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


@dataclass
class Manifest:
    """What the agent needs to serve one exported encoder, and where it came from."""

    preprocess: Preprocess
    embedding_dim: int
    outputs: list[str]  # output names in the ONNX graph, "embedding" first
    classes: list[str] | None = None  # class names of the ``logits`` output, in index order
    input_name: str = INPUT_NAME
    arch: str = ""
    method: str = ""  # simsiam | rotnet | moby | finetune | ...
    source_run: str = ""
    training_config: dict[str, Any] = field(default_factory=dict)
    dataset: str = ""
    git_commit: str = ""
    created: str = ""  # ISO 8601, UTC
    files: dict[str, str] = field(default_factory=dict)  # file name -> sha256 hex
    verification: dict[str, Any] = field(default_factory=dict)  # max relative errors per runtime
    format: int = MANIFEST_FORMAT

    def to_json(self) -> str:
        d = asdict(self)
        d["preprocess"] = self.preprocess.to_dict()
        return json.dumps(d, indent=2, sort_keys=True)

    @staticmethod
    def from_json(text: str) -> Manifest:
        d = json.loads(text)
        if int(d.get("format", 0)) != MANIFEST_FORMAT:
            raise ValueError(f"unsupported manifest format {d.get('format')!r} (expected {MANIFEST_FORMAT})")
        d["preprocess"] = Preprocess.from_dict(d["preprocess"])
        outputs = list(d["outputs"])
        if EMBEDDING_OUTPUT not in outputs:
            raise ValueError(f"manifest lists no '{EMBEDDING_OUTPUT}' output: {outputs}")
        if int(d["embedding_dim"]) <= 0:
            raise ValueError("manifest embedding_dim must be positive")
        known = {f for f in Manifest.__dataclass_fields__}
        return Manifest(**{k: v for k, v in d.items() if k in known})

    @property
    def has_logits(self) -> bool:
        return LOGITS_OUTPUT in self.outputs and bool(self.classes)

    @property
    def has_rotation_head(self) -> bool:
        return ROTATION_OUTPUT in self.outputs


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def version_number(name: str) -> int | None:
    m = VERSION_RE.match(name)
    return int(m.group(1)) if m else None


def version_name(number: int) -> str:
    return f"v{number:04d}"


def read_complete(version_dir: Path, verify_hashes: bool = True) -> Manifest | None:
    """The manifest of a complete version folder, or None if it is incomplete or corrupt."""
    if version_number(version_dir.name) is None:
        return None
    try:
        manifest = Manifest.from_json((version_dir / MANIFEST_NAME).read_text())
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if ONNX_NAME not in manifest.files:
        return None
    for name, digest in manifest.files.items():
        path = version_dir / name
        if not path.is_file():
            return None
        if verify_hashes and sha256_file(path) != digest:
            return None
    return manifest


def list_versions(registry: Path) -> list[str]:
    """Version folder names in ``registry`` (complete or not), oldest first."""
    if not registry.is_dir():
        return []
    names = [p.name for p in registry.iterdir() if p.is_dir() and version_number(p.name) is not None]
    return sorted(names, key=lambda n: version_number(n) or 0)


def newest_complete(registry: Path, verify_hashes: bool = True) -> tuple[str, Manifest] | None:
    """(version name, manifest) of the newest complete version, or None when there is none."""
    for name in reversed(list_versions(registry)):
        manifest = read_complete(registry / name, verify_hashes)
        if manifest is not None:
            return name, manifest
    return None


def publish(registry: Path, staging: Path) -> str:
    """Atomically move a fully written ``staging`` folder (inside ``registry``) to the next version.

    ``staging`` must already hold every file and ``manifest.json``, fsynced. Returns the version name.
    """
    if staging.parent.resolve() != registry.resolve():
        raise ValueError("staging folder must be inside the registry (rename is atomic only there)")
    if not (staging / MANIFEST_NAME).is_file():
        raise ValueError(f"{staging} has no {MANIFEST_NAME}")
    for _ in range(1000):
        versions = list_versions(registry)
        nxt = (version_number(versions[-1]) or 0) + 1 if versions else 1
        target = registry / version_name(nxt)
        try:
            os.rename(staging, target)  # fails if target exists and is non-empty
        except OSError:
            if target.exists():
                continue  # another publisher took this number: try the next
            raise
        fsync_path(registry)
        return target.name
    raise RuntimeError("could not find a free version number")


def fsync_path(path: Path) -> None:
    """Flush a file's or a folder's contents (a folder: its entries, so a rename inside it is durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
