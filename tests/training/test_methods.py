"""The method extension point: a new self-supervised method is one SSLMethod subclass plus one line in
training.modes.METHOD_CLASSES, and `shortlist pretrain --method` and the shared loop (``pretrain``) run it through
its declared defaults, views and hooks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from tests.training.conftest import PRE
from training import loop, modes
from training.methods import METHODS, Encoder, MethodDefaults, SSLMethod
from training.pretrain import PretrainConfig, load_encoder

CALLS: dict[str, list[Any]] = {}


class ThreeViews(SSLMethod):
    """A toy method: three views, features pulled together by a small head (kept at a fixed lr)."""

    defaults = MethodDefaults(lr=0.01, weight_decay=1e-4, batch_size=16)
    views = 3

    def __init__(self, encoder: Encoder, width: int = 8) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.dim, width)
        self.options: dict[str, Any] = {"width": width}

    def forward(self, *views: torch.Tensor) -> torch.Tensor:
        CALLS["forward_views"].append(len(views))
        z = self.head(self.encoder(torch.cat(views))).float()
        return z.reshape(len(views), len(views[0]), -1).var(dim=0).mean()  # views' disagreement

    def before_step(self, progress: float) -> None:
        CALLS["before"].append(progress)

    def after_step(self, progress: float) -> None:
        CALLS["after"].append(progress)

    def fixed_lr_params(self) -> list[nn.Parameter]:
        return list(self.head.parameters())

    def knn_encoder(self) -> nn.Module:
        CALLS["knn"].append(True)
        return self.encoder


@pytest.fixture
def three_views(monkeypatch: pytest.MonkeyPatch) -> None:
    # the one registry line (what a contributor adds to training.modes.METHOD_CLASSES)
    monkeypatch.setitem(modes.METHOD_CLASSES, "three_views", f"{__name__}:ThreeViews")
    for k in ("forward_views", "before", "after", "knn"):
        CALLS[k] = []


def test_a_fourth_method_is_one_class(three_views: None, tiny_data: Path, tmp_path: Path) -> None:
    """Through the CLI, as a user runs it: a method known to training.methods but not to the CLI's option
    parsing (two registries) was `unknown method`."""
    from typer.testing import CliRunner

    from shortlist.cli import app

    run = tmp_path / "run"
    res = CliRunner().invoke(app, ["pretrain", "--data", str(tiny_data), "--out", str(run), "--method", "three_views",
                                   "--arch", "resnet18_w32", "--epochs", "1", "--preprocess", PRE, "--knn-every", "0",
                                   "--knn-k", "5", "--threads", "1", "--no-channels-last",
                                   "--method-option", "width=4"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert METHODS["three_views"] is ThreeViews and "three_views" in METHODS
    config = json.loads((run / loop.CONFIG).read_text())
    # its declared defaults and options reach config.json; 48 images / batch 16 = 3 steps
    assert (config["batch_size"], config["lr"], config["weight_decay"]) == (16, 0.01, 1e-4)
    assert config["method_options"] == {"width": 4}
    assert json.loads((run / loop.SUMMARY).read_text())["steps"] == 3
    # three views a step, each hook once a step with the same, growing progress; kNN embeds its encoder
    assert CALLS["forward_views"] == [3, 3, 3]
    assert CALLS["before"] == CALLS["after"] and len(CALLS["before"]) == 3
    assert CALLS["before"] == sorted(CALLS["before"]) and CALLS["before"][0] == 0.0
    assert CALLS["knn"]
    enc, meta = load_encoder(run)
    assert meta["method"] == "three_views" and enc.rotation is None
    with pytest.raises(ValueError, match="three_views has no option depth; valid: width"):
        PretrainConfig(data=".", out=".", method="three_views", method_options={"depth": 2}).resolved()


def test_fixed_lr_params_keep_the_base_lr(three_views: None) -> None:
    from training.backbones import build_backbone
    from training.pretrain import build_optimizer, set_lr

    model = ThreeViews(Encoder(build_backbone("resnet18_w32")))
    opt = build_optimizer(model, 0.1, 0.0)
    set_lr(opt, 0.1, 0.02)
    fixed = [g for g in opt.param_groups if g["fixed_lr"]]
    assert len(fixed) == 1 and fixed[0]["lr"] == 0.1 and len(fixed[0]["params"]) == 2
    assert all(g["lr"] == 0.02 for g in opt.param_groups if not g["fixed_lr"])


def test_the_torch_free_names_are_the_registrys_and_no_method_is_a_fine_tuning_mode() -> None:
    """training.modes is the methods' registry (without torch, for the CLI's help): METHODS reads it, in order,
    and `shortlist cycle --mode` takes methods and fine-tuning modes alike, so no name may be both."""
    import subprocess
    import sys

    from training import finetune, modes

    assert tuple(METHODS) == modes.METHOD_NAMES
    assert finetune.FINETUNE_MODES == modes.FINETUNE_MODES
    assert not set(METHODS) & set(finetune.FINETUNE_MODES)
    loaded = subprocess.run([sys.executable, "-c", "import sys, training.modes, training.cli; "
                             "print('torch' in sys.modules)"], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "False"


def test_each_fine_tuning_modes_flags_have_its_functions() -> None:
    """training.finetune keeps a function per mode (the frozen modes' probe, the unlabelled modes' loss, the lr
    schedule) keyed by training.modes' names and flags: the two stay in step."""
    from training import finetune, modes

    assert all(name == mode.name for name, mode in modes.MODES.items())
    for mode in modes.MODES.values():  # one registration carries the mode's functions: every one resolves
        if mode.frozen:
            assert callable(finetune.probe_of(mode)), mode.name
        if mode.unlabelled:
            assert callable(finetune.unlabelled_loss_of(mode)), mode.name
    assert all(mode.lr_schedule in finetune.LR_SCHEDULES for mode in modes.MODES.values())
    assert all(mode.fit for mode in modes.MODES.values() if mode.frozen)


