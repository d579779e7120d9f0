"""Tables from the JSON lines of scripts/experiments/pseudo_task.py: per data set and method, log T_best against
log T_pseudo of each variant (the offset a pseudo-task would have to learn), its correlation pooled over data
sets, and the ECE of served, of (b) T_pseudo x exp(offset) alone and of (c) the MAP fit on the labelled picks'
held-out predictions centred on (b)'s T, with each offset learnt on another data set; then the per-cell
temperatures.

Variants: k1, k3, k10 (the pseudo-tasks); const (no pseudo-task: log T_pseudo = 0, so the learnt offset alone,
the mean log T_best of the training data set, is the T); match (log T_pseudo interpolated over k1/k3/k10 at
the picks' held-out accuracy; uses the labels); mraw (the same at the real run's raw mean top probability,
label-free; only when every line has ``conf_raw``).

    python scripts/experiments/pseudo_task_summary.py cells40.jsonl > pseudo-task-40.md

Results and reading: docs/benchmarks.md, "A temperature from a pseudo-task, a probe".
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np
from cells import GRID  # type: ignore[import-not-found]  # same folder

from agent.priors import calibration as cal

Rec = dict[str, Any]

VARIANTS = ["const", "k1", "k3", "k10", "match", "mraw"]
WEIGHTS = [2.0, 8.0]  # MAP prior weight for (c): 8 chosen a priori (sd of log T 0.35); 2 = the current weight
DATAS = ["cifar1", "cifar2", "digits"]
METHODS = ["knn", "llgc", "as3l"]
# which data set the offset is learnt on, for each evaluated data set
SCHEMES = {
    "offset from cifar1": {"cifar2": ["cifar1"], "digits": ["cifar1"]},
    "offset from cifar2": {"cifar1": ["cifar2"], "digits": ["cifar2"]},
    "offset from digits": {"cifar1": ["digits"], "cifar2": ["digits"]},
}


def ece_at(r: Rec, t: float) -> float:
    """The cell's real ECE at temperature t (interpolated in log T over the grid)."""
    return float(np.interp(np.log(t), np.log(GRID), np.array(r["curve"])))


def held(r: Rec) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The served fit's held-out predictions, as ``cal.fit_temperature`` takes them."""
    return [(np.array(p), np.array(lab, np.int64), np.array(cv, bool)) for p, lab, cv in r["held"]]


def held_acc(r: Rec) -> float | None:
    """Accuracy of the held-out predictions (class-balanced when the served fit is); None without any."""
    h = held(r)
    if not h:
        return None
    labels = np.concatenate([lab for _, lab, _ in h])
    right = np.concatenate([p.argmax(1) == lab for p, lab, _ in h]).astype(float)
    w = cal.class_balanced_weights(labels) if r["balance"] else np.ones(len(labels))
    return float(w @ right / w.sum())


