"""``pretrain(resume=True)`` (the function: benches and scripts call it without the CLI's own check of
config.json) reads back the run's config.json: one that is not whole JSON is a ``NotWholeJson`` (a ValueError,
which ``shortlist pretrain`` prints as one error: line, exit 2) naming the file and what to do, not a bare
JSONDecodeError that names neither."""

from __future__ import annotations

from pathlib import Path

import pytest

from shortlist.atomic import NotWholeJson
from training import loop
from training.pretrain import PretrainConfig, pretrain


def test_resume_with_a_torn_config_json_names_the_file(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / loop.CHECKPOINT).write_bytes(b"a checkpoint")  # resumable: not read before the config is checked
    (run / loop.CONFIG).write_text('{"data": "imgs", "method": "sims')
    cfg = PretrainConfig(data=str(tmp_path / "imgs"), out=str(run), method="simsiam", arch="resnet18_w32",
                         epochs=1, batch_size=4, progress=False, threads=1, resume=True)
    with pytest.raises(NotWholeJson) as e:
        pretrain(cfg)
    said = str(e.value)
    assert said.startswith(f"{run / loop.CONFIG} is not valid JSON (line 1 column 28: torn by a crash")
    assert said.endswith("restore it, or start a new run with another --out")
    assert (run / loop.CONFIG).read_text() == '{"data": "imgs", "method": "sims'
