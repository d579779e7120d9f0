"""Loop pieces: lr schedule, budgets, the thread tuner, atomic checkpoint files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from training import loop


def test_cosine_lr_and_budget() -> None:
    assert loop.cosine_lr(1.0, 0.0, warmup=0.1) == 0.0
    assert loop.cosine_lr(1.0, 0.05, warmup=0.1) == pytest.approx(0.5)
    assert loop.cosine_lr(1.0, 0.1, warmup=0.1) == pytest.approx(1.0)
    assert loop.cosine_lr(1.0, 0.55, warmup=0.1) == pytest.approx(0.5)
    assert loop.cosine_lr(1.0, 1.0) == pytest.approx(0.0)
    b = loop.Budget(10, epochs=2)
    assert b.progress(5, 1e9) == 0.25 and not b.done(19, 0) and b.done(20, 0)
    t = loop.Budget(10, minutes=1.0)
    assert t.progress(10**6, 30.0) == 0.5 and t.done(0, 60.0)
    with pytest.raises(ValueError, match="exactly one"):
        loop.Budget(10, epochs=1, minutes=1.0)


def test_thread_tuner_switches_to_the_faster_count() -> None:
    old = torch.get_num_threads()
    try:
        tuner = loop.ThreadTuner([1, 2], period_s=0.0, probe_steps=2, first_probe_s=0.0)
        start = tuner.current
        other = 1 if start == 2 else 2
        assert tuner.observe(100, 1.0) is None  # 100 img/s with the current count; starts a probe
        assert torch.get_num_threads() == other
        assert tuner.observe(100, 10.0) is None  # first probe step: discarded
        assert tuner.observe(100, 0.5) is None
        msg = tuner.observe(100, 0.5)  # 200 img/s: faster -> switch
        assert msg is not None and tuner.current == other and torch.get_num_threads() == other
        tuner.observe(100, 0.5)  # probe the first count again: slower -> stay
        assert tuner.observe(100, 2.0) is None  # discarded
        assert tuner.observe(100, 2.0) is None  # 50 img/s < 0.7 x 200: abandoned after one step
        assert tuner.probe is None and tuner.current == other and torch.get_num_threads() == other
        assert tuner.period_s == 0.0  # (doubling 0 stays 0; with a real period it backs off)
    finally:
        torch.set_num_threads(old)


def test_save_atomic_replaces_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "x.pt"
    loop.save_atomic({"a": torch.ones(3)}, path)
    loop.save_atomic({"a": torch.zeros(3)}, path)
    assert torch.equal(torch.load(path)["a"], torch.zeros(3))
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]  # no temp files left behind
