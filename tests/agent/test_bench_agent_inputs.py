"""`shortlist bench agent` refuses nonsense before it builds a model or starts an agent: --n 0 or -1 printed
figures ("ratio 0.001") for 256-image rounds, a huge --batch made that many images (still running after
60 s), and a missing --source was a FileNotFoundError traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shortlist.cli import app


@pytest.mark.parametrize(("args", "said"), [
    (["--n", "0"], "'--n'"),
    (["--n", "-1"], "'--n'"),
    (["--n", "16", "--batch", "99999999999999999999"], "'--batch'"),
    (["--n", "16", "--batch", "32"], "32 is more than the 16 images of --n: give --batch 16 or less"),
    (["--n", "16", "--rounds", "0"], "'--rounds'"),
    (["--n", "16", "--source", "{tmp}/nonexist"], "image source {tmp}/nonexist does not exist"),
])
def test_bad_input_is_a_usage_error(args: list[str], said: str, tmp_path: Path) -> None:
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    r = CliRunner().invoke(app, ["bench", "agent", "--cpu", *args], env={"COLUMNS": "300"})
    text = " ".join(r.output.replace("│", " ").split())
    assert r.exit_code == 2 and said.replace("{tmp}", str(tmp_path)) in text, text
    assert "Traceback" not in text


def test_a_small_n_takes_its_batch_from_n() -> None:
    """--n below the default batch (256): the batch is --n, so the rounds hold the images asked for."""
    r = CliRunner().invoke(app, ["bench", "agent", "--cpu", "--n", "16", "--rounds", "1", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output.strip().splitlines()[-1])
    assert out["batch"] == 16 and out["images_per_round"] == 16
