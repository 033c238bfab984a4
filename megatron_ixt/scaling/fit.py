"""Scaling-law fits and the compute multiplier (docs/scaling.md has the method).

* :func:`fit_power_laws`: per arm ``L(C) = E + A * C**-alpha`` (``C`` in FLOPs, ``L`` in nats per
  token), fitted in log space: Huber loss (``delta`` 1e-3) on ``log L_pred - log L``, a grid of
  starts, scipy L-BFGS-B with bounds ``E in [0, min L]``, ``alpha in [1e-3, 2]``. ``shared_e``
  fits one ``E`` for all arms jointly.
* :func:`fit_chinchilla`: ``L(N, D) = E + A / N**alpha + B / D**beta`` by the same method.
* :func:`multiplier`: ``k(L) = C_ref(L) / C_arm(L)`` through the numeric inverse of each curve;
  ``None`` where the reference never reaches ``L`` (its asymptote ``E`` is at or above it), ``0``
  where the arm never does.
* :func:`bootstrap`: paired resamples of whole runs (seeds pooled): resample ``i`` of every arm
  is fitted from the same drawn run keys where the arms share them, and 95% percentile CIs of
  ``k`` come from fit ``i`` of the reference against fit ``i`` of the arm; for a downstream metric
  (the error rate ``1 - score`` as ``L``) each resample also redraws the task's items.
* :func:`leave_largest_out`: fit without the largest model size, report the relative error of
  the predicted loss on the held-out runs.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq, minimize
from threadpoolctl import threadpool_limits

HUBER_DELTA = 1e-3
ALPHA_BOUNDS = (1e-3, 2.0)
LOG_SCALE_BOUNDS = (-60.0, 60.0)  # ln A' of the normalised curve (C / C0)
MIN_POINTS = 4  # E, A, alpha need more points than parameters


class FitError(ValueError):
    """Not enough (or unusable) data for a fit; the message names the arm."""


def _one_blas_thread(func):
    """Run ``func`` with single-threaded BLAS: scipy's L-BFGS-B calls BLAS on tiny vectors, and a
    multi-threaded OpenBLAS spinning on a busy machine makes each fit ~100x slower."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with threadpool_limits(1, user_api="blas"):
            return func(*args, **kwargs)
    return wrapper


@dataclass(frozen=True)
class PowerLaw:
    """``L(C) = E + A * C**-alpha``; stored as ``ln A`` so large ``A`` cannot overflow."""
    E: float
    log_A: float
    alpha: float

    @property
    def A(self) -> float:
        return math.exp(self.log_A)

    def loss(self, compute) -> np.ndarray:
        return self.E + np.exp(self.log_A - self.alpha * np.log(np.asarray(compute, dtype=float)))

    def log_compute_for_loss(self, target: float) -> float | None:
        """``ln C`` at which the curve reaches ``target`` (numeric inverse, brentq in ``ln C``);
        None when ``target <= E`` (never reached)."""
        if target <= self.E:
            return None
        gap = math.log(target - self.E)

        def f(log_c):  # decreasing in ln C
            return (self.log_A - self.alpha * log_c) - gap

        lo, hi = -1.0, 1.0
        while f(lo) < 0:
            lo *= 2
        while f(hi) > 0:
            hi *= 2
        return brentq(f, lo, hi, xtol=1e-12, rtol=1e-14)

    def to_dict(self) -> dict:
        return {"E": self.E, "A": self.A, "alpha": self.alpha}


def _huber(r: np.ndarray, delta: float):
    """Huber loss (scaled by 1/delta so L-BFGS-B's tolerances bite) and its derivative."""
    a = np.abs(r)
    quad = a <= delta
    value = np.where(quad, 0.5 * r * r / delta, a - 0.5 * delta)
    grad = np.where(quad, r / delta, np.sign(r))
    return value, grad


def _arm_objective(E, a, alpha, x, log_l, delta):
    """Huber objective of one normalised arm (``x = ln(C / C0)``) and its gradient in (E, a, alpha)."""
    power = np.exp(a - alpha * x)
    pred = E + power
    value, g = _huber(np.log(pred) - log_l, delta)
    dr_de = 1.0 / pred
    dr_da = power / pred
    return value.sum(), np.array([(g * dr_de).sum(), (g * dr_da).sum(), (g * -x * dr_da).sum()])


def _scale_for(E, alpha, x, loss):
    """Least-absolute-deviation ``ln A'`` given ``E`` and ``alpha`` (a start for the optimiser)."""
    return float(np.median(np.log(np.maximum(loss - E, 1e-12)) + alpha * x))


