"""``shortlist bench recipe NAME``: the published active-learning systems Shortlist is built from, each run
end to end as its paper describes (rounds of Select -> simulated annotator -> retrain -> publish -> hot
swap -> evaluate, through a real agent), with the paper's baselines as arms.

A recipe is a declarative ``Recipe`` (bench/recipes/spec.py: pretext method, arms = strategy + head,
profiles = schedule and scale) run by the one loop in bench/recipes/loop.py. Adding a system is one module
defining ``RECIPE`` plus one line in ``_registered``.

The recipe modules are imported on first use (``recipes()``, ``get_recipe``, ``RECIPES``), not when the
``shortlist`` CLI starts: a recipe that its own check refuses (an arm naming an unknown strategy, ...) is
then an error of ``bench recipe`` alone (``RecipeRegistryError``, one line), and every other command runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from bench.recipes.spec import Recipe

    RECIPES: dict[str, Recipe]  # the registry (module __getattr__ below: imported on first use)


class RecipeRegistryError(Exception):
    """A registered recipe was refused by its own check (bench/recipes/spec.py ``Recipe.__post_init__``)."""


def _registered() -> tuple[Recipe, ...]:
    from bench.recipes import das, mobyv2al, rotnet_entropy, simsiam_al

    return (
        simsiam_al.RECIPE,
        rotnet_entropy.RECIPE,
        das.RECIPE,
        mobyv2al.RECIPE,
        mobyv2al.IMBALANCED,
    )


_cache: dict[str, Recipe] = {}


def recipes() -> dict[str, Recipe]:
    """The registered recipes by name (imported on the first call); RecipeRegistryError naming the refused
    recipe and why when one does not pass its check, or the name when two recipes share it."""
    if not _cache:
        try:
            found = _registered()
        except ValueError as e:  # Recipe.__post_init__: "recipe NAME: arm ARM: unknown strategy ...; valid: ..."
            raise RecipeRegistryError(f"a registered recipe is refused: {e} (fix it in bench/recipes/)") from None
        names = [r.name for r in found]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:  # a dict would keep the later one and drop the first without a word
            raise RecipeRegistryError(f"two registered recipes are named {', '.join(map(repr, twice))}: give each "
                                      "its own name (bench/recipes/)")
        _cache.update((r.name, r) for r in found)
    return _cache


def __getattr__(name: str) -> object:
    if name == "RECIPES":
        return recipes()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``; BadParameter listing the valid names otherwise."""
    known = recipes()
    try:
        return known[name]
    except KeyError:
        raise typer.BadParameter(f"unknown recipe {name!r}; valid: {', '.join(known)}") from None
