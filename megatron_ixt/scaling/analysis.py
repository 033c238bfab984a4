"""From points to the multiplier table: fits, bootstrap CIs, checks (``fits.json``'s content).

:func:`analyze` returns an :class:`Analysis` whose ``result`` is the ``fits.json`` dict::

    {"reference": NAME, "shared_e": bool,
     "arms": {NAME: {"E", "A", "alpha", "points": [Point.to_dict(), ...], "metric",
                     "annotation_flops", "ci": {"E": [lo, hi], "A": [..], "alpha": [..]},
                     "residual_scale", "extrapolation": {...} | null, "chinchilla": {...} | null}},
     "multiplier": [{"arm", "target_loss", "k", "ci_low", "ci_high", "reachable"}, ...],
     "budget_multiplier": [{"arm", "reference_flops", "target_loss", "k", "ci_low", "ci_high",
                            "reachable"}, ...],
     "bootstrap": {"resamples", "failed", "seed", "paired"}, "warnings": [str, ...]}

``k`` is None (and ``reachable`` false) where the reference's fitted asymptote is at or above the
target; ``k`` is 0.0 where only the arm never reaches it; a CI end is None when more than 2.5%
of the resamples put the reference out of reach (the interval is unbounded above).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from megatron_ixt.scaling import fit as F
from megatron_ixt.scaling.points import Point, check_comparable, monotonicity_warnings

DEFAULT_TARGETS = 5
DEFAULT_RESAMPLES = 1000


def default_targets(arms: dict[str, list[Point]], n: int = DEFAULT_TARGETS) -> list[float]:
    """``n`` losses evenly spread from the best loss any run reached up to the highest loss every
    arm was observed at (so each target lies inside the data of at least one arm)."""
    lo = min(p.loss for pts in arms.values() for p in pts)
    hi = min(max(p.loss for p in pts) for pts in arms.values())
    if hi <= lo:
        hi = max(p.loss for pts in arms.values() for p in pts)
    return [float(f"{v:.4g}") for v in np.linspace(lo, hi, n)]


def default_budgets(points: Sequence[Point]) -> list[float]:
    """The smallest, geometric-middle and largest reference compute."""
    c = sorted({p.total_compute for p in points})
    return [float(f"{v:.4g}") for v in (c[0], float(np.exp(np.mean(np.log([c[0], c[-1]])))), c[-1])]


def _data(arms: dict[str, list[Point]]) -> dict[str, tuple]:
    return {name: (np.array([p.total_compute for p in pts]), np.array([p.loss for p in pts]))
            for name, pts in arms.items()}


def _row(arm: str, k: float | None, ks: np.ndarray, **extra) -> dict:
    lo, hi = F.percentile_ci(ks)
    return {"arm": arm, **extra, "k": k, "ci_low": lo if k is not None else None,
            "ci_high": hi if k is not None else None, "reachable": k is not None}


def _finite(v: float) -> float | None:
    return float(v) if np.isfinite(v) else None


@dataclass
class Analysis:
    """``result``: the ``fits.json`` dict; ``fits``/``boot``: the full-data and bootstrap fits."""
    result: dict
    fits: dict[str, F.PowerLaw]
    boot: F.Bootstrap
    targets: list[float]


def analyze(arms: dict[str, list[Point]], reference: str, targets: Sequence[float] | None = None,
            budgets: Sequence[float] | None = None, shared_e: bool = False,
            resamples: int = DEFAULT_RESAMPLES, seed: int = 0, items: dict[str, np.ndarray] | None = None,
            floor: float = 0.0) -> Analysis:
    """Fit every arm, the multiplier of each non-reference arm against ``reference`` at
    ``targets`` (losses) and ``budgets`` (reference FLOPs), with paired-bootstrap CIs. ``items``
    and ``floor``: per-item errors of a downstream metric (:func:`fit.bootstrap`); no Chinchilla
    fit then."""
    if reference not in arms:
        raise F.FitError(f"--reference {reference!r} is not one of the arms {sorted(arms)}")
    if len(arms) < 2:
        raise F.FitError("a multiplier needs the reference and at least one other arm")
    check_comparable(arms)
    data = _data(arms)
    fits = F.fit_power_laws(data, shared_e=shared_e)
    keys = {name: [p.key for p in pts] for name, pts in arms.items()}
    boot = F.bootstrap(data, keys, resamples, seed=seed, shared_e=shared_e, full=fits, items=items,
                       floor=floor)
    targets = list(targets) if targets else default_targets(arms)
    budgets = list(budgets) if budgets else default_budgets(arms[reference])
    warnings: list[str] = []

    out_arms = {}
    for name, pts in arms.items():
        law = fits[name]
        c, loss = data[name]
        residuals = np.log(law.loss(c)) - np.log(loss)
        scale = max(1.4826 * float(np.median(np.abs(residuals))), 1e-3)
        warnings += monotonicity_warnings(name, pts, scale)
        ci = {}
        good = [f[name] for f in boot.fits if f is not None]
        for param in ("E", "A", "alpha"):
            values = np.array([getattr(g, param) for g in good])
            ci[param] = list(F.percentile_ci(values))
        params = [p.params for p in pts]
        extrapolation = chinchilla = None
        if all(v is not None for v in params):
            extrapolation = F.leave_largest_out(c, loss, params, name)
            tokens = [p.tokens for p in pts]
            if items is None and all(t is not None for t in tokens) and F.chinchilla_grid_ok(params, tokens):
                chinchilla = F.fit_chinchilla(params, tokens, loss, name).to_dict()
        out_arms[name] = {**law.to_dict(), "points": [p.to_dict() for p in pts], "metric": pts[0].metric,
                          "annotation_flops": pts[0].annotation_flops, "ci": ci, "residual_scale": scale,
                          "extrapolation": extrapolation, "chinchilla": chinchilla}

    rows, budget_rows = [], []
    ref = fits[reference]
    for name in arms:
        if name == reference:
            continue
        for target in targets:
            k = F.multiplier(ref, fits[name], target)
            rows.append(_row(name, k, boot.multipliers(reference, name, target), target_loss=float(target)))
        for budget in budgets:
            target = float(ref.loss(budget))
            ks = np.array([F.multiplier(f[reference], f[name], float(f[reference].loss(budget)))
                           for f in boot.fits if f is not None], dtype=float)
            budget_rows.append(_row(name, F.multiplier(ref, fits[name], target), ks,
                                    reference_flops=float(budget), target_loss=target))
    for row in rows + budget_rows:
        if row["k"] is not None:
            row["k"] = _finite(row["k"])
    failed = sum(f is None for f in boot.fits)
    if failed:
        warnings.append(f"{failed} of {resamples} bootstrap resamples could not be fitted (too few distinct "
                        f"compute values drawn); the CIs use the other {resamples - failed}")
    result = {"reference": reference, "shared_e": shared_e, "arms": out_arms, "multiplier": rows,
            "budget_multiplier": budget_rows,
            "bootstrap": {"resamples": resamples, "failed": failed, "seed": seed, "paired": boot.paired},
            "warnings": warnings}
    return Analysis(result, fits, boot, targets)


def analyze_downstream(arms: dict[str, list[Point]], metric: str, reference: str,
                       scores: Sequence[float] | None = None, budgets: Sequence[float] | None = None,
                       shared_e: bool = False, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> Analysis:
    """The multiplier at matched ``TASK/METRIC`` score: each arm's error rate ``1 - score`` fitted as
    ``E + A*C^-alpha`` (``E`` the floor: ``1 - E`` is the arm's ceiling), ``k`` at ``scores``
    (default: spread over the observed ones) and at ``budgets``; the bootstrap resamples whole runs
    and the task's items. ``arms``: the runs' held-out loss points (their compute and annotation
    FLOPs are used). Rows carry ``target_score``; the result ``metric``, ``kind`` and ``steer``."""
    from megatron_ixt.scaling.downstream import check_same_evaluation, downstream_points, error_floor, error_matrix

    points, items, every = {}, {}, []
    for name, pts in arms.items():
        points[name], found = downstream_points(pts, metric)
        items[name] = error_matrix(found)
        every += found
    check_same_evaluation(every)
    targets = [1.0 - s for s in scores] if scores else None
    try:
        analysis = analyze(points, reference, targets=targets, budgets=budgets, shared_e=shared_e,
                           resamples=resamples, seed=seed, items=items, floor=error_floor(len(every[0].items)))
    except F.FitError as e:
        raise F.FitError(f"{every[0].metric} (error rate fit): {e}") from None
    res = analysis.result
    for row in res["multiplier"] + res["budget_multiplier"]:
        row["target_score"] = 1.0 - row["target_loss"]
    steer = {}
    for name, pts in points.items():
        steer[name] = sorted({str(s.steer) for s in every if s.run in {p.run for p in pts}})
    res.update(metric=every[0].metric, kind="downstream", items=len(every[0].items), steer=steer)
    return analysis
