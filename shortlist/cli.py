"""The one ``shortlist`` command. Each part of the system registers its own commands here:

- agent/cli.py: serve, ingest, select, label, prior, status, models, bench agent (no torch imported)
- training/cli.py: pretrain, finetune, export, cycle (torch imported inside the commands)
- bench/cli.py: bench cifar10, bench strategies, bench load, bench report
"""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False,
                  help="Shortlist: which images to label next, and what the rest probably are.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks: commands that print figures.")
app.add_typer(bench_app, name="bench")


def _register() -> None:
    import importlib

    for module in ("agent.cli", "training.cli", "bench.cli"):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:  # a part not written yet; torch missing is handled inside
            if e.name != module:
                raise
            continue
        mod.register(app, bench_app)


_register()

if __name__ == "__main__":
    app()
