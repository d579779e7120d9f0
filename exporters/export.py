"""Export a training run's encoder to ONNX (+ TorchScript), verify it, and publish it atomically.

``export_run(run_dir, registry) -> version`` is the whole pipeline:

1. rebuild the encoder from run_dir/encoder.pt (training.pretrain.save_encoder) in eval mode, fp32;
2. write, into a staging folder *inside* the registry (``.tmp-*``, which the agent never loads),
   ``encoder.onnx`` (input ``image`` Nx3xHxW float32 -> ``embedding`` NxD, plus ``logits`` NxC when
   the run has a classifier and ``rotation_logits`` Nx4 for RotNet; dynamic batch; opset ``OPSET``;
   the manifest JSON in its metadata_props under ``MANIFEST_KEY``) and ``encoder.ts`` (TorchScript);
3. verify: eager vs onnxruntime vs TorchScript on a random batch and on a batch of real images,
   printing each output's max relative error (``max|a - b| / max|a|``: relative to the output's
   scale, because element-wise ratios blow up near zero) and raising ``VerificationError`` if any is
   >= ``TOLERANCE``;
4. write manifest.json last (with every file's sha256), fsync, and rename the folder to the next
   ``vNNNN`` with shortlist.manifest.publish.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from shortlist.manifest import (
    EMBEDDING_OUTPUT,
    INPUT_NAME,
    LOGITS_OUTPUT,
    ONNX_NAME,
    ROTATION_OUTPUT,
    TORCHSCRIPT_NAME,
    Manifest,
    Preprocess,
    publish_staged,
    registry_mistake,
    sha256_file,
    staging_folder,
)
from training.methods import Encoder
from training.pretrain import load_encoder

OPSET = 17  # pinned: onnxruntime >= 1.14 runs it everywhere
TOLERANCE = 1e-4  # max relative error allowed between runtimes (fp32)
MANIFEST_KEY = "shortlist.manifest"
FORMATS = ("onnx", "torchscript")
REDUCED_FORMATS = ("int8", "fp16")  # optional, verified by kNN-neighbour agreement (exporters.reduced)


class ExportError(RuntimeError):
    """The encoder could not be exported or verified: nothing is published."""


class VerificationError(ExportError):
    """An exported model disagrees with the eager model beyond TOLERANCE: nothing is published."""


class ExportWrapper(nn.Module):
    """Encoder -> tuple of outputs in ``output_names`` order (embedding first)."""

    def __init__(self, encoder: Encoder) -> None:
        super().__init__()
        self.encoder = encoder

    @property
    def output_names(self) -> list[str]:
        names = [EMBEDDING_OUTPUT]
        if self.encoder.classifier is not None:
            names.append(LOGITS_OUTPUT)
        if self.encoder.rotation is not None:
            names.append(ROTATION_OUTPUT)
        return names

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        emb = self.encoder(image)
        out = [emb]
        if self.encoder.classifier is not None:
            out.append(self.encoder.classifier(emb))
        if self.encoder.rotation is not None:
            out.append(self.encoder.rotation(emb))
        return tuple(out)


def git_commit() -> str:
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).resolve().parent, timeout=10)
        return res.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def export_onnx(wrapper: ExportWrapper, path: Path, size: tuple[int, int], metadata: dict[str, str]) -> None:
    """Write ``path`` (single file, weights inside) with a dynamic batch axis and ``metadata`` props."""
    import onnx

    example = torch.randn(2, 3, *size)
    names = wrapper.output_names
    axes = {INPUT_NAME: {0: "batch"}, **{n: {0: "batch"} for n in names}}
    # the TorchScript-based exporter: exact for these static CNNs and fast; its deprecation notice is noise
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            torch.onnx.export(wrapper, (example,), str(path), input_names=[INPUT_NAME], output_names=names,
                              dynamic_axes=axes, opset_version=OPSET, dynamo=False, do_constant_folding=True)
        except Exception as e:  # the exporter's own errors (unsupported operators) have no common base class
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ExportError(f"the encoder cannot be exported to ONNX at {size[0]}x{size[1]} px ({first}); "
                              "nothing published: use another --arch or input size") from e
    model = onnx.load(str(path))
    for k, v in metadata.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = k, v
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def export_torchscript(wrapper: ExportWrapper, path: Path, size: tuple[int, int]) -> None:
    """Traced TorchScript (the encoders are static graphs, so tracing captures them exactly)."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still the TorchScript writer
        traced = torch.jit.trace(wrapper, (torch.randn(2, 3, *size),), check_trace=False)
    traced.save(str(path))  # type: ignore[no-untyped-call]


