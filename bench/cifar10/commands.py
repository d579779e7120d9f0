"""The commands: ``bench cifar10``, ``bench embeddings``, ``bench report``."""

from __future__ import annotations

from pathlib import Path

import typer

from bench.checks import OutLock
from bench.cifar10.data import require_splits
from bench.cifar10.evaluation import write_embeddings
from bench.cifar10.profiles import PROFILES, check_budgets
from bench.cifar10.run import Overrides, interrupted_note, run_benchmark
from shortlist.atomic import NotWholeJson
from shortlist.datasets import split_sources_said


def check_names(strategies: list[str] | None, prior_methods: list[str] | None) -> None:
    """A usage error for a strategy or prior method no registry holds (each run would fail alone, and the
    benchmark end with an empty table)."""
    from agent.priors import PRIOR_METHODS
    from agent.strategies import STRATEGIES
    from bench.strategies import registry_names

    for names, registry, what in ((strategies, STRATEGIES, "strategy"), (prior_methods, PRIOR_METHODS,
                                                                        "prior method")):
        if names:
            registry_names(",".join(names), registry, what)


def label_counts(entries: list[str], flag: str) -> list[int]:
    """``entries`` as positive label counts; a usage error naming ``flag`` for one that is not (a traceback of
    int() before)."""
    try:
        counts = [int(x) for x in entries]
    except ValueError:
        raise typer.BadParameter(f"{', '.join(entries)}: give positive label counts like 10,40",
                                 param_hint=f"'{flag}'") from None
    if any(n <= 0 for n in counts):
        raise typer.BadParameter("label counts must be positive", param_hint=f"'{flag}'")
    return counts


