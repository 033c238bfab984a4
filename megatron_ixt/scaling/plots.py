"""PNG figures of an :class:`~megatron_ixt.scaling.analysis.Analysis` (matplotlib, Agg backend).

* ``loss_vs_flops.png``: held-out loss against total FLOPs, log-log; per arm its points, the
  fitted curve and the 95% bootstrap band, extended 4x beyond the largest run.
* ``multiplier_vs_loss.png``: ``k(L)`` per non-reference arm with its 95% band, over the losses
  where the reference's fit reaches ``L``; a dotted line at the reference's asymptote ``E``. Its
  y axis is clipped to ``K_AXIS_RANGE`` (the table holds the values beyond it).
* A downstream analysis (``TASK/METRIC``): ``score_vs_flops_<metric>.png`` (score = 1 - the fitted
  error rate, log FLOPs, with bands) and ``multiplier_vs_score_<metric>.png`` (``k`` against the
  target score; the dotted line is the reference's ceiling ``1 - E``).
"""
from __future__ import annotations

import os

import matplotlib as mpl

mpl.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import ticker  # noqa: E402

from megatron_ixt.scaling import fit as F  # noqa: E402
from megatron_ixt.scaling.analysis import Analysis  # noqa: E402


def write_plots(analysis: Analysis, output: str, metric_slug: str | None = None) -> list[str]:
    """Write both figures into ``output`` (downstream: named after ``metric_slug``); returns their paths."""
    if metric_slug is None:
        return [_curves(analysis, os.path.join(output, "loss_vs_flops.png")),
                _multiplier(analysis, os.path.join(output, "multiplier_vs_loss.png"))]
    return [_curves(analysis, os.path.join(output, f"score_vs_flops_{metric_slug}.png")),
            _multiplier(analysis, os.path.join(output, f"multiplier_vs_score_{metric_slug}.png"))]


def _curves(analysis: Analysis, path: str) -> str:
    res = analysis.result
    score = res.get("kind") == "downstream"
    y = (lambda v: 1.0 - np.asarray(v)) if score else np.asarray  # the plotted quantity
    compute = [p["total_compute"] for arm in res["arms"].values() for p in arm["points"]]
    grid = np.logspace(np.log10(min(compute) / 1.5), np.log10(max(compute) * 4), 200)
    fig, ax = plt.subplots(figsize=(7, 5))
    for i, (name, arm) in enumerate(res["arms"].items()):
        color = f"C{i}"
        law = analysis.fits[name]
        ax.scatter([p["total_compute"] for p in arm["points"]], y([p["loss"] for p in arm["points"]]),
                   color=color, s=18, zorder=3)
        label = (f"{name}: ceiling {1 - law.E:.3g}, alpha={law.alpha:.3g}" if score
                 else f"{name}: E={law.E:.3g}, alpha={law.alpha:.3g}")
        ax.plot(grid, y(law.loss(grid)), color=color, label=label)
        lo, hi = analysis.boot.loss_band(name, grid)
        ax.fill_between(grid, y(lo), y(hi), color=color, alpha=0.2, linewidth=0)
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs (IXT arms: + annotation FLOPs)")
    if score:
        ax.set_ylabel(f"{res['metric']} (score)")
        return _save(fig, ax, "score = 1 - (E + A C^-alpha), 95% bootstrap band (runs and items)", path)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ticker.ScalarFormatter())
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_ylabel("held-out document loss (nats/token)")
    return _save(fig, ax, "L(C) = E + A C^-alpha, 95% bootstrap band", path)


def _multiplier(analysis: Analysis, path: str) -> str:
    res = analysis.result
    score = res.get("kind") == "downstream"
    reference = res["reference"]
    ref = analysis.fits[reference]
    losses = [p["loss"] for arm in res["arms"].values() for p in arm["points"]]
    lo_l = max(min(min(losses), min(analysis.targets)), ref.E + 1e-6 * abs(ref.E) + 1e-9)
    hi_l = max(max(losses), max(analysis.targets))
    grid = np.linspace(lo_l, hi_l, 80) if lo_l < hi_l else np.array([hi_l])
    x = 1.0 - grid if score else grid
    fig, ax = plt.subplots(figsize=(7, 5))
    drawn = []
    for i, name in enumerate(res["arms"]):
        if name == reference:
            continue
        color = f"C{i}"
        k = np.array([_nan(F.multiplier(ref, analysis.fits[name], L)) for L in grid])
        bands = [F.percentile_ci(analysis.boot.multipliers(reference, name, L)) for L in grid]
        low = np.array([_nan(b[0]) for b in bands])
        high = np.array([_nan(b[1]) for b in bands])
        ax.plot(x, k, color=color, label=f"{name} vs {reference}")
        ax.fill_between(x, low, high, color=color, alpha=0.2, linewidth=0)
        drawn += [k, low, high]
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_ylim(*_k_axis_limits(np.concatenate(drawn) if drawn else np.array([1.0])))
    if score:
        ax.axvline(1.0 - ref.E, color="grey", linestyle=":", label=f"{reference} ceiling 1-E={1 - ref.E:.3g}")
        ax.set_xlabel(f"target {res['metric']} score")
        ax.set_ylabel(f"k(s) = C_{reference}(s) / C_arm(s)")
    else:
        ax.axvline(ref.E, color="grey", linestyle=":", label=f"{reference} asymptote E={ref.E:.3g}")
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


K_AXIS_RANGE = (1e-3, 1e3)  # the multiplier plot's y axis is clipped to this range (k beyond it: off the chart)


def _k_axis_limits(values: np.ndarray) -> tuple[float, float]:
    """Log-axis limits for multipliers: the positive finite ``values`` (and 1) padded by 1.5x, within
    :data:`K_AXIS_RANGE` (a fit whose reference barely moves gives k of 1e100 and more, which
    matplotlib cannot place on a log axis)."""
    finite = values[np.isfinite(values) & (values > 0)]
    return max(finite.min(initial=1.0) / 1.5, K_AXIS_RANGE[0]), min(finite.max(initial=1.0) * 1.5, K_AXIS_RANGE[1])


def _nan(value):
    """None (unreachable) and infinity (an unbounded CI) as NaN, which matplotlib leaves out (an
    infinite value on a log axis would make its limits infinite)."""
    return np.nan if value is None or not np.isfinite(value) else float(value)
