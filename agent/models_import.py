"""``shortlist models import``: publish an ONNX encoder that Shortlist did not train (a torchvision model, one
from another project) as a new version of a registry, with the preprocessing it needs written once in its
manifest. No torch: it runs wherever the agent does.

Before anything is published the model is checked the way the agent will use it: loaded with onnxruntime, run
on a batch of 2 float32 NCHW images at the declared size (a model exported with a fixed batch axis fails here,
not on the agent's first Ingest), and its output read: 2-D (N, D), or (N, D, 1, 1) as a pooled CNN gives,
which is flattened. The embedding width D comes from that output. A model that fails is refused with advice
(dynamic batch axis, NCHW float32 input, the input and output names) and nothing is published.

The published encoder.onnx is the user's file byte for byte when its output is already named ``embedding``
and 2-D; otherwise a Flatten node is appended that writes ``embedding`` (the name the agent reads), and the
copy is checked to give the same numbers as the original. The input keeps its name (the manifest's
``input_name``). Then the staging folder is loaded by the agent's own loader (agent.embedder.Embedder) and
published with shortlist.manifest.publish, the function ``shortlist export`` uses: atomically, under the next
version number.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import typer

from shortlist.manifest import (
    EMBEDDING_OUTPUT,
    MANIFEST_NAME,
    ONNX_NAME,
    PREPROCESS_PRESETS,
    Manifest,
    ManifestError,
    Preprocess,
    RegistryError,
    fsync_path,
    publish,
    registry_mistake,
    sha256_file,
)

INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos")  # shortlist.images._RESAMPLE's names
CHECK_BATCH = 2  # the agent embeds in batches: a model whose batch axis is fixed at 1 fails on 2
ONNX_EXPORT_HINT = ("torch.onnx.export(model.eval(), torch.randn(2, 3, H, W), \"encoder.onnx\", "
                    "input_names=[\"image\"], output_names=[\"embedding\"], dynamic_axes={\"image\": {0: \"batch\"}, "
                    "\"embedding\": {0: \"batch\"}})")
IMPORT_METHOD = "imported"
POOLED_NAME = "shortlist_pooled_embedding"  # an (N, D, 1, 1) output named embedding, renamed before the Flatten


class ImportRefused(ValueError):
    """The ONNX model cannot be served as it is; the message says why and what to do. Nothing was published."""


@dataclass(frozen=True)
class Checked:
    """What the check found: the input's name, the output's name and shape on a batch of 2, the width D."""

    input_name: str
    output_name: str
    output_shape: tuple[int, ...]
    dim: int


def preprocess_from_options(preset: str | None, size: tuple[int, int] | None, mean: tuple[float, ...] | None,
                            std: tuple[float, ...] | None, interpolation: str, model_size: tuple[int, int] | None
                            ) -> Preprocess:
    """The Preprocess the options declare: a preset's (``cifar10``, ``cifar100``, ``imagenet``) size, mean and
    std, each overridden by --size / --mean / --std; the size defaults to the model's own when its input has a
    fixed height and width. ImportRefused when the mean, std or size is left undeclared (a silent default
    would give a model the wrong statistics)."""
    base = None
    if preset is not None:
        if preset not in PREPROCESS_PRESETS:
            raise ImportRefused(f"unknown --preprocess {preset!r}; valid: {', '.join(PREPROCESS_PRESETS)} (or give "
                                "--size, --mean and --std)")
        base = PREPROCESS_PRESETS[preset]
    if base is None and (mean is None or std is None):
        raise ImportRefused("say how the model's inputs were normalised: --preprocess imagenet (or cifar10, "
                            "cifar100), or --mean R G B and --std R G B (on pixels scaled to [0, 1])")
    if interpolation not in INTERPOLATIONS:
        raise ImportRefused(f"unknown --interpolation {interpolation!r}; valid: {', '.join(INTERPOLATIONS)}")
    if size is None:
        size = model_size or (base.size if base is not None else None)
    if size is None:
        raise ImportRefused("the model takes any height and width: give the input size it was trained at with "
                            "--size H W (each image is resized to it)")
    d = {"size": list(size), "mean": list(mean if mean is not None else base.mean),  # type: ignore[union-attr]
         "std": list(std if std is not None else base.std), "interpolation": interpolation}  # type: ignore[union-attr]
    try:
        return Preprocess.from_dict(d)
    except ManifestError as e:
        raise ImportRefused(str(e)) from None


@dataclass(frozen=True)
class Interface:
    """A model's image input and embedding output, checked before any image is run (``inspect_onnx``)."""

    session: Any  # onnxruntime.InferenceSession
    input_name: str
    output_name: str
    outputs: list[str]
    input_shape: list[int | str | None]

    @property
    def size(self) -> tuple[int, int] | None:
        """The (height, width) the input fixes, or None when either axis is free."""
        h, w = self.input_shape[2:]
        return (h, w) if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0 else None


