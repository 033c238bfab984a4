"""The README's main command, at toy size: every pipeline stage runs through its real entry point."""
import json
import os
import pathlib
import subprocess
import sys
from dataclasses import dataclass

import pytest
import run_demo  # examples/demo (pytest.ini's pythonpath)

from megatron_ixt.training.checkpoint import read_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass
class DemoRun:
    out: pathlib.Path  # the demo's --output
    command: list  # its command line (without --ablations)
    stdout: str  # what the first run printed


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> DemoRun:
    """`make demo` at toy size (400 documents, 4 steps per arm, 3 questions), run once per module."""
    out = tmp_path_factory.mktemp("demo") / "out"
    command = [sys.executable, os.path.join(REPO, "examples", "demo", "run_demo.py"), "--output", str(out),
               "--num-docs", "400", "--heldout-docs", "40", "--train-iters", "4", "--eval-points", "2",
               "--eval-questions", "3"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return DemoRun(out, command, proc.stdout)


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.mark.slow
def test_annotation_and_shards(demo):
    annotated = read_jsonl(demo.out / "annotated" / "arith.jsonl")
    assert len(annotated) == 400 and all(r["ixt"]["status"] == "ok" for r in annotated)
    meta = read_json(demo.out / "shards" / "arith_ixt.json")
    assert meta["counts"]["documents"] == 400 and meta["steering"]["quality"]["tokens"]


@pytest.mark.slow
def test_both_arms_train_and_evaluate_held_out_loss(demo):
    for arm, key in (("baseline", "none/doc_loss"), ("ixt", "steering/doc_loss")):
        assert (demo.out / "ckpt" / arm / "latest_checkpointed_iteration.txt").read_text().strip() == "4"
        evals = [r for r in read_jsonl(demo.out / "ckpt" / arm / "metrics.jsonl") if r["kind"] == "eval"]
        assert [r["iteration"] for r in evals] == [2, 4] and all(r[key] > 0 for r in evals)
    # the IXT arm's recipe: prefixes in the first 90% of the steps, none in the cooldown
    assert read_config(str(demo.out / "ckpt" / "ixt"))["data"]["ixt_prefix_cooldown_fraction"] == 0.1
    assert read_config(str(demo.out / "ckpt" / "baseline"))["data"]["ixt_prefix_kind"] == "none"


@pytest.mark.slow
def test_every_conditioning_is_scored_with_intervals(demo):
    summary = read_json(demo.out / "summary.json")
    results = summary["results"]
    assert set(results) == {"baseline", "ixt steered to quality 5", "ixt unconditioned", "ixt guided G=1.5",
                            "ixt guided G=3", "ixt steered to quality 1"}
    for r in results.values():
        assert r["questions"] == 3 and r["accuracy"] == r["correct"] / 3
        assert r["accuracy_ci"][0] <= r["accuracy"] <= r["accuracy_ci"][1]
        assert r["flawed_answers_ci"][0] <= r["flawed_answers"] <= r["flawed_answers_ci"][1]
    assert summary["verdict"].startswith("verdict: ixt steered to quality 5 ")
    assert "ixt steered to quality 5" in demo.stdout
    steering = read_json(demo.out / "shards" / "arith_ixt.json")["steering"]["quality"]["tokens"]
    for name in ("ixt_steered_to_quality_5", "ixt_guided_G_3"):  # both passes start from the steering prefix
        generations = read_jsonl(demo.out / "eval" / f"{name}.jsonl")
        assert len(generations) == 3 and generations[0]["prefix_tokens"] == steering
    rows = summary["recipes"]
    assert [(r["arm"], r["recipe"]) for r in rows] == [("baseline", "-"), ("ixt", "cooldown 0.1")]
    assert rows[0]["steered"] is None and rows[0]["unconditioned"] == results["baseline"]
    assert rows[1]["guided"]["3"] == results["ixt guided G=3"] and rows[1]["loss_steered"] > 0


@pytest.mark.slow
def test_report_has_the_tables_plots_and_commands(demo):
    summary = read_json(demo.out / "summary.json")
    assert any("megatron_ixt.pretrain" in c for c in summary["commands"])
    report = (demo.out / "report.md").read_text()
    assert summary["verdict"] in report and "| ixt steered to quality 1 |" in report
    assert "megatron_ixt.pretrain" in report and "## Example answers" in report
    assert "| ixt | cooldown 0.1 |" in report and "## Recipes" in report
    for png in ("loss.png", "answers.png"):
        assert f"]({png})" in report
        assert (demo.out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_ablations_add_the_other_recipes_and_reuse_the_finished_arms(demo):
    """`make demo-ablations`: the same output again with --ablations (runs last: it adds to ``demo``)."""
    def trained(arm):  # the trainer's records of optimizer steps (a resumed, finished run adds none)
        return [r for r in read_jsonl(demo.out / "ckpt" / arm / "metrics.jsonl") if r["kind"] == "train"]

    before = {arm: trained(arm) for arm in ("baseline", "ixt")}
    proc = subprocess.run([*demo.command, "--ablations"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert {arm: trained(arm) for arm in before} == before and len(before["ixt"]) == 1
    summary = read_json(demo.out / "summary.json")
    assert [(r["arm"], r["recipe"]) for r in summary["recipes"]] == [
        ("baseline", "-"), ("ixt", "cooldown 0.1"), ("ixt no cooldown", "no cooldown"),
        ("ixt dropout 0.1", "dropout 0.1")]
    for arm, flag, value in (("ixt_no_cooldown", "ixt_prefix_cooldown_fraction", 0.0),
                             ("ixt_dropout_0_1", "ixt_prefix_dropout", 0.1)):
        assert read_config(str(demo.out / "ckpt" / arm))["data"][flag] == value
    assert all(r["questions"] == 3 for r in summary["results"].values()) and len(summary["results"]) == 16
    assert "| ixt dropout 0.1 | dropout 0.1 |" in (demo.out / "report.md").read_text()


# The demo's headline at a size the default suite affords (about 5 min on 2 cores): 2 layers,
# 128-token sequences, 3,000 steps per arm. At 2,000 steps the model had not yet learned to copy
# the question's digits on seeds 1234 and 7 (neither arm above 0.10 of the 60 questions); at 3,000
# the steered IXT arm answered 0.87, 0.80 and 1.00 of them (seeds 1234, 7, 3) against the
# baseline's 0.15, 0.12 and 0.13 (README, "What varies").
SMALL_DEMO_ARGS = ["--num-layers", "2", "--seq-length", "128", "--train-iters", "3000", "--num-docs", "4000",
                   "--heldout-docs", "40", "--eval-points", "2", "--eval-questions", "60", "--seed", "1234"]


@pytest.mark.slow
def test_small_demo_steered_ixt_beats_the_baseline(tmp_path):
    """The README's claim, asserted: steered to the top quality, the IXT model answers held-out
    carry questions correctly more often than the baseline, with non-overlapping 95% intervals;
    steered to the lowest quality, the same model reproduces the corpus's systematic slip."""
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, os.path.join(REPO, "examples", "demo", "run_demo.py"), "--output", str(out),
                           *SMALL_DEMO_ARGS], capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = read_json(out / "summary.json")
    results = summary["results"]
    table = proc.stdout[proc.stdout.find("arm / conditioning"):]
    assert summary["verdict"].startswith("verdict: ixt steered to quality 5 beats the baseline "), table
    assert results["ixt steered to quality 5"]["accuracy_ci"][0] > results["baseline"]["accuracy_ci"][1], table
    worst, best = results["ixt steered to quality 1"], results["ixt steered to quality 5"]
    assert worst["flawed_answers_ci"][0] > best["flawed_answers_ci"][1], table
    assert read_config(str(out / "ckpt" / "ixt"))["model"]["num_layers"] == 2


@pytest.mark.parametrize("at_once", [1, 2])
def test_steps_run_in_waves_of_at_once(tmp_path, at_once):
    """Arms that would oversubscribe the CPUs train one after the other: the steps of a wave run
    together (each waits, at most 60 s, until every step of its wave has started) and a wave ends
    before the next starts."""
    step = ("import os, sys, time; open(sys.argv[1], 'w').close(); print('start', time.time(), flush=True); "
            "deadline = time.time() + 60\n"
            "while not all(map(os.path.exists, sys.argv[2:])) and time.time() < deadline: time.sleep(0.01)\n"
            "print('met', int(all(map(os.path.exists, sys.argv[2:])))); print('end', time.time())")
    marks = [str(tmp_path / f"started{i}") for i in range(4)]
    waves = [marks[first:first + at_once] for first in range(0, 4, at_once)]
    logs = [str(tmp_path / f"step{i}.log") for i in range(4)]
    run_demo.run_steps([([sys.executable, "-c", step, marks[i], *waves[i // at_once]], logs[i]) for i in range(4)],
                       at_once=at_once)
    records = [dict(line.split() for line in open(log)) for log in logs]
    assert all(r["met"] == "1" for r in records)  # the steps of each wave ran side by side
    for first in range(0, 4, at_once):
        wave_end = max(float(r["end"]) for r in records[first:first + at_once])
        assert all(float(r["start"]) > wave_end for r in records[first + at_once:])  # later waves start after
