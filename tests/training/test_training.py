"""One training step of every mode on tiny images, exact resume, SIGTERM checkpointing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.training.conftest import PRE, SIZE
from training import loop
from training.augment import NONE, AugmentConfig, augment
from training.data import load
from training.finetune import FinetuneConfig, finetune
from training.pretrain import PretrainConfig, cpu_view_res, load_encoder, preprocess_by_name, pretrain


def _cfg(data: Path, out: Path, method: str, **kw: object) -> PretrainConfig:
    base: dict[str, object] = dict(data=str(data), out=str(out), method=method, arch="resnet18_w32", epochs=1,
                                   batch_size=16, preprocess=PRE, knn_every=1, knn_k=5, progress=False,
                                   threads=1, channels_last=False)
    base.update(kw)
    return PretrainConfig(**base)  # type: ignore[arg-type]


def test_augment_shapes_and_determinism() -> None:
    pre = preprocess_by_name(PRE)
    imgs = torch.randint(0, 256, (4, 3, SIZE, SIZE), dtype=torch.uint8)
    a = augment(imgs, pre, AugmentConfig(), torch.Generator().manual_seed(1))
    b = augment(imgs, pre, AugmentConfig(), torch.Generator().manual_seed(1))
    c = augment(imgs, pre, AugmentConfig(), torch.Generator().manual_seed(2))
    assert a.shape == (4, 3, SIZE, SIZE) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    # no augmentation = the Preprocess normalisation exactly
    plain = augment(imgs, pre, NONE, torch.Generator())
    expected = torch.from_numpy(pre.normalize(imgs.permute(0, 2, 3, 1).numpy()))
    assert torch.allclose(plain, expected, atol=1e-6)


@pytest.mark.parametrize("method", ["simsiam", "rotnet", "moby"])
def test_pretrain_one_epoch(tiny_data: Path, tmp_path: Path, method: str) -> None:
    run = pretrain(_cfg(tiny_data, tmp_path / method, method, min_res=8))
    summary = json.loads((run / loop.SUMMARY).read_text())
    assert summary["steps"] == 3 and 0.0 <= summary["knn_acc"] <= 1.0 and 0.0 <= summary["knn_balanced_acc"] <= 1.0
    assert summary["knn_test"] == 24
    records = [json.loads(line) for line in (run / loop.METRICS).read_text().splitlines()]
    assert any(r["kind"] == "knn" for r in records)
    enc, meta = load_encoder(run)
    assert (enc.rotation is not None) == (method == "rotnet")
    assert meta["preprocess"]["size"] == [SIZE, SIZE]
    out = enc(torch.randn(2, 3, SIZE, SIZE))
    assert out.shape == (2, 256) and torch.isfinite(out).all()


def test_cpu_views_default_to_half_the_model_size(tiny_data: Path, tmp_path: Path) -> None:
    auto = pretrain(_cfg(tiny_data, tmp_path / "auto", "simsiam", knn_every=0, final_knn=False))
    assert json.loads((auto / loop.CONFIG).read_text())["max_res"] == SIZE // 2
    full = pretrain(_cfg(tiny_data, tmp_path / "full", "simsiam", knn_every=0, final_knn=False, max_res=SIZE))
    assert json.loads((full / loop.CONFIG).read_text())["max_res"] == SIZE
    # progressive resizing keeps its own schedule up to the model's size
    prog = pretrain(_cfg(tiny_data, tmp_path / "prog", "simsiam", knn_every=0, final_knn=False, min_res=8))
    assert json.loads((prog / loop.CONFIG).read_text())["max_res"] is None


def test_cpu_views_never_go_below_what_the_backbone_accepts() -> None:
    """VGG-16's fifth max-pool fails on 16 px views (MoBYv2AL's gpu profile run on a CPU did): torchvision's
    ImageNet models keep CIFAR's full 32 px on a CPU, the CIFAR-stem networks halve it."""
    cifar = preprocess_by_name("cifar10")
    cpu = torch.device("cpu")
    for arch, res in (("resnet18_w32", 16), ("resnet18", 16), ("torchvision:vgg16_bn", None),
                      ("torchvision:resnet18", None)):
        cfg = PretrainConfig(data="unused", method="moby", arch=arch, epochs=1, out="unused")
        assert cpu_view_res(cfg, cifar, cpu) == res, arch
    assert cpu_view_res(PretrainConfig(data="unused", arch="torchvision:vgg16_bn", epochs=1, out="unused"),
                        preprocess_by_name("imagenet"), cpu) == 112  # 224 px halved is still above 32


def test_resume_continues_exactly(tiny_data: Path, tmp_path: Path) -> None:
    straight = pretrain(_cfg(tiny_data, tmp_path / "a", "simsiam", epochs=2, knn_every=0))
    # the same run, stopped after epoch 1 (a 1-epoch budget), then resumed with a 2-epoch budget
    first = _cfg(tiny_data, tmp_path / "b", "simsiam", epochs=2, knn_every=0, stop_after=3)
    pretrain(first)
    resumed = pretrain(_cfg(tiny_data, tmp_path / "b", "simsiam", epochs=2, knn_every=0, resume=True))
    a = torch.load(straight / loop.ENCODER, weights_only=False)["state_dict"]
    b = torch.load(resumed / loop.ENCODER, weights_only=False)["state_dict"]
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_existing_run_needs_resume(tiny_data: Path, tmp_path: Path) -> None:
    pretrain(_cfg(tiny_data, tmp_path / "r", "rotnet", knn_every=0))
    with pytest.raises(FileExistsError, match="--resume"):
        pretrain(_cfg(tiny_data, tmp_path / "r", "rotnet"))


