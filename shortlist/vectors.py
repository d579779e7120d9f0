"""Row-vector helpers shared by the agent, the exporters and the benchmarks (numpy only)."""

from __future__ import annotations

import numpy as np

# The floor under a row's L2 norm: an all-zero row stays zero instead of becoming NaN. (scikit-learn's
# ``normalize`` is not used: it leaves a float32 row shorter than ~1e-6 as it is instead of scaling it.)
MIN_NORM = 1e-12


def unit_rows(x: np.ndarray) -> np.ndarray:
    """NxD rows scaled to unit L2 norm (cosine space), as float32; an all-zero row stays zero."""
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), MIN_NORM)
