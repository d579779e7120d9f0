"""``shortlist models import``: publish an ONNX encoder that Shortlist did not train (a torchvision model, one
from another project) as a new version of a registry, with the preprocessing it needs written once in its
manifest. No torch: it runs wherever the agent does.

The user's file is published byte for byte, unless its weights are in external data files beside it (what
torch.onnx.export writes by default since torch 2.9): then the graph and those weights are published as one
self-contained encoder.onnx (``self_contained``; over protobuf's 2 GB, as encoder.onnx and one encoder.onnx.data
beside it, both in the manifest's files). Import reads only what the manifest needs and the agent cannot know: the
image input and the embedding output (the model's only ones unless --input-name / --output-name name them; these
go into the manifest's ``input_name`` and ``output_name``), the default size (the input's fixed height and width)
and the embedding width D (the model run once on a blank batch). Whether the agent can serve the model is decided
by the agent's own load check (agent.embedder.load_check: the declared input, float32, NCHW at the preprocess size
with a dynamic batch axis, a batch of 2, the output's shape) on the staged version; a model it refuses is refused
with its advice, and nothing is published. Publishing uses shortlist.manifest.publish, as ``shortlist export``
does: atomically, under the next version number.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import onnx
import typer
from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

from shortlist.manifest import (
    IMAGENET_CROP_FRACTION,
    IMPORT_PRESETS,
    ONNX_NAME,
    RESIZE_MODES,
    Manifest,
    ManifestError,
    Preprocess,
    RegistryError,
    publish_staged,
    registry_mistake,
    sha256_file,
    staging_folder,
)

INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos")  # shortlist.images._RESAMPLE's names
IMPORT_METHOD = "imported"
# A model whose weights are in external data files is published as one file up to this size: protobuf cannot
# serialise a message of 2 GB or more (onnx.checker.MAXIMUM_PROTOBUF), so a larger one keeps its weights in
# one EXTERNAL_DATA_NAME file beside ONNX_NAME.
INLINE_LIMIT = onnx.checker.MAXIMUM_PROTOBUF
EXTERNAL_DATA_NAME = ONNX_NAME + ".data"


class ImportRefused(ValueError):
    """The ONNX model cannot be served as it is; the message says why and what to do. Nothing was published."""


def preprocess_from_options(preset: str | None, size: tuple[int, int] | None, mean: tuple[float, ...] | None,
                            std: tuple[float, ...] | None, interpolation: str, model_size: tuple[int, int] | None,
                            resize: str | None = None, crop_fraction: float | None = None) -> Preprocess:
    """The Preprocess the options declare: a preset's (``cifar10``, ``cifar100``: squash; ``imagenet``: crop
    0.875, shortlist.manifest.IMPORT_PRESETS) size, mean, std and resize mode, each overridden by --size / --mean
    / --std / --resize; the size defaults to the model's own when its input has a fixed height and width.
    --crop-fraction goes with --resize crop only (default: the preset's, else IMAGENET_CROP_FRACTION).
    ImportRefused when the mean, std or size is left undeclared (a silent default would give a model the wrong
    statistics) or a value is out of range."""
    base = None
    if preset is not None:
        if preset not in IMPORT_PRESETS:
            raise ImportRefused(f"unknown --preprocess {preset!r}; valid: {', '.join(IMPORT_PRESETS)} (or give "
                                "--size, --mean and --std)")
        base = IMPORT_PRESETS[preset]
    if resize is None:
        resize = base.resize if base is not None else "squash"
    if resize not in RESIZE_MODES:
        raise ImportRefused(f"unknown --resize {resize!r}; valid: {', '.join(RESIZE_MODES)}")
    if crop_fraction is not None and not 0 < crop_fraction <= 1:  # also NaN
        raise ImportRefused(f"--crop-fraction {crop_fraction} must be in (0, 1]: the crop's side over the resized "
                            f"shorter side ({IMAGENET_CROP_FRACTION} for ImageNet's 224 of 256)")
    if crop_fraction is not None and resize != "crop":
        raise ImportRefused("--crop-fraction goes with --resize crop (--resize squash does not crop)")
    if crop_fraction is None:
        crop_fraction = 1.0 if resize == "squash" else \
            base.crop_fraction if base is not None and base.resize == "crop" else IMAGENET_CROP_FRACTION
    if base is None and (mean is None or std is None):
        raise ImportRefused("say how the model's inputs were normalised: --preprocess imagenet (or cifar10, "
                            "cifar100), or --mean R G B and --std R G B (on pixels scaled to [0, 1])")
    if interpolation not in INTERPOLATIONS:
        raise ImportRefused(f"unknown --interpolation {interpolation!r}; valid: {', '.join(INTERPOLATIONS)}")
    if size is None:
        size = model_size or (base.size if base is not None else None)
    if size is None:
        raise ImportRefused("the model's input fixes no N x 3 x H x W height and width: give the input size it "
                            "was trained at with --size H W (each image is resized to it)")
    d = {"size": list(size), "mean": list(mean if mean is not None else base.mean),  # type: ignore[union-attr]
         "std": list(std if std is not None else base.std), "interpolation": interpolation,  # type: ignore[union-attr]
         "resize": resize, "crop_fraction": crop_fraction}
    try:
        return Preprocess.from_dict(d)
    except ManifestError as e:
        raise ImportRefused(str(e)) from None


def size_note(preset: str | None, size: tuple[int, int] | None, model_size: tuple[int, int] | None,
              input_name: str) -> str | None:
    """The note import prints when the model's fixed input size (height, width in px) replaces the preset's
    (``preprocess_from_options``: without --size, the model's own size wins, since the model cannot take
    another); None when there is no preset, --size was given, the input fixes no size, or the sizes agree."""
    if preset not in IMPORT_PRESETS or size is not None or model_size is None:
        return None
    preset_size = tuple(IMPORT_PRESETS[preset].size)
    if preset_size == model_size:
        return None
    (h, w), (ph, pw) = model_size, preset_size
    return (f"note: the model's input {input_name!r} fixes {h}x{w}, so images are brought to {h}x{w} in place of "
            f"the {preset} preset's {ph}x{pw} (its mean, std and resize are kept)")


@dataclass(frozen=True)
class Interface:
    """What import reads from a model before its manifest exists (``read_interface``)."""

    path: Path
    session: Any  # onnxruntime.InferenceSession
    input_name: str  # the only input unless named; with several, the agent's load check refuses the model
    output_name: str  # the only output unless named

    @property
    def size(self) -> tuple[int, int] | None:
        """The (height, width) an N x 3 x H x W input fixes, or None (free axes, or not such an input)."""
        shape = next((list(i.shape) for i in self.session.get_inputs() if i.name == self.input_name), [])
        if len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != 3):
            return None
        h, w = shape[2:]
        return (h, w) if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0 else None

    def embedding_width(self, size: tuple[int, int]) -> int | None:
        """D: the product of the output's non-batch sizes on a blank float32 batch at ``size`` (what the
        agent's check feeds); None when the model does not run on it (the agent's load check says why)."""
        from agent.embedder import PROBE_BATCH

        try:
            out = self.session.run([self.output_name], {self.input_name: np.zeros((PROBE_BATCH, 3, *size),
                                                                                   np.float32)})[0]
        except Exception:  # onnxruntime's errors, or its ValueError for an unknown name: the load check says why
            return None
        return int(np.prod(out.shape[1:])) if out.ndim >= 2 and out.size else None


def external_data_files(model_path: Path) -> list[str]:
    """The external data files (locations relative to the model's folder, sorted) that ``model_path``'s
    tensors are stored in; [] for a self-contained model. Only the graph is read, not the weights."""
    proto = onnx.load(str(model_path), load_external_data=False)
    return sorted({ExternalDataInfo(t).location for t in _get_all_tensors(proto) if uses_external_data(t)})


def self_contained(model_path: Path, folder: Path) -> list[str]:
    """Write ``model_path``, whose weights are in external data files beside it, into ``folder`` as ONNX_NAME
    with its weights inside (the same graph and tensors), or, at INLINE_LIMIT bytes or more, as ONNX_NAME with
    every weight in one EXTERNAL_DATA_NAME: the file names written. ImportRefused when a data file is missing,
    too short, or outside the model's folder (onnx refuses such a location: a model must not read other files)."""
    files = external_data_files(model_path)
    try:
        proto = onnx.load(str(model_path))  # reads the data files relative to the model's folder, checking each
    except (OSError, ValueError, onnx.checker.ValidationError) as e:
        raise ImportRefused(f"{model_path.name} keeps its weights in external data ({', '.join(files)}), which "
                            f"could not be read ({e}): keep the data file(s) in {model_path.parent} as the export "
                            "wrote them, or export one self-contained file (torch.onnx.export(..., "
                            "external_data=False))") from None
    if proto.ByteSize() < INLINE_LIMIT:
        onnx.save_model(proto, str(folder / ONNX_NAME))
        return [ONNX_NAME]
    onnx.save_model(proto, str(folder / ONNX_NAME), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=EXTERNAL_DATA_NAME, size_threshold=0)  # every tensor: the data file always exists
    return [ONNX_NAME, EXTERNAL_DATA_NAME]


def read_interface(model_path: Path, input_name: str | None = None, output_name: str | None = None) -> Interface:
    """Open ``model_path`` with onnxruntime as the agent does and pick its image input and embedding output:
    the named ones, else the model's only ones. ImportRefused when onnxruntime cannot load it (the agent's
    refusal) or when it has several outputs and none is named."""
    from agent.embedder import ModelRefused, open_session

    if not model_path.is_file():
        raise ImportRefused(f"{model_path} is not a file (give the .onnx file to import)")
    try:
        data_files = external_data_files(model_path)
    except Exception:  # not a protobuf onnx can parse: onnxruntime's refusal below says so, with advice
        data_files = []
    if missing := [f for f in data_files if not (model_path.parent / f).is_file()]:
        raise ImportRefused(f"{model_path.name} keeps its weights in external data files, and {', '.join(missing)} "
                            f"is not in {model_path.parent}: import the .onnx from the folder the export wrote it "
                            "to, with its data file(s) beside it, or export one self-contained file "
                            "(torch.onnx.export(..., external_data=False))")
    try:
        session = open_session(model_path)
    except ModelRefused as e:
        raise ImportRefused(str(e)) from None
    outputs = [o.name for o in session.get_outputs()]
    if output_name is None:
        if len(outputs) != 1:
            raise ImportRefused(f"the model has {len(outputs)} outputs ({', '.join(outputs)}): say which one is the "
                                "embedding with --output-name")
        output_name = outputs[0]
    return Interface(model_path, session, input_name or session.get_inputs()[0].name, output_name)


def import_onnx(model: str | Path | Interface, registry: str | Path, pre: Preprocess, input_name: str | None = None,
                output_name: str | None = None) -> tuple[str, Manifest]:
    """Copy the model (a path, or what ``read_interface`` read) byte for byte into a staging folder of ``registry``
    (a model with external data: ``self_contained``) with its manifest, run the agent's load check on it
    (agent.embedder.load_check), then publish it atomically (shortlist.manifest.publish): the new version's
    name and manifest. ImportRefused (nothing published) when the registry will not do or the agent would
    refuse the model."""
    from agent.embedder import ModelRefused, load_check

    registry = Path(registry)
    if registry.exists() and not registry.is_dir():
        raise ImportRefused(f"{registry} is a file: --models takes the registry folder (it holds v0001/, ...)")
    if mistake := registry_mistake(registry):
        raise ImportRefused(mistake)
    face = model if isinstance(model, Interface) else read_interface(Path(model), input_name, output_name)
    manifest = Manifest(preprocess=pre, embedding_dim=face.embedding_width(pre.size) or 1,  # 1: the check says why
                        outputs=[face.output_name], input_name=face.input_name, output_name=face.output_name,
                        arch=f"onnx:{face.path.name}", method=IMPORT_METHOD, source_run=str(face.path.resolve()),
                        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    made_registry = not registry.exists()
    registry.mkdir(parents=True, exist_ok=True)
    try:
        with staging_folder(registry, "import") as staging:
            if external_data_files(face.path):
                written = self_contained(face.path, staging)
            else:  # byte for byte
                shutil.copyfile(face.path, staging / ONNX_NAME)
                written = [ONNX_NAME]
            manifest.files = {name: sha256_file(staging / name) for name in written}
            try:
                load_check(staging, manifest)
            except ModelRefused as e:
                raise ImportRefused(str(e)) from None
            version = publish_staged(registry, staging, manifest)
    except BaseException:
        if made_registry:  # a refused import leaves no empty registry behind
            with contextlib.suppress(OSError):
                registry.rmdir()
        raise
    return version, manifest


def import_command(
        model: Path = typer.Argument(..., help="the ONNX encoder to publish (e.g. from torch.onnx.export with a "
                                     "dynamic batch axis)"),
        models: Path = typer.Option(..., "--models", help="the registry folder to publish into (what `shortlist "
                                    "serve --models` serves; created when missing)"),
        preprocess: str | None = typer.Option(None, "--preprocess", help=f"a preset size, mean and std: "
                                              f"{' | '.join(IMPORT_PRESETS)} (imagenet: 224 px, ImageNet mean "
                                              "and std, --resize crop at 0.875: resize 256, centre-crop 224); "
                                              "--size, --mean, --std and --resize override its values; a "
                                              "model whose input fixes its size keeps that size (a note says so)"),
        size: tuple[int, int] | None = typer.Option(None, "--size", metavar="H W", help="input height and width "
                                                    "(default: the model's own fixed size, else the preset's)"),
        resize: str | None = typer.Option(None, "--resize", help="squash: every image resized to exactly H x W (the "
                                          "aspect ratio not kept); crop: the aspect ratio kept, resized so H x W "
                                          "is --crop-fraction of it, the centre H x W taken (default: the "
                                          "preset's; squash without one)"),
        crop_fraction: float | None = typer.Option(None, "--crop-fraction", help="with --resize crop: the crop's "
                                                   "side over the resized shorter side, in (0, 1] (default "
                                                   f"{IMAGENET_CROP_FRACTION}: 224 of 256)"),
        mean: tuple[float, float, float] | None = typer.Option(None, "--mean", metavar="R G B",
                                                               help="per-channel mean on pixels scaled to [0, 1]"),
        std: tuple[float, float, float] | None = typer.Option(None, "--std", metavar="R G B",
                                                              help="per-channel std on pixels scaled to [0, 1]"),
        interpolation: str = typer.Option("bilinear", "--interpolation", help=" | ".join(INTERPOLATIONS)),
        input_name: str | None = typer.Option(None, "--input-name", help="the model's image input (default: its "
                                              "only input)"),
        output_name: str | None = typer.Option(None, "--output-name", help="the output that is the embedding, "
                                               "(N, D) or (N, D, 1, 1) (the manifest's output_name; default: the "
                                               "model's only output; required when it has several)"),
        as_json: bool = typer.Option(False, "--json", help="the outcome as one JSON object on stdout")) -> None:
    """Publish an ONNX encoder that Shortlist did not train as the registry's next version. The preprocessing
    is declared once, here, and written into its manifest with the model's input and output names; the file is
    published byte for byte (weights in external data files beside it: as one self-contained file). The
    staged version first passes the agent's own load check (a batch of 2 float32
    N x 3 x H x W images at the declared size); a model the agent would refuse is refused with its advice and
    nothing is published."""
    from agent.cli import json_line

    def fail(message: str, code: int) -> NoReturn:
        if as_json:  # the rule of every --json: the object on stdout, the message on stderr too
            print(json_line({"error": message, "published": None}))
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(code)

    if not model.is_file():
        fail(f"{model} is not a file (give the .onnx file to import)", 2)
    try:  # the model's names and fixed size first: the size is the default for --size
        face = read_interface(model, input_name, output_name)
    except ImportRefused as e:  # not an ONNX file, its external data missing, names that do not fit: bad input
        fail(f"{e}; nothing was published", 2)
    try:
        pre = preprocess_from_options(preprocess, size, mean, std, interpolation, face.size, resize, crop_fraction)
    except ImportRefused as e:
        fail(str(e), 2)
    note = size_note(preprocess, size, face.size, face.input_name)
    try:
        version, manifest = import_onnx(face, models, pre)
    except ImportRefused as e:
        fail(f"{e}; nothing was published", 1)
    except (OSError, RegistryError) as e:
        fail(f"could not publish into {models}: {e}; nothing was published", 1)
    outcome = {"published": version, "registry": str(models), "embedding_dim": manifest.embedding_dim,
               "input_name": manifest.input_name, "output_name": manifest.output_name,
               "preprocess": manifest.preprocess.to_dict()}
    if as_json:
        print(json_line(outcome))
        if note:  # stdout holds the object only
            typer.echo(note, err=True)
        return
    h, w = pre.size
    how = f"centre crop of {pre.crop_fraction}" if pre.resize == "crop" else "squashed"
    typer.echo(f"published {models / version} (embedding {manifest.embedding_dim} from output "
               f"{manifest.output_name!r}, input {manifest.input_name!r} {h}x{w} ({how}), mean {list(pre.mean)}, "
               f"std {list(pre.std)}, {pre.interpolation})")
    if note:
        typer.echo(note)
    typer.echo(f"serve it: shortlist serve --models {models} --data-dir DATA (an agent already serving {models} "
               f"takes {version} up at its next registry check: it embeds its pool with it and answers with the "
               "old model until that is done; `shortlist status` shows the progress)")
    typer.echo(f"benchmark it: shortlist bench embeddings --encoder {models / version} ...")