def test_a_mode_without_its_function_is_refused_at_registration() -> None:
    """A frozen mode needs its probe and an unlabelled mode its step loss, in the same entry (they were keyed by
    name in training.finetune's own dicts: a mode missing there failed with a KeyError when run)."""
    from training.modes import FinetuneMode

    with pytest.raises(ValueError, match="fine-tuning mode knn: give probe= exactly when frozen=True"):
        FinetuneMode("knn", frozen=True, fit="x")
    with pytest.raises(ValueError, match="fine-tuning mode mixmatch: give unlabelled_loss= exactly when unlabelled"):
        FinetuneMode("mixmatch", unlabelled=True)


def test_a_new_mode_is_one_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    """A mode registered in training.modes.MODES alone is a recipe head (when it needs no priors) and its
    functions resolve from the entry."""
    from bench.recipes.spec import Head, head_modes
    from training import finetune
    from training.modes import FinetuneMode

    knn = FinetuneMode("knn_head", frozen=True, fit="x", probe="training.finetune:svm_head")
    monkeypatch.setitem(modes.MODES, "knn_head", knn)  # type: ignore[index]
    assert "knn_head" in head_modes() and Head("knn_head").trains_network is False
    assert "as3l" not in head_modes()  # needs the agent's priors, which a recipe's rounds do not ask for
    assert finetune.probe_of(knn) is finetune.svm_head


def test_the_help_lists_every_method(monkeypatch: pytest.MonkeyPatch) -> None:
    """`pretrain --help` and `cycle --help` list the methods from the registry's names (were typed by hand)."""
    from typer.testing import CliRunner

    from shortlist.cli import app
    from training import modes

    for cmd, listed in (("pretrain", " | ".join(METHODS)),
                        ("cycle", " | ".join((*modes.FINETUNE_MODES, *METHODS)))):
        out = " ".join(CliRunner().invoke(app, [cmd, "--help"], env={"COLUMNS": "300"}).output.split())
        assert listed in out, (cmd, out)
    assert "--method-option" in out


