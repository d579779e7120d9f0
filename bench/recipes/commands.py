"""The ``bench recipe`` command."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from typer.core import TyperCommand

from bench.recipes import RecipeRegistryError, get_recipe, recipes
from shortlist.datasets import split_sources_said
from shortlist.options import finite

NAME_HELP = "the system to run"


class RecipeCommand(TyperCommand):
    """``bench recipe``: its help names the registered recipes, read only when the help is shown (the
    registry is not imported when the CLI starts: bench/recipes/__init__.py)."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        try:
            names = f": {', '.join(recipes())}"
        except RecipeRegistryError as e:
            names = f" ({e})"
        for param in self.params:
            if param.name == "name":
                param.help = NAME_HELP + names  # type: ignore[attr-defined]
        super().format_help(ctx, formatter)


def register(bench_app: typer.Typer) -> None:
    @bench_app.command("recipe", cls=RecipeCommand)
    def recipe_command(
        name: str = typer.Argument(..., help=NAME_HELP),
        profile: str = typer.Option("cpu", help="smoke (seconds), cpu (about 90 min on 2 cores) or gpu (the "
                                    "paper's settings)"),
        data: Path = typer.Option(Path("../shared/datasets/cifar10"), help="labelled train and test splits: "
                                  f"{split_sources_said()}"),
        out: Path | None = typer.Option(None, help="output folder (default runs/recipe-NAME-PROFILE); a rerun "
                                        "resumes what it holds"),
        encoder: Path | None = typer.Option(None, help="a pretext training run folder (encoder.pt) instead of "
                                            "pretraining one"),
        seeds: int | None = typer.Option(None, min=1, help="number of seeds (default: the profile's)"),
        arms: str | None = typer.Option(None, help="comma-separated arms (default: all of the recipe's)"),
        budgets: str | None = typer.Option(None, help="comma-separated cumulative label budgets per round, counts "
                                           "or pool percentages (default: the profile's)"),
        imbalance: str | None = typer.Option(None, help="CLASS=COUNT,... cut these classes of the pool to COUNT "
                                             "images (or N%% of theirs), e.g. cat=500,dog=10%%"),
        pool: int | None = typer.Option(None, min=1, help="class-balanced pool size (default: the profile's)"),
        test: int | None = typer.Option(None, min=1, help="class-balanced test subset (default: the profile's)"),
        pretrain_minutes: float | None = typer.Option(None, callback=finite, min=0.01,
                                                      help="pretext pretraining minutes (default: the profile's "
                                                      "minutes or epochs)"),
        steps: int | None = typer.Option(None, min=1, help="training steps per round of the heads that train the "
                                         "network (default: the profile's)"),
    ) -> None:
        """Run a paper's active-learning system end to end through the agent, with its baselines."""
        from bench import cifar10
        from bench.checks import OutLock, training_stopped
        from bench.recipes.loop import Options, RoundFailed, run_recipe
        from bench.recipes.spec import parse_imbalance
        from shortlist.atomic import NotWholeJson
        from training.cycle import CycleRefused
        from training.loop import Interrupted

        try:
            recipe = get_recipe(name)
        except RecipeRegistryError as e:  # one broken registration: this command's error, not every command's
            typer.secho(f"error: {e}", err=True, fg="red")
            raise typer.Exit(2) from None
        if profile not in recipe.profiles:
            raise typer.BadParameter(f"recipe {name} has no profile {profile!r}; valid: {', '.join(recipe.profiles)}")
        cifar10.require_splits(data)
        arm_list = [a.strip() for a in arms.split(",") if a.strip()] if arms else None
        for a in arm_list or []:
            recipe.arm(a)  # unknown arm: a usage error before any work
        budget_list = [b.strip() for b in budgets.split(",") if b.strip()] if budgets else None
        cifar10.check_budgets(budget_list or [])  # before the data is loaded and the encoder pretrained
        imb = parse_imbalance(imbalance) if imbalance is not None else None
        options = Options(encoder=encoder, seeds=seeds, arms=arm_list, imbalance=imb, budgets=budget_list, pool=pool,
                          test=test, pretrain_minutes=pretrain_minutes, steps=steps)
        try:  # two runs into one --out would run the same cells twice and rewrite each other's results.json
            with OutLock(out or Path(f"runs/recipe-{name}-{profile}"), "bench recipe"):
                run_recipe(recipe, recipe.profiles[profile], data, out or Path(f"runs/recipe-{name}-{profile}"),
                           options)
        except FileNotFoundError as e:
            raise typer.BadParameter(str(e)) from None
        except NotWholeJson as e:  # cells/settings.json or the pretraining run's config.json: torn or edited
            typer.secho(f"error: {e}", err=True, fg="red")
            raise typer.Exit(2) from None
        except CycleRefused as e:  # e.g. a first budget so small that its random picks are of one class
            where = out or Path(f"runs/recipe-{name}-{profile}")
            typer.secho(f"stopped: {e}. Give --budgets whose first round's labels cover at least 2 classes; the "
                        f"cells finished so far are in {where}/results.json", err=True, fg="red")
            raise typer.Exit(1) from None
        except RoundFailed as e:  # the agent refused a call of a round: which cell and round, and its message
            where = out or Path(f"runs/recipe-{name}-{profile}")
            typer.secho(f"stopped: {e}; the cells finished so far are in {where}/results.json", err=True, fg="red")
            raise typer.Exit(1) from None
        except Interrupted as e:  # a signal inside the pretraining or a round's training, after its checkpoint
            raise training_stopped(e.signal_name, e.step, e.run_dir, "bench recipe") from None