def test_method_options_set_head_widths_and_unknown_ones_are_named(tiny_data: Path, tmp_path: Path) -> None:
    run = pretrain(_cfg(tiny_data, tmp_path / "w", "simsiam", knn_every=0, final_knn=False, stop_after=1,
                        method_options={"proj_dim": 32, "pred_dim": 8}))
    state = torch.load(run / loop.CHECKPOINT, weights_only=False)["model"]
    assert state["predictor.0.weight"].shape == (8, 32)  # proj_dim -> pred_dim bottleneck
    with pytest.raises(ValueError, match="rotnet has no option proj_dim; valid: none"):
        pretrain(_cfg(tiny_data, tmp_path / "x", "rotnet", method_options={"proj_dim": 32}))
    with pytest.raises(ValueError, match="valid: pred_dim, proj_dim"):
        pretrain(_cfg(tiny_data, tmp_path / "y", "simsiam", method_options={"hidden": 32}))
    # resuming with other head widths would not fit the checkpoint: refused with the difference named
    with pytest.raises(ValueError, match="--method-option/--proj-dim/--pred-dim: the run's"):
        pretrain(_cfg(tiny_data, tmp_path / "w", "simsiam", knn_every=0, final_knn=False, resume=True))
    # a run from before the options were recorded resolved saved {}: the checkpoint is then the check
    config = json.loads((run / loop.CONFIG).read_text())
    (run / loop.CONFIG).write_text(json.dumps({**config, "method_options": {}}))
    with pytest.raises(ValueError, match=r"does not fit the model.*--proj-dim 2048 --pred-dim 512"):
        pretrain(_cfg(tiny_data, tmp_path / "w", "simsiam", knn_every=0, final_knn=False, resume=True))
    # defaults are recorded too, so a later change of a default cannot silently change a resumed run
    run = pretrain(_cfg(tiny_data, tmp_path / "d", "simsiam", knn_every=0, final_knn=False, stop_after=1))
    assert json.loads((run / loop.CONFIG).read_text())["method_options"] == {"proj_dim": 256, "pred_dim": 64}


def test_cli_head_width_flags(tiny_data: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from shortlist.cli import app

    base = ["pretrain", "--data", str(tiny_data), "--epochs", "1", "--batch-size", "16", "--preprocess", PRE,
            "--threads", "1", "--knn-every", "0", "--no-channels-last"]
    ok = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "s"), "--proj-dim", "32", "--pred-dim", "8"])
    assert ok.exit_code == 0, ok.output
    assert json.loads((tmp_path / "s" / loop.CONFIG).read_text())["method_options"] == {"proj_dim": 32,
                                                                                          "pred_dim": 8}
    bad = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "r"), "--method", "rotnet", "--pred-dim", "8"])
    assert bad.exit_code == 2 and "rotnet has no option pred_dim" in bad.output
    assert not (tmp_path / "r" / loop.CONFIG).exists()


@pytest.mark.parametrize("mode", ["linear", "full", "as3l", "moby_al"])
def test_finetune_modes(tiny_data: Path, tmp_path: Path, mode: str) -> None:
    pre = preprocess_by_name(PRE)
    data = load(str(tiny_data), "train", pre.size)
    cfg = FinetuneConfig(out=str(tmp_path / mode), mode=mode, arch="resnet18_w32", preprocess=PRE,
                         labels_per_class=2, steps=None if mode == "linear" else 2, batch_size=6, mu=2, threads=1,
                         channels_last=False, linear_epochs=5, prior_iters=1)
    priors = None
    if mode == "as3l":
        n_unl = len(data) - 6
        priors = torch.full((n_unl, 3), 1 / 3)
    run = finetune(cfg, data, priors)
    summary = json.loads((run / loop.SUMMARY).read_text())
    assert summary["labeled"] == 6 and summary["unlabeled"] == 42
    enc, meta = load_encoder(run)
    assert enc.classifier is not None and meta["classes"] == ["blue", "green", "red"]
    logits = enc.classifier(enc(torch.randn(2, 3, SIZE, SIZE)))
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
    if mode != "linear":
        assert summary["steps"] == 2


def test_budgets_that_cannot_train_are_refused(tiny_data: Path, tmp_path: Path) -> None:
    """A zero or negative budget is refused by the CLI (exit 2, no traceback, no endless 0% run); a step or
    time budget for a head fitted once (linear, svm) is refused rather than ignored."""
    from typer.testing import CliRunner

    from shortlist.cli import app

    for args in (["pretrain", "--epochs", "0"], ["pretrain", "--minutes", "-1"], ["pretrain", "--epochs", "-2"],
                 ["finetune", "--mode", "full", "--steps", "0"], ["finetune", "--mode", "full", "--steps", "-5"]):
        res = CliRunner().invoke(app, [*args, "--data", str(tiny_data), "--out", str(tmp_path / "x")])
        assert res.exit_code == 2 and "Invalid value" in res.output and "Traceback" not in res.output, args
    res = CliRunner().invoke(app, ["finetune", "--mode", "linear", "--steps", "5", "--data", str(tiny_data),
                                   "--out", str(tmp_path / "lin")])
    said = "".join(c for c in res.output if c not in "│╭╮╰╯─")
    assert res.exit_code == 2 and "frozen features: no step or time budget" in " ".join(said.split())


