"""results.md and plots for ``shortlist bench as3l``, rendered from its results.json (mean ± std over seeds),
beside the paper's figures (bench.as3l.PAPER_*)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from bench.report import _fmt, _mean_std, md_table
from shortlist.atomic import read_json


def _by(records: list[dict[str, Any]], key: tuple[str, ...], metric: str) -> dict[tuple[Any, ...], list[float]]:
    out: dict[tuple[Any, ...], list[float]] = defaultdict(list)
    for r in records:
        if r.get(metric) is not None:
            out[tuple(r[k] for k in key)].append(float(r[metric]))
    return out


def curves(run: dict[str, Any]) -> dict[tuple[str, int], tuple[list[int], list[float], list[float], int]]:
    """(arm, budget) -> (eval steps, mean accuracy, std, seeds) over the seeds that share those steps."""
    groups: dict[tuple[str, int], list[dict[int, float]]] = defaultdict(list)
    for r in run["results"]:
        groups[(r["arm"], int(r["budget"]))].append({int(s): float(a) for s, a in r["eval"]})
    out = {}
    for key, evals in groups.items():
        steps = sorted(set.intersection(*(set(e) for e in evals)))
        acc = np.asarray([[e[s] for s in steps] for e in evals])
        out[key] = (steps, acc.mean(axis=0).tolist(), acc.std(axis=0).tolist(), len(evals))
    return out


def steps_to_reach(steps: list[int], acc: list[float], target: float) -> int | None:
    """The first evaluated step whose accuracy is at least ``target`` (None: never)."""
    return next((s for s, a in zip(steps, acc, strict=True) if a >= target - 1e-12), None)


def markdown(run: dict[str, Any]) -> str:
    """results.md text: the run's settings, then its sections (accuracy, curves, labels)."""
    from bench.as3l import ARMS

    budgets = [int(b) for b in run["budgets"]]
    arms = [a.name for a in ARMS if a.name in run["arms"]]
    cur = curves(run)
    return "\n".join([*_settings(run), *_accuracy_section(run, budgets, arms, cur),
                      *_curves_section(budgets, arms, cur), *_labels_section(run, budgets)])


def _settings(run: dict[str, Any]) -> list[str]:
    """The title and the run's settings (profile, sizes, encoder, commit, wall time)."""
    name = Path(run["data"]).name or run["data"]
    walls = run.get("wall_seconds", {})
    return [f"# AS3L against its baselines on `{name}` (Wen et al., Tables 1, 3-6)\n",
            f"- profile `{run['profile']}`: pool {run['pool_size']}, test {run['test_size']}, "
            f"{run['size'][0]} px, iterations per arm {run['steps']} (equal across arms), T = {run['prior_iters']}, "
            f"batch {run['batch_size']} + {run['mu']} x {run['batch_size']}, seeds {len(run['seeds'])}",
            f"- encoder {run['model_version']} ({run['encoder'].get('kind', '')}: {run['encoder'].get('encoder', '')}"
            f"), commit {run['git_commit'][:10]}, wall time {walls.get('total', float('nan')) / 60:.1f} min"
            + ("" if run.get("complete") else " (INCOMPLETE: still running or interrupted; a rerun resumes)"), ""]


def _accuracy_section(run: dict[str, Any], budgets: list[int], arms: list[str],
                      cur: dict[tuple[str, int], tuple[list[int], list[float], list[float], int]]) -> list[str]:
    """Test accuracy at the end and best along training per arm and budget, beside the paper's and the step
    at which each arm reaches random+flexmatch's end; then the linear probe of the random and as3l labels."""
    from bench.as3l import PAPER_ARMS, PAPER_LINEAR, PAPER_STANDARD_FLEXMATCH

    fin = _by(run["results"], ("arm", "budget"), "test_accuracy")
    best = _by(run["results"], ("arm", "budget"), "best_test_accuracy")
    head = ["arm"]
    for b in budgets:
        head += [f"{b} labels: end", f"{b}: best", f"{b}: paper (CIFAR-10)",
                 f"{b}: step reaching random+flexmatch's end"]
    rows = []
    for arm in arms:
        cells = [arm]
        for b in budgets:
            f, bs = fin.get((arm, b), []), best.get((arm, b), [])
            ref = PAPER_ARMS.get((arm, b))
            base = fin.get(("random+flexmatch", b))
            reach = "—"
            if base and (arm, b) in cur:
                steps, acc, _, _ = cur[(arm, b)]
                hit = steps_to_reach(steps, acc, float(np.mean(base)))
                reach = f"{hit} of {steps[-1]}" if hit is not None else "not reached"
            cells += [_fmt(*_mean_std(f), len(f)), _fmt(*_mean_std(bs), len(bs)),
                      "—" if ref is None else (f"{ref[0]:.2f}" + (f" ± {ref[1]:.2f}" if ref[1] is not None else "")),
                      reach]
        rows.append(cells)
    lin = _by(run["labels"], ("strategy", "budget"), "linear_accuracy")
    for s in ("random", "as3l"):
        cells = [f"linear probe ({s} labels)"]
        for b in budgets:
            v = lin.get((s, b), [])
            lin_ref = PAPER_LINEAR.get((s, b))
            cells += [_fmt(*_mean_std(v), len(v)), "", "—" if lin_ref is None else f"{lin_ref:.2f}", ""]
        rows.append(cells)
    return ["## Test accuracy (%) at the end / best along training, and the paper's\n", *md_table(head, rows), "",
            "Paper: Table 3 (10 labels; 112 x 1024 iterations), Table 1 and Table 3 (40 labels; 112 x 2304 "
            "iterations), Table 1's linear evaluation (random labels). Standard FlexMatch (random labels, "
            "1024 x 1024 iterations, Table 1): "
            + ", ".join(f"{v:.2f} at {b}" for b, v in PAPER_STANDARD_FLEXMATCH.items()) + ".\n"]


