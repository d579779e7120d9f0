"""``shortlist bench cifar10``: the CIFAR-10 low-budget active-learning benchmark, run the way a user's
pipeline runs Shortlist: a real agent process over gRPC, a simulated annotator answering with the
true labels.

Per profile: get an encoder (pretrain one with training/ or take ``--encoder``), export and publish it
into a registry, start an agent on a free loopback port, stream the training pool through Ingest once,
then for each strategy and seed, on a fresh copy of that agent's data folder (so every strategy starts
from zero labels), run the cumulative loop over the budgets::

    Select(budget_i - budget_{i-1}) -> SubmitLabels(true labels) -> PriorLabels(each method) -> evaluate

Evaluation per point: linear probe (logistic regression) on the frozen embeddings of the labelled
samples, scored on the test set; class coverage of the labelled set; prior-label accuracy and ECE on
the unlabelled pool, per prior method.

The package, one concern per module (other benchmarks, e.g. ``bench as3l`` and ``bench recipe``, reuse them):

- ``profiles``: ``Profile``, ``PROFILES``, budgets, class-balanced subsets;
- ``data``: the pool and test rows of the splits, at the model's input size; ``require_splits``;
- ``encoder``: publish ``--encoder`` or pretrain (resumable) and export; ``embed_images``; ``_git_commit``;
  ``code_fingerprint``;
- ``process``: the agent as a subprocess (``agent_process``, ``wait_embedded``);
- ``ingest``: the pool ingested once per (pool, model) into a base data folder (``ingest_pool``);
- ``evaluation``: the per-strategy loop (``run_strategy``; its settings ``LoopSettings`` and data ``EvalData``),
  its records, the semi-supervised point;
- ``run``: ``run_benchmark`` (a profile with the command's ``Overrides``, ``Folders``); ``commands``: ``register``
  (bench cifar10, embeddings, report).
"""

from __future__ import annotations

from bench.cifar10.commands import register
from bench.cifar10.data import images_at_model_size, load_pool_and_test, require_splits
from bench.cifar10.encoder import (
    PoolSplits,
    _copy_version_into,
    _git_commit,
    earlier_pretraining,
    embed_images,
    prepare_encoder,
    publish_encoder,
    torch_run_of,
)
from bench.cifar10.evaluation import (
    EvalData,
    LoopSettings,
    Point,
    Run,
    SemiSupervised,
    _save,
    classifier_accuracy,
    run_strategy,
    save_embeddings,
    semi_supervised_accuracy,
    write_embeddings,
)
from bench.cifar10.ingest import ingest_items, ingest_pool
from bench.cifar10.process import agent_process, free_port, wait_embedded
from bench.cifar10.profiles import (
    CPU_PRETRAIN,
    LOW_BUDGET_STRATEGIES,
    PAPER_BUDGETS,
    PROFILES,
    Profile,
    check_budgets,
    hash_ids,
    resolve_budgets,
    stratified_subset,
)
from bench.cifar10.run import Folders, Overrides, run_benchmark

__all__ = [
    'CPU_PRETRAIN',
    'LOW_BUDGET_STRATEGIES',
    'PAPER_BUDGETS',
    'PROFILES',
    'EvalData',
    'Folders',
    'LoopSettings',
    'Overrides',
    'Point',
    'PoolSplits',
    'Profile',
    'Run',
    'SemiSupervised',
    '_copy_version_into',
    '_git_commit',
    '_save',
    'agent_process',
    'check_budgets',
    'classifier_accuracy',
    'earlier_pretraining',
    'embed_images',
    'free_port',
    'hash_ids',
    'images_at_model_size',
    'ingest_items',
    'ingest_pool',
    'load_pool_and_test',
    'prepare_encoder',
    'publish_encoder',
    'register',
    'require_splits',
    'resolve_budgets',
    'run_benchmark',
    'run_strategy',
    'save_embeddings',
    'semi_supervised_accuracy',
    'stratified_subset',
    'torch_run_of',
    'wait_embedded',
    'write_embeddings',
]