def test_pretrain_refuses_an_incomplete_cifar10_folder_naming_the_missing_batches(tmp_path: Path) -> None:
    """A cifar-10-batches-py without data_batch_2..5 (a partial download): exit 2 with the missing files named
    (it said only "[Errno 2] No such file or directory: '.../data_batch_2'"), before any training."""
    import pickle

    import numpy as np
    from typer.testing import CliRunner

    from shortlist.cli import app

    cifar = tmp_path / "data" / "cifar-10-batches-py"
    cifar.mkdir(parents=True)
    (cifar / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"cat", b"dog"]}))
    for name in ("data_batch_1", "test_batch"):
        (cifar / name).write_bytes(pickle.dumps({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 0, 1]}))
    res = CliRunner().invoke(app, ["pretrain", "--data", str(cifar.parent), "--epochs", "1", "--out",
                                   str(tmp_path / "run")])
    said = " ".join(res.output.split())
    assert res.exit_code == 2 and "incomplete CIFAR-10 folder" in said, res.output
    assert "data_batch_2, data_batch_3, data_batch_4, data_batch_5 are missing" in said and "Errno" not in said
    assert not (tmp_path / "run" / "encoder.pt").exists()


def test_a_signal_stops_finetuning_without_a_result(tiny_data: Path, tmp_path: Path) -> None:
    """SIGTERM / SIGINT mid fine-tune: checkpointed, then Interrupted, and no encoder.pt (which export or
    ``shortlist cycle`` would publish as if it were trained)."""
    import os
    import signal
    import threading

    data = load(str(tiny_data), "train", (SIZE, SIZE))
    cfg = FinetuneConfig(out=str(tmp_path / "f"), mode="full", preprocess=PRE, labels_per_class=2, steps=100_000,
                         batch_size=6, threads=1, channels_last=False)
    timer = threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(loop.Interrupted, match="SIGINT: training stopped at step"):
            finetune(cfg, data)
    finally:
        timer.cancel()
    assert (tmp_path / "f" / loop.CHECKPOINT).exists() and not (tmp_path / "f" / loop.ENCODER).exists()


def test_as3l_rejects_misaligned_priors(tiny_data: Path, tmp_path: Path) -> None:
    data = load(str(tiny_data), "train", (SIZE, SIZE))
    cfg = FinetuneConfig(out=str(tmp_path / "x"), mode="as3l", preprocess=PRE, labels_per_class=2, steps=1)
    with pytest.raises(ValueError, match="priors must be"):
        finetune(cfg, data, torch.full((3, 3), 1 / 3))


def test_sigterm_checkpoints_and_resume_continues(tiny_data: Path, tmp_path: Path) -> None:
    import os
    import signal
    import threading

    cfg = _cfg(tiny_data, tmp_path / "s", "rotnet", epochs=10_000, knn_every=0)
    timer = threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        with pytest.raises(loop.Interrupted, match="SIGTERM: training stopped at step"):
            pretrain(cfg)  # raises (instead of dying) once the signal is handled at a step boundary
    finally:
        timer.cancel()
    run = tmp_path / "s"
    records = [json.loads(line) for line in (run / loop.METRICS).read_text().splitlines()]
    stopped = [r for r in records if r["kind"] == "stopped"]
    assert stopped and stopped[0]["signal"] == "SIGTERM"
    step = torch.load(run / loop.CHECKPOINT, weights_only=False)["state"]["step"]
    assert step == stopped[0]["step"] and step > 0
    assert not (run / loop.SUMMARY).exists()  # not finished
    resumed = _cfg(tiny_data, tmp_path / "s", "rotnet", epochs=10_000, knn_every=0, resume=True,
                   stop_after=step + 2)
    pretrain(resumed)
    assert torch.load(run / loop.CHECKPOINT, weights_only=False)["state"]["step"] == step + 2