def inspect_onnx(model_path: Path, input_name: str | None = None, output_name: str | None = None) -> Interface:
    """Load ``model_path`` with onnxruntime and check its input and output names, the input's type (float32)
    and layout (N x 3 x H x W, batch axis free); ImportRefused saying what to change. ``input_name`` /
    ``output_name`` default to the model's only input / output."""
    import onnxruntime as ort

    try:
        sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types (InvalidProtobuf, Fail, ...)
        raise ImportRefused(f"onnxruntime cannot load {model_path} ({_first_line(e)}): is it an ONNX model? "
                            f"Export a PyTorch model with {ONNX_EXPORT_HINT}") from None
    inputs = {i.name: i for i in sess.get_inputs()}
    outputs = [o.name for o in sess.get_outputs()]
    if input_name is None:
        if len(inputs) != 1:
            raise ImportRefused(f"the model has {len(inputs)} inputs ({', '.join(inputs)}): the agent feeds one image "
                                "batch; name it with --input-name")
        input_name = next(iter(inputs))
    elif input_name not in inputs:
        raise ImportRefused(f"the model has no input {input_name!r} (its inputs: {', '.join(inputs)}); give one of "
                            "them to --input-name")
    if len(inputs) != 1:
        raise ImportRefused(f"the model has {len(inputs)} inputs ({', '.join(inputs)}); the agent feeds only "
                            f"{input_name!r}: export a model with the image as its only input")
    if output_name is None:
        if len(outputs) != 1:
            raise ImportRefused(f"the model has {len(outputs)} outputs ({', '.join(outputs)}): say which one is the "
                                "embedding with --output-name")
        output_name = outputs[0]
    elif output_name not in outputs:
        raise ImportRefused(f"the model has no output {output_name!r} (its outputs: {', '.join(outputs)}); give "
                            "one of them to --output-name")
    inp = inputs[input_name]
    if inp.type != "tensor(float)":
        raise ImportRefused(f"the model's input {input_name!r} is {inp.type}; the agent feeds float32 (preprocessed "
                            "pixels): export the model in float32 (a half-precision model: convert it with fp32 "
                            "inputs and outputs kept, e.g. onnxruntime's convert_float_to_float16(keep_io_types="
                            "True))")
    shape = list(inp.shape)
    if len(shape) != 4:
        raise ImportRefused(f"the model's input {input_name!r} has shape {shape}; the agent feeds a batch of images "
                            f"N x 3 x H x W (NCHW) float32")
    if shape[1] != 3 and shape[3] == 3:
        raise ImportRefused(f"the model's input {input_name!r} has shape {shape}, channels last (NHWC); the agent "
                            "feeds N x 3 x H x W (NCHW) float32: export the model with channels first (e.g. a "
                            "transpose at its start)")
    if isinstance(shape[0], int):
        raise ImportRefused(f"the model's batch axis is fixed at {shape[0]} (input {input_name!r} has shape {shape}); "
                            "the agent embeds images in batches: export it with a dynamic batch axis, e.g. "
                            f"{ONNX_EXPORT_HINT}")
    return Interface(sess, input_name, output_name, outputs, shape)