def max_rel_error(ref: np.ndarray, got: np.ndarray) -> float:
    """max|ref - got| / max|ref| over two outputs of the same shape (e.g. NxD embeddings), a float >= 0; the
    absolute error when ``ref`` is all zero (0 when both are)."""
    scale = float(np.abs(ref).max())
    err = float(np.abs(ref.astype(np.float64) - got.astype(np.float64)).max())
    return err / scale if scale > 0 else err


def verify(wrapper: ExportWrapper, files: dict[str, Path], batches: dict[str, np.ndarray],
           tolerance: float = TOLERANCE, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Compare eager vs each exported file on each batch (Nx3xHxW float32); VerificationError if off.

    Returns {runtime: {batch name: {output: max relative error}}}.
    """
    report: dict[str, Any] = {"tolerance": tolerance}
    names = wrapper.output_names
    wrapper.eval()
    failures = []
    for runtime, path in files.items():
        run = _onnx_runner(path, names) if runtime == "onnx" else _torchscript_runner(path)
        report[runtime] = {}
        for bname, x in batches.items():
            with torch.no_grad():
                ref = [o.numpy() for o in wrapper(torch.from_numpy(x))]
            got = run(x)
            errs = {n: max_rel_error(r, g) for n, r, g in zip(names, ref, got, strict=True)}
            report[runtime][bname] = errs
            worst = max(errs.values())
            log(f"verify {runtime:11s} {bname:6s} batch {len(x):3d}: max relative error "
                + ", ".join(f"{n} {e:.2e}" for n, e in errs.items()))
            if not worst < tolerance:
                failures.append(f"{runtime} on {bname} batch: {worst:.3e} >= {tolerance:.0e}")
    if failures:
        raise VerificationError("export verification failed (nothing published): " + "; ".join(failures))
    return report


def _onnx_runner(path: Path, names: list[str]) -> Any:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: list(sess.run(names, {INPUT_NAME: x}))


def _torchscript_runner(path: Path) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        ts = torch.jit.load(str(path))  # type: ignore[no-untyped-call]

    def run(x: np.ndarray) -> list[np.ndarray]:
        with torch.no_grad():
            return [o.numpy() for o in ts(torch.from_numpy(x))]
    return run


def real_batch(meta: dict[str, Any], pre: Preprocess, n: int = 16,
               log: Callable[[str], None] = print) -> np.ndarray | None:
    """Up to ``n`` real images of the run's data set, preprocessed (Nx3xHxW float32), or None.

    Evenly spread over the source (reading is cheap, decoding is not: only the chosen ones are decoded),
    so a class-sorted folder still gives every class.
    """
    data = meta.get("dataset") or ""
    if not data or data.startswith("agent:"):  # samples pulled from an agent: nothing to read back here
        return None
    try:
        from shortlist.datasets import iter_images
        from shortlist.images import preprocess_array, preprocess_image

        items = list(iter_images(data, "train"))
        chosen = [items[i] for i in np.linspace(0, len(items) - 1, min(n, len(items))).astype(int)]
        imgs = [preprocess_array(it.pixels, pre) if it.pixels is not None  # resized as the agent will
                else preprocess_image(it.encoded or b"", pre) for it in chosen]
    except (OSError, ValueError) as e:
        log(f"note: the run's data set {data!r} cannot be read from here ({e}); verifying on random inputs only")
        return None
    return pre.normalize(np.stack(imgs)) if imgs else None


def registry_problem(registry: Path) -> None:
    """ValueError when ``registry`` cannot be a model registry: a file, a version folder inside one (whose
    versions would nest, vNNNN/vNNNN, where no agent looks), or a training run folder (no agent serves from
    it). A missing or empty folder is a registry to be: the first publish creates it."""
    if registry.exists() and not registry.is_dir():
        raise ValueError(f"{registry} is a file: --models takes the registry folder (it holds v0001/, v0002/, ...)")
    if mistake := registry_mistake(registry):  # a training run folder, a folder of images, a version folder
        raise ValueError(mistake)


def export_run(run_dir: str | Path, registry: str | Path, formats: Sequence[str] = FORMATS,
               real_images: np.ndarray | None = None, log: Callable[[str], None] = print) -> str:
    """Export, verify and publish ``run_dir``'s encoder into ``registry``; returns the version name.

    ``real_images``: NxHxWx3 uint8 to verify on (default: a few images of the run's data set).
    """
    run_dir, registry = Path(run_dir), Path(registry)
    unknown = sorted(set(formats) - set(FORMATS) - set(REDUCED_FORMATS))
    if unknown or "onnx" not in formats:
        raise ValueError(f"formats must include onnx and be among {', '.join(FORMATS + REDUCED_FORMATS)}; "
                         f"got {list(formats)}")
    reduced = [f for f in formats if f in REDUCED_FORMATS]
    registry_problem(registry)
    encoder, meta = load_encoder(run_dir)
    wrapper = ExportWrapper(encoder).eval()
    pre = Preprocess.from_dict(meta["preprocess"])
    classes = meta.get("classes") if encoder.classifier is not None else None
    if encoder.classifier is not None and (not classes or len(classes) != encoder.classifier.out_features):
        raise ValueError(f"{run_dir}: classifier has {encoder.classifier.out_features} outputs but classes are "
                         f"{classes}")
    manifest = Manifest(
        preprocess=pre, embedding_dim=encoder.dim, outputs=wrapper.output_names, classes=classes,
        arch=str(meta["arch"]), method=str(meta["method"]), source_run=str(run_dir.resolve()),
        training_config=dict(meta.get("config") or {}), dataset=str(meta.get("dataset") or ""),
        git_commit=git_commit(), created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))

    registry.mkdir(parents=True, exist_ok=True)
    with staging_folder(registry, "export") as staging:
        files = {"onnx": staging / ONNX_NAME}
        export_onnx(wrapper, files["onnx"], pre.size, {MANIFEST_KEY: manifest.to_json()})
        if "torchscript" in formats:
            files["torchscript"] = staging / TORCHSCRIPT_NAME
            export_torchscript(wrapper, files["torchscript"], pre.size)
        rng = np.random.default_rng(0)
        batches = {"random": rng.standard_normal((8, 3, *pre.size)).astype(np.float32)}
        real = (pre.normalize(real_images) if real_images is not None
                else real_batch(meta, pre, 256 if reduced else 16, log))
        if real is not None:
            batches["real"] = real[:16].astype(np.float32)
        manifest.verification = verify(wrapper, files, batches, log=log)
        if reduced:
            from exporters.reduced import reduced_exports

            if real is None or len(real) < 32:
                raise ValueError("int8/fp16 exports need >= 32 real images to calibrate and verify on")
            rep = reduced_exports(files["onnx"], reduced, real.astype(np.float32), log=log)
            manifest.verification["reduced"] = rep
            for fmt, r in rep.items():
                files[fmt] = staging / r["file"]
        manifest.files = {p.name: sha256_file(p) for p in files.values()}
        version = publish_staged(registry, staging, manifest)
    log(f"published {registry / version} ({', '.join(files)}; embedding {encoder.dim}, outputs "
        f"{', '.join(wrapper.output_names)})")
    return version


def read_onnx_manifest(path: str | Path) -> Manifest:
    """The manifest embedded in an exported ONNX file's metadata (files/hashes are only in manifest.json)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for prop in model.metadata_props:
        if prop.key == MANIFEST_KEY:
            return Manifest.from_json(prop.value)
    raise ValueError(f"{path} has no {MANIFEST_KEY} metadata")