def test_finetune_help_offers_epochs_only_to_the_modes_that_take_them() -> None:
    """`finetune --help` says linear takes --epochs (its probe's) and svm refuses them, as `_frozen_budget` does
    (it said "linear, svm: the probe's own fit", and `--mode svm --epochs 5` exits 2)."""
    from typer.testing import CliRunner

    from shortlist.cli import app

    out = " ".join(CliRunner().invoke(app, ["finetune", "--help"], env={"COLUMNS": "300"}).output.split())
    assert ("train for N epochs (linear: the probe's epochs, default 100; svm refuses it: scikit-learn fits the "
            "SVM to convergence)") in out, out
    refused = CliRunner().invoke(app, ["finetune", "--mode", "svm", "--epochs", "5", "--data", "x", "--out", "y"])
    assert refused.exit_code == 2 and "scikit-learn fits the SVM to convergence" in " ".join(refused.output.split())


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_trains_a_step_with_a_finite_loss(name: str) -> None:
    """Every registry entry keeps the contract the shared loop relies on: it builds from the encoder alone (every
    option has a default), records each option in ``options``, takes ``views`` views and returns a finite scalar
    loss whose gradient reaches the encoder; its defaults are usable."""
    from training.backbones import build_backbone

    torch.manual_seed(0)
    cls = METHODS[name]
    assert cls.defaults.batch_size > 0 and cls.defaults.lr > 0 and cls.views >= 1
    model = cls(Encoder(build_backbone("resnet18_w32"), rotation_head=cls.rotation_head))
    assert set(model.options) == cls.option_names()
    model.before_step(0.0)
    loss = model(*[torch.rand(4, 3, 16, 16) for _ in range(cls.views)])
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    model.after_step(0.0)
    grads = [p.grad for p in model.encoder.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_method_options_from_the_command_line_take_their_defaults_types() -> None:
    from training.methods import parse_method_options

    assert parse_method_options("moby", ["tau=0.1", "queue=64", " proj_dim = 32 "]) == {
        "tau": 0.1, "queue": 64, "proj_dim": 32}
    assert isinstance(parse_method_options("moby", ["tau=1"])["tau"], float)
    assert parse_method_options("rotnet", []) == {}
    with pytest.raises(ValueError, match="moby has no option temperature; valid: hidden, momentum, proj_dim, queue, "
                                         "tau"):
        parse_method_options("moby", ["temperature=0.1"])
    with pytest.raises(ValueError, match=r"queue=4k: moby's queue takes an integer \(default 4096\)"):
        parse_method_options("moby", ["queue=4k"])
    with pytest.raises(ValueError, match="give KEY=VALUE"):
        parse_method_options("moby", ["tau"])
    with pytest.raises(ValueError, match="unknown method 'simclr'"):
        parse_method_options("simclr", ["tau=0.1"])


def test_an_unknown_method_or_mode_is_said_before_a_missing_budget(tmp_path: Path) -> None:
    """`pretrain --method nope` / `finetune --mode nope` without a budget flag used to complain about the budget
    first; the name is what is wrong, so it is said first, with the valid names (exit 2, before any work)."""
    import re

    from typer.testing import CliRunner

    from shortlist.cli import app

    for args, said in ((["pretrain", "--method", "nope"], "unknown method 'nope'; valid: simsiam, rotnet, moby"),
                       (["finetune", "--mode", "nope"], "unknown fine-tuning mode 'nope'; valid: linear, svm, full")):
        res = CliRunner().invoke(app, [*args, "--data", str(tmp_path), "--out", str(tmp_path / "out")],
                                 env={"COLUMNS": "200"})
        flat = re.sub(r"[\s│]+", " ", res.output)
        assert res.exit_code == 2 and said in flat and "budget" not in flat, flat
    assert not (tmp_path / "out").exists()
