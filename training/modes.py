"""The names of training's modes, without importing torch: training/cli.py builds its --help texts from them,
and ``shortlist --help`` and the agent's commands must start without loading torch.

``METHOD_NAMES`` are the keys of training.methods.METHODS (the self-supervised methods), in its order, and
``FINETUNE_MODES`` the fine-tuning modes of training.finetune; tests/training/test_methods.py keeps
``METHOD_NAMES`` equal to METHODS' keys and the two sets disjoint (``shortlist cycle`` takes both as --mode).
"""

from __future__ import annotations

from collections.abc import Iterable

METHOD_NAMES: tuple[str, ...] = ("simsiam", "rotnet", "moby")
FINETUNE_MODES: tuple[str, ...] = ("linear", "svm", "full", "as3l", "moby_al")


def or_list(names: Iterable[str]) -> str:
    """'a, b or c' (a message's list of choices)."""
    items = list(names)
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"


def help_list(names: Iterable[str]) -> str:
    """'a | b | c' (an option's help text)."""
    return " | ".join(names)
