"""AS3L's active labelling (Wen, Pizarro & Williams, "Active self-semi-supervised learning for few
labeled samples", Neurocomputing (2024) 128772; arXiv 2203.04560v3).

Checked against the paper's text (../shared/papers/001_972fd52aa54e2368.txt): Sec. 3.2.1 (fine-tune
the frozen self-supervised features with one linear layer of the backbone's width towards the centres
of C k-means runs, Eq. 1), Sec. 3.2.2 (C k-means runs on the fine-tuned features, the samples assigned
together in all C runs, their medians) and Sec. 4.1 (C = 6; K = the number of samples to select; 40
epochs of fine-tuning). The paper's Algorithm 1 (its appendix) is not in that text, so the choices
marked "ours" below fill in what Sec. 3.2.2 leaves open.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from agent.cancel import checkpoint
from agent.params import KMeansWork, Param, strategy
from agent.pool import Pool, Selection
from agent.strategies._common import CHUNK, KMEANS_CPU_PER_UNIT, MAX_CLUSTERS, assign, fit_kmeans, pick_from_clusters

AS3L_RUNS = 6  # C, the number of k-means runs (Sec. 4.1: clustering is done 6 times)
# AS3L runs 2C k-means, so each is fitted on a smaller uniform sample than the other strategies' one
# (10k rows: still ~100 rows per centre at budget 100), which keeps Select on 1M rows within a minute.
AS3L_FIT_ROWS = 10_000
# Lloyd iterations per run (ours): the 2C runs are one k-means++ start each and are meant to differ; 10
# iterations instead of 50: on the load pool at k = 500 (10,000 sample rows) the inertia after 10
# iterations was within a small fraction of a percent of that after 20, while the 2C runs' Lloyd steps
# were most of AS3L's time (docs/reliability.md, "Measured", k-means at many centres); structured
# embeddings converge in fewer.
AS3L_MAX_ITER = 10
AS3L_PARAMS = (
    Param("runs", "int", AS3L_RUNS, "C, the k-means runs (2C k-means fits in all)", 1, 10),
    Param("k", "int", None, "k-means clusters", 1, MAX_CLUSTERS,
          default_doc=f"labelled + budget, at most {MAX_CLUSTERS}"),
    Param("ridge", "float", 1e-3, "ridge of Eq. 1's least squares, relative to tr(X^T X) / D", 0.0, 1e6, lo_open=True),
)


def as3l_kmeans(params: Mapping[str, str], labelled: int, budget: int) -> KMeansWork:
    """AS3L's k-means: k = the ``k`` param, else labelled + budget, at most MAX_CLUSTERS; 2C fits (C = the
    ``runs`` param: C for Eq. 1's targets, C on the fine-tuned features), counted relative to the default C."""
    p_runs, p_k, _ = AS3L_PARAMS
    return KMeansWork(p_k.get_int(params, min(labelled + budget, MAX_CLUSTERS)), p_runs.get_int(params) / AS3L_RUNS)


def cluster_targets(x: np.ndarray, k: int, runs: int, rng: np.random.Generator) -> np.ndarray:
    """The mean over ``runs`` k-means runs of each row's assigned centre: NxD float32 targets of Eq. 1."""
    target = np.zeros_like(x, dtype=np.float32)
    for _ in range(runs):
        checkpoint()
        centres = fit_kmeans(x, k, rng, fit_rows=AS3L_FIT_ROWS, n_init=1,  # one start per run: runs differ
                             max_iter=AS3L_MAX_ITER)
        lab, _ = assign(x, centres)
        target += centres[lab]
    return target / runs


def fit_linear_map(x: np.ndarray, target: np.ndarray, ridge: float) -> np.ndarray:
    """The closed-form optimum of AS3L's feature fine-tuning with one linear layer (Sec. 3.2.1, Eq. 1):

        W* = argmin_W sum_c sum_i ||x_i W - mu_{c, a_c(i)}||^2 + ridge * tr(x^T x)/D * ||W||^2
           = (X^T X + lambda I)^-1 X^T T,   T_i = (1/C) sum_c mu_{c, a_c(i)},

    since the sum over runs of squared errors equals C times the squared error to the runs' mean
    target plus a constant. The paper trains the layer (DxD: the width of the backbone's final layer,
    Sec. 4.1) for 40 epochs of gradient descent on Eq. 1; we solve for the optimum those epochs
    approach (deterministic, a second on a CPU, no torch in the agent). No bias term, and a small ridge
    keeps the solve well-posed. x, target NxD; returns DxD.
    """
    d = x.shape[1]
    xtx = np.zeros((d, d))
    xtt = np.zeros((d, target.shape[1]))
    for start in range(0, len(x), CHUNK):
        checkpoint()
        block = np.asarray(x[start:start + CHUNK], np.float64)
        xtx += block.T @ block
        xtt += block.T @ np.asarray(target[start:start + CHUNK], np.float64)
    lam = ridge * max(np.trace(xtx) / d, 1e-12)
    return np.linalg.solve(xtx + lam * np.eye(d), xtt)


