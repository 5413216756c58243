"""Which upper bound on the accuracy drop the verdict should use: coverage and tightness, simulated.

The accuracy verdict holds a one-sided upper confidence bound on the paired drop (teacher top-1
minus student top-1, on the same test images) to the budget. Three candidates, from the four counts
a (both right), b (teacher only), c (student only), d (both wrong) of n images:

- wald: edgekd's bound until now, the normal approximation on the per-image 0/1 differences, with
  the spread floored at 1/sqrt(n) (drop + z * sd / sqrt(n));
- mcnemar: conditional on the m = b + c discordant pairs, an exact (Clopper-Pearson) upper bound on
  b / m, scaled back to a drop by m / n, as McNemar's exact test does;
- newcombe: Newcombe's (1998) hybrid score interval for a paired difference (his method 10: Wilson
  intervals of both accuracies, combined with the correlation of the pairs).

Distillation makes teacher and student agree on most images, so a realistic grid is a teacher at
85%, discordance (b + c) / n from 1% to 15%, true drops from -1 to +1 point, and 160 to 10,000 test
images (the sizes edgekd's own-data runs see). For each cell, 4,000 test sets are drawn from the
multinomial; a bound's coverage is how often the true drop is at or under it (the confidence, 95%,
is what it promises), its width the mean of bound - measured drop, and its power how often a student
whose true drop is 0 is shown within a 1-point budget (MET).

    python benchmarks/accuracy_bound.py        # ~10 s; writes docs/accuracy_bound.md and benchmarks/out/accuracy_bound.json
    python benchmarks/accuracy_bound.py --own-data benchmarks/out/own_data   # every bound on real rows

`--own-data FOLDER` reads the run folders `benchmarks/own_data.py` left (their report.json holds the
teacher's and the shipped student's per-image test results) and prints each bound, and the state it
would give at a 1-point budget, for every row: the bounds measured on real student-teacher pairs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from statistics import NormalDist

import numpy as np
from scipy.stats import beta

from edgekd.benchmarking import host, write_results
from edgekd.runfolder import atomic_write_text
from edgekd.verify.accuracy_budget import newcombe_upper

CONFIDENCE = 0.95
DRAWS = 4000
TEACHER = 0.85
SIZES = (160, 400, 1000, 2000, 10000)
DISCORDANCE = (0.01, 0.03, 0.08, 0.15)
DROPS = (-0.01, -0.005, 0.0, 0.005, 0.01)  # true drops (fractions): -1 .. +1 point
BUDGET = 0.01  # for power: a 1-point budget


def wald_upper(a, b, c, n, confidence):
    """edgekd's earlier bound: the mean and spread of the 0/1 differences (+1 for b, -1 for c)."""
    drop = (b - c) / n
    variance = np.maximum((b + c - n * drop ** 2) / np.maximum(n - 1, 1), 0.0)
    spread = np.maximum(np.sqrt(variance), 1.0 / np.sqrt(n))
    return drop + NormalDist().inv_cdf(confidence) * spread / np.sqrt(n)


def mcnemar_upper(a, b, c, n, confidence):
    """Exact upper bound on b / (b + c), given b + c, as a drop: (2 p - 1) (b + c) / n."""
    m = b + c
    p = np.where(b >= m, 1.0, beta.ppf(confidence, b + 1, np.maximum(m - b, 1)))
    return np.where(m > 0, (2 * p - 1) * m / n, 0.0)


def agresti_min_upper(a, b, c, n, confidence):
    """The Wald bound after adding 1/2 to each of the four cells (Agresti and Min, 2005)."""
    return wald_upper(a + 0.5, b + 0.5, c + 0.5, n + 2, confidence)


def newcombe_cc_upper(a, b, c, n, confidence):
    """Newcombe's method 10 with the continuity-corrected Wilson intervals and phi (his method 11)."""
    return newcombe_upper(a, b, c, n, confidence, continuity=True)


BOUNDS = {"wald": wald_upper, "mcnemar": mcnemar_upper, "agresti_min": agresti_min_upper,
          "newcombe": newcombe_upper, "newcombe_cc": newcombe_cc_upper}


def simulate(rng: np.random.Generator) -> list[dict]:
    rows = []
    for n in SIZES:
        for q in DISCORDANCE:
            for true in DROPS:
                if abs(true) > q:
                    continue
                pb, pc = (q + true) / 2, (q - true) / 2
                pa = TEACHER - pb
                draws = rng.multinomial(n, [pa, pb, pc, 1 - pa - pb - pc], size=DRAWS)
                a, b, c = (draws[:, i].astype(float) for i in range(3))
                measured = (b - c) / n
                row = {"images": n, "discordance": q, "true_drop_points": 100 * true}
                for name, bound in BOUNDS.items():
                    upper = bound(a, b, c, n, CONFIDENCE)
                    row[name] = {"coverage": float(np.mean(true <= upper + 1e-12)),
                                 "width_points": float(100 * np.mean(upper - measured)),
                                 "met_at_1_point": float(np.mean(upper <= BUDGET))}
                rows.append(row)
    return rows