def check_onnx(model_path: Path, pre: Preprocess, input_name: str | None = None,
               output_name: str | None = None) -> Checked:
    """``inspect_onnx``, then run a batch of 2 images at ``pre.size`` (float32, NCHW), as the agent will, and
    read the embedding from the output; ImportRefused saying what to change when it fails."""
    face = inspect_onnx(model_path, input_name, output_name)
    sess, input_name, output_name, outputs, shape = (face.session, face.input_name, face.output_name, face.outputs,
                                                     face.input_shape)
    h, w = pre.size
    if face.size is not None and face.size != (h, w):
        fh, fw = face.size
        raise ImportRefused(f"the model takes {fh}x{fw} images (input shape {shape}) but the declared size is "
                            f"{h}x{w}: pass --size {fh} {fw}, or export the model with free height and width")
    x = np.random.default_rng(0).standard_normal((CHECK_BATCH, 3, h, w)).astype(np.float32)
    try:
        out = np.asarray(sess.run([output_name], {input_name: x})[0])
    except Exception as e:
        raise ImportRefused(f"the model fails on a batch of {CHECK_BATCH} float32 NCHW images at {h}x{w} "
                            f"({_first_line(e)}): the agent feeds exactly that. Check --size, and that the model was "
                            f"exported with a dynamic batch axis, e.g. {ONNX_EXPORT_HINT}") from None
    if out.ndim < 2 or out.shape[0] != CHECK_BATCH or any(d != 1 for d in out.shape[2:]):
        raise ImportRefused(f"the output {output_name!r} has shape {tuple(out.shape)} for a batch of {CHECK_BATCH}; "
                            f"an embedding is (N, D), or (N, D, 1, 1) as pooled CNN features are: pick another "
                            f"output with --output-name (outputs: {', '.join(outputs)}), or export the pooled "
                            "features")
    if out.dtype != np.float32:
        raise ImportRefused(f"the output {output_name!r} is {out.dtype}; the agent reads float32 embeddings")
    if not np.isfinite(out).all():
        raise ImportRefused(f"the output {output_name!r} holds NaN or infinite values on random inputs")
    return Checked(input_name, output_name, tuple(int(v) for v in out.shape), int(out.shape[1]))


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__


def _served_model(model_path: Path, checked: Checked) -> bytes | None:
    """The bytes to publish when the file must change (its output is not a 2-D ``embedding``): a copy with a
    Flatten node writing ``embedding`` from the chosen output, the graph's only output. None: publish as is."""
    if checked.output_name == EMBEDDING_OUTPUT and len(checked.output_shape) == 2:
        return None
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(model_path))
    graph = model.graph
    source = checked.output_name
    if source == EMBEDDING_OUTPUT:  # (N, D, 1, 1) named embedding: the Flatten takes the name, the pooled map another
        source = POOLED_NAME
        for node in graph.node:
            node.input[:] = [POOLED_NAME if n == EMBEDDING_OUTPUT else n for n in node.input]
            node.output[:] = [POOLED_NAME if n == EMBEDDING_OUTPUT else n for n in node.output]
    used = {name for node in graph.node for name in (*node.input, *node.output)} | \
        {t.name for t in graph.initializer} | {i.name for i in graph.input}
    if EMBEDDING_OUTPUT in used:
        raise ImportRefused(f"the model has a tensor named {EMBEDDING_OUTPUT!r} that is not the chosen output "
                            f"{checked.output_name!r}; rename it when exporting (the agent reads "
                            f"{EMBEDDING_OUTPUT!r})")
    graph.node.append(helper.make_node("Flatten", [source], [EMBEDDING_OUTPUT], axis=1,
                                       name="shortlist_import_embedding"))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(EMBEDDING_OUTPUT, TensorProto.FLOAT, ["N", checked.dim]))
    if not any(o.domain in ("", "ai.onnx") for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("", 13))
    return bytes(model.SerializeToString())


