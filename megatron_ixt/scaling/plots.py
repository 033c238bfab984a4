"""PNG figures of an :class:`~megatron_ixt.scaling.analysis.Analysis` (matplotlib, Agg backend).

* ``loss_vs_flops.png``: held-out loss against total FLOPs, log-log; per arm its points, the
  fitted curve and the 95% bootstrap band, extended 4x beyond the largest run.
* ``multiplier_vs_loss.png``: ``k(L)`` per non-reference arm with its 95% band, over the losses
  where the reference's fit reaches ``L``; a dotted line at the reference's asymptote ``E``.
"""
from __future__ import annotations

import os
from typing import List

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402
import numpy as np  # noqa: E402

from megatron_ixt.scaling import fit as F  # noqa: E402
from megatron_ixt.scaling.analysis import Analysis  # noqa: E402


def write_plots(analysis: Analysis, output: str) -> List[str]:
    """Write both figures into ``output``; returns their paths."""
    return [_loss_vs_flops(analysis, os.path.join(output, "loss_vs_flops.png")),
            _multiplier_vs_loss(analysis, os.path.join(output, "multiplier_vs_loss.png"))]


def _loss_vs_flops(analysis: Analysis, path: str) -> str:
    res = analysis.result
    compute = [p["total_compute"] for arm in res["arms"].values() for p in arm["points"]]
    grid = np.logspace(np.log10(min(compute) / 1.5), np.log10(max(compute) * 4), 200)
    fig, ax = plt.subplots(figsize=(7, 5))
    for i, (name, arm) in enumerate(res["arms"].items()):
        color = f"C{i}"
        law = analysis.fits[name]
        ax.scatter([p["total_compute"] for p in arm["points"]], [p["loss"] for p in arm["points"]],
                   color=color, s=18, zorder=3)
        label = f"{name}: E={law.E:.3g}, alpha={law.alpha:.3g}"
        ax.plot(grid, law.loss(grid), color=color, label=label)
        lo, hi = analysis.boot.loss_band(name, grid)
        ax.fill_between(grid, lo, hi, color=color, alpha=0.2, linewidth=0)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ticker.ScalarFormatter())
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel("training FLOPs (IXT arms: + annotation FLOPs)")
    ax.set_ylabel("held-out document loss (nats/token)")
    return _save(fig, ax, "L(C) = E + A C^-alpha, 95% bootstrap band", path)


def _multiplier_vs_loss(analysis: Analysis, path: str) -> str:
    res = analysis.result
    reference = res["reference"]
    ref = analysis.fits[reference]
    losses = [p["loss"] for arm in res["arms"].values() for p in arm["points"]]
    lo_l = max(min(min(losses), min(analysis.targets)), ref.E + 1e-6 * abs(ref.E) + 1e-9)
    hi_l = max(max(losses), max(analysis.targets))
    grid = np.linspace(lo_l, hi_l, 80)
    fig, ax = plt.subplots(figsize=(7, 5))
    for i, name in enumerate(res["arms"]):
        if name == reference:
            continue
        color = f"C{i}"
        k = np.array([_nan(F.multiplier(ref, analysis.fits[name], L)) for L in grid])
        bands = [F.percentile_ci(analysis.boot.multipliers(reference, name, L)) for L in grid]
        low = np.array([_nan(b[0]) for b in bands])
        high = np.array([_nan(b[1]) for b in bands])
        ax.plot(grid, k, color=color, label=f"{name} vs {reference}")
        ax.fill_between(grid, low, high, color=color, alpha=0.2, linewidth=0)
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.axvline(ref.E, color="grey", linestyle=":", label=f"{reference} asymptote E={ref.E:.3g}")
    ax.set_yscale("log")
    ax.set_xlabel("target held-out loss L (nats/token)")
    ax.set_ylabel(f"k(L) = C_{reference}(L) / C_arm(L)")
    ax.invert_xaxis()
    return _save(fig, ax, "compute multiplier, 95% paired-bootstrap band", path)


def _save(fig, ax, title: str, path: str) -> str:
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _nan(value):
    """None (unreachable / unbounded) as NaN, which matplotlib leaves out."""
    return np.nan if value is None else float(value)
