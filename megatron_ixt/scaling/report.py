"""Write an analysis: ``fits.json``, ``multiplier.csv``, ``multiplier.md`` and the PNGs.

``multiplier.csv`` columns: ``arm, kind`` (``target_loss``, ``target_score`` or
``reference_budget``), ``target_loss, reference_flops, k, ci_low, ci_high, reachable, metric,
target_score``; an empty ``k`` is a target the reference never reaches, an empty ``ci_high`` an
interval unbounded above. Downstream rows (``metric`` TASK/METRIC) have ``target_loss`` = the error
rate ``1 - target_score``. ``fits.json`` is the loss analysis with ``downstream``: ``{TASK/METRIC:
its analysis}``; ``multiplier.md`` puts them side by side.
"""
from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Sequence

from megatron_ixt.scaling.analysis import Analysis

CSV_COLUMNS = ("arm", "kind", "target_loss", "reference_flops", "k", "ci_low", "ci_high", "reachable", "metric",
               "target_score")


def slug(metric: str) -> str:
    """A file-name form of ``TASK/METRIC,FILTER``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", metric)


def write_outputs(analysis: Analysis, output: str, command: str | None = None,
                  downstream: Sequence[Analysis] = ()) -> list[str]:
    """Write every output of the loss ``analysis`` and the ``downstream`` ones; returns the paths."""
    from megatron_ixt.scaling.plots import write_plots

    os.makedirs(output, exist_ok=True)
    res = analysis.result
    scores = {d.result["metric"]: d.result for d in downstream}
    paths = [os.path.join(output, name) for name in ("fits.json", "multiplier.csv", "multiplier.md")]
    with open(paths[0], "w", encoding="utf-8") as f:
        json.dump({**res, "downstream": scores, "command": command}, f, indent=1)
        f.write("\n")
    with open(paths[1], "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, CSV_COLUMNS)
        writer.writeheader()
        for r, target_kind in [(res, "target_loss")] + [(d, "target_score") for d in scores.values()]:
            for kind, rows in ((target_kind, r["multiplier"]), ("reference_budget", r["budget_multiplier"])):
                for row in rows:
                    writer.writerow({"kind": kind, "reference_flops": "", "metric": r.get("metric", ""),
                                     "target_score": "", **{k: "" if v is None else v for k, v in row.items()}})
    with open(paths[2], "w", encoding="utf-8") as f:
        f.write(markdown(res, command, list(scores.values())))
    return paths + write_plots(analysis, output) + [p for d in downstream
                                                    for p in write_plots(d, output, slug(d.result["metric"]))]


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


def _fits_table(res: dict, downstream: bool) -> list[str]:
    head = "| arm | metric | runs | E | A | alpha | annotation FLOPs | leave-largest-size-out error |"
    if downstream:
        head = ("| arm | steer | runs | floor E (ceiling 1-E) | A | alpha | annotation FLOPs | "
                "leave-largest-size-out error |")
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for name, arm in res["arms"].items():
        ex = arm["extrapolation"]
        ex_text = "n/a" if ex is None else (f"{ex['mean_abs_rel_error']:.2%} mean, {ex['max_abs_rel_error']:.2%} max "
                                            f"over {ex['points']} run(s) at {ex['held_out_params']:.3g} params")
        second = ", ".join(res["steer"][name]) if downstream else arm["metric"]
        e = f"{arm['E']:.4g}{_ci(arm['ci']['E'])}" + (f" ({1 - arm['E']:.3g})" if downstream else "")
        lines.append(f"| {name} | {second} | {len(arm['points'])} | {e} | "
                     f"{arm['A']:.4g}{_ci(arm['ci']['A'])} | {arm['alpha']:.4g}{_ci(arm['ci']['alpha'])} | "
                     f"{arm['annotation_flops']:.3g} | {ex_text} |")
    return lines


def _tables(res: dict) -> list[str]:
    """The fits and both multiplier tables of one analysis (loss or downstream)."""
    ref = res["reference"]
    downstream = res.get("kind") == "downstream"
    what = "score" if downstream else "loss"
    lines = _fits_table(res, downstream)
    lines += ["", f"Multiplier at target {'scores' if downstream else 'losses'}:", "",
              f"| arm | target {what} | k [95% CI] | reference reaches it |", "|---|---|---|---|"]
    for row in res["multiplier"]:
        target = row["target_score"] if downstream else row["target_loss"]
        lines.append(f"| {row['arm']} | {target:.4g} | {_k(row)} | "
                     f"{'yes' if row['reachable'] else 'no (its fitted ceiling/asymptote is short of it)'} |")
    lines += ["", "Multiplier at reference budgets:", "",
              f"| arm | {ref} FLOPs | {ref} {what} there | k [95% CI] |", "|---|---|---|---|"]
    for row in res["budget_multiplier"]:
        target = row["target_score"] if downstream else row["target_loss"]
        lines.append(f"| {row['arm']} | {row['reference_flops']:.3g} | {target:.4g} | {_k(row)} |")
    return lines


def markdown(res: dict, command: str | None = None, downstream: Sequence[dict] = ()) -> str:
    ref = res["reference"]
    boot = res["bootstrap"]
    lines = ["# Compute multiplier", ""]
    if command:
        lines += ["Command:", "", "```", command, "```", ""]
    lines += [f"Reference arm: **{ref}**. Fit per arm: L(C) = E + A * C^-alpha (Huber in log space, "
              f"L-BFGS-B){', one E shared by all arms' if res['shared_e'] else ''}. "
              f"k(L) = C_{ref}(L) / C_arm(L) at a matched held-out loss; 95% CIs from "
              f"{boot['resamples']} {'paired ' if boot['paired'] else ''}bootstrap resamples of whole runs "
              f"(seeds pooled).", ""]
    if downstream:
        lines += ["## Side by side: k at the reference budgets", "",
                  "| arm | " + f"{ref} FLOPs | k on held-out loss | " +
                  " | ".join(f"k on {d['metric']}" for d in downstream) + " |",
                  "|---|---|---|" + "---|" * len(downstream)]
        for i, row in enumerate(res["budget_multiplier"]):
            lines.append(f"| {row['arm']} | {row['reference_flops']:.3g} | {_k(row)} | " +
                         " | ".join(_k(d["budget_multiplier"][i]) if i < len(d["budget_multiplier"]) else ""
                                    for d in downstream) + " |")
        lines += ["", "## Held-out loss", ""]
    else:
        lines += ["## Fits", ""]
    lines += _tables(res)
    chin = {n: a["chinchilla"] for n, a in res["arms"].items() if a["chinchilla"]}
    if chin:
        lines += ["", "## Chinchilla form L(N, D) = E + A/N^alpha + B/D^beta", "",
                  "| arm | E | A | alpha | B | beta |", "|---|---|---|---|---|---|"]
        for n, c in chin.items():
            lines.append(f"| {n} | {c['E']:.4g} | {c['A']:.4g} | {c['alpha']:.4g} | {c['B']:.4g} | {c['beta']:.4g} |")
    for d in downstream:
        lines += ["", f"## Downstream: {d['metric']}", "",
                  f"Error rate 1 - score fitted per arm as E + A * C^-alpha over {d['items']} items; the floor E "
                  f"caps the score at 1 - E, so a score above the reference's ceiling is unreachable for it. "
                  f"k(s) = C_{ref}(s) / C_arm(s) at a matched score; 95% CIs from {d['bootstrap']['resamples']} "
                  f"{'paired ' if d['bootstrap']['paired'] else ''}bootstrap resamples of whole runs and of the "
                  f"task's items.", ""]
        lines += _tables(d)
    warnings = res["warnings"] + [f"{d['metric']}: {w}" for d in downstream for w in d["warnings"]]
    if warnings:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in warnings]
    figures = ["loss_vs_flops.png", "multiplier_vs_loss.png"] + [
        f"{kind}_{slug(d['metric'])}.png" for d in downstream for kind in ("score_vs_flops", "multiplier_vs_score")]
    lines += ["", "Figures: " + ", ".join(f"`{f}`" for f in figures) + ". Read them with docs/scaling.md.", ""]
    return "\n".join(lines)