def _curves_section(budgets: list[int], arms: list[str],
                    cur: dict[tuple[str, int], tuple[list[int], list[float], list[float], int]]) -> list[str]:
    """Per budget, test accuracy at each evaluated step (the first arm's steps), one row per arm."""
    lines: list[str] = []
    for b in budgets:
        keys = [(arm, b) for arm in arms if (arm, b) in cur]
        if not keys:
            continue
        steps = cur[keys[0]][0]
        rows = []
        for k in keys:
            st, acc, sd, n = cur[k]
            by_step = dict(zip(st, zip(acc, sd, strict=True), strict=True))
            rows.append([k[0], *(_fmt(*by_step[s], n) if s in by_step else "—" for s in steps)])
        lines += [f"## Test accuracy (%) along training, {b} labels\n",
                  *md_table(["arm", *(f"step {s}" for s in steps)], rows), ""]
    return lines


def _labels_section(run: dict[str, Any], budgets: list[int]) -> list[str]:
    """The random and as3l labels: class coverage, as3l prior accuracy, ECE (raw and calibrated) and mean
    confidence per budget, beside the paper's (Tables 4-6)."""
    from bench.as3l import PAPER_COVERAGE, PAPER_ECE, PAPER_PRIOR

    head = ["labels by"]
    for b in budgets:
        head += [f"{b}: classes", f"{b}: prior acc", f"{b}: prior balanced acc",
                 f"{b}: ECE", f"{b}: mean conf", f"{b}: ECE calibrated",
                 f"{b}: paper, CIFAR-10 (acc / classes / ECE)"]
    metrics = {m: _by(run["labels"], ("strategy", "budget"), m) for m in
               ("coverage", "prior_accuracy", "prior_balanced_accuracy", "ece", "mean_confidence", "ece_calibrated")}
    rows = []
    for s in ("random", "as3l"):
        cells = [s]
        for b in budgets:
            cov, acc, bal, ece, conf, ece_cal = (metrics[m].get((s, b), []) for m in metrics)
            paper = [f"{PAPER_PRIOR[(s, b)]:.2f}" if (s, b) in PAPER_PRIOR else "—",
                     f"{PAPER_COVERAGE[(s, b)]:.1f}" if (s, b) in PAPER_COVERAGE else "—",
                     f"{PAPER_ECE[(s, b)]:.3f}" if (s, b) in PAPER_ECE else "—"]
            # balanced: mean per-class recall; "—" for cells written before it was measured
            cells += [_fmt(*_mean_std(cov), len(cov), 1.0), _fmt(*_mean_std(acc), len(acc)),
                      _fmt(*_mean_std(bal), len(bal)),
                      _fmt(*_mean_std(ece), len(ece), 1.0, 3), _fmt(*_mean_std(conf), len(conf), 1.0, 3),
                      _fmt(*_mean_std(ece_cal), len(ece_cal), 1.0, 3), " / ".join(paper)]
        rows.append(cells)
    return ["## The labels: class coverage, `as3l` prior accuracy (%) and ECE on the unlabelled pool "
            "(Tables 4-6; the paper's prior, which trains the arms, and the agent's calibrated default)\n",
            *md_table(head, rows), "",
            "Paper: Table 4 / 5 (multi-cluster selection on fine-tuned features + the proposed propagation; "
            "random labels + the proposed propagation), Table 6 (ECE, K = 10..60). Its encoder is an 800-epoch "
            "SimSiam (about 90% kNN); compare ratios, not raw figures, with a weaker encoder.\n"]


def plot(run: dict[str, Any], path: Path) -> None:
    """Test accuracy against training iterations, one panel per budget, one line per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = [int(b) for b in run["budgets"]]
    cur = curves(run)
    fig, axes = plt.subplots(1, len(budgets), figsize=(5.5 * len(budgets), 4), dpi=110, squeeze=False)
    for ax, b in zip(axes[0], budgets, strict=True):
        for i, arm in enumerate(run["arms"]):
            if (arm, b) not in cur:
                continue
            steps, acc, sd, n = cur[(arm, b)]
            y, e = np.asarray(acc) * 100, np.asarray(sd) * 100
            color = plt.get_cmap("tab10")(i)
            ax.plot(steps, y, marker="o", ms=3, color=color, label=arm)
            if n > 1:
                ax.fill_between(steps, y - e, y + e, color=color, alpha=0.12)
        ax.set_title(f"{b} labels", fontsize=9)
        ax.set_xlabel("training iterations")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(f"AS3L arms on {Path(run['data']).name}, profile {run['profile']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(out: Path) -> list[Path]:
    """Write out/results.md and out/accuracy_vs_steps.png from out/results.json."""
    # written just now (atomically); not whole JSON only if something else wrote it meanwhile: NotWholeJson,
    # bench as3l's one error: line
    run = read_json(out / "results.json", "run the same `shortlist bench as3l` command again (its finished cells "
                    "are reused)")
    (out / "results.md").write_text(markdown(run))
    paths = [out / "results.md"]
    if run["results"]:
        plot(run, out / "accuracy_vs_steps.png")
        paths.append(out / "accuracy_vs_steps.png")
    return paths