def test_as3l_update_reclusters_and_evaluates(tiny_data: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """AS3L Sec. 3.4's "update": the prior is re-clustered on the semi-supervised features every T steps
    and stays in Eq. 5; test accuracy is logged every eval_every steps and at the end."""
    from training import finetune as ft

    pre = preprocess_by_name(PRE)
    data = load(str(tiny_data), "train", pre.size)
    calls: list[int] = []
    real = ft.recluster_prior

    def counting(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(1)
        out = real(*args, **kwargs)  # type: ignore[arg-type]
        assert out.shape == (42, 3) and torch.allclose(out.sum(dim=1), torch.ones(42), atol=1e-5)
        return out

    monkeypatch.setattr(ft, "recluster_prior", counting)
    cfg = FinetuneConfig(out=str(tmp_path / "u"), mode="as3l", arch="resnet18_w32", preprocess=PRE,
                         labels_per_class=2, steps=4, batch_size=6, mu=2, threads=1, channels_last=False,
                         prior_iters=2, prior_after="update", eval_every=2)
    run = finetune(cfg, data, torch.full((42, 3), 1 / 3), eval_data=data)
    summary = json.loads((run / loop.SUMMARY).read_text())
    assert len(calls) == 2  # at steps 2 and 4
    assert [e[0] for e in summary["eval"]] == [0, 2, 4]  # 0: the start
    assert 0.0 <= summary["test_accuracy"] <= summary["best_test_accuracy"] <= 1.0
    with pytest.raises(ValueError, match="prior_after"):
        finetune(FinetuneConfig(out=str(tmp_path / "v"), mode="as3l", prior_after="keep", steps=1), data)


def test_the_arch_help_names_every_backbone() -> None:
    from training.backbones import BACKBONES
    from training.cli import ARCH_HELP

    assert ARCH_HELP.split(" | ") == [*BACKBONES, "torchvision:NAME"]


def test_a_knn_k_above_the_banks_smallest_class_is_noted() -> None:
    from training.data import TensorData
    from training.pretrain import bank_smallest_class, knn_k_note

    assert knn_k_note(200, 5_000) == ""  # CIFAR-10's protocol: 5,000 images per class in the bank
    note = knn_k_note(200, 40)
    assert "k=200 is more than the 40 images of the bank's smallest class" in note and "--knn-k 20" in note
    # a command without --knn-k (bench cifar10) is not told to pass it
    assert "k=200 is more than" in knn_k_note(200, 40, None) and "--knn" not in knn_k_note(200, 40, None)
    # an imbalanced bank: the smallest class (17 images), not the mean (60 per class); a random bank of half
    # the labelled rows holds about half of it; unlabelled rows (-1) are not in the bank
    labels = torch.tensor([0] * 143 + [1] * 17 + [2] * 20 + [-1] * 50)
    train = TensorData(torch.zeros(len(labels), 3, 2, 2, dtype=torch.uint8), labels, ["a", "b", "c"],
                       [str(i) for i in range(len(labels))])
    assert bank_smallest_class(train, 10_000) == 17 and bank_smallest_class(train, 90) == 8


def _signal_at_step(monkeypatch: pytest.MonkeyPatch, module: object, name: str, at: int, sig: int) -> None:
    """Replace ``module.name`` (a function called once per training step) by one that sends ``sig`` to this
    process at its ``at``-th call: a Ctrl-C mid-run at a known step, whatever the machine's speed."""
    import os

    real = getattr(module, name)
    calls = [0]

    def wrapped(*args: object, **kwargs: object) -> object:
        calls[0] += 1
        if calls[0] == at:
            os.kill(os.getpid(), sig)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapped)


def test_a_pretraining_run_stopped_by_ctrl_c_cannot_be_exported_until_resumed(
        tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/training.md: SIGINT exits 130 with no encoder.pt or summary.json, so `export` has nothing to publish
    (it wrote encoder.pt at every checkpoint, the SIGINT one too, and export published the unfinished run);
    --resume finishes it."""
    import signal

    from typer.testing import CliRunner

    from shortlist.cli import app
    from training import pretrain as pretrain_module

    cfg = _cfg(tiny_data, tmp_path / "run", "rotnet", epochs=3, knn_every=0, final_knn=False, checkpoint_minutes=0.0)
    with monkeypatch.context() as m:
        _signal_at_step(m, pretrain_module, "_step", 2, signal.SIGINT)
        with pytest.raises(loop.Interrupted, match="--resume"):
            pretrain(cfg)
    run = tmp_path / "run"
    assert (run / loop.CHECKPOINT).is_file()
    assert not (run / loop.ENCODER).exists() and not (run / loop.SUMMARY).exists()
    refused = CliRunner().invoke(app, ["export", "--run", str(run), "--models", str(tmp_path / "models")])
    said = " ".join(refused.output.split())
    assert refused.exit_code == 2 and "unfinished training run" in said and "shortlist pretrain --resume" in said
    assert "Traceback" not in said and not (tmp_path / "models").exists()
    with pytest.raises(ValueError, match="unfinished"):  # nor is it an --init for fine-tuning
        load_encoder(run)

    pretrain(_cfg(tiny_data, run, "rotnet", epochs=3, knn_every=0, final_knn=False, resume=True))
    assert json.loads((run / loop.SUMMARY).read_text())["steps"] == 9
    assert load_encoder(run)[0] is not None
    # a folder an older version left (encoder.pt of the stopped state, checkpoint.pt, no summary.json)
    (run / loop.SUMMARY).unlink()
    with pytest.raises(ValueError, match="unfinished training run"):
        load_encoder(run)


def test_a_stopped_finetuning_in_a_used_folder_leaves_no_earlier_result(
        tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cycle's or finetune's --out used again: when the new run is stopped, the earlier run's encoder.pt and
    summary.json are not left beside its checkpoint for export to publish as if they were this run's."""
    import signal

    from training import finetune as finetune_module

    data = load(str(tiny_data), "train", (SIZE, SIZE))
    cfg = FinetuneConfig(out=str(tmp_path / "f"), mode="full", preprocess=PRE, labels_per_class=2, steps=2,
                         batch_size=6, threads=1, channels_last=False)
    finetune(cfg, data)
    assert (tmp_path / "f" / loop.ENCODER).is_file()
    _signal_at_step(monkeypatch, finetune_module, "augment", 2, signal.SIGINT)
    with pytest.raises(loop.Interrupted, match="SIGINT: training stopped at step 2") as stopped:
        finetune(FinetuneConfig(**{**cfg.__dict__, "steps": 1000}), data)
    f = tmp_path / "f"
    assert (f / loop.CHECKPOINT).is_file() and not (f / loop.ENCODER).exists() and not (f / loop.SUMMARY).exists()
    assert "nothing to export" in str(stopped.value)  # finetune has no --resume: not "resume it"
    with pytest.raises(ValueError, match="run the `shortlist finetune` command again"):
        load_encoder(f)


def test_a_device_this_machine_lacks_is_a_usage_error(tiny_data: Path, tmp_path: Path) -> None:
    """--device gpu (a typo) or cuda on a machine without a GPU: exit 2 with what to give, before the run folder is
    made (torch's errors were tracebacks: "Expected one of cpu, cuda, ipu, ..." / "Found no NVIDIA driver")."""
    from typer.testing import CliRunner

    from shortlist.cli import app

    devices = ["gpu", "cuda:x"] + ([] if torch.cuda.is_available() else ["cuda"])
    for device in devices:
        for command in (["pretrain", "--epochs", "1"], ["finetune", "--steps", "1"]):
            res = CliRunner().invoke(app, [*command, "--data", str(tiny_data), "--out", str(tmp_path / "x"),
                                           "--device", device], env={"COLUMNS": "200"})
            said = " ".join(res.output.split())
            assert res.exit_code == 2 and f"--device {device}" in said.replace("'", ""), (command, device, said)
            assert "Traceback" not in said and not (tmp_path / "x").exists()


def test_pretrain_and_finetune_skip_unreadable_files_and_list_them(tmp_path: Path) -> None:
    """A folder with bad files trains on the rest: one warning line with the count and the first paths with their
    reasons, every one in the run folder's skipped.txt, the count in summary.json (pretrain stopped at the first
    bad file, exit 2, one file per run)."""
    from typer.testing import CliRunner

    from shortlist.cli import app
    from tests.training.conftest import write_folder

    skipped_txt = "skipped.txt"
    data = write_folder(tmp_path / "messy", 48, 0)
    bad = {"red/truncated.jpg": (data / "red" / "002.png").read_bytes()[:60], "blue/zero_bytes.jpg": b"",
           # macOS AppleDouble files renamed without their "._" (a "._" file is hidden: never read)
           "green/IMG_0001_copy.JPG": b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(40),
           "green/IMG_0002_copy.JPG": b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(40)}
    for name, content in bad.items():
        (data / name).write_bytes(content)
    common = ["--data", str(data), "--preprocess", PRE, "--threads", "1"]
    runs = {"pretrain": ["pretrain", *common, "--epochs", "1", "--batch-size", "16", "--knn-every", "0",
                         "--no-channels-last"],
            "finetune": ["finetune", *common, "--mode", "full", "--steps", "1", "--batch-size", "8"]}
    for command, args in runs.items():
        run = tmp_path / command
        res = CliRunner().invoke(app, [*args, "--out", str(run)], env={"COLUMNS": "200"})
        said = " ".join(res.output.split())
        assert res.exit_code == 0, said
        assert "4 of 52 images are not readable and were left out" in said and "and 1 more" in said
        assert "blue/zero_bytes.jpg: empty image payload" in said and str(run / skipped_txt) in said
        listed = [line.split("\t") for line in (run / skipped_txt).read_text().splitlines()]
        assert sorted(Path(uri).relative_to(data).as_posix() for uri, _ in listed) == sorted(bad)
        assert all(reason for _, reason in listed)
        assert json.loads((run / loop.SUMMARY).read_text())["skipped_images"] == 4
    for path in data.rglob("*.png"):
        path.write_bytes(b"")  # nothing readable left: refused, saying why
    res = CliRunner().invoke(app, [*runs["pretrain"], "--out", str(tmp_path / "none")], env={"COLUMNS": "200"})
    said = " ".join(res.output.split())
    assert res.exit_code == 2 and "none of the 52 files" in said and "is a readable image" in said, said


def test_samples_from_an_agent_that_cannot_be_decoded_are_left_out_with_their_reasons() -> None:
    """cycle's pull: a sample whose stored payload is missing (the agent flags it) or corrupt is left out and
    listed, as a folder's unreadable file is, instead of stopping the cycle; none decodable is refused."""
    import io

    from PIL import Image

    from agent import client
    from agent.ingest import PAYLOAD_ERROR_KEY
    from shortlist.manifest import Preprocess
    from training.data import from_samples

    buf = io.BytesIO()
    Image.new("RGB", (6, 5), (200, 10, 10)).save(buf, format="PNG")
    good = client.image_sample("a", buf.getvalue(), label="red")
    corrupt = client.image_sample("b", buf.getvalue()[:30], label="red")
    missing = client.image_sample("c", b"", label="blue")
    missing.ClearField("encoded_image")
    missing.metadata[PAYLOAD_ERROR_KEY] = "payload file missing"
    data = from_samples([good, corrupt, missing], Preprocess(size=(4, 4)), ["blue", "red"])
    assert data.ids == ["a"] and data.labels.tolist() == [1] and data.images.shape == (1, 3, 4, 4)
    assert [sid for sid, _ in data.skipped] == ["b", "c"] and data.skipped[1][1] == "payload file missing"
    with pytest.raises(ValueError, match="none of the 2 samples the agent sent can be decoded: b: "):
        from_samples([corrupt, missing], Preprocess(size=(4, 4)), ["blue", "red"])


def test_a_missing_split_is_said_with_what_the_training_commands_take(tiny_data: Path, tmp_path: Path) -> None:
    """No training command has --split: pretrain's note about its kNN check and the refusal of a --data without a
    train split say what --data must hold (they said "choose one with --split", ingest's hint)."""
    from typer.testing import CliRunner

    from shortlist.cli import app

    plain = tiny_data / "train"  # an ImageFolder without splits: trains, without a held-out kNN check
    res = CliRunner().invoke(app, ["pretrain", "--data", str(plain), "--out", str(tmp_path / "p"), "--epochs", "1",
                                   "--batch-size", "16", "--preprocess", PRE, "--threads", "1", "--knn-every", "0",
                                   "--no-channels-last"], env={"COLUMNS": "200"})
    said = " ".join(res.output.split())
    assert res.exit_code == 0, said
    assert f"no held-out kNN evaluation: {plain} has no 'test' split (splits found: none; a held-out kNN check " \
           "needs --data to hold a test/ split (or test.tar) beside train/)" in said
    assert "--split" not in said
    only_test = tmp_path / "only_test"
    (only_test / "test").mkdir(parents=True)
    res = CliRunner().invoke(app, ["finetune", "--data", str(only_test), "--out", str(tmp_path / "f"), "--steps",
                                   "1"], env={"COLUMNS": "200"})
    said = " ".join(res.output.split())
    assert res.exit_code == 2 and "has no 'train' split (splits found: test; --data takes a folder with a train/" \
        in said and "--split" not in said, said


def test_cli_method_options(tiny_data: Path, tmp_path: Path) -> None:
    """--method-option KEY=VALUE sets any of the method's constructor keywords (--proj-dim / --pred-dim only set
    SimSiam's and MoBY's widths); an unknown KEY is a usage error that lists the method's options."""
    from typer.testing import CliRunner

    from shortlist.cli import app

    base = ["pretrain", "--data", str(tiny_data), "--epochs", "1", "--batch-size", "16", "--preprocess", PRE,
            "--threads", "1", "--knn-every", "0", "--no-channels-last", "--method", "moby"]
    ok = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "m"), "--method-option", "queue=32",
                                  "--method-option", "hidden=16", "--proj-dim", "8"])
    assert ok.exit_code == 0, ok.output
    assert json.loads((tmp_path / "m" / loop.CONFIG).read_text())["method_options"] == {
        "proj_dim": 8, "hidden": 16, "queue": 32, "tau": 0.2, "momentum": 0.99}
    for args, said in ((["--method-option", "depth=2"], "moby has no option depth; valid: hidden, momentum, "
                                                        "proj_dim, queue, tau"),
                       (["--method-option", "tau=cold"], "moby's tau takes a number"),
                       (["--method-option", "proj_dim=8", "--proj-dim", "8"], "both set proj_dim")):
        bad = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "x"), *args], env={"COLUMNS": "300"})
        assert bad.exit_code == 2 and said in " ".join(bad.output.split()), bad.output
        assert not (tmp_path / "x").exists()