_E_FRACTIONS = (0.0, 0.3, 0.6, 0.8, 0.95)
_ALPHA_STARTS = (0.02, 0.05, 0.1, 0.2, 0.4, 0.8)


@dataclass
class _Arm:
    x: np.ndarray  # ln(C / C0)
    log_c0: float
    loss: np.ndarray

    @classmethod
    def of(cls, compute, loss, name: str) -> _Arm:
        compute, loss = np.asarray(compute, dtype=float), np.asarray(loss, dtype=float)
        if compute.shape != loss.shape or compute.ndim != 1:
            raise FitError(f"arm {name!r}: compute and loss must be 1-d arrays of one length")
        bad = ~(np.isfinite(compute) & np.isfinite(loss) & (compute > 0) & (loss > 0))
        if bad.any():
            raise FitError(f"arm {name!r}: {int(bad.sum())} point(s) with a non-finite or non-positive "
                           f"compute or loss")
        if len(np.unique(compute)) < MIN_POINTS:
            raise FitError(f"arm {name!r}: {len(np.unique(compute))} distinct compute value(s); the fit "
                           f"L = E + A*C^-alpha needs at least {MIN_POINTS}")
        log_c0 = float(np.mean(np.log(compute)))
        return cls(np.log(compute) - log_c0, log_c0, loss)

    def grid(self, E: float):
        """(objective, a, alpha) of every grid alpha at this ``E``."""
        out = []
        for alpha in _ALPHA_STARTS:
            a = _scale_for(E, alpha, self.x, self.loss)
            value, _ = _arm_objective(E, a, alpha, self.x, np.log(self.loss), HUBER_DELTA)
            out.append((value, a, alpha))
        return out

    def curve(self, E, a, alpha) -> PowerLaw:
        return PowerLaw(float(E), float(a + alpha * self.log_c0), float(alpha))

    def normalised(self, law: PowerLaw):
        return law.E, law.log_A - law.alpha * self.log_c0, law.alpha


@_one_blas_thread
def fit_power_laws(data: dict[str, tuple], shared_e: bool = False, starts: int = 4,
                   warm: dict[str, PowerLaw] | None = None) -> dict[str, PowerLaw]:
    """Fit ``L = E + A*C^-alpha`` per arm; ``data`` maps arm -> (compute, loss) arrays.

    ``shared_e``: one ``E`` for all arms (joint fit). ``starts``: the best grid starts refined by
    L-BFGS-B; ``warm``: earlier fits used as extra starts (the bootstrap passes the full fit).
    Raises :class:`FitError` for too few or unusable points.
    """
    arms = {name: _Arm.of(c, loss, name) for name, (c, loss) in data.items()}
    if not shared_e:
        return {name: _fit_joint({name: arm}, starts, warm)[name] for name, arm in arms.items()}
    return _fit_joint(arms, starts, warm)


def _fit_joint(arms: dict[str, _Arm], starts: int, warm) -> dict[str, PowerLaw]:
    """One ``E`` shared by ``arms`` (a single arm: the plain per-arm fit)."""
    names = list(arms)
    e_max = min(float(arm.loss.min()) for arm in arms.values())
    log_l = {n: np.log(arms[n].loss) for n in names}
    candidates = []
    for frac in _E_FRACTIONS:
        E = frac * e_max
        theta, total = [E], 0.0
        for n in names:
            value, a, alpha = min(arms[n].grid(E))
            theta += [a, alpha]
            total += value
        candidates.append((total, theta))
    candidates.sort(key=lambda t: t[0])
    thetas = [np.array(t) for _, t in candidates[:starts]]
    if warm and all(n in warm for n in names):
        E = min(warm[names[0]].E, e_max)
        theta = [E]
        for n in names:
            theta += list(arms[n].normalised(warm[n])[1:])
        thetas.insert(0, np.array(theta))

    def objective(theta):
        E, total, grad = theta[0], 0.0, np.zeros_like(theta)
        for i, n in enumerate(names):
            value, g = _arm_objective(E, theta[1 + 2 * i], theta[2 + 2 * i], arms[n].x, log_l[n], HUBER_DELTA)
            total += value
            grad[0] += g[0]
            grad[1 + 2 * i:3 + 2 * i] = g[1:]
        return total, grad

    bounds = [(0.0, e_max)] + [LOG_SCALE_BOUNDS, ALPHA_BOUNDS] * len(names)
    best = None
    for theta in thetas:
        theta = np.clip(theta, [b[0] for b in bounds], [b[1] for b in bounds])
        res = minimize(objective, theta, jac=True, method="L-BFGS-B", bounds=bounds,
                       options={"maxiter": 2000, "ftol": 1e-11, "gtol": 1e-8})
        if best is None or res.fun < best.fun:
            best = res
    theta = best.x
    return {n: arms[n].curve(theta[0], theta[1 + 2 * i], theta[2 + 2 * i]) for i, n in enumerate(names)}


