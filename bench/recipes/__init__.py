"""``shortlist bench recipe NAME``: the published active-learning systems Shortlist is built from, each run
end to end as its paper describes (rounds of Select -> simulated annotator -> retrain -> publish -> hot
swap -> evaluate, through a real agent), with the paper's baselines as arms.

A recipe is a declarative ``Recipe`` (bench/recipes/spec.py: pretext method, arms = strategy + head,
profiles = schedule and scale) run by the one loop in bench/recipes/loop.py. Adding a system is one module
defining ``RECIPE`` plus one line in ``RECIPES``.
"""

from __future__ import annotations

import typer

from bench.recipes import das, mobyv2al, rotnet_entropy, simsiam_al
from bench.recipes.spec import Recipe

RECIPES: dict[str, Recipe] = {r.name: r for r in (
    simsiam_al.RECIPE,
    rotnet_entropy.RECIPE,
    das.RECIPE,
    mobyv2al.RECIPE,
    mobyv2al.IMBALANCED,
)}


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``; BadParameter listing the valid names otherwise."""
    try:
        return RECIPES[name]
    except KeyError:
        raise typer.BadParameter(f"unknown recipe {name!r}; valid: {', '.join(RECIPES)}") from None