def test_resume_refuses_other_settings_and_a_finished_run(tiny_data: Path, tmp_path: Path) -> None:
    """--resume replays the run config.json records: another budget, batch size or lr was trained with while
    config.json kept the old ones. Refused, naming each flag with the run's value and the given one, before
    anything in the folder changes; a finished run is refused too (it trained on past its budget, and a signal
    then removed its encoder.pt and summary.json)."""
    run = tmp_path / "r"
    pretrain(_cfg(tiny_data, run, "rotnet", epochs=2, knn_every=0, stop_after=1))
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with pytest.raises(ValueError) as refused:
        pretrain(_cfg(tiny_data, run, "rotnet", epochs=None, minutes=3.0, knn_every=0, batch_size=8, lr=0.5,
                      resume=True))
    said = str(refused.value)
    for part in ("--batch-size: the run's 16, given 8", "--lr: the run's", "given 0.5", "--epochs: the run's 2, given "
                 "None", "--minutes: the run's None, given 3.0", "drop those flags", "another --out"):
        assert part in said, (part, said)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    pretrain(_cfg(tiny_data, run, "rotnet", epochs=2, knn_every=0, resume=True))  # the same settings: finishes
    finished = {p.name: p.read_bytes() for p in run.iterdir()}
    with pytest.raises(ValueError, match=r"the run is finished: .*export it, or start a new run with another --out"):
        pretrain(_cfg(tiny_data, run, "rotnet", epochs=2, knn_every=0, resume=True))
    assert {p.name: p.read_bytes() for p in run.iterdir()} == finished


