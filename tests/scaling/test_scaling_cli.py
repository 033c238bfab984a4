"""``python -m megatron_ixt.scaling fit`` on run directories written by the trainer's MetricsWriter."""
import csv
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from megatron_ixt.scaling.cli import main
from megatron_ixt.scaling.fit import PowerLaw
from megatron_ixt.scaling.points import PointError, frontier, read_point
from tests.helpers.scaling import write_arm, write_run

REF = PowerLaw(2.0, math.log(300.0), 0.15)
IXT = PowerLaw(2.0, math.log(300.0) - 0.15 * math.log(2.0), 0.15)  # reaches each loss with 2x less compute


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("sweep"))
    rng = np.random.default_rng(0)
    for arm, law, kind in (("baseline", REF, "none"), ("ixt", IXT, "quality")):
        write_arm(root, arm, law, kind=kind, rng=rng, budgets=(1e15, 1e16, 1e17, 1e18), noise=0.002)
    return root


def test_fit_writes_the_table_json_and_plots(sweep, tmp_path):
    out = str(tmp_path / "fit")
    stats = tmp_path / "ann"
    stats.mkdir()
    (stats / "a.stats.json").write_text(json.dumps({"tokens": {"prompt": 1000, "completion": 500}}))
    rc = subprocess.run([sys.executable, "-m", "megatron_ixt.scaling", "fit",
                         "--arm", f"baseline={sweep}/baseline/*", "--arm", f"ixt={sweep}/ixt/*",
                         "--reference", "baseline", "--annotation-stats", f"ixt={stats}/*.stats.json",
                         "--annotator-params", "1e6", "--target-loss", "3.0", "3.3", "1.5",
                         "--bootstrap", "100", "--output", out], capture_output=True, text=True)
    assert rc.returncode == 0, rc.stderr
    fits = json.load(open(os.path.join(out, "fits.json")))
    assert fits["reference"] == "baseline" and set(fits["arms"]) == {"baseline", "ixt"}
    for arm in fits["arms"].values():
        assert {"E", "A", "alpha", "points"} <= set(arm)
        assert len(arm["points"]) == 24  # 3 sizes x 4 budgets x 2 seeds
        assert arm["extrapolation"]["points"] == 8 and arm["chinchilla"] is not None
    assert fits["arms"]["baseline"]["points"][0]["metric"] == "none/doc_loss"
    assert fits["arms"]["ixt"]["points"][0]["metric"] == "steering/doc_loss"
    assert fits["arms"]["ixt"]["annotation_flops"] == 2 * 1e6 * 1500
    assert fits["bootstrap"]["paired"]
    rows = {r["target_loss"]: r for r in fits["multiplier"]}
    assert all(set(r) == {"arm", "target_loss", "k", "ci_low", "ci_high", "reachable"} for r in rows.values())
    for target in (3.0, 3.3):
        r = rows[target]
        assert r["reachable"] and r["ci_low"] < r["k"] < r["ci_high"]
        assert r["k"] == pytest.approx(2.0, rel=0.2)
    assert fits["arms"]["baseline"]["E"] > 1.5  # true E = 2.0: the reference never reaches 1.5
    assert rows[1.5] == {"arm": "ixt", "target_loss": 1.5, "k": None, "ci_low": None, "ci_high": None,
                         "reachable": False}
    assert len(fits["budget_multiplier"]) == 3
    with open(os.path.join(out, "multiplier.csv"), newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["kind"] for r in table] == ["target_loss"] * 3 + ["reference_budget"] * 3
    assert table[2]["k"] == "" and table[2]["reachable"] == "False"
    md = open(os.path.join(out, "multiplier.md")).read()
    assert "unreachable by the reference" in md and "--reference baseline" in md
    for png in ("loss_vs_flops.png", "multiplier_vs_loss.png"):
        with open(os.path.join(out, png), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def _fit(arms, out, *extra):
    argv = ["fit", *[f"--arm={a}" for a in arms], "--reference", "baseline", "--bootstrap", "20",
            "--output", out, *extra]
    return main(argv)


def test_bad_inputs_are_refused_naming_the_run(tmp_path, capsys):
    root = str(tmp_path)
    base = write_arm(root, "baseline", REF, kind="none", budgets=(1e15, 1e16), seeds=(1,))
    out = str(tmp_path / "out")
    # too few points
    write_arm(root, "few", IXT, kind="quality", budgets=(1e15,), seeds=(1,))
    assert _fit([f"baseline={root}/baseline/*", f"few={root}/few/*"], out) == 2
    assert "arm 'few'" in capsys.readouterr().err
    # no eval record
    noeval = tmp_path / "noeval" / "r"
    noeval.mkdir(parents=True)
    (noeval / "metrics.jsonl").write_text('{"kind": "train", "iteration": 1}\n')
    with pytest.raises(PointError, match=f"{noeval}.*no eval record"):
        read_point(str(noeval))
    # NaN loss (the writer stores NaN as null)
    nan = write_run(str(tmp_path / "nan" / "r"), float("nan"), 1e15)
    with pytest.raises(PointError, match="NaN or missing"):
        read_point(nan)
    # a metric the record does not have
    with pytest.raises(PointError, match="no 'prefix/doc_loss'"):
        read_point(base[0], "prefix/doc_loss")
    # an unfinished run
    early = write_run(str(tmp_path / "early" / "r"), 3.0, 1e15, eval_iteration=5, train_iters=10)
    with pytest.raises(PointError, match="iteration 5 of 10"):
        read_point(early)
    # no matches
    assert _fit([f"baseline={root}/baseline/*", f"none={root}/nothing/*"], out) == 2
    assert "matches no run directory" in capsys.readouterr().err


@pytest.mark.parametrize("change,message", [({"tokenizer_vocab": 1024}, "mixed tokenizers"),
                                            ({"data_path": "/data/other_text_document"}, "mixed held-out sets")])
def test_mixed_tokenizers_or_heldout_sets_are_refused(tmp_path, capsys, change, message):
    root = str(tmp_path)
    write_arm(root, "baseline", REF, kind="none", seeds=(1,))
    for i, c in enumerate((1e15, 3e15, 1e16, 3e16)):
        write_run(os.path.join(root, "ixt", f"r{i}"), float(IXT.loss(c)), c, **change)
    assert _fit([f"baseline={root}/baseline/*", f"ixt={root}/ixt/*"], str(tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert message in err and os.path.join(root, "ixt") in err


def test_non_monotone_data_is_a_warning(tmp_path, capsys):
    root = str(tmp_path)
    write_arm(root, "baseline", REF, kind="none", seeds=(1,))
    write_arm(root, "ixt", IXT, kind="quality", seeds=(1,))
    bad = sorted(os.listdir(os.path.join(root, "ixt")))
    # the largest budget of the smallest size: a loss far above the smaller budgets'
    target = [d for d in bad if d.startswith("h64_")]
    target.sort(key=lambda d: int(d.split("_")[1]))
    # write_run appends a second header and eval: the run's last eval is now this bad point
    write_run(os.path.join(root, "ixt", target[-1]), 5.0, 3e16, hidden=64, tokens=int(target[-1].split("_")[1]))
    assert _fit([f"baseline={root}/baseline/*", f"ixt={root}/ixt/*"], str(tmp_path / "out")) == 0
    err = capsys.readouterr().err
    assert "warning: arm 'ixt': loss rises" in err and target[-1] in err


def test_frontier_keeps_the_compute_optimal_envelope(tmp_path):
    runs = {"a": (1e15, 3.0), "b": (2e15, 3.1), "c": (3e15, 2.9), "d": (3e15, 2.95), "e": (5e15, 2.7)}
    points = [read_point(write_run(str(tmp_path / k), loss, c)) for k, (c, loss) in runs.items()]
    assert [p.key for p in frontier(points)] == ["a", "c", "e"]
