"""``scaling fit`` on downstream metrics (TASK/METRIC from lm-eval's results and per-item samples):
synthetic ladders with a known multiplier and with a baseline ceiling, the outputs, the bad-input
errors, and ``fit SPEC``."""
import csv
import json
import math
import os
import re
import shutil

import numpy as np
import pytest

from megatron_ixt.scaling import fit as F
from megatron_ixt.scaling.analysis import analyze_downstream
from megatron_ixt.scaling.cli import main
from megatron_ixt.scaling.downstream import error_floor
from megatron_ixt.scaling.points import read_arm
from tests.helpers.scaling import tiny_spec, write_downstream_arm, write_scores

ALPHA = 0.3
REF = F.PowerLaw(0.05, math.log(0.9) + ALPHA * math.log(1e15), ALPHA)  # error 0.95 at 1e15 FLOPs
K = 3.0
IXT = F.PowerLaw(0.05, REF.log_A - ALPHA * math.log(K), ALPHA)  # the same error with 3x less compute
BUDGETS = (1e15, 3e15, 1e16, 3e16, 1e17)
METRIC = "carry_add/exact_match"


def _ladder(law, rng, items, seeds=(1, 2), sizes=3):
    """(compute, per-item error matrix) of a sizes x budgets x seeds grid whose error rate is ``law``."""
    compute = np.array([b * (1 + j) ** 2 for j in range(sizes) for b in BUDGETS for _ in seeds])
    errors = (rng.random((len(compute), items)) < np.minimum(law.loss(compute), 1.0)[:, None]).astype(float)
    return compute, errors


def test_bootstrap_over_runs_and_items_covers_the_true_multiplier_in_most_seeds():
    """20 synthetic ladders (3 sizes x 5 budgets x 2 seeds, 200 items): the 95% CI of k at score 0.6
    covers the true 3.0 in at least 16."""
    covered, widths = 0, []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        data, items = {}, {}
        for name, law in (("baseline", REF), ("ixt", IXT)):
            compute, errors = _ladder(law, rng, 200)
            floor = error_floor(200)
            data[name] = (compute, np.maximum(errors.mean(axis=1), floor))
            items[name] = errors
        keys = {n: [str(i) for i in range(len(data[n][0]))] for n in data}
        fits = F.fit_power_laws(data)
        boot = F.bootstrap(data, keys, 60, seed=seed, full=fits, items=items, floor=error_floor(200))
        lo, hi = F.percentile_ci(boot.multipliers("baseline", "ixt", 0.4))
        covered += lo <= K <= (math.inf if hi is None else hi)
        widths.append((hi or math.inf) / lo)
    assert covered >= 16, (covered, widths)


@pytest.fixture(scope="module")
def ceiling(tmp_path_factory):
    """A baseline whose error never falls below 0.6 (score ceiling 0.4) and an IXT arm that reaches 0.9."""
    root = str(tmp_path_factory.mktemp("ceiling"))
    rng = np.random.default_rng(3)
    ref = F.PowerLaw(0.6, math.log(0.35) + ALPHA * math.log(1e15), ALPHA)
    write_downstream_arm(root, "baseline", ref, kind="none", rng=rng, budgets=BUDGETS)
    write_downstream_arm(root, "ixt", IXT, kind="quality", rng=rng, budgets=BUDGETS, steer="quality")
    return root