def test_a_torn_summary_is_resumed_as_export_says(tiny_data: Path, tmp_path: Path) -> None:
    """A summary.json torn by a crash: export (``loop.unfinished_run``) calls the run unfinished and sends the user
    to ``pretrain --resume``, which must then go on (it said "the run is finished ... export it": a dead end)."""
    run = tmp_path / "r"
    pretrain(_cfg(tiny_data, run, "rotnet", epochs=2, knn_every=0))
    whole = (run / loop.SUMMARY).read_text()
    (run / loop.SUMMARY).write_text(whole[:40])
    assert "pretrain --resume" in (loop.unfinished_run(run) or "")
    pretrain(_cfg(tiny_data, run, "rotnet", epochs=2, knn_every=0, resume=True))
    summary = loop.read_summary(run)
    assert summary is not None and summary["steps"] == json.loads(whole)["steps"]
    assert loop.unfinished_run(run) is None and (run / loop.ENCODER).is_file()


def test_cli_resume_takes_the_runs_settings_and_refuses_other_ones(tiny_data: Path, tmp_path: Path) -> None:
    """`pretrain --resume --out RUN` needs no other flag: the options not given are the run's (not the command's
    defaults, which would differ from config.json and be refused); a given one that differs: exit 2 naming it."""
    from typer.testing import CliRunner

    from shortlist.cli import app

    run = tmp_path / "r"
    pretrain(_cfg(tiny_data, run, "rotnet", epochs=2, knn_every=0, stop_after=1))
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    env = {"COLUMNS": "300"}
    bad = CliRunner().invoke(app, ["pretrain", "--out", str(run), "--resume", "--batch-size", "8", "--minutes", "3",
                                   "--threads", "1"], env=env)
    said = " ".join(bad.output.split())
    assert bad.exit_code == 2 and "--batch-size: the run's 16, given 8" in said and "--minutes: the run's None, " \
        "given 3.0" in said and "Traceback" not in said, said
    moby = tmp_path / "m"  # another --method: the run's method options are moby's, not carried over to simsiam
    pretrain(_cfg(tiny_data, moby, "moby", epochs=2, knn_every=0, stop_after=1))
    other = CliRunner().invoke(app, ["pretrain", "--out", str(moby), "--resume", "--method", "simsiam"], env=env)
    said = " ".join(other.output.split())
    assert other.exit_code == 2 and "--method: the run's 'moby', given 'simsiam'" in said, said
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    ok = CliRunner().invoke(app, ["pretrain", "--out", str(run), "--resume", "--threads", "1",
                                  "--no-channels-last"], env=env)
    assert ok.exit_code == 0, ok.output
    assert json.loads((run / loop.SUMMARY).read_text())["steps"] == 6
    again = CliRunner().invoke(app, ["pretrain", "--out", str(run), "--resume", "--threads", "1"], env=env)
    assert again.exit_code == 2 and "the run is finished" in " ".join(again.output.split())
    assert (run / loop.ENCODER).is_file() and (run / loop.SUMMARY).is_file()


