"""The model manifest and registry layout: the one definition shared by exporters/ (which write it)
and agent/ (which reads it). Pure Python and numpy only: the agent must run without torch.

Registry layout (a folder, ``--models M``)::

    M/
      v0001/                 one complete published version
        encoder.onnx         inputs: ``image`` (Nx3xHxW float32, preprocessed, any N: a dynamic batch axis; the
                             manifest's ``input_name``); outputs: ``embedding`` (NxD float32, or Nx... whose
                             non-batch sizes multiply to D; the manifest's ``output_name``), optionally
                             ``logits`` (NxC) and ``rotation_logits`` (Nx4)
        encoder.ts           optional TorchScript export of the same encoder
        manifest.json        this module's ``Manifest``; written last inside the temporary folder
      .tmp-export-1234-ab12cd34/  a publish in progress (``staging_folder``; 1234: its process): never loaded
                             (starts with a dot); one whose process is gone is removed by the next publish
      .last-version          the highest version number ever published here (``v0002``): the high-water mark
      .publish.lock          taken (flock) while a version number is chosen and published
      .trash-v0001-...       a version being removed (``remove_version``): never loaded (starts with a dot)

A version is *complete* when its folder name matches ``v<digits>``, holds a valid ``manifest.json`` and
every file the manifest lists (plain names inside the folder, never leaving the registry through a
symlink) with the sha256 it records, and no other folder's name gives the same number (``v24`` beside
``v0024``: ``number_clash``); ``check_version`` says why a folder is not. The newest complete
version has the highest number.
Publishing writes ``.tmp-*`` and renames it to ``vNNNN`` (``os.rename`` is atomic on POSIX, and fails
if the target exists, so two publishers never overwrite each other).

Version numbers are never reused, even when version folders are removed (``shortlist models prune``, or by
hand): ``publish`` takes ``.publish.lock``, picks one more than both the highest folder and the high-water mark
``.last-version``, writes the mark (temporary file, fsync, rename, fsync the folder) and only then renames the
staging folder, so the mark is on disk before any folder of that number exists. A crash between the two burns a
number (a gap), never reuses one. An agent keys the embeddings it stores by version name, so a reused name
would let it take the embeddings of a removed model for a new one (it also checks each version's
``model_fingerprint``: agent/models.py). So removing old versions that no agent serves is safe
(``remove_version``; ``shortlist models prune``).
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import TypeAdapter, ValidationError

from shortlist.atomic import fsync_path as fsync_path  # re-exported: agent.backup, agent.blobs
from shortlist.atomic import pid_alive as pid_alive
from shortlist.atomic import write_atomic

MANIFEST_NAME = "manifest.json"
ONNX_NAME = "encoder.onnx"
TORCHSCRIPT_NAME = "encoder.ts"
HIGH_WATER_NAME = ".last-version"  # the highest version number ever published in the registry
PUBLISH_LOCK_NAME = ".publish.lock"
TRASH_PREFIX = ".trash-"  # a version folder being removed
VERSION_RE = re.compile(r"^v(\d+)$")
# Manifest formats. 1: every manifest before resize "crop" existed; what is still written when a format-1 reader
# serves the model as meant, so old registries and agents stay compatible. 2: written when the preprocessing
# needs a newer reader (resize "crop": an agent reading only format 1 ignores ``resize`` and would squash the
# images). A reader refuses a format it does not know ("upgrade shortlist"); format 1 asking for crop is refused.
MANIFEST_FORMAT = 1
CROP_FORMAT = 2
READ_FORMATS = (MANIFEST_FORMAT, CROP_FORMAT)


def _reader_id() -> str:
    """``reader:<hex>``: which reader this is (the sha256 of this module's source, which holds every check a version
    folder must pass). The agent stores it with a refusal that lasts across restarts (agent/models.py), because
    such a refusal depends on the reader as well as on the folder: an upgraded agent that reads a newer format, or
    accepts more, must look again at a folder an older one refused."""
    try:
        return "reader:" + hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
    except OSError:  # no source to read (a frozen build): the formats read are the next best summary
        return "reader:formats-" + "-".join(map(str, READ_FORMATS))


READER_ID = _reader_id()

# Output names of an exported encoder (the agent looks them up by these names).
INPUT_NAME = "image"
EMBEDDING_OUTPUT = "embedding"
LOGITS_OUTPUT = "logits"
ROTATION_OUTPUT = "rotation_logits"
# How to export a PyTorch encoder the agent can serve (its refusals and ``export``'s advice quote it): float32
# NCHW in, the embedding out, the batch axis dynamic, the weights inside the one file (torch >= 2.9's exporter
# writes them to a separate encoder.onnx.data by default, which a copy of the .onnx alone leaves behind).
ONNX_EXPORT_HINT = (f"torch.onnx.export(model.eval(), torch.randn(2, 3, H, W), \"encoder.onnx\", "
                    f"input_names=[\"{INPUT_NAME}\"], output_names=[\"{EMBEDDING_OUTPUT}\"], dynamic_axes="
                    f"{{\"{INPUT_NAME}\": {{0: \"batch\"}}, \"{EMBEDDING_OUTPUT}\": {{0: \"batch\"}}}}, "
                    "external_data=False)")
MAX_INPUT_SIDE = 4096  # a manifest asking for larger inputs is refused (memory per decoded image)
# Resampling filters a manifest's preprocess ``interpolation`` may name (shortlist/images.py maps each to Pillow's).
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos")
# How an image is brought to the preprocess size (shortlist/images.py ``resize_rgb``): "squash" resizes it to
# exactly H x W (the aspect ratio is not kept); "crop" keeps the aspect ratio, resizing so that the target box
# enlarged by 1 / crop_fraction just fits (the shorter side to round(min(H, W) / crop_fraction) for a square
# target), then takes the centre H x W: torchvision's Resize(256) + CenterCrop(224) for crop_fraction 0.875.
RESIZE_MODES = ("squash", "crop")
# ImageNet models' evaluation crop: 224 of 256 (torchvision's classification references, timm's default crop_pct)
IMAGENET_CROP_FRACTION = 0.875


class ManifestError(ValueError):
    """A version folder cannot be served; the message says why (shown in the agent's warnings)."""


class RegistryError(ValueError):
    """The registry cannot take a new version (its high-water mark is unreadable); nothing was published."""


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes the model's input: the single definition of preprocessing.

    An RGB image is brought to ``size`` = (height, width) pixels as ``resize`` says (one of RESIZE_MODES:
    "squash" to exactly H x W, the aspect ratio not kept, an image already that size left as is; "crop": the
    aspect ratio kept, resized so the target enlarged by 1 / ``crop_fraction`` fits, then the centre H x W
    taken), with ``interpolation`` (one of INTERPOLATIONS), scaled to [0, 1], then normalised per channel:
    ``(x - mean) / std``. The result is a 3xHxW float32 array (CHW). ``crop_fraction`` (in (0, 1]) is
    the crop's side over the resized image's shorter side; it is 1.0 and unused with "squash". A manifest
    without ``resize`` means "squash" (every manifest written before the field existed).
    """

    # size, mean and std default to CIFAR10_PREPROCESS's for code building one, never for a manifest: it must give
    # them (PREPROCESS_REQUIRED), so a model is never fed another's normalisation. interpolation, resize and
    # crop_fraction default to what a manifest written before the field existed meant.
    size: tuple[int, int] = (32, 32)
    mean: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
    std: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)
    interpolation: str = "bilinear"
    resize: str = "squash"
    crop_fraction: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"size": list(self.size), "mean": list(self.mean), "std": list(self.std),
                             "interpolation": self.interpolation, "resize": self.resize}
        if self.resize == "crop":
            d["crop_fraction"] = self.crop_fraction
        return d

    def identity(self) -> dict[str, Any]:
        """What of the preprocessing decides a model's outputs (``model_fingerprint``): the resize mode only when
        it is not "squash", so every version published before the field existed keeps its fingerprint."""
        d: dict[str, Any] = {"size": [int(v) for v in self.size], "mean": [float(v) for v in self.mean],
                             "std": [float(v) for v in self.std], "interpolation": self.interpolation}
        if self.resize != "squash":
            d |= {"resize": self.resize, "crop_fraction": float(self.crop_fraction)}
        return d

    def format(self) -> int:
        """The manifest format a reader needs to apply this preprocessing: CROP_FORMAT for resize "crop" (a
        format-1 reader would squash), else MANIFEST_FORMAT (every reader applies it)."""
        return CROP_FORMAT if self.resize != "squash" else MANIFEST_FORMAT

    @staticmethod
    def from_dict(d: object) -> Preprocess:
        """A manifest's preprocess block (e.g. a checkpoint's) -> Preprocess; ManifestError names the field."""
        pre = _validate(_PREPROCESS_SCHEMA, _legacy_preprocess(d), "preprocess.", _missing_preprocess(d))
        pre.check()
        return pre

    def check(self) -> None:
        """What the types alone do not say (ranges, known names); ManifestError with the field and what to write."""
        size, mean, std, fraction = self.size, self.mean, self.std, self.crop_fraction
        if min(size) <= 0 or max(size) > MAX_INPUT_SIDE:
            raise ManifestError(f"preprocess size {list(size)} must be 1..{MAX_INPUT_SIDE} pixels a side")
        if not all(np.isfinite(mean)) or not all(np.isfinite(std)) or min(std) <= 0:
            raise ManifestError(f"preprocess mean must be finite and std finite and positive (got mean "
                                f"{list(mean)}, std {list(std)}); a zero std would divide by zero")
        if self.interpolation not in INTERPOLATIONS:  # a typo must not silently resize another way than training did
            raise ManifestError(f"preprocess interpolation {self.interpolation!r} is not one the agent knows: write "
                                f"one of {', '.join(INTERPOLATIONS)} in the manifest's preprocess block")
        if self.resize not in RESIZE_MODES:  # likewise: an unknown mode must not silently squash a crop model
            raise ManifestError(f"preprocess resize {self.resize!r} is not a mode the agent knows: write one of "
                                f"{', '.join(RESIZE_MODES)} in the manifest's preprocess block")
        if not 0 < fraction <= 1:
            raise ManifestError(f"preprocess crop_fraction {fraction!r} must be a number in (0, 1] (the crop's side "
                                f"over the resized shorter side: {IMAGENET_CROP_FRACTION} for ImageNet's 224 of 256)")
        if self.resize == "squash" and fraction != 1:
            raise ManifestError(f"preprocess crop_fraction {fraction!r} is given with resize \"squash\", which "
                                "does not crop: set resize to \"crop\", or drop crop_fraction")
        if max(size) / fraction > MAX_INPUT_SIDE:  # the image resized before the crop: memory per image
            raise ManifestError(f"preprocess crop_fraction {fraction!r} would resize images to "
                                f"{round(max(size) / fraction)} px a side before the crop (at most {MAX_INPUT_SIDE})")

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
# By name: ``pretrain --preprocess``. Shortlist's own training squashes: it decodes its data at the preprocess size
# as it trains (training/data.py) and its augmentations crop at random over the whole image, so its exports
# must be fed the whole image, squashed, as well.
PREPROCESS_PRESETS: dict[str, Preprocess] = {"cifar10": CIFAR10_PREPROCESS, "cifar100": CIFAR100_PREPROCESS,
                                             "imagenet": IMAGENET_PREPROCESS}
# By name: ``models import --preprocess``. A model trained elsewhere on ImageNet was evaluated on the centre 224 of
# the image resized to 256 (its shorter side): imported with the preset, it is fed the same.
IMPORT_PRESETS: dict[str, Preprocess] = {
    **PREPROCESS_PRESETS,
    "imagenet": Preprocess(size=IMAGENET_PREPROCESS.size, mean=IMAGENET_PREPROCESS.mean, std=IMAGENET_PREPROCESS.std,
                           resize="crop", crop_fraction=IMAGENET_CROP_FRACTION)}


@dataclass
class Manifest:
    """What the agent needs to serve one exported encoder, and where it came from."""

    preprocess: Preprocess
    embedding_dim: int
    outputs: list[str]  # output names in the ONNX graph, the embedding's (``output_name``) first
    classes: list[str] | None = None  # class names of the ``logits`` output, in index order
    input_name: str = INPUT_NAME
    # The graph output that gives the embedding (one of ``outputs``): an encoder whose output has another name
    # is served without re-exporting it. Part of the model's identity only when not the default.
    output_name: str = EMBEDDING_OUTPUT
    arch: str = ""
    method: str = ""  # the training run's: a training.methods.METHODS name, finetune:MODE, ...
    source_run: str = ""
    training_config: dict[str, Any] = field(default_factory=dict)
    dataset: str = ""
    git_commit: str = ""
    created: str = ""  # ISO 8601, UTC
    files: dict[str, str] = field(default_factory=dict)  # file name -> sha256 hex
    verification: dict[str, Any] = field(default_factory=dict)  # max relative errors per runtime
    republished_from: str = ""  # the version this one copies (``republish``: a rollback), else ""
    format: int = MANIFEST_FORMAT  # as read; ``to_json`` writes the one the preprocessing needs

    def to_json(self) -> str:
        d = asdict(self)
        d["preprocess"] = self.preprocess.to_dict()
        d["format"] = self.preprocess.format()
        return json.dumps(d, indent=2, sort_keys=True)

    @staticmethod
    def from_json(text: str) -> Manifest:
        """Parse and validate a manifest: every field's presence and type (``_MANIFEST_SCHEMA``), then what
        types do not say. ManifestError (a ValueError), one line naming the field and what to write."""
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ManifestError(f"{MANIFEST_NAME} is not JSON ({e})") from None
        if not isinstance(d, dict):
            raise ManifestError("manifest is not a JSON object")
        d = _legacy_manifest(d)
        if "format" not in d:
            raise ManifestError(f"manifest has no 'format': write {_FIELD_HINTS['format']}")
        fmt = d["format"]
        if not isinstance(fmt, int) or isinstance(fmt, bool):  # true, "1", 1.5: no version reads it, say what to write
            got = json.dumps(fmt, default=str)
            raise ManifestError(f"manifest 'format' is {got if len(got) <= 60 else got[:57] + '...'} (not an integer): "
                                f"write {_FIELD_HINTS['format']}")
        if fmt not in READ_FORMATS:  # a newer writer's format (or a typo such as 0): say what this reader reads
            raise ManifestError(f"unsupported manifest format {fmt} (this agent reads formats "
                                f"{', '.join(map(str, READ_FORMATS))}; upgrade shortlist to serve it)")
        m = _validate(_MANIFEST_SCHEMA, d, "", _missing_preprocess(d.get("preprocess")))
        m.preprocess.check()
        if m.format < m.preprocess.format():  # a hand edit: a format-1 reader would squash the images
            raise ManifestError(f"manifest format {m.format} cannot ask for resize {m.preprocess.resize!r} (an agent "
                                f"reading only format {m.format} would ignore it and squash the images): write "
                                f"\"format\": {m.preprocess.format()}")
        if not m.output_name:
            raise ManifestError("manifest 'output_name' must be the name of the graph output that gives the "
                                "embedding (got '')")
        if m.output_name not in m.outputs:
            raise ManifestError(f"manifest lists no '{m.output_name}' output: {m.outputs} (add the name of the output "
                                "that gives the embedding to 'outputs', or set 'output_name' to one of them)")
        if m.embedding_dim <= 0:
            raise ManifestError(f"manifest embedding_dim must be a positive integer (got {m.embedding_dim!r})")
        if m.classes is not None and not all(m.classes):
            raise ManifestError(f"manifest 'classes' must be a list of non-empty names: {m.classes!r}")
        return m

    @property
    def has_logits(self) -> bool:
        return LOGITS_OUTPUT in self.outputs and bool(self.classes)

    @property
    def has_rotation_head(self) -> bool:
        return ROTATION_OUTPUT in self.outputs


# Every field's presence and type, checked by pydantic against the dataclasses themselves (strict, from JSON: a
# number is never taken for text, nor 32.0 or "32" for an integer; unknown keys are ignored, for newer writers).
_PREPROCESS_SCHEMA: TypeAdapter[Preprocess] = TypeAdapter(Preprocess)
_MANIFEST_SCHEMA: TypeAdapter[Manifest] = TypeAdapter(Manifest)
# What to write in each field (a refusal names the field and says this).
_FIELD_HINTS = {
    "preprocess": "an object with size, mean, std (and interpolation, resize, crop_fraction)",
    "preprocess.size": "[height, width] in pixels, two integers",
    "preprocess.mean": "three numbers, the per-channel mean of [0, 1] pixels (R, G, B)",
    "preprocess.std": "three positive numbers, the per-channel std of [0, 1] pixels (R, G, B)",
    "preprocess.interpolation": f"one of {', '.join(INTERPOLATIONS)}",
    "preprocess.resize": f"one of {', '.join(RESIZE_MODES)}",
    "preprocess.crop_fraction": f"a number in (0, 1], e.g. {IMAGENET_CROP_FRACTION}",
    "embedding_dim": "a positive integer, the embedding's length",
    "outputs": f"a list of the ONNX graph's output names, the embedding's first (e.g. [\"{EMBEDDING_OUTPUT}\"])",
    "classes": "a list of class names in logits order, or null",
    "input_name": f"the ONNX graph's input name (text, e.g. \"{INPUT_NAME}\")",
    "output_name": f"the name of the output that gives the embedding (text, e.g. \"{EMBEDDING_OUTPUT}\")",
    "arch": "text (the architecture's name) or \"\"",
    "method": "text (how it was trained) or \"\"",
    "source_run": "text (the training run's folder) or \"\"",
    "training_config": "an object (the training options) or {}",
    "dataset": "text (the data set's name) or \"\"",
    "git_commit": "text or \"\"",
    "created": "text, when it was made, ISO 8601 UTC (e.g. \"2026-01-31T12:00:00+00:00\"), or \"\"",
    "files": f"an object mapping each file name to its sha256 hex digest (text), {ONNX_NAME} among them",
    "verification": "an object (max relative errors per runtime) or {}",
    "republished_from": "text (the version it copies) or \"\"",
    "format": f"{CROP_FORMAT} where preprocess.resize is \"crop\", else {MANIFEST_FORMAT}",
}


PREPROCESS_REQUIRED = ("size", "mean", "std")  # a manifest's preprocess block must give these (no defaults)
# Fields that readers before the schema check (commit a0440ea and earlier) took as given, null included: a null
# text field reads as "" and a null object as {} (what a writer that had nothing to say meant), so a version such
# a reader served is still served. Any other type is refused by the schema, as before.
_NULL_AS_TEXT = ("arch", "method", "source_run", "dataset", "git_commit", "created", "republished_from")
_NULL_AS_OBJECT = ("training_config", "verification")


def _integral(v: object) -> object:
    """``v`` as an int when it is a float with no fractional part (``8.0``, as JSON writers other than Python's
    put integers) or text holding an integer (``"8"``): what ``int(v)`` took in the reader before the schema
    check; else ``v`` unchanged (the schema then refuses it, naming the field)."""
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str):
        try:
            return int(v)
        except ValueError:
            return v
    return v


def _number(v: object) -> object:
    """``v`` as a float when it is text holding a number (``"0.5"``: what ``float(v)`` took in the reader before
    the schema check); else ``v`` unchanged (the range checks refuse "nan" and "inf" as before)."""
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return v


def _legacy_preprocess(d: object) -> object:
    """A preprocess block with the forms the reader before the schema check took brought to the schema's: size
    values through ``_integral``, mean and std values through ``_number``. Anything else is left as it is."""
    if not isinstance(d, dict):
        return d
    d = dict(d)
    for key, fix in (("size", _integral), ("mean", _number), ("std", _number)):
        if isinstance(d.get(key), list):
            d[key] = [fix(v) for v in d[key]]
    return d


def _legacy_manifest(d: dict[str, Any]) -> dict[str, Any]:
    """A parsed manifest with the forms the reader before the schema check (a0440ea) served brought to the
    schema's, with the meaning they had there: a format of 1.0, the preprocess block's (``_legacy_preprocess``),
    null text fields (_NULL_AS_TEXT: "") and null objects (_NULL_AS_OBJECT: {}). Anything else is left as it is."""
    d = dict(d)
    if isinstance(d.get("format"), float):
        d["format"] = _integral(d["format"])
    if "preprocess" in d:
        d["preprocess"] = _legacy_preprocess(d["preprocess"])
    for key in _NULL_AS_TEXT:
        if key in d and d[key] is None:
            d[key] = ""
    for key in _NULL_AS_OBJECT:
        if key in d and d[key] is None:
            d[key] = {}
    return d


def _missing_preprocess(d: object) -> list[str]:
    """What ``d``, a manifest's preprocess block, lacks of PREPROCESS_REQUIRED, one sentence each (the dataclass's
    defaults are CIFAR-10's, which would silently normalise another model's inputs wrongly)."""
    if not isinstance(d, dict):
        return []  # not an object: the schema says so
    return [f"manifest has no 'preprocess.{key}': write {_FIELD_HINTS['preprocess.' + key]}"
            for key in PREPROCESS_REQUIRED if key not in d]


def _problem(err: Any, prefix: str) -> str:
    """One pydantic error as a sentence naming the field and what to write (``prefix``: see ``_validate``)."""
    loc = [str(p) for p in err["loc"]]
    where = prefix + ".".join(loc)
    # the field's hint: its longest named prefix (a list index or a file name below it says no more)
    names = [prefix + ".".join(loc[:n]) for n in range(len(loc), 0, -1)] + [prefix.rstrip(".")]
    hint = next((_FIELD_HINTS[n] for n in names if n in _FIELD_HINTS), "")
    what = f": write {hint}" if hint else ""
    if err["type"] == "missing":
        return f"manifest has no '{where}'{what}"
    got = json.dumps(err.get("input"), default=str)
    got = got if len(got) <= 60 else got[:57] + "..."
    return f"manifest '{where}' is {got} ({err['msg'][0].lower()}{err['msg'][1:]}){what}"


def _validate(schema: TypeAdapter[Any], data: object, prefix: str, missing: list[str]) -> Any:
    """``schema`` validated from ``data`` (parsed JSON, as JSON: strict types, arrays for tuples); ManifestError,
    one line naming every wrong or missing field, ``missing`` (sentences) first, so one edit fixes them all
    (``prefix``: where ``data`` sits in a manifest, e.g. "preprocess.")."""
    try:
        text = json.dumps(data, allow_nan=True)
    except (TypeError, ValueError) as e:  # e.g. a checkpoint's block holding something JSON cannot hold
        raise ManifestError(f"manifest '{prefix.rstrip('.') or 'manifest'}' is not JSON data ({e})") from None
    try:
        value = schema.validate_json(text, strict=True)
    except ValidationError as e:
        missing = [*missing, *(_problem(err, prefix) for err in e.errors(include_url=False))]
    if missing:
        raise ManifestError("; ".join(missing))
    return value


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


def _safe_file(version_dir: Path, name: object, root: Path) -> Path:
    """``version_dir / name`` when ``name`` is a plain relative path that stays inside ``version_dir``
    and (after symlinks) inside ``root``; ManifestError otherwise."""
    if not isinstance(name, str) or not name or "\x00" in name or "\\" in name:
        raise ManifestError(f"manifest lists an invalid file name {name!r}")
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts:
        raise ManifestError(f"manifest lists {name!r}, a path outside its version folder (files must be "
                            "plain names inside it)")
    path = version_dir / rel
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError):
        raise ManifestError(f"{name} is missing (the folder is incomplete or still being written)") from None
    if not real.is_relative_to(root):
        raise ManifestError(f"{name} is a symlink to {real}, outside the registry {root}")
    if not real.is_file():
        raise ManifestError(f"{name} is not a regular file")
    return path


def check_version(version_dir: Path, verify_hashes: bool = True) -> Manifest:
    """The manifest of a complete, well-formed version folder; ManifestError saying why otherwise.

    Checks: the name is ``v<digits>``; the folder stays inside its registry (a symlinked version or
    file may not point out of it); ``manifest.json`` parses (known format, an ``embedding`` output, a
    positive embedding size, finite mean and positive std, a sane input size); it lists
    ``encoder.onnx``; every listed file is a plain name inside the folder, present, with the sha256
    recorded (``verify_hashes``). Whether the ONNX graph agrees with the manifest is checked by the
    agent when it loads it (agent/embedder.py)."""
    if version_number(version_dir.name) is None:
        raise ManifestError(f"{version_dir.name} is not a version folder name (v<digits>)")
    root = version_dir.parent.resolve()
    try:
        real_dir = version_dir.resolve(strict=True)
    except (OSError, RuntimeError):
        raise ManifestError(f"{version_dir} does not exist") from None
    if not real_dir.is_relative_to(root):
        raise ManifestError(f"{version_dir.name} is a symlink to {real_dir}, outside the registry {root}")
    if clash := number_clash(version_dir):
        raise ManifestError(clash)
    mpath = version_dir / MANIFEST_NAME
    if not mpath.is_file():
        raise ManifestError(f"no {MANIFEST_NAME} (the folder is incomplete or still being written; publish "
                            "with a temporary folder and one rename, as exporters/ do)")
    _safe_file(version_dir, MANIFEST_NAME, root)
    try:
        manifest = Manifest.from_json(mpath.read_text())
    except UnicodeDecodeError:
        raise ManifestError(f"{MANIFEST_NAME} is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise ManifestError(f"{MANIFEST_NAME} is not JSON ({e})") from None
    except ManifestError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ManifestError(f"{MANIFEST_NAME} is invalid ({type(e).__name__}: {e})") from None
    except OSError as e:
        raise ManifestError(f"cannot read {MANIFEST_NAME} ({e})") from None
    if not isinstance(manifest.files, dict) or ONNX_NAME not in manifest.files:
        raise ManifestError(f"{MANIFEST_NAME} does not list {ONNX_NAME} in 'files'")
    for name, digest in manifest.files.items():
        path = _safe_file(version_dir, name, root)
        if verify_hashes:
            try:
                actual = sha256_file(path)
            except OSError as e:
                raise ManifestError(f"cannot read {name} ({e})") from None
            if actual != digest:
                raise ManifestError(f"{name} is corrupt or was changed after publishing: its sha256 is "
                                    f"{actual[:12]}..., the manifest records {str(digest)[:12]}...")
    return manifest


def same_number(version_dir: Path) -> list[str]:
    """The other folders beside ``version_dir`` whose names give the same version number (``v24`` beside
    ``v0024``: made by hand; ``publish`` never makes one), sorted; [] when none or unreadable."""
    number = version_number(version_dir.name)
    try:
        return sorted(p.name for p in version_dir.parent.iterdir()
                      if p.name != version_dir.name and version_number(p.name) == number and p.is_dir())
    except OSError:
        return []


def number_clash(version_dir: Path) -> str:
    """Why ``version_dir`` cannot be served because other folders claim its version number ("" when none do):
    which of them is that version (the newer one, the one whose stored embeddings an agent has) is ambiguous, so
    none is served (an agent already serving one keeps the model it loaded, and warns)."""
    others = same_number(version_dir)
    if not others:
        return ""
    return (f"{version_dir.name} and {', '.join(others)} in {version_dir.parent} claim the same version number "
            f"{version_number(version_dir.name)}: which model is that version is ambiguous, so none of them is "
            f"taken up (an agent serving one already keeps the model it loaded); rename or remove all but one (a "
            f"folder made by hand: `shortlist export`, `models import` and `models rollback` publish under a new "
            f"number of their own)")


def read_complete(version_dir: Path, verify_hashes: bool = True) -> Manifest | None:
    """The manifest of a complete version folder, or None if it is incomplete, corrupt or unsafe
    (``check_version`` says why)."""
    try:
        return check_version(version_dir, verify_hashes)
    except ManifestError:
        return None


def list_versions(registry: Path) -> list[str]:
    """Version folder names in ``registry`` (complete or not), oldest first."""
    if not registry.is_dir():
        return []
    names = [p.name for p in registry.iterdir() if p.is_dir() and version_number(p.name) is not None]
    return sorted(names, key=lambda n: version_number(n) or 0)


# What a training run folder holds at its top (training/loop.py CHECKPOINT, ENCODER, CONFIG; not imported from
# there: training loads torch, and the agent runs without it; tests/training/test_loop.py keeps them equal).
RUN_FILES = ("encoder.pt", "checkpoint.pt", "config.json")
# Entries ``registry_mistake`` looks at, at most: a registry's mistake shows in its first entries, and GetStatus
# asks on every call while no version is there (a folder of 100,000 images must not cost a listing each time).
MISTAKE_SCAN = 1000


def registry_mistake(folder: Path) -> str:
    """Why ``folder``, given as a model registry (``--models``), is some other folder: a sentence that says
    what it is and what to do, e.g. "runs/pre1 is a training run folder, not a model registry: publish it
    with `shortlist export --run runs/pre1 --models REGISTRY`"; "" when it holds a version folder, is empty
    or is not a folder (the callers say that themselves), and is no version folder. A training run folder has
    one of RUN_FILES at its top; an image folder has image files at its top or one folder down (an ImageFolder
    tree); a version folder of a registry (``models/v0001``, whose versions would nest where no agent looks) is
    named vNNNN and holds a manifest, or holds no version but has version folders beside it (it need not exist:
    export would create it)."""
    from shortlist.datasets import IMAGE_EXTENSIONS  # here: it loads Pillow, which publishing needs not

    if version_number(folder.name) is not None:
        try:
            inside = (folder / MANIFEST_NAME).exists()
            beside = folder.parent.is_dir() and any(version_number(p.name) is not None and p.name != folder.name
                                                    and p.is_dir() for p in folder.parent.iterdir())
        except OSError:  # unreadable: not this function's to report
            inside = beside = False
        if inside or (beside and not list_versions(folder)):  # a registry named v2 beside v1 holds versions
            return f"{folder} is a version folder of the registry {folder.parent}: pass --models {folder.parent}"
    if not folder.is_dir() or list_versions(folder):
        return ""
    if any((folder / name).is_file() for name in RUN_FILES):
        return (f"{folder} is a training run folder, not a model registry: publish it with `shortlist export --run "
                f"{folder} --models REGISTRY`, and give REGISTRY to --models")

    def entries() -> Iterator[Path]:
        for entry in folder.iterdir():
            yield entry
            if entry.is_dir() and not entry.name.startswith("."):
                yield from entry.iterdir()

    try:
        images = any(p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                     for p in itertools.islice(entries(), MISTAKE_SCAN))
    except OSError:  # unreadable: not this function's to report (the agent's poll logs it)
        return ""
    if images:
        return (f"{folder} holds images, not model versions: give --models the registry that `shortlist export "
                "--run RUN --models REGISTRY` publishes into (images go to the agent with `shortlist ingest`)")
    return ""


def newest_complete(registry: Path, verify_hashes: bool = True) -> tuple[str, Manifest] | None:
    """(version name, manifest) of the newest complete version, or None when there is none."""
    for name in reversed(list_versions(registry)):
        manifest = read_complete(registry / name, verify_hashes)
        if manifest is not None:
            return name, manifest
    return None


@contextmanager
def publish_lock(registry: Path) -> Iterator[None]:
    """Hold the registry's publish lock (an flock on ``.publish.lock``, released when the process dies):
    choosing a version number, writing the high-water mark and renaming the folder happen as one step."""
    fd = os.open(registry / PUBLISH_LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def high_water(registry: Path) -> int:
    """The highest version number ever published in ``registry`` by this scheme (its ``.last-version``; 0 when
    there is none: a new registry, or one written before the mark existed). RegistryError when it is unreadable:
    a guess could reuse the number of a removed version."""
    path = registry / HIGH_WATER_NAME
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return 0
    except (OSError, UnicodeDecodeError) as e:
        raise RegistryError(f"cannot read {path} ({e}), the highest version number ever published there") from None
    number = version_number(text)
    if number is None:
        raise RegistryError(f"{path} should hold the highest version number ever published in {registry} (e.g. "
                            f"v0007) but holds {text[:40]!r}: write the highest number that was ever published "
                            "there into it (no number below it is used again), then publish again")
    return number


def highest_published(registry: Path) -> int:
    """The highest version number ever published in ``registry``: of its folders (complete or not) and its
    high-water mark, which remembers the numbers of removed folders."""
    versions = list_versions(registry)
    newest_folder = (version_number(versions[-1]) or 0) if versions else 0
    return max(high_water(registry), newest_folder)


def _write_high_water(registry: Path, number: int) -> None:
    """Atomically set ``.last-version`` to ``number`` (temporary file, fsync, rename, fsync the folder)."""
    write_atomic(registry / HIGH_WATER_NAME, version_name(number) + "\n", encoding="ascii")


def note_high_water(registry: Path) -> int:
    """Make the high-water mark cover every version folder there now (before folders are removed: ``shortlist
    models prune``); returns it."""
    with publish_lock(registry):
        number = highest_published(registry)
        if number > high_water(registry):
            _write_high_water(registry, number)
        return number


def version_bytes(version_dir: Path) -> int:
    """The bytes of the files a version folder holds (what removing it frees; links not followed)."""
    return sum(p.lstat().st_size for p in version_dir.rglob("*") if p.is_file() and not p.is_symlink())


def remove_version(registry: Path, version: str) -> int:
    """Remove the folder of ``version`` from ``registry`` atomically; returns the bytes it held. The high-water
    mark is made to cover it first, so its number is never used again; then it is renamed to a hidden trash
    name (at once out of the registry: nothing loads a name that starts with a dot), the rename made durable,
    and deleted. OSError when the rename fails (nothing changed); when the deletion fails the folder is already
    out of the registry, and the error names its trash folder to delete by hand (``clear_trash`` retries)."""
    if version_number(version) is None:
        raise ValueError(f"{version} is not a version folder name (v<digits>)")
    source = registry / version
    if not source.is_dir() or source.is_symlink():
        raise FileNotFoundError(f"{source} is not a version folder")
    size = version_bytes(source)
    note_high_water(registry)
    trash = registry / f"{TRASH_PREFIX}{version}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    os.rename(source, trash)
    fsync_path(registry)
    try:
        shutil.rmtree(trash)
    except OSError as e:
        raise OSError(e.errno, f"{version} is out of the registry, but its folder {trash} could not be deleted "
                      f"({e.strerror or e}): delete it by hand") from None
    return size


def clear_trash(registry: Path) -> list[str]:
    """Delete what an interrupted ``remove_version`` left (``.trash-*`` folders); returns their names."""
    gone = []
    for p in registry.iterdir() if registry.is_dir() else ():
        if p.name.startswith(TRASH_PREFIX) and p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
            gone.append(p.name)
    return gone


class NothingToPublish(ManifestError):
    """``publish``'s ``refuse`` said no under the publish lock (e.g. a rollback's copy of what another rollback
    has just published): nothing was published."""


def publish(registry: Path, staging: Path, refuse: Callable[[], str] | None = None) -> str:
    """Atomically move a fully written ``staging`` folder (inside ``registry``) to the next version.

    ``staging`` must already hold every file and ``manifest.json``, fsynced. Returns the version name. The
    number is one more than any ever published there (the high-water mark is written first, under the
    publish lock), so a removed version's number is never given to another model. ``refuse`` is asked under
    the lock, before anything changes: a non-empty answer raises NothingToPublish with it (a check made
    before the lock could be stale: another publisher may have published meanwhile).
    """
    if staging.parent.resolve() != registry.resolve():
        raise ValueError("staging folder must be inside the registry (rename is atomic only there)")
    if not (staging / MANIFEST_NAME).is_file():
        raise ValueError(f"{staging} has no {MANIFEST_NAME}")
    with publish_lock(registry):
        clear_stale_staging(registry)  # what killed publishers left (never ``staging``: this process is alive)
        if refuse is not None and (why := refuse()):
            raise NothingToPublish(why)
        nxt = highest_published(registry) + 1
        for _ in range(1000):
            target = registry / version_name(nxt)
            if target.exists():  # e.g. a folder made by hand, or by a publisher without the lock
                nxt += 1
                continue
            _write_high_water(registry, nxt)  # before the folder exists: a crash leaves a gap, never a reuse
            try:
                os.rename(staging, target)  # fails if target exists and is non-empty
            except OSError:
                if target.exists():
                    nxt += 1
                    continue  # another publisher took this number: try the next
                raise
            fsync_path(registry)
            return target.name
    raise RuntimeError("could not find a free version number")


def _model_identity(m: Manifest) -> dict[str, Any]:
    """What decides the outputs a version computes (``same_model``, ``model_fingerprint``)."""
    return {"files": dict(sorted(m.files.items())), "input_name": m.input_name, "outputs": list(m.outputs),
            "embedding_dim": m.embedding_dim, "classes": list(m.classes or []),
            "preprocess": m.preprocess.identity(),
            # only when set: every version published before output_name existed keeps its fingerprint
            **({"output_name": m.output_name} if m.output_name != EMBEDDING_OUTPUT else {})}


def same_model(a: Manifest, b: Manifest) -> bool:
    """Whether two versions compute the same outputs for every image: the same files (sha256), the same
    preprocessing, outputs, input, embedding size and classes. A republished copy (a rollback) is the same
    model as its source; the agent reuses the served version's embeddings for it instead of re-embedding
    the pool, and ``shortlist models rollback`` refuses to publish a copy of what is already served."""
    return _model_identity(a) == _model_identity(b)


MODEL_FINGERPRINT_PREFIX = "model:"


def model_fingerprint(m: Manifest) -> str:
    """``model:<sha256>`` of what ``same_model`` compares (the files' sha256, preprocessing, outputs, input,
    embedding size, classes): equal exactly when ``same_model`` is true. The agent records it with the
    embeddings it stores for a version (model_versions.fingerprint), so a folder that holds another model
    under a name it has embeddings for is never given them (agent/models.py)."""
    text = json.dumps(_model_identity(m), sort_keys=True, separators=(",", ":"))
    return MODEL_FINGERPRINT_PREFIX + hashlib.sha256(text.encode()).hexdigest()


def short_fingerprint(fingerprint: str) -> str:
    """A model fingerprint for people: its first 12 hex digits."""
    return fingerprint.removeprefix(MODEL_FINGERPRINT_PREFIX)[:12]


def copy_changes_nothing(registry: Path, version: str, source: Manifest, unless_newest: str = "") -> str:
    """Why a copy of ``version`` (manifest ``source``) published in ``registry`` now would change nothing, going
    by the registry alone ("" when it would not): ``version`` is the newest complete version, or the same model
    (``same_model``) as it, so an agent serving the folder serves it, or is embedding the pool with it, unless
    it refused it or serves a newer version whose folder was changed after it loaded it (which only the agent
    can say). ``unless_newest``: "" also while that version is still the newest complete one (the agent said it
    serves another model: the copy changes something, unless another rollback has published one since)."""
    newest = newest_complete(registry)
    if newest is None or (newest[0] != version and not same_model(newest[1], source)):
        return ""
    if unless_newest and newest[0] == unless_newest:
        return ""
    what = "is" if newest[0] == version else f"is the same model as {newest[0]}, which is"
    return f"{version} {what} the newest complete version in {registry}"


def republish(registry: Path, version: str, unless_unchanged: bool = False, unless_newest: str = "") -> str:
    """Publish a copy of ``registry/version`` as the next version (a rollback: the agent serves the newest
    complete version, so an older model comes back by being published again, and version numbers only
    grow). The source must be complete with its recorded hashes (ManifestError says why not); the copy's
    manifest says ``republished_from`` and when it was made. Returns the new version name.
    ``unless_unchanged``: NothingToPublish when ``copy_changes_nothing``, asked under the publish lock, so of
    two rollbacks to one version at once only the first publishes (``unless_newest``: see there)."""
    import datetime as dt

    source = registry / version
    manifest = check_version(source, verify_hashes=True)
    manifest.republished_from = version  # not part of ``same_model``'s identity: the copy stays the same model
    manifest.created = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    refuse = (lambda: copy_changes_nothing(registry, version, manifest, unless_newest)) if unless_unchanged else None
    with staging_folder(registry, "republish") as staging:
        for name, digest in manifest.files.items():
            shutil.copyfile(source / name, staging / name)
            if sha256_file(staging / name) != digest:  # changed between the check and the copy
                raise ManifestError(f"{version}/{name} changed while it was copied; nothing was published")
        return publish_staged(registry, staging, manifest, refuse)


# ``staging_folder``'s names: .tmp-KIND-PID-HEX8 (PID: the process writing it)
STAGING_RE = re.compile(r"^\.tmp-[a-z]+-(\d+)-[0-9a-f]{8}$")
STALE_STAGING_SECONDS = 24 * 3600  # a staging folder untouched this long is stale even if its PID is alive (reused)


def stale_staging(registry: Path) -> list[Path]:
    """The ``staging_folder`` folders in ``registry`` that no process will finish: an export, import or rollback
    killed mid-write (kill -9, a crash: its ``except`` never ran) leaves one, a model's worth of disk. Stale: the
    process its name carries is gone (on this machine), or it has not changed for STALE_STAGING_SECONDS (a PID
    reused by another process, or a publisher on another machine sharing the folder)."""
    stale = []
    for p in registry.iterdir() if registry.is_dir() else ():
        m = STAGING_RE.match(p.name)
        if m is None or not p.is_dir() or p.is_symlink():
            continue
        try:
            old = time.time() - p.stat().st_mtime > STALE_STAGING_SECONDS
        except OSError:
            continue
        if old or not pid_alive(int(m.group(1))):
            stale.append(p)
    return sorted(stale)


def clear_stale_staging(registry: Path) -> list[str]:
    """Delete ``stale_staging``'s folders (what they hold was never published); returns their names."""
    gone = []
    for p in stale_staging(registry):
        shutil.rmtree(p, ignore_errors=True)
        if not p.exists():
            gone.append(p.name)
    return gone


