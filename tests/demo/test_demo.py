"""The README's main command, at toy size: every pipeline stage runs through its real entry point."""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_demo_runs_the_whole_pipeline(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, os.path.join(REPO, "examples", "demo", "run_demo.py"),
                           "--output", str(out), "--num-docs", "400", "--train-iters", "4",
                           "--eval-questions", "3"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    annotated = [json.loads(line) for line in open(out / "annotated" / "arith.jsonl")]
    assert len(annotated) == 400 and all(r["ixt"]["status"] == "ok" for r in annotated)
    meta = json.load(open(out / "shards" / "arith_ixt.json"))
    assert meta["counts"]["documents"] == 400 and meta["steering"]["quality"]["tokens"]
    for arm in ("baseline", "ixt"):
        assert open(out / "ckpt" / arm / "latest_checkpointed_iteration.txt").read().strip() == "4"
    results = json.load(open(out / "summary.json"))["results"]
    assert set(results) == {"baseline", "ixt steered to quality 5", "ixt unconditioned", "ixt steered to quality 1"}
    for r in results.values():
        assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["flawed_answers"] <= 1.0
    generations = [json.loads(line) for line in open(out / "eval" / "ixt_steered_to_quality_5.jsonl")]
    assert len(generations) == 3
    assert generations[0]["prefix_tokens"] == meta["steering"]["quality"]["tokens"]
    assert "ixt steered to quality 5" in proc.stdout