def test_settings_that_cannot_train_are_usage_errors_before_any_work(tiny_data: Path, tmp_path: Path) -> None:
    """Each of these was a traceback, a late failure after training started, an internally scaled value or
    silently accepted; now exit 2 naming the flag, and no --out folder left behind."""
    from typer.testing import CliRunner

    from shortlist.cli import app

    base = ["pretrain", "--data", str(tiny_data), "--epochs", "1", "--preprocess", PRE, "--knn-every", "0",
            "--no-channels-last"]
    cases = [(["--threads", "-1"], "--threads"), (["--threads", "0"], "--threads"), (["--proj-dim", "0"], "--proj-dim"),
             (["--lr", "-1"], "--lr"), (["--max-res", "1"], "--max-res 1: resnet18_w32 takes views of at least 8"),
             (["--crop-min", "2"], "--crop-min"), (["--method", "moby", "--method-option", "proj_dim=0"], "--proj-dim"),
             ([], "--batch-size 512 is larger than the 48 training images"), (["--batch-size", "0"], "--batch-size")]
    for i, (flags, expect) in enumerate(cases):
        out = tmp_path / f"o{i}"
        res = CliRunner().invoke(app, [*base, "--out", str(out), *flags], env={"COLUMNS": "300"})
        said = " ".join(res.output.split())
        assert res.exit_code == 2 and expect in said and "Traceback" not in said, (flags, said)
        assert "-2.0" not in said and "decoded" not in said.replace("decoded 48 training", ""), (flags, said)
        assert not out.exists(), flags
    with pytest.raises(ValueError, match=r"--batch-size 64 is larger than the 48 training images.*--batch-size 24"):
        pretrain(_cfg(tiny_data, tmp_path / "lib", "rotnet", batch_size=64))
    with pytest.raises(ValueError, match="--pred-dim 0"):
        pretrain(_cfg(tiny_data, tmp_path / "lib", "simsiam", method_options={"pred_dim": 0}))
    assert not (tmp_path / "lib").exists()


