"""``shortlist pretrain | finetune | export | cycle``. torch is imported inside the commands only, so
``shortlist serve`` and the other agent commands start without it."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from agent.cli_options import AgentTarget, agent_options
from shortlist.atomic import NotWholeJson, read_json
from shortlist.console import INTERRUPTED_EXIT, make_console
from shortlist.datasets import sources_said
from shortlist.options import finite
from shortlist.out_lock import OutLock
from training.configs import CycleConfig, FinetuneConfig, PretrainConfig
from training.modes import FINETUNE_MODES, METHOD_CLASSES, METHOD_NAMES, MODES, frozen_mode, help_list

console = make_console(stderr=True)


def _defaults(config: Any) -> dict[str, Any]:
    """A training.configs dataclass's defaults by field name: the commands' options take theirs from here, so
    each default is defined once, on the config (fields without a plain default are left out)."""
    return {f.name: f.default for f in dataclasses.fields(config) if f.default is not dataclasses.MISSING}


PRETRAIN, FINETUNE, CYCLE = _defaults(PretrainConfig), _defaults(FinetuneConfig), _defaults(CycleConfig)


# training.backbones.BACKBONES (not imported: it loads torch, slow for --help; a test keeps the two equal)
ARCH_HELP = "resnet18 | resnet18_w32 | wrn28_2 | vgg16_bn_cifar | torchvision:NAME"


def _frozen_budget(mode: str, steps: int | None, minutes: float | None, epochs: int | None) -> None:
    """A frozen mode (linear, svm) fits a head on frozen features once: a step or time budget would be ignored,
    so refuse it (and --epochs, unless they are its probe's)."""
    if steps is not None or minutes is not None or (not MODES[mode].probe_epochs and epochs is not None):
        what = MODES[mode].fit.format(linear_epochs=FINETUNE["linear_epochs"])
        raise typer.BadParameter(f"--mode {mode} fits a head on frozen features: no step or time budget applies "
                                 f"({what}); give none, or use --mode full")


# finetune --epochs, from the registry: a frozen mode whose epochs are its probe's takes them, another refuses them
# (``_frozen_budget``), so the help must not offer them to it.
FINETUNE_EPOCHS_HELP = "train for N epochs (" + "; ".join(
    f"{m.name}: the probe's epochs, default {FINETUNE['linear_epochs']}" if m.probe_epochs else
    f"{m.name} refuses it: {m.fit}" for m in MODES.values() if m.frozen) + ")"


METHOD_OPTION_HELP = ("one of the method's constructor options (repeatable; e.g. moby's tau=0.1); an unknown KEY "
                      "is refused with the method's options listed")


def _method_options(method: str, items: list[str], **flags: int | None) -> dict[str, object]:
    """--method-option KEY=VALUE items (and the flags that set one option each: --proj-dim, --pred-dim) ->
    the method's ``method_options``; a bad item is a usage error (2) that lists the method's options."""
    from training.methods import parse_method_options

    try:
        options = parse_method_options(method, items) if items else {}  # (an unknown method: said by pretrain)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--method-option") from None
    for key, value in flags.items():
        if value is None:
            continue
        if key in options:
            raise typer.BadParameter(f"--{key.replace('_', '-')} and --method-option {key}=... both set {key}: "
                                     "give one")
        options[key] = value
    return options


def _known(name: str, valid: Collection[str], what: str, flag: str) -> None:
    """An unknown method or mode is a usage error (2) listing the valid names, checked before the budget
    flags: the name is what the user got wrong, whatever else is missing."""
    if name not in valid:
        raise typer.BadParameter(f"unknown {what} {name!r}; valid: {', '.join(valid)}", param_hint=flag)


def _one_budget(*values: float | None) -> None:
    if sum(v is not None for v in values) != 1:
        names = ["--epochs N", "--minutes M", "--steps S"][:len(values)]
        raise typer.BadParameter(f"give exactly one budget: {' or '.join(names)}")


# pretrain_cmd's options that are PretrainConfig fields of the same name and decide what a run trains: with --resume,
# those not given on the command line take the run's values from its config.json (RESUME_FROM_RUN).
RESUME_FROM_RUN = ("data", "method", "arch", "limit", "batch_size", "lr", "weight_decay", "min_res", "max_res",
                   "crop_min", "preprocess", "knn_every", "knn_k", "amp", "seed")


def _run_config(out: Path) -> dict[str, Any] | None:
    """The config.json of the run in ``out`` (None: none, or unreadable: pretrain then says what is missing).
    One that is not a whole JSON object exits 2 naming it: --resume would otherwise take the command line's
    defaults for the run's settings, or fail on the file later."""
    try:
        return read_json(out / "config.json", "it records the run's settings, which --resume reuses: restore it, "
                         "or delete it and give the run's settings again (--data, --method, ...), or start a new "
                         "run with another --out")
    except NotWholeJson as e:
        console.print(f"[red]error:[/] {escape(str(e))}", highlight=False)
        raise typer.Exit(2) from None
    except OSError:
        return None


RUN_LOCK = "run.lock"  # in a run folder while pretrain, finetune or cycle writes it (shortlist.out_lock.OutLock)


def pretraining_run_in(out: Path) -> str | None:
    """What ``out`` holds when it is a pretraining run, finished or not (a checkpoint or an encoder, and a
    config.json of ``shortlist pretrain``, which names no fine-tuning ``mode``), else None: the work a finetune
    or a cycle into ``out`` would overwrite (an unfinished one is resumed with ``pretrain --resume``)."""
    from training.loop import CHECKPOINT, CONFIG, ENCODER, read_summary

    try:
        if not ((out / CHECKPOINT).is_file() or (out / ENCODER).is_file()):
            return None
    except OSError:  # e.g. a name too long (Python 3.11's is_file raises): no run; the run lock says what is wrong
        return None
    try:
        config = json.loads((out / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict) or "mode" in config:  # a fine-tuning or cycle run (FinetuneConfig)
        return None
    if read_summary(out) is not None:
        return "a finished pretraining run"
    return f"an unfinished pretraining run (resume it with `shortlist pretrain --resume --out {out}`)"


@contextmanager
def _run_lock(out: Path, command: str) -> Iterator[None]:
    """Hold ``out``/run.lock while ``shortlist <command>`` writes the run folder ``out``: two runs into one folder
    both finished with exit 0 and their files mixed. Another run holding it, or an --out that is a file or
    cannot be made: one line, exit 2 (shortlist.out_lock.OutLock, the bench commands' too). Taken by
    the launching process only (not by torchrun's other ranks, which write nothing of their own there)."""
    if int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    with OutLock(out, RUN_LOCK, f"shortlist {command}", "training run"):
        yield


LIMIT_HELP = ("only the first N samples in the source's order (smoke runs; not a random sample: on a source sorted "
              "by class, such as the CIFAR tars, that is the first class or two, and a warning says so)")


def pretrain_cmd(
    ctx: typer.Context,
    data: str | None = typer.Option(None, help=f"image source: {sources_said()} (its test split, when it has one, "
                                    "is the kNN hold-out); required unless --resume (then the run's)"),
    out: Path = typer.Option(..., help="run folder (config.json, metrics.jsonl, checkpoint.pt, encoder.pt)"),
    method: str = typer.Option(PRETRAIN["method"], help=help_list(METHOD_NAMES)),
    arch: str = typer.Option(PRETRAIN["arch"], help=ARCH_HELP),
    epochs: int | None = typer.Option(None, min=1, help="train for N epochs"),
    minutes: float | None = typer.Option(None, callback=finite, min=0.01, help="or for M minutes of training "
                                         "(evaluation not counted)"),
    limit: int | None = typer.Option(None, min=1, help=LIMIT_HELP),
    batch_size: int | None = typer.Option(None, min=1, help="global batch size (default: the method's)"),
    lr: float | None = typer.Option(None, callback=finite, min=0.0, help="base learning rate per 256 images "
                                    "(default: the method's)"),
    weight_decay: float | None = typer.Option(None, callback=finite, min=0.0, help="SGD weight decay (default: the "
                                              "method's)"),
    min_res: int | None = typer.Option(None, min=1, help="progressive resizing: views start at this many pixels"),
    max_res: int | None = typer.Option(None, min=1, help="cap on the training views' size in pixels (default: the "
                                       "model's size on a GPU, half of it on a CPU); evaluation stays full size"),
    crop_min: float = typer.Option(PRETRAIN["crop_min"], callback=finite, min=0.01, max=1.0,
                                   help="smallest random-resized-crop area fraction (0.01 to 1)"),
    proj_dim: int | None = typer.Option(None, min=1, help="projector output width (simsiam default 256, paper 2048; "
                                        "moby default 256)"),
    pred_dim: int | None = typer.Option(None, min=1, help="simsiam predictor bottleneck (default 64, paper 512)"),
    method_option: list[str] | None = typer.Option(None, metavar="KEY=VALUE", help=METHOD_OPTION_HELP),
    preprocess: str = typer.Option(PRETRAIN["preprocess"], help="cifar10 | cifar100 | imagenet (size, mean, std)"),
    knn_every: int = typer.Option(PRETRAIN["knn_every"], min=0, help="epochs between kNN evaluations (0: only at "
                                  "the end; bf16 autocast when --amp, the final one in fp32)"),
    knn_k: int = typer.Option(PRETRAIN["knn_k"], min=1, help="neighbours of the kNN accuracy (200: the protocol "
                              "for CIFAR-sized banks; a small data set wants about half its images per class)"),
    checkpoint_minutes: float = typer.Option(PRETRAIN["checkpoint_minutes"], callback=finite, min=0.0,
                                             help="minutes between checkpoints (also on SIGTERM)"),
    resume: bool = typer.Option(PRETRAIN["resume"], help="continue the unfinished run in --out from its checkpoint, "
                                "with its config.json's settings (a flag given must equal the run's)"),
    device: str = typer.Option(PRETRAIN["device"], help="auto | cpu | cuda"),
    amp: bool = typer.Option(PRETRAIN["amp"], help="bf16 autocast on CPU, AMP on CUDA"),
    channels_last: bool = typer.Option(PRETRAIN["channels_last"]),
    compile: bool = typer.Option(PRETRAIN["compile"], help="torch.compile the model (helps on GPU; slow to start on "
                                 "CPU)"),
    threads: int | None = typer.Option(None, min=1, help="CPU threads (1 is faster on a busy shared machine)"),
    procs: int = typer.Option(1, min=1, help="data-parallel processes on this machine (DDP, gloo on CPU; "
                              "--batch-size stays global). On a 2-core CPU, 2 single-thread ranks beat one 2-thread "
                              "process (docs/training.md, \"CPU defaults and why\"). At most the CPU cores this "
                              "process may use, unless --oversubscribe"),
    oversubscribe: bool = typer.Option(False, "--oversubscribe", help="allow --procs above the CPU core count "
                                       "(each rank is a process holding the model and the decoded data)"),
    seed: int = typer.Option(PRETRAIN["seed"]),
) -> None:
    """Self-supervised pretraining of an encoder (kNN accuracy on the held-out split when labels exist)."""
    # the options that are PretrainConfig fields of the same name (RESUME_FROM_RUN): with --resume, those not given
    # on the command line are the run's (click says which were given); a given one that differs is refused
    run: dict[str, Any] = {name: ctx.params[name] for name in RESUME_FROM_RUN}
    saved = _run_config(out) if resume else None
    options: dict[str, object] | None = None
    if saved is not None:
        # (by the enum's name: typer vendors its own click, whose ParameterSource is not click.core's)
        given = {name for name in ctx.params if getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"}
        run.update({name: saved[name] for name in RESUME_FROM_RUN if name not in given and name in saved})
        if epochs is None and minutes is None:
            epochs, minutes = saved.get("epochs"), saved.get("minutes")
        if not method_option and proj_dim is None and pred_dim is None and run["method"] == saved.get("method") \
                and isinstance(saved.get("method_options"), dict):  # (another method: refused, naming --method)
            options = dict(saved["method_options"])
    _known(run["method"], METHOD_CLASSES, "method", "--method")
    if run["data"] is None:
        raise typer.BadParameter("give the image source" + (" (--resume found no config.json in --out)" if resume
                                                            else ""), param_hint="--data")
    _one_budget(epochs, minutes)
    cores = usable_cores()
    if procs > cores and not oversubscribe:  # each rank imports torch and decodes the data: 999 fills the RAM
        raise typer.BadParameter(f"{procs} is more than the {cores} CPU cores this process may use: give "
                                 f"--procs {cores} or less, or add --oversubscribe to start {procs} anyway",
                                 param_hint="--procs")
    from training.pretrain import PretrainConfig

    if options is None:
        options = _method_options(run["method"], method_option or [], proj_dim=proj_dim, pred_dim=pred_dim)
    cfg = PretrainConfig(**run, out=str(out), epochs=epochs, minutes=minutes, checkpoint_minutes=checkpoint_minutes,
                         resume=resume, device=device, channels_last=channels_last, compile=compile, threads=threads,
                         method_options=options)
    if procs > 1:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise typer.BadParameter("--procs starts its own processes; under torchrun leave it out")
        from training.loop import check_device
        from training.pretrain import check_before_launch

        with _run_lock(out, "pretrain"):
            try:
                # settings, --out and the batch against the data's size once, here, rather than from every rank
                # after all of them have started
                check_before_launch(cfg, procs)
                check_device(cfg.device)
            except (ValueError, FileNotFoundError, FileExistsError) as e:
                console.print(f"[red]error:[/] {escape(str(e))}", highlight=False)
                raise typer.Exit(2) from None
            except OSError as e:  # e.g. an unreadable source
                console.print(f"[red]error:[/] {escape(str(e))}", highlight=False)
                raise typer.Exit(1) from None
            _launch_local(cfg, procs)
        return
    with _run_lock(out, "pretrain"):
        _pretrain_worker(cfg)


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, e.g. a container's or taskset's cpuset; the
    machine's count where the OS has no such mask)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _pretrain_worker(cfg: PretrainConfig) -> None:
    """One process's pretraining (the whole run, or one rank of ``--procs``); a bad setting exits 2."""
    from training.loop import Interrupted, close_process_group
    from training.pretrain import pretrain

    try:
        pretrain(cfg, console)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        if int(os.environ.get("RANK", "0")) == 0:
            console.print(f"[red]error:[/] {e}")
        raise SystemExit(2) from None  # not typer.Exit: under --procs this runs outside typer
    except OSError as e:  # e.g. an --out folder this user cannot write: one line, not a traceback
        if int(os.environ.get("RANK", "0")) == 0:
            console.print(f"[red]error:[/] {escape(str(e))}", highlight=False)
        raise SystemExit(1) from None
    except Interrupted as e:
        if int(os.environ.get("RANK", "0")) == 0:
            console.print(f"[yellow]{e}[/]")
        raise SystemExit(INTERRUPTED_EXIT) from None
    finally:
        close_process_group()  # this rank is done: leave the group before the interpreter exits


def _launch_local(cfg: PretrainConfig, procs: int) -> None:
    """Run ``procs`` ranks of ``_pretrain_worker`` on this machine with torch's elastic launcher (what
    ``torchrun --standalone`` uses): each CPU rank gets cores / procs threads unless --threads is given."""
    import dataclasses
    import uuid

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if cfg.threads is None and cfg.device != "cuda":
        cfg = dataclasses.replace(cfg, threads=max(1, usable_cores() // procs))
    launch = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=procs, run_id=f"shortlist-{uuid.uuid4().hex}",
                          rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:0", max_restarts=0)
    previous = signal.signal(signal.SIGTERM, _raise_signal_exception)  # the launcher's own handler comes later
    try:
        elastic_launch(launch, _pretrain_worker)(cfg)
    except ChildFailedError as e:
        if any(f.exitcode == INTERRUPTED_EXIT for f in e.failures.values()):  # a rank stopped by a signal
            _launcher_interrupted(cfg, "a signal")
        raise typer.Exit(2) from None  # the failing rank printed why
    except SignalException as e:  # SIGTERM / SIGINT to the launcher: the ranks were sent SIGTERM and checkpointed
        _launcher_interrupted(cfg, e.sigval.name)
    except KeyboardInterrupt:  # Ctrl-C before the launcher installed its handlers
        _launcher_interrupted(cfg, "SIGINT")
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_signal_exception(signum: int, frame: object) -> None:
    """SIGTERM before torch's launcher installs its handler (rendezvous): raised as its handler would."""
    from torch.distributed.elastic.multiprocessing.api import SignalException

    raise SignalException(f"Process {os.getpid()} got signal: {signal.Signals(signum).name}",
                          sigval=signal.Signals(signum))


def _launcher_interrupted(cfg: PretrainConfig, what: str) -> None:
    """``--procs``'s launcher stopped by ``what`` (a signal's name): say where the run stands, exit 130 (as one
    process does: docs/training.md), not torch's SignalException traceback."""
    out = Path(cfg.out)
    if (out / "checkpoint.pt").is_file() and not (out / "summary.json").is_file():
        said = (f"{what}: training stopped; {out} holds the run's last checkpoint: continue with `shortlist "
                f"pretrain --out {out} --resume` (nothing to export until it finishes)")
    else:
        said = f"{what}: stopped before training began, nothing saved in {out}"
    console.print(f"[yellow]{escape(said)}[/]", highlight=False)
    raise typer.Exit(INTERRUPTED_EXIT)


def finetune_cmd(
    out: Path = typer.Option(..., help="run folder"),
    data: str = typer.Option(..., help=f"labelled image source: {sources_said()} (its test split, when it has one, "
                                       "is evaluated: test accuracy printed and in summary.json)"),
    mode: str = typer.Option(FINETUNE["mode"], help=help_list(FINETUNE_MODES)),
    init: Path | None = typer.Option(None, help="a pretraining run folder to start from"),
    arch: str = typer.Option(FINETUNE["arch"], help=f"architecture when not starting from --init: {ARCH_HELP}"),
    labels_per_class: int | None = typer.Option(None, min=1, help="keep only N labels per class (rest "
                                                "unlabelled)"),
    epochs: int | None = typer.Option(None, min=1, help=FINETUNE_EPOCHS_HELP),
    minutes: float | None = typer.Option(None, callback=finite, min=0.01, help="or for M minutes"),
    steps: int | None = typer.Option(None, min=1, help="or for N optimiser steps (full, as3l, moby_al)"),
    batch_size: int = typer.Option(FINETUNE["batch_size"], min=1, help="labelled batch (unlabelled: mu x this)"),
    lr: float = typer.Option(FINETUNE["lr"], callback=finite, min=0.0, help="learning rate"),
    prior_iters: int = typer.Option(FINETUNE["prior_iters"], min=0, help="as3l: iterations T using "
                                    "normalize(prior + prediction) (AS3L Sec. 4.1: 6900)"),
    prior_after: str = typer.Option(FINETUNE["prior_after"], help="as3l: after T, remove the prior or update it by "
                                    "re-clustering the semi-supervised features (AS3L Sec. 3.4)"),
    head_init: str = typer.Option(FINETUNE["head_init"], help="full / as3l / moby_al: start from a random "
                                  "classifier (AS3L's recipe) or from the linear probe on the labelled rows (probe: "
                                  "LP-FT)"),
    ema: float = typer.Option(FINETUNE["ema"], callback=finite, min=0.0, max=0.9999, help="export an EMA of the "
                              "weights with this momentum (and evaluate it on --data's test split, when it has one; "
                              "FlexMatch's code: 0.999, warmed up); 0: the live weights"),
    preprocess: str = typer.Option(FINETUNE["preprocess"]),
    threads: int | None = typer.Option(None, min=1),
    device: str = typer.Option(FINETUNE["device"]),
    seed: int = typer.Option(FINETUNE["seed"]),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace the finished run --out holds (its encoder.pt "
                                   "and summary.json) with this one"),
) -> None:
    """Fine-tune with labels (linear probe, full, AS3L semi-supervised, MoBYv2AL joint)."""
    from training.finetune import FinetuneConfig, finetune

    _known(mode, FINETUNE_MODES, "fine-tuning mode", "--mode")
    if frozen_mode(mode):
        _frozen_budget(mode, steps, minutes, epochs)
    else:
        _one_budget(epochs, minutes, steps)
    from training.loop import close_process_group

    cfg = FinetuneConfig(out=str(out), mode=mode, init=str(init) if init else None, arch=arch, data=data,
                         labels_per_class=labels_per_class, epochs=epochs, minutes=minutes, steps=steps,
                         batch_size=batch_size, lr=lr, prior_iters=prior_iters, prior_after=prior_after,
                         head_init=head_init, ema=ema, preprocess=preprocess,
                         threads=threads, device=device, seed=seed)
    from training.loop import ENCODER, Interrupted, read_summary

    with _run_lock(out, "finetune"):
        # finetune() would discard the finished run's encoder.pt and summary.json (a pretraining run's too, e.g.
        # the --init run given as --out): refused unless asked for, as pretrain refuses a folder holding a run
        held = pretraining_run_in(out) or (  # an unfinished finetune is run again into its folder: not refused
            "a finished run" if read_summary(out) is not None and (out / ENCODER).is_file() else None)
        if not overwrite and held:
            console.print(f"[red]error:[/] {escape(str(out))} holds {escape(held)}: pass another --out, or "
                          "--overwrite to replace it", highlight=False)
            raise typer.Exit(2)
        try:
            run = finetune(cfg, console=console, eval_from_data=True)
        except (ValueError, FileNotFoundError) as e:
            console.print(f"[red]error:[/] {e}")
            raise typer.Exit(2) from None
        except OSError as e:  # e.g. an --out folder this user cannot write: one line, not a traceback
            console.print(f"[red]error:[/] {escape(str(e))}", highlight=False)
            raise typer.Exit(1) from None
        except Interrupted as e:
            console.print(f"[yellow]{e}[/]")
            raise typer.Exit(INTERRUPTED_EXIT) from None
        finally:
            close_process_group()  # under torchrun: leave the group before the interpreter exits
    try:
        summary = read_json(run / "summary.json", "the run is unfinished for `shortlist export`: run the same "
                            "command again")
    except (NotWholeJson, OSError) as e:  # written just now: only another process could have spoilt it
        console.print(f"[red]error:[/] {escape(str(e))}", highlight=False)
        raise typer.Exit(1) from None
    held_out = (f" (test accuracy {summary['test_accuracy']:.4f} on {summary['test_images']} held-out images of "
                f"{data}'s test split)" if "test_accuracy" in summary else "")
    console.print(f"fine-tuned -> {run}{escape(held_out)}", highlight=False)


def export_cmd(
    run: Path = typer.Option(..., help="a training run folder (holds encoder.pt)"),
    models: Path = typer.Option(..., help="the model registry folder to publish into"),
    format: str = typer.Option("onnx,torchscript", help="comma-separated: onnx (required), torchscript, int8, fp16. "
                               "The agent serves encoder.onnx only; int8 (encoder.int8.onnx, for CPUs) and fp16 "
                               "(encoder.fp16.onnx, for GPUs) are extra files for running the encoder outside the "
                               "agent, checked by neighbour agreement (docs/training.md, Exports)"),
) -> None:
    """Export a run's encoder, verify it against eager PyTorch, publish it atomically; prints the version. For an
    ONNX model Shortlist did not train, use `shortlist models import` (docs/training.md, "Bring your own
    encoder")."""
    from exporters.export import ExportError, export_run

    try:
        version = export_run(run, models, [f.strip() for f in format.split(",") if f.strip()], log=console.print)
    except (ValueError, FileNotFoundError, ExportError) as e:
        console.print(f"[red]error:[/] {e}")
        raise typer.Exit(2) from None
    except OSError as e:  # e.g. a registry this user cannot write (the staging folder is removed: see export_run)
        console.print(f"[red]error:[/] could not export {escape(str(run))} into {escape(str(models))}: "
                      f"{escape(str(e))}; nothing was published", highlight=False)
        raise typer.Exit(1) from None
    print(version)


@agent_options
def cycle_cmd(
    agent: AgentTarget,
    models: Path = typer.Option(..., help="the registry folder the agent serves from"),
    out: Path = typer.Option(..., help="run folder for this cycle's training"),
    mode: str = typer.Option(CYCLE["mode"], help=help_list((*FINETUNE_MODES, *METHOD_NAMES))),
    init: Path | None = typer.Option(None, help="pretraining run to start from (required by linear and svm; "
                                     "full, as3l and moby_al without it train from random weights)"),
    steps: int | None = typer.Option(None, min=1, help="train for N optimiser steps (full, as3l, moby_al)"),
    minutes: float | None = typer.Option(None, callback=finite, min=0.01, help="or for M minutes"),
    epochs: int | None = typer.Option(None, min=1, help="or for N epochs"),
    prior_method: str | None = typer.Option(CYCLE["prior_method"], help="as3l: the agent's PriorLabels method "
                                             "(default knn); the other modes use no priors and refuse it"),
    arch: str = typer.Option(CYCLE["arch"]),
    batch_size: int | None = typer.Option(None, min=1, help="batch size (default: the mode's, at most the pool's "
                                          "size; fine-tuning: 64 labelled images, pretraining: the method's)"),
    method_option: list[str] | None = typer.Option(None, metavar="KEY=VALUE", help=f"pretraining modes "
                                                   f"({', '.join(METHOD_NAMES)}): {METHOD_OPTION_HELP}"),
    threads: int | None = typer.Option(None, min=1),
    device: str = typer.Option(CYCLE["device"]),
    as_json: bool = typer.Option(False, "--json", help="print what changed as one JSON line on stdout (the "
                                 "training's progress stays on stderr)"),
) -> None:
    """Pull samples from the agent, train, export, publish, ask the agent to reload, print what changed."""
    import grpc

    if frozen_mode(mode):
        _frozen_budget(mode, steps, minutes, epochs)

    from exporters.export import ExportError
    from training.cycle import CycleConfig, CycleRefused, run_cycle
    from training.loop import Interrupted

    # a mode that is not a method: the options' names and values stay as given, and run_cycle refuses them
    method_options = _method_options(mode, method_option or []) if mode in METHOD_CLASSES else \
        dict(o.partition("=")[::2] for o in method_option or [])
    cfg = CycleConfig(models=models, out=out, mode=mode, init=str(init) if init else None, steps=steps,
                      minutes=minutes, epochs=epochs, prior_method=prior_method, arch=arch, batch_size=batch_size,
                      method_options=method_options, threads=threads, device=device)

    # Exit status (docs/agent.md): 1 when the agent answered with an error, cannot be reached or its pool cannot
    # train the mode yet, when --models is not its registry, another cycle holds the registry or the agent has
    # not taken the published version up; 2 for a bad option (checked before connecting); 130 when a signal
    # stopped the training.
    if held := pretraining_run_in(Path(out)):  # a cycle's own --out runs again: only another run's is refused
        console.print(f"[red]error:[/] {escape(str(out))} holds {escape(held)}, which this cycle would overwrite: "
                      "give the cycle another --out", highlight=False)
        raise typer.Exit(2)
    try:
        with _run_lock(out, "cycle"):
            result = run_cycle(agent.address, cfg, console=console, client_config=agent.config)
    except grpc.RpcError as e:
        from agent.client import detail

        console.print(f"[red]{e.code().name}[/]: {escape(detail(e))}", highlight=False)
        raise typer.Exit(1) from None
    except ConnectionError as e:  # agent.client.AgentUnavailable: refused, unresolved, TLS, timeout
        console.print(f"[red]UNAVAILABLE[/]: {escape(str(e))}", highlight=False)
        raise typer.Exit(1) from None
    except CycleRefused as e:
        console.print(f"[red]error:[/] {escape(str(e))}", highlight=False)
        raise typer.Exit(1) from None
    except (ValueError, FileNotFoundError, FileExistsError, ExportError) as e:
        console.print(f"[red]error:[/] {escape(str(e))}", highlight=False)
        raise typer.Exit(2) from None
    except OSError as e:  # e.g. an --out folder this user cannot write: one line, not a traceback
        console.print(f"[red]error:[/] {escape(str(e))}", highlight=False)
        raise typer.Exit(1) from None
    except Interrupted as e:
        console.print(f"[yellow]{escape(str(e))}[/]", highlight=False)
        raise typer.Exit(INTERRUPTED_EXIT) from None
    if as_json:
        print(json.dumps(result.as_json(mode)))
    if result.not_taken_up:  # published, but not where the agent looks, or refused by it: not a success
        console.print(f"[red]error:[/] {escape(result.not_taken_up)}", highlight=False)
        raise typer.Exit(1)


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    app.command("pretrain")(pretrain_cmd)
    app.command("finetune")(finetune_cmd)
    app.command("export")(export_cmd)
    app.command("cycle")(cycle_cmd)
