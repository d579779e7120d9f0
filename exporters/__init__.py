"""Exporters: a training run's encoder -> verified ONNX (+ TorchScript) -> a published registry version.

``publish_run(run_dir, models) -> version`` (alias of exporters.export.export_run) is the entry point.
torch is imported only when it is called, so importing this package stays cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def publish_run(run_dir: str | Path, models: str | Path, formats: Sequence[str] = ("onnx", "torchscript"),
                real_images: np.ndarray | None = None) -> str:
    """Export, verify (eager vs onnxruntime vs TorchScript) and atomically publish ``run_dir``'s encoder
    into the registry folder ``models``; returns the new version name (``v0003``)."""
    from exporters.export import export_run

    return export_run(run_dir, models, formats, real_images)