def consensus_groups(assignments: np.ndarray) -> np.ndarray:
    """Group id per row for an NxC matrix of cluster ids: two rows share a group iff they were
    assigned together in every one of the C runs."""
    k = int(assignments.max()) + 1 if assignments.size else 1
    if assignments.shape[1] * np.log2(max(k, 2)) < 62:  # one int64 key per row: a 1-D unique is fast
        key = np.zeros(len(assignments), np.int64)
        for c in range(assignments.shape[1]):
            key = key * k + assignments[:, c]
        _, group = np.unique(key, return_inverse=True)
    else:
        _, group = np.unique(assignments, axis=0, return_inverse=True)
    return np.asarray(group, np.int64).ravel()


@strategy("as3l", *AS3L_PARAMS, needs="model", kmeans=as3l_kmeans, cpu_per_unit=KMEANS_CPU_PER_UNIT)
def as3l(pool: Pool, budget: int, rng: np.random.Generator, params: Mapping[str, str]) -> Selection:
    """AS3L active labelling (Wen et al., Sec. 3.2): fine-tune the self-supervised features with one linear
    layer towards the centres of C k-means runs (Sec. 3.2.1, Eq. 1, solved in closed form by
    ``fit_linear_map``), run C k-means with k clusters on the fine-tuned features, keep the samples
    assigned together in all C runs, and label their medians (Sec. 3.2.2); C = 6 and k = the number of
    samples to select (Sec. 4.1).

    Ours, where the outline is silent: the clusters split into cores are those of the run with the
    lowest k-means objective; a cluster's core is its largest always-together group; the "median" is
    the core member nearest the core's coordinate-wise median; cores are taken largest-first and
    clusters that already hold labelled samples come last (so the labelled set is complemented, not
    repeated), so k defaults to labelled + budget (= budget from zero labels, Sec. 4.1's single shot);
    the k-means runs of Eq. 1 use the same k (Sec. 3.2.1 does not give it); Eq. 1 gets a small ridge and
    is fitted on a 10k-row sample; each k-means run has one k-means++ start so the runs differ.

    Params: ``runs`` (C = 6), ``k`` (clusters; default labelled + budget, at most 500), ``ridge`` (1e-3).
    Score: core size as a share of its cluster (how stable the pick's neighbourhood is).
    """
    p_runs, _, p_ridge = AS3L_PARAMS
    runs = p_runs.get_int(params)
    ridge = p_ridge.get_float(params)
    cand = pool.candidates
    take = min(budget, len(cand))
    if take == 0:
        return Selection(rows=cand[:0], scores=np.zeros(0))
    k = as3l_kmeans(params, len(pool.labeled), budget).k
    x = pool.embeddings
    # Eq. 1 is fitted on a uniform sample (a DxD least-squares map is well determined by 10k rows);
    # the map is then applied to every row.
    sample = x if len(x) <= AS3L_FIT_ROWS else x[np.sort(rng.choice(len(x), AS3L_FIT_ROWS, replace=False))]
    w = fit_linear_map(sample, cluster_targets(sample, k, runs, rng), ridge).astype(np.float32)
    z = np.empty_like(x)
    for start in range(0, len(x), CHUNK):
        checkpoint()
        z[start:start + CHUNK] = x[start:start + CHUNK] @ w
    results = [assign(z, fit_kmeans(z, k, rng, fit_rows=AS3L_FIT_ROWS, n_init=1, max_iter=AS3L_MAX_ITER))
               for _ in range(runs)]
    assignments = np.stack([lab for lab, _ in results], axis=1)  # NxC
    # The run whose clusters are split into cores: the one with the lowest k-means objective, so a
    # single unlucky initialisation does not decide which groups get a label.
    best = int(np.argmin([float(sq.sum()) for _, sq in results]))
    first = assignments[:, best]
    k = int(first.max()) + 1
    group = consensus_groups(assignments)
    # The core of cluster c: its most populous consensus group.
    group_size = np.bincount(group)
    cluster_of_group = np.zeros(len(group_size), np.int64)
    cluster_of_group[group] = first
    order = np.lexsort((np.arange(len(group_size)), -group_size, cluster_of_group))
    is_first = np.ones(len(order), bool)
    is_first[1:] = cluster_of_group[order][1:] != cluster_of_group[order][:-1]
    core_of = np.full(k, -1, np.int64)
    core_of[cluster_of_group[order][is_first]] = order[is_first]
    sizes = np.bincount(first, minlength=k)
    core_sizes = np.where(core_of >= 0, group_size[np.maximum(core_of, 0)], 0)
    labelled = np.bincount(first[pool.labeled], minlength=k) if len(pool.labeled) else np.zeros(k, np.int64)
    has = np.bincount(first[cand], minlength=k) > 0
    in_core = group == core_of[first]
    stability = core_sizes / np.maximum(sizes, 1)

    def rank(c: int) -> tuple[np.ndarray, np.ndarray]:
        members = np.flatnonzero(first == c)
        core = members[in_core[members]]
        centre = np.median(z[core] if len(core) else z[members], axis=0)  # coordinate-wise median
        mine = cand[first[cand] == c]
        d = np.einsum("md,md->m", z[mine] - centre, z[mine] - centre)
        # Core members first (nearest the core median first), then the cluster's other candidates.
        order = np.lexsort((mine, d, ~in_core[mine]))
        return mine[order], np.full(len(mine), stability[c])

    return pick_from_clusters(core_sizes, labelled, has, rank, take)
