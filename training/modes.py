"""The names of training's modes and what each fine-tuning mode is, without importing torch: training/cli.py
builds its --help texts from them, and ``shortlist --help`` and the agent's commands must start without loading
torch.

``METHOD_CLASSES`` is the one registry of the self-supervised methods: name -> "module:Class" of the method's
``training.methods.SSLMethod`` subclass, resolved (and so torch imported) only when a method is built
(training.methods.METHODS is this registry with the classes resolved); ``METHOD_NAMES`` its names at import (the
--help texts). ``MODES`` holds one ``FinetuneMode`` per fine-tuning mode of training.finetune (its flags and the
"module:function" names of its functions), keyed by name, and
``FINETUNE_MODES`` their names; tests/training/test_methods.py keeps the two sets disjoint (``shortlist cycle``
takes both as --mode). The callers (the CLI, training.cycle, training.finetune, bench/recipes) read a mode's
flags here rather than comparing its name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# Method name (``--method``) -> "module:Class" (pkgutil.resolve_name) of its SSLMethod subclass: the one line a new
# method adds. A string, not the class, so that the CLI's help and its check of --method, the agent and bench/recipes
# know the names without importing torch.
METHOD_CLASSES: dict[str, str] = {
    "simsiam": "training.methods:SimSiam",
    "rotnet": "training.methods:RotNet",
    "moby": "training.methods:MoBY",
}
METHOD_NAMES: tuple[str, ...] = tuple(METHOD_CLASSES)  # (the names at import, for --help; checks read METHOD_CLASSES)


@dataclass(frozen=True)
class FinetuneMode:
    """What one fine-tuning mode does, as its callers need to know it. training.finetune keeps the mode's
    own functions (the probe of a frozen mode, the loss with unlabelled rows) keyed by the same name."""

    name: str
    # a head fitted once on the frozen encoder's features: no step or time budget applies, and a random
    # encoder's features mean nothing (a cycle needs --init)
    frozen: bool = False
    # a frozen mode: what sets its fit when a budget is refused (``{linear_epochs}``: FinetuneConfig's default)
    fit: str = ""
    probe_epochs: bool = False  # a frozen mode whose --epochs are its probe's epochs (else --epochs is refused)
    unlabelled: bool = False  # trains on the unlabelled rows too (a cycle pulls every sample, not the labelled)
    priors: bool = False  # takes class priors for the unlabelled rows (a cycle asks the agent's PriorLabels)
    contrastive: bool = False  # trains MoBY around the encoder (its model, optimiser and checkpoint are MoBY's)
    lr_schedule: str = "cosine"  # the trained modes' lr decay: "cosine" (loop.cosine_lr) or "fixmatch"
    # The mode's own functions, as "module:function" (pkgutil.resolve_name; strings, so that this module stays
    # torch-free), resolved by training.finetune when the mode runs. ``probe``: a frozen mode's fit of the
    # classifier on the frozen features, (Encoder, TensorData, Preprocess, Runtime, FinetuneConfig) -> training
    # accuracy in [0, 1]. ``unlabelled_loss``: an ``unlabelled`` mode's step loss (training.finetune.StepLoss).
    probe: str = ""
    unlabelled_loss: str = ""

    def __post_init__(self) -> None:
        # a mode without its function would fail only when run, after the data is loaded
        if self.frozen != bool(self.probe):
            raise ValueError(f"fine-tuning mode {self.name}: give probe= exactly when frozen=True")
        if self.unlabelled != bool(self.unlabelled_loss):
            raise ValueError(f"fine-tuning mode {self.name}: give unlabelled_loss= exactly when unlabelled=True")


# The one registration of a fine-tuning mode (its flags and its functions); the finetune CLI, training.finetune
# and bench/recipes (spec.HEAD_MODES) derive their lists from it.
MODES: Mapping[str, FinetuneMode] = {m.name: m for m in (
    FinetuneMode("linear", frozen=True, probe_epochs=True, probe="training.finetune:linear_head",
                 fit="--epochs N sets the linear probe's epochs (default {linear_epochs})"),
    FinetuneMode("svm", frozen=True, probe="training.finetune:svm_head",
                 fit="scikit-learn fits the SVM to convergence"),
    FinetuneMode("full"),
    FinetuneMode("as3l", unlabelled=True, priors=True, lr_schedule="fixmatch",
                 unlabelled_loss="training.finetune:as3l_step_loss"),
    FinetuneMode("moby_al", unlabelled=True, contrastive=True, unlabelled_loss="training.finetune:moby_al_step_loss"),
)}
FINETUNE_MODES: tuple[str, ...] = tuple(MODES)


def frozen_mode(name: str) -> bool:
    """Whether ``name`` is a frozen fine-tuning mode (linear, svm); False for any other name (``shortlist cycle
    --mode`` takes pretraining methods too)."""
    return name in MODES and MODES[name].frozen


def or_list(names: Iterable[str]) -> str:
    """'a, b or c' (a message's list of choices)."""
    items = list(names)
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"


def help_list(names: Iterable[str]) -> str:
    """'a | b | c' (an option's help text)."""
    return " | ".join(names)