def register(bench_app: typer.Typer) -> None:
    @bench_app.command("cifar10")
    def cifar10_command(
        data: Path = typer.Option(Path("../shared/datasets/cifar10"), help="CIFAR-10's train and test splits: "
                                  f"{split_sources_said()}"),
        profile: str = typer.Option("quick", help="; ".join(f"{name}: {p.description}"
                                                             for name, p in PROFILES.items())),
        out: Path = typer.Option(Path("runs/bench-cifar10"), help="output folder"),
        encoder: Path | None = typer.Option(None, help="a training run folder, a model version folder or a "
                                            "registry, instead of pretraining one"),
        strategies: str | None = typer.Option(None, help="comma-separated strategies (default: the profile's)"),
        seeds: int | None = typer.Option(None, min=1, help="number of seeds (default: the profile's)"),
        budgets: str | None = typer.Option(None, help="comma-separated label counts or pool percentages, "
                                           "e.g. 10,20,40,1%"),
        prior_methods: str | None = typer.Option(None, help="comma-separated prior-label methods"),
        semi_supervised_at: str | None = typer.Option(None, help="label counts at which to run the AS3L "
                                                      "semi-supervised stage (default: the profile's; gpu: 10,40)"),
        semi_supervised_steps: int | None = typer.Option(None, min=1, help="training steps per semi-supervised "
                                                         "point (default: the profile's minutes)"),
        audit: int | None = typer.Option(None, min=0, help="audit labels (a uniform random sample, Select strategy "
                                         "audit) drawn once after the first budget's picks and kept; the priors' "
                                         "temperature is then fitted on them (default: the profile's, 0)"),
    ) -> None:
        """CIFAR-10 accuracy against labels per strategy, through a real agent with a simulated annotator.

        Resumable: a rerun into the same --out reuses the (strategy, seed) runs it finished (same settings, commit)."""
        if profile not in PROFILES:
            raise typer.BadParameter(f"unknown profile {profile!r}; valid: {', '.join(PROFILES)}")
        require_splits(data)

        def split(s: str | None) -> list[str] | None:
            return [x.strip() for x in s.split(",") if x.strip()] if s else None

        # The cheap checks, before minutes of loading and pretraining.
        check_names(split(strategies), split(prior_methods))
        at = label_counts(split(semi_supervised_at) or [], "--semi-supervised-at") \
            if semi_supervised_at is not None else None
        overrides = Overrides(strategies=split(strategies), seeds=seeds, budgets=split(budgets),
                              prior_methods=split(prior_methods), semi_supervised_at=at,
                              semi_supervised_steps=semi_supervised_steps, audit=audit)
        check_budgets(overrides.apply(PROFILES[profile]).budgets)
        from training.loop import Interrupted

        # Two runs into one --out would start two agents on its agent-base and rewrite each other's results.json.
        with OutLock(out, "bench cifar10"):
            try:
                run = run_benchmark(data, PROFILES[profile], out, encoder, overrides)
            except NotWholeJson as e:  # the pretraining run's config.json, torn or edited: one line, what to do
                typer.secho(f"error: {e}", err=True, fg="red")
                raise typer.Exit(2) from None
            # Ctrl-C or SIGTERM: the agent is stopped (agent_process); say what is kept, exit 130. Inside the
            # pretraining the training loop takes the signal and raises Interrupted after its checkpoint.
            except (KeyboardInterrupt, Interrupted):
                typer.echo(interrupted_note(out), err=True)
                raise typer.Exit(130) from None
        if run.skipped:  # a table with holes is not a success: scripts and `&&` chains must see it
            typer.echo(f"{len(run.skipped)} (strategy, seed) run(s) skipped on agent errors (above, and in "
                       f"{out / 'agent.log'}); run the same command again to retry them (finished runs are reused)",
                       err=True)
            raise typer.Exit(1)

    @bench_app.command("embeddings")
    def embeddings_command(
        encoder: Path = typer.Option(..., help="a training run folder, a model version folder or a registry"),
        data: Path = typer.Option(Path("../shared/datasets/cifar10"), help="labelled train and test splits: "
                                  f"{split_sources_said()}"),
        pool: int | None = typer.Option(None, min=1, help="class-balanced subset of the training split "
                                        "(default: all of it)"),
        test: int | None = typer.Option(None, min=1, help="class-balanced subset of the test split (default: all)"),
        out: Path = typer.Option(..., help="folder for pool_x.npy, pool_y.npy, test_x.npy, test_y.npy, meta.json"),
    ) -> None:
        """Embed a data set with an encoder (as the agent would) for `shortlist bench strategies`."""
        require_splits(data)
        with OutLock(out, "bench embeddings"):
            meta = write_embeddings(data, encoder, out, pool, test)
        typer.echo(f"{meta['pool_size']} pool and {meta['test_size']} test embeddings ({meta['dim']}-d, model "
                   f"{meta['model_version']}, {meta['embed_seconds']:.0f} s) -> {out}\nnext: shortlist bench "
                   f"strategies --embeddings {out}/pool_x.npy --labels {out}/pool_y.npy --test-embeddings "
                   f"{out}/test_x.npy --test-labels {out}/test_y.npy --out DIR")

    @bench_app.command("report")
    def report_command(
        runs: list[Path] = typer.Argument(..., help="benchmark output folders (with results.json)"),
        out: Path | None = typer.Option(None, help="where to write the report (default: the first run's folder)"),
    ) -> None:
        """Re-render the tables and plots of `bench cifar10` runs from their results.json; several runs go side
        by side."""
        from bench.report import load_run, write_report

        try:
            for run in runs:  # each one readable before the lock creates the output folder
                load_run(run)
            # A report into a folder a bench command is writing would overwrite (or be overwritten by) its
            # results.md and plots.
            with OutLock(out or runs[0], "bench report"):
                write_report(runs, out or runs[0])
        except NotWholeJson as e:  # a run's results.json, torn or edited: one line naming it, what to do
            typer.secho(f"error: {e}", err=True, fg="red")
            raise typer.Exit(2) from None
        except (FileNotFoundError, ValueError) as e:
            raise typer.BadParameter(str(e), param_hint="'RUNS...'") from None