def test_a_score_above_the_baseline_ceiling_is_unreachable_and_outputs_sit_side_by_side(ceiling, tmp_path):
    out = str(tmp_path / "fit")
    assert main(["fit", f"--arm=baseline={ceiling}/baseline/*", f"--arm=ixt={ceiling}/ixt/*", "--reference",
                 "baseline", "--downstream", METRIC, "--target-score", "0.3", "0.8", "--bootstrap", "60",
                 "--output", out]) == 0
    fits = json.load(open(os.path.join(out, "fits.json")))
    d = fits["downstream"]["carry_add/exact_match,none"]
    assert d["kind"] == "downstream" and d["items"] == 200
    assert d["steer"] == {"baseline": ["none"], "ixt": ["quality"]}
    assert 1 - d["arms"]["baseline"]["E"] == pytest.approx(0.4, abs=0.05)  # the fitted ceiling
    rows = {round(r["target_score"], 6): r for r in d["multiplier"]}
    assert rows[0.3]["reachable"] and rows[0.3]["k"] > 1
    assert rows[0.8] == {"arm": "ixt", "target_loss": pytest.approx(0.2), "target_score": pytest.approx(0.8),
                         "k": None, "ci_low": None, "ci_high": None, "reachable": False}
    assert fits["multiplier"]  # the loss fit is there too
    with open(os.path.join(out, "multiplier.csv"), newline="") as f:
        kinds = [(r["kind"], r["metric"]) for r in csv.DictReader(f)]
    assert ("target_score", "carry_add/exact_match,none") in kinds and ("target_loss", "") in kinds
    md = open(os.path.join(out, "multiplier.md")).read()
    assert "## Side by side" in md and "k on carry_add/exact_match,none" in md
    assert "## Downstream: carry_add/exact_match,none" in md and "unreachable by the reference" in md
    for png in ("loss_vs_flops", "multiplier_vs_loss", "score_vs_flops_carry_add_exact_match_none",
                "multiplier_vs_score_carry_add_exact_match_none"):
        with open(os.path.join(out, png + ".png"), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def _fit(root, out, *extra):
    return main(["fit", f"--arm=baseline={root}/baseline/*", f"--arm=ixt={root}/ixt/*", "--reference", "baseline",
                 "--downstream", METRIC, "--bootstrap", "10", "--output", out, *extra])


@pytest.mark.parametrize("case,message", [
    ("missing", r"no lm-eval results for task 'carry_add'"),
    ("version", r"different task versions in one comparison .*2\.0"),
    ("fewshot", r"different few-shot settings in one comparison .*5"),
    ("not_a_rate", r"exact_match,none = 7\.5 is not a rate in \[0, 1\]"),
    ("item_not_a_rate", r"item 3 has exact_match = 4\.0, not a rate"),
    ("few_points", r"carry_add/exact_match,none \(error rate fit\): arm 'ixt': 2 distinct compute"),
])
def test_bad_downstream_inputs_are_refused_naming_the_run_and_file(tmp_path, capsys, case, message):
    root = str(tmp_path)
    rng = np.random.default_rng(0)
    write_downstream_arm(root, "baseline", REF, kind="none", rng=rng, budgets=BUDGETS[:4], seeds=(1,))
    budgets = BUDGETS[:2] if case == "few_points" else BUDGETS[:4]
    runs = write_downstream_arm(root, "ixt", IXT, kind="quality", rng=rng, budgets=budgets, seeds=(1,),
                                **({"sizes": {"h64": 64}} if case == "few_points" else {}))
    bad = runs[-1]
    items = [1.0, 0.0] * 100
    stamp = "2026-01-02T00-00-00.000000"  # newer than the good one
    if case == "missing":  # its only results are another task's
        shutil.rmtree(os.path.join(bad, "lm_eval"))
        write_scores(bad, "other_task", items, stamp=stamp)
    elif case == "version":
        write_scores(bad, "carry_add", items, version=2.0, stamp=stamp)
    elif case == "fewshot":
        write_scores(bad, "carry_add", items, n_shot=5, stamp=stamp)
    elif case == "not_a_rate":
        write_scores(bad, "carry_add", items, value=7.5, stamp=stamp)
    elif case == "item_not_a_rate":
        write_scores(bad, "carry_add", [1.0, 0.0, 1.0, 4.0] + items[4:], value=0.5, stamp=stamp)
    if case == "few_points":  # the loss fit refuses these runs first; the downstream fit on its own:
        arms = {a: read_arm(a, f"{root}/{a}/*") for a in ("baseline", "ixt")}
        with pytest.raises(F.FitError) as e:
            analyze_downstream(arms, METRIC, "baseline", resamples=10)
        err = str(e.value)
    else:
        assert _fit(root, str(tmp_path / "out")) == 2
        err = capsys.readouterr().err
    assert re.search(message, err), err
    if case != "few_points":
        assert bad in err and "lm_eval" in err  # names the run and the file


def test_fit_spec_reads_arms_reference_and_metrics_from_the_spec(ceiling, tmp_path, capsys):
    """``fit SPEC``: the runs under ROOT/<arm>/*, the reference (the arm trained without a prefix)
    and the evaluate section's metrics, with no --arm."""
    data = tmp_path / "d_text_document"
    spec = tiny_spec(str(tmp_path / "s.yaml"), str(data), ceiling,
                     arms={"baseline": "--ixt-prefix-kind none", "ixt": "--ixt-prefix-kind quality"},
                     extra=f"evaluate:\n  tasks: [carry_add]\n  metrics: [{METRIC}]\n")
    out = str(tmp_path / "fit")
    assert main(["fit", spec, "--bootstrap", "10", "--target-score", "0.3", "--output", out]) == 0
    fits = json.load(open(os.path.join(out, "fits.json")))
    assert fits["reference"] == "baseline" and set(fits["arms"]) == {"baseline", "ixt"}
    assert len(fits["arms"]["ixt"]["points"]) == 30
    assert list(fits["downstream"]) == ["carry_add/exact_match,none"]
    assert main(["fit", spec, "--arm", f"x={ceiling}/ixt/*", "--output", out]) == 2
    assert "either a SPEC or --arm" in capsys.readouterr().err


def test_a_ladder_that_jumps_at_its_largest_run_is_fitted_and_plotted(tmp_path):
    """The shape of the CPU downstream sweep: both arms near 0 on 8 of 9 runs, the IXT arm at 0.40 on
    its largest. The power law fits it with alpha ~ 0 (k then runs to absurd values); the fit still
    writes its table and every plot."""
    from tests.helpers.scaling import write_arm

    root, out = str(tmp_path / "runs"), str(tmp_path / "fit")
    scores = {"baseline": [0, 0, 0.01, 0, 0.005, 0.045, 0.005, 0.02, 0.045],  # sizes x budgets, in order
              "ixt": [0, 0.01, 0.01, 0.005, 0.03, 0.01, 0, 0.015, 0.40]}
    rng = np.random.default_rng(5)
    for arm, kind, steer in (("baseline", "none", "none"), ("ixt", "quality", "quality")):
        runs = write_arm(root, arm, IXT, kind=kind, budgets=BUDGETS[:3], seeds=(1,), rng=rng)
        for run, score in zip(runs, scores[arm]):
            write_scores(run, "carry_add", np.arange(200) < round(score * 200), steer=steer)
    assert _fit(root, out, "--bootstrap", "100") == 0
    d = json.load(open(os.path.join(out, "fits.json")))["downstream"]["carry_add/exact_match,none"]
    assert d["arms"]["ixt"]["alpha"] < 0.05  # the form does not describe a jump: read the table, not k
    for png in ("score_vs_flops_carry_add_exact_match_none", "multiplier_vs_score_carry_add_exact_match_none"):
        with open(os.path.join(out, png + ".png"), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_the_multiplier_axis_is_clipped_so_that_absurd_k_still_plots():
    """k of 1e279 (the CPU sweep's bootstrap gave one) on a log axis made matplotlib overflow; the
    axis keeps the finite positive values within K_AXIS_RANGE, padded by 1.5x."""
    from megatron_ixt.scaling.plots import K_AXIS_RANGE, _k_axis_limits

    assert _k_axis_limits(np.array([0.5, 2.0, 1e279, np.inf, np.nan, 0.0])) == (0.5 / 1.5, K_AXIS_RANGE[1])
    assert _k_axis_limits(np.array([np.nan])) == (1 / 1.5, 1.5)  # nothing drawn: around k = 1
    assert _k_axis_limits(np.array([1e-300, 3.0])) == (K_AXIS_RANGE[0], 4.5)
