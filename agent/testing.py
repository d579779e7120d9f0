"""Small ONNX encoders built with the ``onnx`` helper (no torch), published into a registry the way
exporters/ does it. Used by the agent's tests, training's ``cycle`` test, the benchmark tests and
``shortlist bench agent``; lives in the package (not tests/) so those can import it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from shortlist.manifest import (
    EMBEDDING_OUTPUT,
    INPUT_NAME,
    LOGITS_OUTPUT,
    MANIFEST_NAME,
    ONNX_NAME,
    ROTATION_OUTPUT,
    Manifest,
    Preprocess,
    publish,
    sha256_file,
)

# onnxruntime 1.31 runs opset <= 23; pin an older one so any installed onnx writes a loadable model.
OPSET = 17
IR_VERSION = 8


def _init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(array, np.float32), name)


def linear_encoder(size: tuple[int, int] = (8, 8), dim: int = 16, classes: list[str] | None = None,
                   rotation: bool = False, seed: int = 0) -> onnx.ModelProto:
    """A linear encoder: ``embedding = flatten(image) @ W`` (Nx3xHxW -> NxD), optionally ``logits``
    (NxC, ``embedding @ Wc``) and ``rotation_logits`` (Nx4, ``flatten(image) @ Wr``, so it depends on
    orientation). Cheap, deterministic for a seed, and different seeds give different embeddings."""
    rng = np.random.default_rng(seed)
    flat = 3 * size[0] * size[1]
    inits = [_init("W", rng.normal(0, 1 / np.sqrt(flat), (flat, dim)))]
    nodes = [helper.make_node("Flatten", [INPUT_NAME], ["flat"], axis=1),
             helper.make_node("MatMul", ["flat", "W"], [EMBEDDING_OUTPUT])]
    outputs = [helper.make_tensor_value_info(EMBEDDING_OUTPUT, TensorProto.FLOAT, ["N", dim])]
    if classes:
        inits.append(_init("Wc", rng.normal(0, 1, (dim, len(classes)))))
        nodes.append(helper.make_node("MatMul", [EMBEDDING_OUTPUT, "Wc"], [LOGITS_OUTPUT]))
        outputs.append(helper.make_tensor_value_info(LOGITS_OUTPUT, TensorProto.FLOAT, ["N", len(classes)]))
    if rotation:
        inits.append(_init("Wr", rng.normal(0, 1 / np.sqrt(flat), (flat, 4))))
        nodes.append(helper.make_node("MatMul", ["flat", "Wr"], [ROTATION_OUTPUT]))
        outputs.append(helper.make_tensor_value_info(ROTATION_OUTPUT, TensorProto.FLOAT, ["N", 4]))
    inputs = [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", 3, size[0], size[1]])]
    graph = helper.make_graph(nodes, "linear_encoder", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    return model


def conv_encoder(size: tuple[int, int] = (32, 32), widths: tuple[int, ...] = (64, 128, 256, 512),
                 dim: int = 512, seed: int = 0) -> onnx.ModelProto:
    """A VGG-like CNN: per stage two 3x3 conv + ReLU (the first with stride 2 after stage 0), then
    global average pooling and a linear map to D. At the default widths it does ~0.21 GMACs per
    32x32 image (ResNet-18's CIFAR variant: ~0.56), so it stands in for a trained encoder in
    ``shortlist bench agent`` when no registry is given. Random weights (He init)."""
    rng = np.random.default_rng(seed)
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []
    x, cin = INPUT_NAME, 3
    for i, w in enumerate(widths):
        for j in range(2):
            stride = 2 if i > 0 and j == 0 else 1
            wname, bname, out = f"c{i}{j}_w", f"c{i}{j}_b", f"c{i}{j}"
            inits.append(_init(wname, rng.normal(0, np.sqrt(2 / (9 * cin)), (w, cin, 3, 3))))
            inits.append(_init(bname, np.zeros(w)))
            nodes.append(helper.make_node("Conv", [x, wname, bname], [out + "_c"], kernel_shape=[3, 3],
                                          pads=[1, 1, 1, 1], strides=[stride, stride]))
            nodes.append(helper.make_node("Relu", [out + "_c"], [out]))
            x, cin = out, w
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["feat"], axis=1))
    inits.append(_init("fc", rng.normal(0, 1 / np.sqrt(cin), (cin, dim))))
    nodes.append(helper.make_node("MatMul", ["feat", "fc"], [EMBEDDING_OUTPUT]))
    inputs = [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", 3, size[0], size[1]])]
    outputs = [helper.make_tensor_value_info(EMBEDDING_OUTPUT, TensorProto.FLOAT, ["N", dim])]
    graph = helper.make_graph(nodes, "conv_encoder", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    return model


def foreign_encoder(size: tuple[int, int] = (8, 8), dim: int = 16, input_name: str = INPUT_NAME,
                    output_name: str = EMBEDDING_OUTPUT, batch: int | None = None, nhwc: bool = False,
                    float16: bool = False, pooled: bool = False, reshape_batch: int | None = None,
                    feature_map: bool = False, nonfinite: str = "", seed: int = 0) -> onnx.ModelProto:
    """A linear encoder (``linear_encoder``) exported the ways encoders brought from elsewhere are: another input
    or output name, a batch axis fixed at ``batch``, channels-last input (``nhwc``), a float16 input, a
    ``pooled`` Nx``dim``x1x1 output, a ``feature_map`` Nx(``dim``/4)x2x2 output (no pooling layer), or a graph
    that reshapes to a fixed batch of ``reshape_batch`` inside (declared dynamic, runs at that batch size only:
    what tracing a batch of 1 can leave). ``nonfinite``: "always" divides the output by 0 (NaN or infinite for
    every image, the load check's blank batch too), "some" takes its square root (NaN wherever a projection is
    negative: real images, not the blank batch, whose output is 0)."""
    rng = np.random.default_rng(seed)
    h, w = size
    flat = 3 * h * w
    elem = TensorProto.FLOAT16 if float16 else TensorProto.FLOAT
    declared: list[int | str] = [batch if batch is not None else "N", *((h, w, 3) if nhwc else (3, h, w))]
    inits = [_init("W", rng.normal(0, 1 / np.sqrt(flat), (flat, dim)))]
    nodes, x = [], input_name
    if float16:
        nodes.append(helper.make_node("Cast", [x], ["x32"], to=TensorProto.FLOAT))
        x = "x32"
    if nhwc:
        nodes.append(helper.make_node("Transpose", [x], ["nchw"], perm=[0, 3, 1, 2]))
        x = "nchw"
    if reshape_batch is not None:
        inits.append(numpy_helper.from_array(np.array([reshape_batch, flat], np.int64), "fixed"))
        nodes.append(helper.make_node("Reshape", [x, "fixed"], ["flat"]))
    else:
        nodes.append(helper.make_node("Flatten", [x], ["flat"], axis=1))
    out_shape: list[int | str] = ["N", dim]
    if pooled or feature_map:
        shape = [dim // 4, 2, 2] if feature_map else [dim, 1, 1]
        inits.append(numpy_helper.from_array(np.array([-1, *shape], np.int64), "pool_shape"))
        nodes += [helper.make_node("MatMul", ["flat", "W"], ["vec"]),
                  helper.make_node("Reshape", ["vec", "pool_shape"], [output_name])]
        out_shape = ["N", *shape]
    elif nonfinite:
        nodes.append(helper.make_node("MatMul", ["flat", "W"], ["vec"]))
        if nonfinite == "always":
            inits.append(numpy_helper.from_array(np.zeros(1, np.float32), "zero"))
            nodes.append(helper.make_node("Div", ["vec", "zero"], [output_name]))
        else:
            nodes.append(helper.make_node("Sqrt", ["vec"], [output_name]))
    else:
        nodes.append(helper.make_node("MatMul", ["flat", "W"], [output_name]))
    graph = helper.make_graph(nodes, "foreign_encoder", [helper.make_tensor_value_info(input_name, elem, declared)],
                              [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, out_shape)],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    return model


def publish_model(registry: Path, model: onnx.ModelProto, preprocess: Preprocess,
                  classes: list[str] | None = None, method: str = "test", input_name: str = INPUT_NAME) -> str:
    """Write ``model`` and its manifest into a ``.tmp-*`` folder of ``registry`` (fsynced), then
    publish it atomically with shortlist.manifest.publish. Returns the version name (``v0001``...). The
    manifest's ``output_name`` is the graph's first output; ``input_name`` is written as given."""
    registry.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=registry))
    onnx_path = staging / ONNX_NAME
    onnx_path.write_bytes(model.SerializeToString())
    outputs = [o.name for o in model.graph.output]
    dim = model.graph.output[0].type.tensor_type.shape.dim[1].dim_value
    manifest = Manifest(preprocess=preprocess, embedding_dim=int(dim), outputs=outputs, classes=classes,
                        method=method, files={ONNX_NAME: sha256_file(onnx_path)}, input_name=input_name,
                        output_name=outputs[0])
    (staging / MANIFEST_NAME).write_text(manifest.to_json())
    for p in (onnx_path, staging / MANIFEST_NAME):
        with open(p, "rb") as f:
            os.fsync(f.fileno())
    return publish(registry, staging)


def publish_linear(registry: Path, size: tuple[int, int] = (8, 8), dim: int = 16,
                   classes: list[str] | None = None, rotation: bool = False, seed: int = 0) -> str:
    """Publish a ``linear_encoder`` (CIFAR-10 mean/std at ``size``) into ``registry``; returns its version."""
    pre = Preprocess(size=size)
    return publish_model(registry, linear_encoder(size, dim, classes, rotation, seed), pre, classes)