# --------------------------------------------------------------------------- Chinchilla L(N, D)
@dataclass(frozen=True)
class Chinchilla:
    """``L(N, D) = E + A / N**alpha + B / D**beta`` (N parameters, D training tokens)."""
    E: float
    log_A: float
    alpha: float
    log_B: float
    beta: float

    def loss(self, params, tokens) -> np.ndarray:
        n, d = np.log(np.asarray(params, float)), np.log(np.asarray(tokens, float))
        return self.E + np.exp(self.log_A - self.alpha * n) + np.exp(self.log_B - self.beta * d)

    def to_dict(self) -> dict:
        return {"E": self.E, "A": math.exp(self.log_A), "alpha": self.alpha,
                "B": math.exp(self.log_B), "beta": self.beta}


def chinchilla_grid_ok(params: Sequence[float], tokens: Sequence[float]) -> bool:
    """The L(N, D) form needs two sizes, two token budgets and at least 6 points."""
    return len(set(params)) >= 2 and len(set(tokens)) >= 2 and len(params) >= 6


@_one_blas_thread
def fit_chinchilla(params, tokens, loss, name: str = "") -> Chinchilla:
    """Fit ``L(N, D)``; Huber in log space, grid of starts, L-BFGS-B (see the module docstring)."""
    n, d, loss = (np.asarray(v, dtype=float) for v in (params, tokens, loss))
    if not chinchilla_grid_ok(n.tolist(), d.tolist()):
        raise FitError(f"arm {name!r}: L(N, D) needs >= 2 sizes, >= 2 token budgets and >= 6 runs")
    n0, d0 = float(np.mean(np.log(n))), float(np.mean(np.log(d)))
    xn, xd, log_l = np.log(n) - n0, np.log(d) - d0, np.log(loss)
    e_max = float(loss.min())

    def objective(theta):
        E, a, alpha, b, beta = theta
        pa, pb = np.exp(a - alpha * xn), np.exp(b - beta * xd)
        pred = E + pa + pb
        value, g = _huber(np.log(pred) - log_l, HUBER_DELTA)
        g = g / pred
        return value.sum(), np.array([g.sum(), (g * pa).sum(), (g * -xn * pa).sum(),
                                      (g * pb).sum(), (g * -xd * pb).sum()])

    starts = []
    for frac in (0.0, 0.5, 0.9):
        E = frac * e_max
        half = np.log(np.maximum((loss - E) / 2, 1e-12))
        for alpha in (0.1, 0.3, 0.6):
            for beta in (0.1, 0.3, 0.6):
                theta = np.array([E, float(np.median(half + alpha * xn)), alpha,
                                  float(np.median(half + beta * xd)), beta])
                starts.append((objective(theta)[0], theta))
    starts.sort(key=lambda t: t[0])
    bounds = [(0.0, e_max), LOG_SCALE_BOUNDS, ALPHA_BOUNDS, LOG_SCALE_BOUNDS, ALPHA_BOUNDS]
    best = None
    for _, theta in starts[:4]:
        res = minimize(objective, theta, jac=True, method="L-BFGS-B", bounds=bounds,
                       options={"maxiter": 2000, "ftol": 1e-11, "gtol": 1e-8})
        if best is None or res.fun < best.fun:
            best = res
    E, a, alpha, b, beta = best.x
    return Chinchilla(float(E), float(a + alpha * n0), float(alpha), float(b + beta * d0), float(beta))


# --------------------------------------------------------------------------- the multiplier
def multiplier(reference: PowerLaw, arm: PowerLaw, target: float) -> float | None:
    """``k = C_ref(target) / C_arm(target)``: None when the reference never reaches ``target``,
    0.0 when only the arm never does (it would need unbounded compute); may be ``inf``."""
    log_ref = reference.log_compute_for_loss(target)
    if log_ref is None:
        return None
    log_arm = arm.log_compute_for_loss(target)
    if log_arm is None:
        return 0.0
    diff = log_ref - log_arm
    return math.inf if diff > 700 else math.exp(diff)