def staging_note(registry: Path) -> str | None:
    """A sentence on the stale staging folders in ``registry`` (``models list``), or None when there are none."""
    stale = stale_staging(registry)
    if not stale:
        return None
    size = sum(version_bytes(p) for p in stale)
    return (f"{len(stale)} unfinished publish folder(s) left by a stopped export, import or rollback "
            f"({', '.join(p.name for p in stale)}; {size / 1e6:.1f} MB, never served): the next publish into "
            f"{registry} removes them, or delete them by hand")


@contextmanager
def staging_folder(registry: Path, kind: str) -> Iterator[Path]:
    """A new ``.tmp-KIND-*`` folder inside ``registry`` to write a version into before ``publish_staged``
    renames it into place (inside the registry: the rename is atomic only there); removed with what it holds
    when the block raises (Ctrl-C included), so a failed export, import or rollback leaves nothing."""
    staging = registry / f".tmp-{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def publish_staged(registry: Path, staging: Path, manifest: Manifest, refuse: Callable[[], str] | None = None) -> str:
    """Make ``staging`` durable -- every file ``manifest.files`` names, then its manifest.json (written here),
    then the folder's entries -- and ``publish`` it as the next version (returned; ``refuse``: see ``publish``):
    the one way export, import and rollback write a version, so none can publish a manifest before the files it
    vouches for are on disk."""
    for name in manifest.files:
        fsync_path(staging / name)
    (staging / MANIFEST_NAME).write_text(manifest.to_json())
    fsync_path(staging / MANIFEST_NAME)
    fsync_path(staging)
    return publish(registry, staging, refuse)
