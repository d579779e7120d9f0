"""``shortlist bench ...`` commands that live in bench/ (cifar10, report, load) and the strategy benchmarks."""

from __future__ import annotations

import importlib

import typer


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    for module in ("bench.cifar10", "bench.strategies", "bench.load", "bench.as3l", "bench.recipes.commands",
                   "bench.map"):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            continue
        mod.register(bench_app)