def import_onnx(model_path: str | Path, registry: str | Path, pre: Preprocess, input_name: str | None = None,
                output_name: str | None = None) -> tuple[str, Manifest]:
    """Check ``model_path`` (``check_onnx``), write it and its manifest into a staging folder of ``registry``,
    load that folder with the agent's Embedder, then publish it atomically (shortlist.manifest.publish): the new
    version's name and manifest. ImportRefused (nothing published) when the model or registry will not do."""
    from agent.embedder import Embedder

    model_path, registry = Path(model_path), Path(registry)
    if not model_path.is_file():
        raise ImportRefused(f"{model_path} is not a file (give the .onnx file to import)")
    if registry.exists() and not registry.is_dir():
        raise ImportRefused(f"{registry} is a file: --models takes the registry folder (it holds v0001/, ...)")
    if mistake := registry_mistake(registry):
        raise ImportRefused(mistake)
    checked = check_onnx(model_path, pre, input_name, output_name)
    rewritten = _served_model(model_path, checked)
    manifest = Manifest(preprocess=pre, embedding_dim=checked.dim, outputs=[EMBEDDING_OUTPUT],
                        input_name=checked.input_name, arch=f"onnx:{model_path.name}", method=IMPORT_METHOD,
                        source_run=str(model_path.resolve()),
                        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    registry.mkdir(parents=True, exist_ok=True)
    staging = registry / f".tmp-import-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        onnx_path = staging / ONNX_NAME
        if rewritten is None:
            shutil.copyfile(model_path, onnx_path)
        else:
            onnx_path.write_bytes(rewritten)
        manifest.verification = {"import": {"source_sha256": sha256_file(model_path),
                                            "source_output": checked.output_name,
                                            "source_output_shape": list(checked.output_shape),
                                            "checked_batch": CHECK_BATCH, "rewritten": rewritten is not None}}
        manifest.files = {ONNX_NAME: sha256_file(onnx_path)}
        _agent_loads(staging, manifest, model_path, checked, Embedder)
        fsync_path(onnx_path)
        (staging / MANIFEST_NAME).write_text(manifest.to_json())
        fsync_path(staging / MANIFEST_NAME)
        fsync_path(staging)
        version = publish(registry, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return version, manifest


def _agent_loads(staging: Path, manifest: Manifest, source: Path, checked: Checked, embedder: type) -> None:
    """Load the staged version with the agent's loader (its own shape check) and embed a batch of
    ``CHECK_BATCH`` images through it, as Ingest does; when the file was rewritten, its embeddings must be the
    original's. ImportRefused otherwise."""
    h, w = manifest.preprocess.size
    images = np.random.default_rng(1).integers(0, 256, (CHECK_BATCH, h, w, 3), dtype=np.uint8)
    try:
        emb = embedder(staging, manifest, batch_size=CHECK_BATCH, use_cuda=False, pretext=False)
        vecs = emb.embed(images).vecs
    except Exception as e:
        raise ImportRefused(f"the agent's loader refuses the model: {_first_line(e)}") from None
    if vecs.shape != (CHECK_BATCH, checked.dim) or not np.isfinite(vecs).all():
        raise ImportRefused(f"the agent's loader gave embeddings of shape {vecs.shape} (expected "
                            f"{(CHECK_BATCH, checked.dim)}) or non-finite values")
    if manifest.verification["import"]["rewritten"]:
        import onnxruntime as ort

        x = manifest.preprocess.normalize(images)
        sess = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
        ref = np.asarray(sess.run([checked.output_name], {checked.input_name: x})[0]).reshape(CHECK_BATCH, -1)
        norms = np.linalg.norm(ref, axis=1, keepdims=True)
        ref = ref / np.where(norms > 0, norms, 1)
        err = float(np.abs(ref - vecs).max())
        manifest.verification["import"]["max_abs_error_vs_source"] = err
        if not err < 1e-5:
            raise ImportRefused(f"the published copy's embeddings differ from the original's by {err:.2e}")


def import_command(
        model: Path = typer.Argument(..., help="the ONNX encoder to publish (e.g. from torch.onnx.export with a "
                                     "dynamic batch axis)"),
        models: Path = typer.Option(..., "--models", help="the registry folder to publish into (what `shortlist "
                                    "serve --models` serves; created when missing)"),
        preprocess: str | None = typer.Option(None, "--preprocess", help=f"a preset size, mean and std: "
                                              f"{' | '.join(PREPROCESS_PRESETS)} (imagenet: 224 px, ImageNet mean "
                                              "and std); --size, --mean and --std override its values"),
        size: tuple[int, int] | None = typer.Option(None, "--size", metavar="H W", help="input height and width: "
                                                    "every image is resized (squashed, no crop) to H x W (default: "
                                                    "the model's own fixed size, else the preset's)"),
        mean: tuple[float, float, float] | None = typer.Option(None, "--mean", metavar="R G B",
                                                               help="per-channel mean on pixels scaled to [0, 1]"),
        std: tuple[float, float, float] | None = typer.Option(None, "--std", metavar="R G B",
                                                              help="per-channel std on pixels scaled to [0, 1]"),
        interpolation: str = typer.Option("bilinear", "--interpolation", help=" | ".join(INTERPOLATIONS)),
        input_name: str | None = typer.Option(None, "--input-name", help="the model's image input (default: its "
                                              "only input)"),
        output_name: str | None = typer.Option(None, "--output-name", help="the output that is the embedding, "
                                               "(N, D) or (N, D, 1, 1) (default: the model's only output; required "
                                               "when it has several)"),
        as_json: bool = typer.Option(False, "--json", help="the outcome as one JSON object on stdout")) -> None:
    """Publish an ONNX encoder that Shortlist did not train as the registry's next version. The preprocessing
    is declared once, here, and written into its manifest. The model is first run as the agent will run it (a
    batch of 2 float32 N x 3 x H x W images at the declared size); a model that fails is refused with advice
    and nothing is published."""
    from agent.cli import json_line

    def fail(message: str, code: int) -> NoReturn:
        if as_json:
            print(json_line({"error": message, "published": None}))
        else:
            typer.echo(f"error: {message}", err=True)
        raise typer.Exit(code)

    if not model.is_file():
        fail(f"{model} is not a file (give the .onnx file to import)", 2)
    try:  # names, type and layout first: their advice matters more than a missing option
        fixed = inspect_onnx(model, input_name, output_name).size
    except ImportRefused as e:
        fail(f"{e}; nothing was published", 1)
    try:
        pre = preprocess_from_options(preprocess, size, mean, std, interpolation, fixed)
    except ImportRefused as e:
        fail(str(e), 2)
    try:
        version, manifest = import_onnx(model, models, pre, input_name, output_name)
    except ImportRefused as e:
        fail(f"{e}; nothing was published", 1)
    except (OSError, RegistryError) as e:
        fail(f"could not publish into {models}: {e}; nothing was published", 1)
    outcome = {"published": version, "registry": str(models), "embedding_dim": manifest.embedding_dim,
               "input_name": manifest.input_name, "preprocess": manifest.preprocess.to_dict()}
    if as_json:
        print(json_line(outcome))
        return
    h, w = pre.size
    typer.echo(f"published {models / version} (embedding {manifest.embedding_dim}, input {manifest.input_name!r} "
               f"{h}x{w}, mean {list(pre.mean)}, std {list(pre.std)}, {pre.interpolation})")
    typer.echo(f"serve it: shortlist serve --models {models} --data-dir DATA (an agent already serving {models} "
               f"takes {version} up at its next registry check: it embeds its pool with it and answers with the "
               "old model until that is done; `shortlist status` shows the progress)")
    typer.echo(f"benchmark it: shortlist bench embeddings --encoder {models / version} ...")
