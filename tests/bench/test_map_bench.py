"""``shortlist bench map`` on a tiny pool: every stage runs and reports."""

from __future__ import annotations

from typer.testing import CliRunner

from shortlist.cli import app


def test_bench_map_small() -> None:
    r = CliRunner().invoke(app, ["bench", "map", "--n", "400", "--dim", "16", "--clusters", "4", "--max-fit", "300",
                                 "--new", "50"])
    assert r.exit_code == 0, r.output
    assert "fit + place: 400 x 16 (300 fitted, pca16+opentsne)" in r.output
    assert "50 new rows placed" in r.output and "restart: saved map loaded" in r.output
    agreement = float(r.output.split("map/cluster agreement ")[1].split()[0])
    assert agreement > 0.9
