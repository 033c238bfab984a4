"""The fitter on synthetic curves with known parameters: recovery, multipliers, CIs."""
import math

import numpy as np
import pytest

from megatron_ixt.scaling import fit as F

C = np.logspace(15, 20, 11)  # five decades of compute


def curve(E, A, alpha):
    return F.PowerLaw(E, math.log(A), alpha)


def noisy(law, rng, noise=0.002, compute=C):
    return law.loss(compute) * np.exp(rng.normal(0, noise, len(compute)))


REF = curve(2.0, 300.0, 0.15)


def shifted(law, k):
    """The curve that reaches every loss with ``k`` times less compute: L_x(C) = L(k C)."""
    return F.PowerLaw(law.E, law.log_A - law.alpha * math.log(k), law.alpha)


def true_log_k(ref, arm, target):
    return (ref.log_compute_for_loss(target) - arm.log_compute_for_loss(target))


def test_inverse_is_the_closed_form():
    law = curve(1.8, 482.0, 0.3)
    for target in (1.9, 2.5, 4.0):
        closed = math.log((law.A / (target - law.E)) ** (1 / law.alpha))
        assert law.log_compute_for_loss(target) == pytest.approx(closed, rel=1e-10)
        assert float(law.loss(math.exp(closed))) == pytest.approx(target, rel=1e-10)
    assert law.log_compute_for_loss(1.8) is None and law.log_compute_for_loss(1.5) is None


def test_recovers_parameters_and_a_known_multiplier():
    rng = np.random.default_rng(1)
    arm = shifted(REF, 2.0)
    fits = F.fit_power_laws({"ref": (C, noisy(REF, rng)), "ixt": (C, noisy(arm, rng))})
    for name, truth in (("ref", REF), ("ixt", arm)):
        got = fits[name]
        assert got.E == pytest.approx(truth.E, abs=0.08)
        assert got.alpha == pytest.approx(truth.alpha, rel=0.15)
        assert float(got.loss(1e18)) == pytest.approx(float(truth.loss(1e18)), rel=0.005)
    for target in (2.3, 2.6, 3.0):
        assert F.multiplier(fits["ref"], fits["ixt"], target) == pytest.approx(2.0, rel=0.15)


def test_different_exponents_give_a_k_that_varies_with_loss():
    rng = np.random.default_rng(2)
    arm = curve(2.0, 300.0 * 4, 0.2)  # steeper: its advantage grows as the loss falls
    fits = F.fit_power_laws({"ref": (C, noisy(REF, rng)), "ixt": (C, noisy(arm, rng))})
    targets = (2.2, 2.5, 3.0)
    got = [F.multiplier(fits["ref"], fits["ixt"], t) for t in targets]
    truth = [math.exp(true_log_k(REF, arm, t)) for t in targets]
    assert truth[0] > 2 * truth[-1]  # the construction really varies
    for g, t in zip(got, truth):
        assert g == pytest.approx(t, rel=0.25)
    assert got[0] > got[1] > got[2]


def test_shared_e_fits_one_asymptote():
    rng = np.random.default_rng(3)
    arm = shifted(REF, 3.0)
    data = {"ref": (C, noisy(REF, rng)), "ixt": (C, noisy(arm, rng))}
    fits = F.fit_power_laws(data, shared_e=True)
    assert fits["ref"].E == fits["ixt"].E
    assert fits["ref"].E == pytest.approx(2.0, abs=0.08)
    for target in (2.2, 2.6, 3.0):  # one E and one true alpha: k is the same at every loss
        assert F.multiplier(fits["ref"], fits["ixt"], target) == pytest.approx(3.0, rel=0.15)


def test_a_target_below_the_reference_asymptote_is_unreachable():
    rng = np.random.default_rng(4)
    ref = curve(2.5, 300.0, 0.15)
    arm = curve(2.0, 300.0, 0.15)
    fits = F.fit_power_laws({"ref": (C, noisy(ref, rng)), "ixt": (C, noisy(arm, rng))})
    assert fits["ref"].E > 2.3
    assert F.multiplier(fits["ref"], fits["ixt"], 2.3) is None  # never a number
    assert F.multiplier(fits["ixt"], fits["ref"], 2.3) == 0.0  # the other way round: the arm never gets there


@pytest.mark.slow
def test_bootstrap_ci_covers_the_true_multiplier_in_most_seeds():
    compute = np.repeat(np.logspace(15, 19, 8), 2)  # 8 budgets x 2 seeds per arm
    keys = [f"c{i // 2}_s{i % 2}" for i in range(len(compute))]
    arm = shifted(REF, 2.0)
    covered = 0
    for seed in range(20):
        rng = np.random.default_rng(100 + seed)
        data = {"ref": (compute, noisy(REF, rng, 0.004, compute)), "ixt": (compute, noisy(arm, rng, 0.004, compute))}
        full = F.fit_power_laws(data)
        boot = F.bootstrap(data, {"ref": keys, "ixt": keys}, resamples=60, seed=seed, full=full)
        assert boot.paired
        lo, hi = F.percentile_ci(boot.multipliers("ref", "ixt", 2.6))
        covered += lo is not None and hi is not None and lo <= 2.0 <= hi
    assert covered >= 16, f"the 95% CI covered the true k in only {covered}/20 seeds"


def test_too_few_points_and_bad_values_name_the_arm():
    with pytest.raises(F.FitError, match="arm 'tiny'.*at least 4"):
        F.fit_power_laws({"tiny": (C[:3], REF.loss(C[:3]))})
    bad = REF.loss(C)
    bad[2] = np.nan
    with pytest.raises(F.FitError, match="arm 'nan'.*non-finite"):
        F.fit_power_laws({"nan": (C, bad)})


def test_leave_largest_size_out_predicts_the_largest_size():
    rng = np.random.default_rng(5)
    params = np.repeat([1e6, 4e6, 1.6e7], 4)
    compute = np.concatenate([np.logspace(15, 16.5, 4) * p / 1e6 for p in (1e6, 4e6, 1.6e7)])
    result = F.leave_largest_out(compute, noisy(REF, rng, 0.002, compute), params, "ref")
    assert result["held_out_params"] == 1.6e7 and result["points"] == 4
    assert result["mean_abs_rel_error"] < 0.02
    assert F.leave_largest_out(compute[:4], REF.loss(compute[:4]), params[:4]) is None  # one size only


def test_chinchilla_recovers_the_epoch_refit():
    truth = dict(E=1.817, A=482.0, alpha=0.348, B=2085.0, beta=0.366)
    n, d = np.meshgrid(np.logspace(7, 9, 4), np.logspace(9, 11, 4))
    n, d = n.ravel(), d.ravel()
    loss = truth["E"] + truth["A"] / n ** truth["alpha"] + truth["B"] / d ** truth["beta"]
    got = F.fit_chinchilla(n, d, loss).to_dict()
    assert got["E"] == pytest.approx(truth["E"], rel=0.02)
    assert got["alpha"] == pytest.approx(truth["alpha"], rel=0.05)
    assert got["beta"] == pytest.approx(truth["beta"], rel=0.05)
    with pytest.raises(F.FitError, match="2 sizes"):
        F.fit_chinchilla(n[:3], d[:3], loss[:3], "small")