def test_the_final_knn_is_measured_in_fp32_as_the_exported_model_runs(
        tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The final kNN (printed, summary.json) was measured under bf16 autocast while the exported model is fp32
    (1.4 points apart on a SimSiam run); the periodic checks keep the training's autocast, and say so."""
    from training import pretrain as pretrain_module

    seen: list[object] = []
    real = pretrain_module.embed

    def recording(*args: object, **kw: object) -> torch.Tensor:
        seen.append(kw.get("amp_dtype"))
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(pretrain_module, "embed", recording)
    run = pretrain(_cfg(tiny_data, tmp_path / "r", "rotnet", epochs=2, knn_every=1, amp=True))
    assert seen == [torch.bfloat16, torch.bfloat16, None, None]  # epoch 1 (bank, test), then the final one
    summary = json.loads((run / loop.SUMMARY).read_text())
    assert summary["knn_precision"] == "fp32"
    records = [json.loads(line) for line in (run / loop.METRICS).read_text().splitlines()]
    assert [r["precision"] for r in records if r["kind"] == "knn"] == ["bf16", "fp32"]


def test_cli_finetune_evaluates_the_test_split_when_the_data_has_one(tiny_data: Path, tmp_path: Path) -> None:
    """`shortlist finetune` never measured held-out accuracy (finetune() takes eval_data; the CLI passed none):
    now the test split of --data, printed and in summary.json; a source without one says so."""
    from typer.testing import CliRunner

    from shortlist.cli import app

    base = ["finetune", "--mode", "full", "--steps", "2", "--batch-size", "6", "--labels-per-class", "2",
            "--preprocess", PRE, "--threads", "1"]
    res = CliRunner().invoke(app, [*base, "--data", str(tiny_data), "--out", str(tmp_path / "f")],
                             env={"COLUMNS": "300"})
    said = " ".join(res.output.split())
    assert res.exit_code == 0 and "test accuracy" in said and "on 24 held-out images" in said, said
    summary = json.loads((tmp_path / "f" / loop.SUMMARY).read_text())
    assert 0.0 <= summary["test_accuracy"] <= 1.0 and summary["test_images"] == 24
    res = CliRunner().invoke(app, [*base, "--data", str(tiny_data / "train"), "--out", str(tmp_path / "g")],
                             env={"COLUMNS": "300"})
    said = " ".join(res.output.split())
    assert res.exit_code == 0 and "no held-out evaluation" in said and "test accuracy" not in said, said


def test_a_limit_that_leaves_one_class_is_said(tiny_data: Path, tmp_path: Path) -> None:
    """--limit N takes the first N images in the source's order: on a source sorted by class (the CIFAR tars)
    that was one class, trained without a word, and the kNN message did not point at --limit."""
    import io

    from rich.console import Console

    said = io.StringIO()
    pretrain(_cfg(tiny_data, tmp_path / "r", "rotnet", limit=16, batch_size=8, knn_every=0),
             Console(file=said, width=400))
    text = " ".join(said.getvalue().split())
    assert "warning: the training data has one class (blue) (--limit 16 took the first 16 images" in text, text
    assert "no held-out kNN evaluation" in text and "--limit 16 took the first 16 images in the source's order, " \
        "which hold 1 class: blue" in text, text
    quiet = io.StringIO()
    pretrain(_cfg(tiny_data, tmp_path / "q", "rotnet", knn_every=0), Console(file=quiet, width=400))
    assert "one class" not in quiet.getvalue() and "--limit" not in quiet.getvalue()


def test_one_labelled_class_among_unlabelled_images_is_not_called_one_class(tmp_path: Path) -> None:
    """cycle's self-supervised modes pretrain on every sample pulled from the agent, labelled or not: a pool of
    3 kinds of images with one labelled sample was warned of as "one class", from the labels alone."""
    import io

    import numpy as np
    from rich.console import Console

    from tests.training.conftest import CLASSES, make_images
    from training.data import from_hwc

    imgs, kinds = make_images(24)
    labels = np.full(24, -1)
    labels[0] = kinds[0]  # one labelled sample, as in a fresh agent's pool
    pool = from_hwc(imgs, labels, CLASSES, [f"s{i}" for i in range(24)])
    said = io.StringIO()
    pretrain(_cfg(tmp_path / "none", tmp_path / "r", "rotnet", batch_size=8, knn_every=0), Console(file=said,
             width=400), train_data=pool)
    assert "one class" not in said.getvalue(), said.getvalue()
    all_blue = from_hwc(imgs[kinds == 0], kinds[kinds == 0], CLASSES, [f"b{i}" for i in range(8)])
    said = io.StringIO()  # every image labelled: the labels say what the data is
    pretrain(_cfg(tmp_path / "none", tmp_path / "b", "rotnet", batch_size=4, knn_every=0), Console(file=said,
             width=400), train_data=all_blue)
    assert "warning: the training data has one class (blue)" in " ".join(said.getvalue().split())


def test_finetune_and_cycle_refuse_threads_below_one(tiny_data: Path, tmp_path: Path) -> None:
    """torch's set_num_threads refused them with a traceback once training had started."""
    from typer.testing import CliRunner

    from shortlist.cli import app

    for command in (["finetune", "--data", str(tiny_data), "--steps", "1"], ["cycle", "--models", str(tmp_path / "m"),
                                                                            "--steps", "1"]):
        res = CliRunner().invoke(app, [*command, "--out", str(tmp_path / "o"), "--threads", "0"],
                                 env={"COLUMNS": "300"})
        assert res.exit_code == 2 and "--threads" in res.output and not (tmp_path / "o").exists(), res.output


def test_a_global_batch_smaller_than_the_processes_is_refused(
        tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--procs 2 --batch-size 1 gave each rank a batch of 0 (a ZeroDivisionError in the budget)."""
    import dataclasses

    real = loop.setup_runtime
    monkeypatch.setattr(loop, "setup_runtime", lambda *a, **kw: dataclasses.replace(real(*a, **kw), world=2))
    with pytest.raises(ValueError, match=r"--batch-size 1 is the global batch: .* each of the 2 processes"):
        pretrain(_cfg(tiny_data, tmp_path / "r", "rotnet", batch_size=1))
    assert not (tmp_path / "r").exists()