def summary(rows: list[dict]) -> dict:
    out = {}
    for name in BOUNDS:
        coverage = [r[name]["coverage"] for r in rows]
        worst = min(rows, key=lambda r: r[name]["coverage"])
        zero = [r for r in rows if r["true_drop_points"] == 0.0]
        out[name] = {
            "cells": len(rows),
            "worst_coverage": min(coverage),
            "worst_cell": {k: worst[k] for k in ("images", "discordance", "true_drop_points")},
            "cells_under_94": sum(c < 0.94 for c in coverage),
            "mean_width_points": float(np.mean([r[name]["width_points"] for r in rows])),
            "met_at_1_point_when_equal": float(np.mean([r[name]["met_at_1_point"] for r in zero])),
        }
    return out


def markdown(rows: list[dict], result: dict) -> str:
    lines = [
        "# The accuracy verdict's bound: coverage and tightness",
        "",
        "Made by `python benchmarks/accuracy_bound.py` "
        f"({DRAWS:,} simulated test sets per cell, seed 0, {host()['machine']}; a simulation, so the CPU does not matter).",
        "The bound is one-sided at 95%: its coverage should be at least 0.95 in every cell.",
        "",
        "| bound | cells | worst coverage (cell: images, discordance, true drop) | cells under 0.94 | mean width (points) | MET at a 1-point budget, true drop 0 |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in result.items():
        w = s["worst_cell"]
        lines.append(f"| {name} | {s['cells']} | {s['worst_coverage']:.3f} ({w['images']}, {w['discordance']:.0%}, "
                     f"{w['true_drop_points']:+.1f}) | {s['cells_under_94']} | {s['mean_width_points']:.3f} | "
                     f"{s['met_at_1_point_when_equal']:.3f} |")
    lines += ["", "Per cell, true drop 0 (coverage / width in points / MET at 1 point):", "",
              "| images | discordance | " + " | ".join(BOUNDS) + " |", "|---|---|" + "---|" * len(BOUNDS)]
    for r in rows:
        if r["true_drop_points"] == 0.0:
            cells = " | ".join(f"{r[k]['coverage']:.3f} / {r[k]['width_points']:.2f} / {r[k]['met_at_1_point']:.2f}" for k in BOUNDS)
            lines.append(f"| {r['images']} | {r['discordance']:.0%} | {cells} |")
    return "\n".join(lines) + "\n"


def own_data_rows(folder: Path) -> str:
    """Every bound on the own-data runs' real (teacher, student) pairs, as a Markdown table."""
    from edgekd.verify.accuracy_budget import unpack_hits

    lines = ["| run | test images | teacher only | student only | drop (points) | "
             + " | ".join(f"{name} bound" for name in BOUNDS) + " |",
             "|---|---:|---:|---:|---:|" + "---:|" * len(BOUNDS)]
    for report_path in sorted(Path(folder).glob("run-*/report.json")):
        report = json.loads(report_path.read_text())
        teacher, student = report["stages"][0], report["stages"][-1]
        n = teacher["test_images"]
        t, s = unpack_hits(teacher["test_correct"], n), unpack_hits(student["test_correct"], n)
        a, b, c = float(np.sum(t & s)), float(np.sum(t & ~s)), float(np.sum(~t & s))
        cells = []
        for bound in BOUNDS.values():
            upper = 100 * float(bound(a, b, c, n, CONFIDENCE))
            state = "MISSED" if 100 * (b - c) / n > 100 * BUDGET else "MET" if upper <= 100 * BUDGET else "NOT SHOWN"
            cells.append(f"{upper:.2f} {state}")
        lines.append(f"| {report_path.parent.name} | {n} | {int(b)} | {int(c)} | {100 * (b - c) / n:.2f} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--own-data", type=Path, help="own_data.py's output folder: every bound on its real rows")
    args = parser.parse_args()
    if args.own_data is not None:
        print(own_data_rows(args.own_data))
        return
    rows = simulate(np.random.default_rng(0))
    result = summary(rows)
    for name, s in result.items():
        print(name, json.dumps(s))
    write_results("accuracy_bound", {"summary": result, "rows": rows}, out=Path(__file__).resolve().parent / "out")
    docs = Path(__file__).resolve().parents[1] / "docs" / "accuracy_bound.md"
    atomic_write_text(docs, markdown(rows, result))
    print(f"wrote {docs}")


if __name__ == "__main__":
    main()
