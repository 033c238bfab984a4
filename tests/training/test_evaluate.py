"""``python -m megatron_ixt.evaluation.cli``: the trainer's eval loop (megatron_ixt/evaluation/heldout.py) on a
checkpoint, under any TP layout, and its loss statistics."""
import json
import os
import subprocess
import sys

import pytest
import torch

from megatron_ixt.evaluation.heldout import LossStats, eval_loss_func
from tests.helpers.training import read_records, run_pretrain, tiny_model_args


def test_loss_stats_are_the_ratio_estimator():
    losses = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 4.0, 0.0, 0.0], [2.0, 2.0, 2.0, 2.0]])
    loss_mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]])
    prefix_mask = torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0]])
    _, count, report = eval_loss_func(loss_mask, prefix_mask, losses)
    doc, prefix = LossStats(report["doc"].tolist()), LossStats(report["prefix"].tolist())
    assert int(count) == 9 and doc.tokens == 6 and prefix.tokens == 3
    s, n = torch.tensor([5.0, 8.0, 4.0]), torch.tensor([2.0, 2.0, 2.0])  # per-sequence document sums
    assert doc.loss == pytest.approx(17 / 6)
    mean = s.sum() / n.sum()
    expected = float(torch.sqrt(((s - mean * n) ** 2).sum() * 3 / 2) / n.sum())
    assert doc.stderr == pytest.approx(expected)
    assert prefix.loss == pytest.approx(5 / 3) and doc.to_dict()["sequences"] == 3


def _evaluate(args, nproc=1):
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    launcher = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run",
                                                   "--standalone", f"--nproc-per-node={nproc}"]
    proc = subprocess.run(launcher + ["-m", "megatron_ixt.evaluation.cli", *args], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.mark.slow
def test_evaluate_matches_the_trainer_eval_under_tp1_and_tp2(synth_data, tmp_path):
    ckpt = str(tmp_path / "ckpt")
    run_pretrain(tiny_model_args(synth_data, str(tmp_path / "cache")) +
                 ["--ixt-prefix-kind", "critique", "--train-iters", "4", "--eval-interval", "4", "--eval-iters", "2",
                  "--save", ckpt])
    last = read_records(os.path.join(ckpt, "metrics.jsonl"), "eval")[-1]
    results = {}
    for tp in (1, 2):
        out = str(tmp_path / f"tp{tp}.json")
        _evaluate(["--load", ckpt, "--tensor-model-parallel-size", str(tp), "--steer-text", "490 491 492",
                   "--output", out], nproc=tp)
        results[tp] = json.load(open(out))["conditionings"]
    # the synthetic shard set has no template text: no quality levels
    assert set(results[1]) == {"prefix", "none", "steering", "steer_text_0"}
    for name in ("prefix", "none", "steering"):
        assert results[1][name]["loss"] == pytest.approx(last[f"{name}/doc_loss"], rel=1e-5)
    assert results[1]["prefix"]["prefix_loss"] == pytest.approx(last["prefix/prefix_loss"], rel=1e-5)
    for name, r in results[1].items():
        assert results[2][name]["tokens"] == r["tokens"]
        assert results[2][name]["loss"] == pytest.approx(r["loss"], rel=1e-4)
    # a bad checkpoint directory is exit status 3, naming it
    bad = subprocess.run([sys.executable, "-m", "megatron_ixt.evaluation.cli", "--load", str(tmp_path / "nothing")],
                         capture_output=True, text=True)
    assert bad.returncode == 3 and "nothing" in bad.stderr
