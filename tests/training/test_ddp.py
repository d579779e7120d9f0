"""The same pretrain command under torchrun: 2 CPU processes (gloo), one epoch, one run folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.training.conftest import PRE
from training import loop


def test_torchrun_two_processes(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "shortlist.cli", "pretrain", "--data", str(tiny_data), "--out", str(out), "--method", "moby",
           "--epochs", "1", "--batch-size", "16", "--preprocess", PRE, "--threads", "1", "--device", "cpu",
           "--no-channels-last", "--knn-every", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both workers: nothing left behind
        proc.communicate()
        raise
    assert proc.returncode == 0, stderr[-3000:]
    summary = json.loads((out / loop.SUMMARY).read_text())
    # 48 images, 2 ranks x 8 per rank = 16 per step -> 3 steps, same on both ranks
    assert summary["world"] == 2 and summary["steps"] == 3
    assert (out / loop.ENCODER).is_file()


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def test_procs_flag_starts_the_ranks_itself(tiny_data: Path, tmp_path: Path) -> None:
    """`shortlist pretrain --procs 2`: the same two-rank run without torchrun; a bad setting is one clear
    error (exit 2), not a traceback per rank."""
    base = [sys.executable, "-m", "shortlist.cli", "pretrain", "--data", str(tiny_data), "--epochs", "1",
            "--batch-size", "16", "--preprocess", PRE, "--device", "cpu", "--no-channels-last", "--knn-every", "0",
            "--procs", "2"]
    # a source without a test split: the two processes train, one of them says there is no kNN evaluation
    train_only = [a if a != str(tiny_data) else str(tiny_data / "train") for a in base]
    done = _run([*train_only, "--out", str(tmp_path / "p"), "--method", "moby"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert (done.stdout + done.stderr).count("no held-out kNN evaluation") == 1, done.stdout[-3000:]
    summary = json.loads((tmp_path / "p" / loop.SUMMARY).read_text())
    assert summary["world"] == 2 and summary["steps"] == 3
    config = json.loads((tmp_path / "p" / loop.CONFIG).read_text())
    assert config["threads"] >= 1  # cores / procs, recorded
    bad = _run([*base, "--out", str(tmp_path / "b"), "--method", "rotnet", "--pred-dim", "8"])
    assert bad.returncode == 2 and bad.stderr.count("rotnet has no option pred_dim") == 1, bad.stderr[-3000:]
    assert "Traceback" not in bad.stderr


def test_a_rank_leaves_its_process_group_when_its_run_ends(tiny_data: Path, tmp_path: Path) -> None:
    """The pretrain worker (one rank of torchrun or --procs) destroys the process group when its run ends,
    finished or refused, so gloo's threads are gone before the interpreter exits (left to the exit, a rank
    can abort with SIGABRT after a finished run: loop.close_process_group). A one-rank gloo group stands in
    for torchrun's."""
    import pytest
    import torch.distributed as dist

    from training.cli import _pretrain_worker
    from training.pretrain import PretrainConfig

    cfg = PretrainConfig(data=str(tiny_data), out=str(tmp_path / "run"), method="moby", epochs=1, batch_size=16,
                         preprocess=PRE, threads=1, device="cpu", channels_last=False, knn_every=0,
                         final_knn=False)
    try:
        for expect_exit in (False, True):  # the run, then the same --out again: refused (exit 2)
            dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / f"store{expect_exit}"), 1),
                                    rank=0, world_size=1)
            if expect_exit:
                with pytest.raises(SystemExit) as refused:
                    _pretrain_worker(cfg)
                assert refused.value.code == 2
            else:
                _pretrain_worker(cfg)
                assert (tmp_path / "run" / loop.ENCODER).is_file()
            assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    loop.close_process_group()  # without a group: nothing to do


def test_a_signal_to_the_procs_launcher_exits_130_with_the_checkpoint_message(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`pretrain --procs 2` stopped by SIGTERM or Ctrl-C: torch's launcher raised SignalException, which ended in
    a traceback and exit 1; now the message one process prints and exit 130 (docs/training.md), also for a
    signal before the launcher installed its handlers and for ranks that exited 130 themselves."""
    import typer
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure
    from torch.distributed.launcher import api

    from training.cli import _launch_local
    from training.pretrain import PretrainConfig

    out = tmp_path / "run"
    out.mkdir()
    (out / loop.CHECKPOINT).write_bytes(b"")
    cfg = PretrainConfig(data="unused", out=str(out), epochs=1, threads=1, device="cpu")

    def raising(error: BaseException) -> object:
        def launch(*args: object) -> object:
            def run(*args: object) -> None:
                raise error
            return run
        return launch

    def sigterm_during_startup(*args: object) -> object:
        def run(*args: object) -> None:
            os.kill(os.getpid(), signal.SIGTERM)  # no handler of the launcher's yet: ours raises
            time.sleep(5)
        return run

    before = signal.getsignal(signal.SIGTERM)
    failure = ProcessFailure(local_rank=0, pid=1, exitcode=130, error_file=str(tmp_path / "none"))
    for launch in (raising(SignalException("got signal", sigval=signal.SIGTERM)), raising(KeyboardInterrupt()),
                   raising(ChildFailedError("pretrain", {0: failure})), sigterm_during_startup):
        monkeypatch.setattr(api, "elastic_launch", launch)
        with pytest.raises(typer.Exit) as stopped:
            _launch_local(cfg, 2)
        said = " ".join(capsys.readouterr().err.split())
        assert stopped.value.exit_code == 130, said
        assert "training stopped" in said and "--resume" in said and "Traceback" not in said, said
    assert signal.getsignal(signal.SIGTERM) == before  # the launcher's SIGTERM handler is not left installed
