"""Write an analysis: ``fits.json``, ``multiplier.csv``, ``multiplier.md`` and the PNGs.

``multiplier.csv`` columns: ``arm, kind`` (``target_loss`` or ``reference_budget``),
``target_loss, reference_flops, k, ci_low, ci_high, reachable``; an empty ``k`` is a target the
reference never reaches, an empty ``ci_high`` an interval unbounded above.
"""
from __future__ import annotations

import csv
import json
import os
from typing import List, Optional

from megatron_ixt.scaling.analysis import Analysis

CSV_COLUMNS = ("arm", "kind", "target_loss", "reference_flops", "k", "ci_low", "ci_high", "reachable")


def write_outputs(analysis: Analysis, output: str, command: Optional[str] = None) -> List[str]:
    from megatron_ixt.scaling.plots import write_plots

    os.makedirs(output, exist_ok=True)
    res = analysis.result
    paths = [os.path.join(output, name) for name in ("fits.json", "multiplier.csv", "multiplier.md")]
    with open(paths[0], "w", encoding="utf-8") as f:
        json.dump({**res, "command": command}, f, indent=1)
        f.write("\n")
    with open(paths[1], "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, CSV_COLUMNS)
        writer.writeheader()
        for kind, rows in (("target_loss", res["multiplier"]), ("reference_budget", res["budget_multiplier"])):
            for row in rows:
                writer.writerow({"kind": kind, "reference_flops": "", **{k: "" if v is None else v
                                                                         for k, v in row.items()}})
    with open(paths[2], "w", encoding="utf-8") as f:
        f.write(markdown(res, command))
    return paths + write_plots(analysis, output)


def _k(row: dict) -> str:
    if not row["reachable"]:
        return "unreachable by the reference"
    if row["k"] == 0.0:
        return "0 (the arm never reaches it)"
    k = "inf" if row["k"] is None else f"{row['k']:.3g}"
    lo = "?" if row["ci_low"] is None else f"{row['ci_low']:.3g}"
    hi = "unbounded" if row["ci_high"] is None else f"{row['ci_high']:.3g}"
    return f"{k} [{lo}, {hi}]"


def _ci(pair) -> str:
    return "" if pair[0] is None else f" [{pair[0]:.3g}, {pair[1]:.3g}]"


def markdown(res: dict, command: Optional[str] = None) -> str:
    ref = res["reference"]
    boot = res["bootstrap"]
    lines = ["# Compute multiplier", ""]
    if command:
        lines += ["Command:", "", "```", command, "```", ""]
    lines += [f"Reference arm: **{ref}**. Fit per arm: L(C) = E + A * C^-alpha (Huber in log space, "
              f"L-BFGS-B){', one E shared by all arms' if res['shared_e'] else ''}. "
              f"k(L) = C_{ref}(L) / C_arm(L) at a matched held-out loss; 95% CIs from "
              f"{boot['resamples']} {'paired ' if boot['paired'] else ''}bootstrap resamples of whole runs "
              f"(seeds pooled).", "",
              "## Fits", "",
              "| arm | metric | runs | E | A | alpha | annotation FLOPs | leave-largest-size-out error |",
              "|---|---|---|---|---|---|---|---|"]
    for name, arm in res["arms"].items():
        ex = arm["extrapolation"]
        ex_text = "n/a" if ex is None else (f"{ex['mean_abs_rel_error']:.2%} mean, {ex['max_abs_rel_error']:.2%} max "
                                            f"over {ex['points']} run(s) at {ex['held_out_params']:.3g} params")
        lines.append(f"| {name} | {arm['metric']} | {len(arm['points'])} | {arm['E']:.4g}{_ci(arm['ci']['E'])} | "
                     f"{arm['A']:.4g}{_ci(arm['ci']['A'])} | {arm['alpha']:.4g}{_ci(arm['ci']['alpha'])} | "
                     f"{arm['annotation_flops']:.3g} | {ex_text} |")
    lines += ["", "## Multiplier at target losses", "",
              "| arm | target loss | k [95% CI] | reference reaches it |", "|---|---|---|---|"]
    for row in res["multiplier"]:
        lines.append(f"| {row['arm']} | {row['target_loss']:.4g} | {_k(row)} | "
                     f"{'yes' if row['reachable'] else 'no (its asymptote E is above the target)'} |")
    lines += ["", "## Multiplier at reference budgets", "",
              f"| arm | {ref} FLOPs | {ref} loss there | k [95% CI] |", "|---|---|---|---|"]
    for row in res["budget_multiplier"]:
        lines.append(f"| {row['arm']} | {row['reference_flops']:.3g} | {row['target_loss']:.4g} | {_k(row)} |")
    chin = {n: a["chinchilla"] for n, a in res["arms"].items() if a["chinchilla"]}
    if chin:
        lines += ["", "## Chinchilla form L(N, D) = E + A/N^alpha + B/D^beta", "",
                  "| arm | E | A | alpha | B | beta |", "|---|---|---|---|---|---|"]
        for n, c in chin.items():
            lines.append(f"| {n} | {c['E']:.4g} | {c['A']:.4g} | {c['alpha']:.4g} | {c['B']:.4g} | {c['beta']:.4g} |")
    if res["warnings"]:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in res["warnings"]]
    lines += ["", "Figures: `loss_vs_flops.png`, `multiplier_vs_loss.png`. Read them with docs/scaling.md.", ""]
    return "\n".join(lines)