def log_tp(r: Rec, v: str) -> float:
    """log T_pseudo of variant v; 'match': log T interpolated over the k1/k3/k10 pseudo accuracies at the
    labelled picks' held-out accuracy (clamped to the variants' range)."""
    if v == "const":  # no pseudo-task: the offset alone = the mean log T_best of the training data set
        return 0.0
    if v == "mraw":  # label-free: pseudo variants' raw mean top probability matched to the real raw one
        cs = np.array([r["pseudo"][k]["conf_raw"] for k in ("k10", "k3", "k1")])
        lts = np.log([r["pseudo"][k]["t"] for k in ("k10", "k3", "k1")])
        o = np.argsort(cs)
        return float(np.interp(r["conf_raw"], cs[o], lts[o]))
    if v != "match":
        return float(np.log(r["pseudo"][v]["t"]))
    a = r.get("_hacc")
    accs = np.array([r["pseudo"][k]["acc"] for k in ("k10", "k3", "k1")])
    lts = np.log([r["pseudo"][k]["t"] for k in ("k10", "k3", "k1")])
    if a is None:
        a = r["acc"]  # never used when held exists
    o = np.argsort(accs)
    return float(np.interp(a, accs[o], lts[o]))


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("cells", help="JSON lines of pseudo_task.py")
    args = ap.parse_args()
    with open(args.cells) as fh:
        recs: list[Rec] = [json.loads(s) for s in fh]
    variants = [v for v in VARIANTS if v != "mraw" or all("conf_raw" in r for r in recs)]
    for r in recs:
        r["_hacc"] = held_acc(r)
    datas = sorted({r["data"] for r in recs}, key=DATAS.index)
    methods = METHODS
    print(f"# Pseudo-task calibration probe ({args.cells})\n")
    print("## 1. log T_best - log T_pseudo per data set x method (mean +- sd over cells; match = log T interpolated "
          "over k1/k3/k10 at the picks' held-out accuracy; mraw = the same at the real raw mean top probability, "
          "label-free)\n")
    print("| data | method | cells | acc | T_best range | " + " | ".join(
        f"{v}: T_p range / pseudo acc / offset mean +- sd" for v in variants) + " |")
    print("|---|---|---|---|---|" + "---|" * len(variants))
    off: dict[tuple[str, str, str], float] = {}
    for d in datas:
        for m in methods:
            rs = [r for r in recs if r["data"] == d and r["method"] == m]
            if not rs:
                continue
            lb = np.log([r["t_best"] for r in rs])
            cols = []
            for v in variants:
                lp = np.array([log_tp(r, v) for r in rs])
                dlt = lb - lp
                off[(d, m, v)] = dlt.mean()
                pacc = np.mean([r["pseudo"][v]["acc"] for r in rs]) if v in rs[0]["pseudo"] else np.nan
                cols.append(f"{np.exp(lp.min()):.2f}-{np.exp(lp.max()):.2f} / {pacc:.2f} / "
                            f"{dlt.mean():+.2f} +- {dlt.std():.2f}")
            print(f"| {d} | {m} | {len(rs)} | {np.mean([r['acc'] for r in rs]):.2f} | "
                  f"{np.exp(lb.min()):.2f}-{np.exp(lb.max()):.2f} | " + " | ".join(cols) + " |")
    # correlations pooled over data sets per method
    print("\nPooled over data sets, per method: Pearson r of log T_pseudo with log T_best, and sd of the offset "
          "(sd of log T_best itself in brackets)\n")
    print("| method | " + " | ".join(variants) + " |")
    print("|---|" + "---|" * len(variants))
    for m in methods:
        rs = [r for r in recs if r["method"] == m]
        lb = np.log([r["t_best"] for r in rs])
        cols = []
        for v in variants:
            lp = np.array([log_tp(r, v) for r in rs])
            with np.errstate(invalid="ignore"):  # const: log T_pseudo has no spread, r is nan
                rho = np.corrcoef(lp, lb)[0, 1]
            cols.append(f"r {rho:+.2f}, offset sd {np.std(lb - lp):.2f} ({np.std(lb):.2f})")
        print(f"| {m} | " + " | ".join(cols) + " |")

    print("\n## 2. ECE: served / (b) T_pseudo x exp(offset) alone / (c) MAP on the labelled picks' held-out "
          "predictions centred on (b)'s T (prior weight 8; weight 2 in brackets)\n")
    print("Each cell: mean ECE / cells within 0.05. The offset per method and variant is learnt on the data set "
          "named by the scheme, never on the evaluated one. 'best' = ECE at the best T (truth of all rows).\n")
    weight = cal.PRIOR_WEIGHT
    for sname, plan in SCHEMES.items():
        print(f"\n### {sname}\n")
        print("| data | method | cells | served | best | " + " | ".join(
            f"{v} (b) | {v} (c) w8 (w2)" for v in variants) + " |")
        print("|---|---|---|---|---|" + "---|---|" * len(variants))
        tots: dict[str, dict[str, list[float]]] = {}
        for d, trains in plan.items():
            if d not in datas or any(t not in datas for t in trains):
                continue
            tot = tots.setdefault(d, {})
            for m in methods:
                rs = [r for r in recs if r["data"] == d and r["method"] == m]
                srv = np.array([r["ece_served"] for r in rs])
                bst = np.array([r["ece_best"] for r in rs])
                tot.setdefault("served", []).extend(srv)
                tot.setdefault("best", []).extend(bst)
                cols = []
                for v in variants:
                    o = np.mean([off[(t, m, v)] for t in trains])
                    ebl: list[float] = []
                    ec: dict[float, list[float]] = {w: [] for w in WEIGHTS}
                    for r in rs:
                        tc = float(np.clip(np.exp(log_tp(r, v) + o), *cal.T_RANGE))
                        ebl.append(ece_at(r, tc))
                        for w in WEIGHTS:
                            cal.PRIOR_WEIGHT = w  # read by fit_temperature
                            t = cal.fit_temperature(held(r), tc, balance=r["balance"], top_label_from=r["top_from"])
                            ec[w].append(ece_at(r, t))
                    cal.PRIOR_WEIGHT = weight
                    eb = np.array(ebl)
                    e8, e2 = np.array(ec[8.0]), np.array(ec[2.0])
                    tot.setdefault(f"{v}b", []).extend(eb)
                    tot.setdefault(f"{v}c8", []).extend(e8)
                    tot.setdefault(f"{v}c2", []).extend(e2)
                    cols.append(f"{eb.mean():.3f} / {(eb <= .05).sum()} | {e8.mean():.3f} / {(e8 <= .05).sum()} "
                                f"({e2.mean():.3f} / {(e2 <= .05).sum()})")
                print(f"| {d} | {m} | {len(rs)} | {srv.mean():.3f} / {(srv <= .05).sum()} | "
                      f"{bst.mean():.3f} / {(bst <= .05).sum()} | " + " | ".join(cols) + " |")
        for d, tot in tots.items():

            def fmt(k: str, tot: dict[str, list[float]] = tot) -> str:
                return f"{np.mean(tot[k]):.3f} / {(np.array(tot[k]) <= .05).sum()}"

            print(f"| **{d}, all methods** | | {len(tot['served'])} | {fmt('served')} | {fmt('best')} | " + " | ".join(
                f"{fmt(v + 'b')} | {fmt(v + 'c8')} ({fmt(v + 'c2')})" for v in variants) + " |")

    print("\n## 3. Per cell (T values; variant k1 and match)\n")
    print("| data | strategy | seed | method | acc | held acc | T served | T best | T_p k1 | T_p k3 | T_p k10 | "
          "pseudo acc k1/k3/k10 | ECE served | ECE best |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in recs:
        p = r["pseudo"]
        ha = "-" if r["_hacc"] is None else f"{r['_hacc']:.2f}"
        print(f"| {r['data']} | {r['strategy']} | {r['seed']} | {r['method']} | {r['acc']:.2f} | {ha} | "
              f"{r['t_served']:.2f} | {r['t_best']:.2f} | {p['k1']['t']:.2f} | {p['k3']['t']:.2f} | "
              f"{p['k10']['t']:.2f} | {p['k1']['acc']:.2f}/{p['k3']['acc']:.2f}/{p['k10']['acc']:.2f} | "
              f"{r['ece_served']:.3f} | {r['ece_best']:.3f} |")


if __name__ == "__main__":
    main()