@dataclass
class Bootstrap:
    """``fits[i][arm]``: the power laws of resample ``i`` (``None`` where that resample failed);
    ``paired``: whether every resample drew the same run keys for all arms."""
    fits: list[dict[str, PowerLaw] | None]
    paired: bool

    def multipliers(self, reference: str, arm: str, target: float) -> np.ndarray:
        """k per successful resample; unreachable-by-reference resamples count as +inf."""
        out = []
        for f in self.fits:
            if f is None:
                continue
            k = multiplier(f[reference], f[arm], target)
            out.append(math.inf if k is None else k)
        return np.asarray(out, dtype=float)

    def loss_band(self, arm: str, compute: np.ndarray, level: float = 0.95):
        """Percentile band of the fitted loss at each ``compute`` over the resamples."""
        curves = np.array([f[arm].loss(compute) for f in self.fits if f is not None])
        q = (1 - level) / 2
        return np.quantile(curves, q, axis=0), np.quantile(curves, 1 - q, axis=0)


def percentile_ci(values: np.ndarray, level: float = 0.95):
    """(low, high) percentile interval by order statistics (safe with inf); None for inf ends."""
    if len(values) == 0:
        return None, None
    q = (1 - level) / 2
    lo, hi = np.quantile(values, [q, 1 - q], method="inverted_cdf")
    as_float = lambda v: None if not math.isfinite(v) else float(v)  # noqa: E731
    return as_float(lo), as_float(hi)


@_one_blas_thread
def bootstrap(data: dict[str, tuple], keys: dict[str, Sequence[str]], resamples: int, seed: int = 0,
              shared_e: bool = False, full: dict[str, PowerLaw] | None = None,
              items: dict[str, np.ndarray] | None = None, floor: float = 0.0) -> Bootstrap:
    """Paired bootstrap over whole runs. ``data`` as in :func:`fit_power_laws`; ``keys[arm][j]``
    names run ``j`` of that arm (e.g. ``"<size>_<tokens>_s<seed>"``). Arms whose key sets are equal
    are resampled with the same drawn keys (paired); other arms draw their own indices from the
    same random stream. A resample whose fit is impossible (too few distinct points) is redrawn
    up to 10 times, then recorded as None.

    ``items[arm]``: per-item errors (runs x items, the same items for every run) of a downstream
    metric; each resample then also draws the items (the same draw for every run and arm: the
    evaluation's own sampling noise) and a run's loss is its mean error over them, at least
    ``floor``."""
    rng = np.random.default_rng(seed)
    if items is not None:
        n_items = {m.shape[1] for m in items.values()}
        if len(n_items) != 1:
            raise FitError(f"per-item errors of different lengths across arms: {sorted(n_items)}")
        n_items = n_items.pop()
    names = list(data)
    key_sets = {n: sorted(set(keys[n])) for n in names}
    shared = all(key_sets[n] == key_sets[names[0]] and len(key_sets[n]) == len(keys[n]) for n in names)
    fits = []
    for _ in range(resamples):
        for _attempt in range(10):
            if shared:
                drawn = rng.integers(0, len(key_sets[names[0]]), len(key_sets[names[0]]))
                picks = {}
                for n in names:
                    index = {k: j for j, k in enumerate(keys[n])}
                    picks[n] = np.array([index[key_sets[n][d]] for d in drawn])
            else:
                picks = {n: rng.integers(0, len(keys[n]), len(keys[n])) for n in names}
            if items is None:
                loss = {n: np.asarray(data[n][1]) for n in names}
            else:
                cols = rng.integers(0, n_items, n_items)
                loss = {n: np.maximum(items[n][:, cols].mean(axis=1), floor) for n in names}
            sample = {n: (np.asarray(data[n][0])[picks[n]], loss[n][picks[n]]) for n in names}
            try:
                fits.append(fit_power_laws(sample, shared_e=shared_e, starts=1, warm=full))
                break
            except FitError:
                continue
        else:
            fits.append(None)
    return Bootstrap(fits, shared)


def leave_largest_out(compute, loss, params, name: str = "") -> dict | None:
    """Fit without the runs of the largest ``params`` and predict them: ``{"held_out_params",
    "points", "mean_abs_rel_error", "max_abs_rel_error", "errors"}``; None when the smaller sizes
    leave too few points for a fit."""
    compute, loss, params = (np.asarray(v, dtype=float) for v in (compute, loss, params))
    largest = params.max()
    keep = params < largest
    if len(np.unique(params)) < 2 or len(np.unique(compute[keep])) < MIN_POINTS:
        return None
    law = fit_power_laws({name: (compute[keep], loss[keep])})[name]
    pred = law.loss(compute[~keep])
    rel = (pred - loss[~keep]) / loss[~keep]
    return {"held_out_params": float(largest), "points": int((~keep).sum()),
            "mean_abs_rel_error": float(np.mean(np.abs(rel))), "max_abs_rel_error": float(np.max(np.abs(rel))),
            "errors": [float(r) for r in rel]}
