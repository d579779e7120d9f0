"""Label spreading over the kNN graph (Zhou, Bousquet, Lal, Weston & Schölkopf, "Learning with Local and
Global Consistency", NIPS 2003, proceedings 2004; paper not in shared/papers), sparse so it scales past
dense affinities."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy import sparse
from scipy.sparse.linalg import cg

from agent.cancel import checkpoint
from agent.params import Param, prior_method
from agent.pool import Pool, Priors
from agent.priors._common import normalise_rows, require_labels, with_known_labels
from agent.strategies._common import one_blas_thread, pool_knn_graph

# Defaults of Iscen et al., "Label Propagation for Deep Semi-supervised Learning", CVPR 2019, experiments
# (k = 50 neighbours, gamma = 3, alpha = 0.99), who run Zhou et al.'s spreading on a CNN's kNN graph.
LLGC_K = 50
LLGC_GAMMA = 3.0
LLGC_ALPHA = 0.99
CG_ITERS = 20
LLGC_PARAMS = (
    Param("k", "int", LLGC_K, "neighbours per row in the kNN graph", 1, 100),
    Param("alpha", "float", LLGC_ALPHA, "spreading strength (Zhou et al.'s alpha)", 0.0, 0.9999),
    Param("gamma", "float", LLGC_GAMMA, "affinity exponent: max(cos, 0)^gamma", 0.0, 20.0),
)


def knn_affinity(nbr: np.ndarray, dist: np.ndarray, gamma: float) -> sparse.csr_matrix:
    """Symmetric sparse affinity W = A + A^T, A_ij = max(cos_ij, 0)^gamma for j in kNN(i), i != j
    (Iscen, Tolias, Avrithis & Chum, "Label Propagation for Deep Semi-supervised Learning", CVPR 2019,
    their sparse kNN affinity matrix; equation number not checked: paper not in shared/papers).
    Deviates from Zhou et al.'s algorithm (Sec. 2, step 1), whose affinity is dense and Gaussian,
    W_ij = exp(-||x_i - x_j||^2 / 2 sigma^2) for i != j, W_ii = 0: a kNN graph of powered cosines is what
    Iscen et al. spread on, and it is sparse (N K entries instead of N^2).
    nbr NxK rows, dist NxK cosine distances (1 - cos); returns NxN float64."""
    n, k = nbr.shape
    src = np.repeat(np.arange(n), k)
    dst = nbr.ravel()
    w = np.maximum(1.0 - dist.ravel().astype(np.float64), 0.0) ** gamma
    keep = (src != dst) & (w > 0)
    a = sparse.csr_matrix((w[keep], (src[keep], dst[keep])), shape=(n, n))
    return (a + a.T).tocsr()


def spread(w: sparse.csr_matrix, y: np.ndarray, alpha: float, iters: int = CG_ITERS) -> np.ndarray:
    """Label spreading (Zhou, Bousquet, Lal, Weston & Schölkopf, "Learning with Local and Global
    Consistency", NIPS 2003, Sec. 2, their four-step algorithm; equation numbers not checked: paper not in
    shared/papers): step 2's S = D^-1/2 W D^-1/2, step 3's iteration F <- alpha S F + (1 - alpha) Y, whose
    limit (step 4's F*) is F* = (1 - alpha)(I - alpha S)^-1 Y, the closed form the paper derives right after
    the algorithm. Solved per class by conjugate gradients (I - alpha S is symmetric positive definite), as
    Iscen et al. 2019 do, instead of iterating: CG_ITERS iterations at most, so F is approximate.
    w NxN affinity, y NxC one-hot seeds (zero rows for unlabelled); returns F NxC."""
    deg = np.asarray(w.sum(axis=1)).ravel()
    inv_sqrt = np.where(deg > 0, 1.0 / np.sqrt(np.where(deg > 0, deg, 1.0)), 0.0)
    s = sparse.diags(inv_sqrt) @ w @ sparse.diags(inv_sqrt)
    system = (sparse.identity(w.shape[0], format="csr") - alpha * s).tocsr()
    f = np.zeros(y.shape)
    # One BLAS thread (``shortlist serve`` runs BLAS at one thread anyway, agent/threads.py, so this is for
    # library use: bench strategies, scripts): CG's dot products are of single N-vectors, too small to
    # split, and BLAS threads spin on them beside another busy process (docs/reliability.md, "PriorLabels
    # as3l and llgc").
    with one_blas_thread():
        for c in range(y.shape[1]):
            if not y[:, c].any():
                continue
            checkpoint()
            f[:, c], _ = cg(system, y[:, c], maxiter=iters, callback=lambda _: checkpoint())
    return (1.0 - alpha) * f


@prior_method("llgc", *LLGC_PARAMS)
def llgc_prior(pool: Pool, rows: np.ndarray, rng: np.random.Generator, params: Mapping[str, str]) -> Priors:
    """LLGC label spreading (Zhou et al. 2003, see ``spread``) over the sparse kNN graph of the whole pool
    from Pool.knn (``knn_affinity``; the graph is kept per model version, ``pool_knn_graph``).
    probs: the spread scores of each requested row, clipped at zero,
    class-mass normalised and row-normalised (uniform for a row the graph does not reach).
    Confidence: 1 - H(probs) / log C, the per-sample entropy weight of Iscen et al. 2019.
    Params: ``k`` (50), ``alpha`` (0.99), ``gamma`` (3).
    """
    p_k, p_alpha, p_gamma = LLGC_PARAMS
    k = p_k.get_int(params)
    alpha = p_alpha.get_float(params)
    gamma = p_gamma.get_float(params)
    require_labels(pool, "llgc")
    rows = np.asarray(rows, np.int64)
    n = len(pool.embeddings)
    nbr, dist = pool_knn_graph(pool, min(k + 1, n))  # kept across the calibration's fold runs
    w = knn_affinity(nbr, dist, gamma)
    y = np.zeros((n, pool.num_classes))
    y[pool.labeled, pool.labels] = 1.0
    f = spread(w, y, alpha)
    # Class mass normalisation (Zhu, Ghahramani & Lafferty, ICML 2003, "class mass normalization"):
    # scale each class's column to unit total mass, so a class seeded in a denser or better-connected
    # region does not swamp the rest (with one label per class, one well-connected seed otherwise takes
    # most of the pool).
    f = np.maximum(f, 0.0)
    f = f / np.maximum(f.sum(axis=0, keepdims=True), 1e-300)
    probs = normalise_rows(f[rows])
    c = pool.num_classes
    p = np.clip(probs.astype(np.float64), 1e-12, 1.0)
    ent = -np.sum(probs * np.log(p), axis=1)
    confidence = (1.0 - ent / np.log(c)) if c > 1 else np.ones(len(rows))
    return with_known_labels(pool, rows, Priors(probs=probs, confidence=np.clip(confidence, 0, 1)
                                                .astype(np.float32)))
