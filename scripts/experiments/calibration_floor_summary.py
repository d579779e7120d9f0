"""Summarise a table of scripts/experiments/calibration_floor.py: per label budget (and per method with
``--by-method``), the served fit's mean ECE and cells within 0.05, the best temperature's mean ECE, and per
n the mean ECE of the n-uniform-label fits with the mean share of draws within 0.05 and 0.10.

    python scripts/experiments/calibration_floor_summary.py docs/results/calibration-floor/cifar10-simsiam58-auto.md
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("table", type=Path)
    ap.add_argument("--by-method", action="store_true")
    a = ap.parse_args()
    lines = a.table.read_text().splitlines()
    header = [h.strip() for h in lines[0].split("|")[1:-1]]
    ns = [h.split(":")[0] for h in header[7:]]
    groups: dict[str, list[list[str]]] = defaultdict(list)
    for line in lines[2:]:
        row = [c.strip() for c in line.split("|")[1:-1]]
        groups[f"{row[1]} labels" + (f", {row[3]}" if a.by_method else "")].append(row)
        groups["all"].append(row)
    print("| cells | count | served: mean ECE / cells within 0.05 | best T: mean ECE | "
          + " | ".join(f"{n}: mean ECE / share within 0.05 / 0.10" for n in ns) + " |")
    print("|---|---|---|---|" + "---|" * len(ns))
    for key, rows in groups.items():
        served = np.array([float(r[5].split()[0]) for r in rows])
        best = np.array([float(r[6].split()[0]) for r in rows])
        cells = []
        for j in range(len(ns)):
            m, s5, s10 = (np.array([float(r[7 + j].split("/")[i]) for r in rows]) for i in range(3))
            cells.append(f"{m.mean():.3f} / {s5.mean():.2f} / {s10.mean():.2f}")
        print(f"| {key} | {len(rows)} | {served.mean():.3f} / {(served <= 0.05).sum()} | {best.mean():.3f} | "
              + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
