"""The example sweep specs plan as documented: cpu_tiny's grid, the H100 ladder's Slurm dry-run."""
import json
import os
import subprocess
import sys

import pytest
import yaml

from megatron_ixt.scaling.points import read_point
from megatron_ixt.scaling.spec import load_spec

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = os.path.join(REPO, "examples", "scaling")


def test_cpu_tiny_plans_3_sizes_x_3_budgets_x_2_arms(tmp_path):
    spec = load_spec(os.path.join(EXAMPLES, "cpu_tiny.yaml"), str(tmp_path))
    assert len(spec.runs) == 18
    assert {r.arm for r in spec.runs} == {"baseline", "ixt-quality"}
    assert sorted({r.train_iters for r in spec.runs}) == [98, 196, 391]  # as the spec's comment says
    assert len({r.params for r in spec.runs}) == 3
    base, ixt = spec.runs[0], spec.runs[3]
    assert (base.arm, ixt.arm, base.size, base.tokens) == ("baseline", "ixt-quality", "s1", ixt.tokens)
    strip = lambda argv: [w for w in argv if w not in ("none", "quality", "--ixt-prefix-loss", "train")]  # noqa: E731
    # the arms differ only in their arm flags (and their run directories)
    assert strip(base.argv) == [w.replace("/ixt-quality/", "/baseline/") for w in strip(ixt.argv)]


def test_h100_ladder_dry_run_is_one_75_task_job_array(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "megatron_ixt.scaling", "launch",
                           os.path.join(EXAMPLES, "h100_ladder.yaml"), "--executor", "slurm", "--dry-run",
                           "--root", str(tmp_path)], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.count("# array task") == 75
    assert out.count("--nproc-per-node=8 -m megatron_ixt.pretrain") == 75
    assert "#SBATCH --array=0-74%16" in out and "#SBATCH --gpus-per-node=8" in out
    assert "--transformer-impl transformer_engine" in out and "--exit-signal-handler" in out
    assert f"--save {tmp_path}/ixt-critique/1.5b_40000000000_s1234/ckpt" in out
    assert not os.listdir(tmp_path)  # a dry run writes nothing


def toy_spec(tmp_path, name: str, data: str, **evaluate) -> str:
    """run_cpu_tiny's data step at toy size into ``data``, and the example spec ``name`` cut to one
    toy run per arm (size s1, 8192 tokens, 64-token sequences) on that data; ``evaluate``: keys
    that replace the spec's evaluate section's. Returns the toy spec's path."""
    sys.path.insert(0, EXAMPLES)
    import run_cpu_tiny

    corpora = {name: {**flags, "num_docs": 150 if name == "train" else 40}
               for name, flags in run_cpu_tiny.CORPORA.items()}
    run_cpu_tiny.prepare_data(sys.executable, data, corpora)
    with open(os.path.join(EXAMPLES, name), encoding="utf-8") as f:
        spec = yaml.safe_load(f)
    spec["data"] = {k: ([v[0].replace("scaling_out/cpu_tiny/data", data)] if isinstance(v, list) else
                        v.replace("scaling_out/cpu_tiny/data", data)) for k, v in spec["data"].items()}
    spec.update(root=str(tmp_path / "runs"), sizes={"s1": spec["sizes"]["s1"]}, budgets=[8192], eval_iters=2)
    spec["common"] = [c.replace("--seq-length 256 --max-position-embeddings 256", "--seq-length 64 "
                                "--max-position-embeddings 64") for c in spec["common"]]
    if evaluate:
        spec["evaluate"].update(evaluate)
    spec_path = str(tmp_path / "smoke.yaml")
    with open(spec_path, "w", encoding="utf-8") as f:
        yaml.safe_dump(spec, f)
    return spec_path


@pytest.mark.slow
def test_cpu_tiny_pipeline_smoke_at_toy_scale(tmp_path):
    """run_cpu_tiny's data step (synth, verifier, tokenizer, preprocess) at toy size, then one toy run
    per arm through ``launch`` with cpu_tiny's data section: both arms judged on the same held-out
    shard set of correct documents, the IXT arm under its steering prefix."""
    data = str(tmp_path / "data")
    spec_path = toy_spec(tmp_path, "cpu_tiny.yaml", data)
    proc = subprocess.run([sys.executable, "-m", "megatron_ixt.scaling", "launch", spec_path],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    points = {arm: read_point(os.path.join(str(tmp_path / "runs"), arm, "s1_8192_s1234"))
              for arm in ("baseline", "ixt-quality")}
    assert points["baseline"].metric == "none/doc_loss" and points["ixt-quality"].metric == "steering/doc_loss"
    assert points["baseline"].heldout == points["ixt-quality"].heldout
    assert "heldout_text_document" in points["baseline"].heldout
    assert points["baseline"].tokenizer == points["ixt-quality"].tokenizer
    # the IXT arm trains on prefix + document tokens at the same sequence length: the same FLOPs
    assert points["baseline"].compute == points["ixt-quality"].compute
    # python -m megatron_ixt.evaluation.cli on the IXT checkpoint, on the held-out shard set: the trainer's
    # last eval and this command share one loop, so on the same samples they agree
    ixt_run = os.path.join(str(tmp_path / "runs"), "ixt-quality", "s1_8192_s1234")
    out = str(tmp_path / "eval.json")
    proc = subprocess.run([sys.executable, "-m", "megatron_ixt.evaluation.cli", "--load", os.path.join(ixt_run, "ckpt"),
                           "--data-path", os.path.join(data, "heldout_text_document"),
                           "--steer-text", "Quality: very poor.\n", "--output", out],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.load(open(out))
    conds = result["conditionings"]
    assert set(conds) == {"prefix", "none", "steering", "steer_text_0"} | {f"quality_{q}" for q in range(1, 6)}
    for c in conds.values():
        assert c["tokens"] > 0 and c["stderr"] > 0 and c["sequences"] > 1
    last_eval = json.load(open(os.path.join(ixt_run, "run.json")))["eval"]
    for name in ("prefix", "none", "steering"):
        assert conds[name]["loss"] == pytest.approx(last_eval[f"{name}/doc_loss"], rel=1e-5)
    # quality_5 renders the same template at the same level as the shard set's steering prefix
    assert conds["quality_5"]["loss"] == pytest.approx(conds["steering"]["loss"], rel=1e-6)


def test_cpu_downstream_plans_3_sizes_x_3_budgets_x_2_arms_scored_under_steering(tmp_path):
    spec = load_spec(os.path.join(EXAMPLES, "cpu_downstream.yaml"), str(tmp_path))
    assert len(spec.runs) == 18 and len({r.params for r in spec.runs}) == 3
    assert sorted({r.train_iters for r in spec.runs}) == [293, 586, 1172]  # as the spec's comment says
    # the IXT arm trains with the demo's recipe: the last 10% of the steps without prefixes
    assert " ".join(spec.arm_flags["ixt-quality"]).endswith("--ixt-prefix-cooldown-fraction 0.1")
    ev = spec.evaluate
    assert ev.tasks == ["carry_add"] and ev.metrics == ["carry_add/exact_match"]
    assert ev.steer == {"baseline": "none", "ixt-quality": "quality"}  # IXT steered to its top level
    assert ev.include_path == os.path.abspath(os.path.join("examples", "scaling", "tasks"))  # cwd: the repo root


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_cpu_downstream_smoke_at_toy_scale(tmp_path):
    """cpu_downstream.yaml at toy size (one toy run per arm, 8 carry questions): launch trains, exports
    and scores both arms on the local carry task, the IXT arm steered to quality 5."""
    sys.path.insert(0, EXAMPLES)
    import run_cpu_tiny

    data = str(tmp_path / "data")
    questions = run_cpu_tiny.write_questions(data, n=8)
    assert all(q["correct"] != q["flawed"] for q in map(json.loads, open(questions)))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    task = open(os.path.join(EXAMPLES, "tasks", "carry_add.yaml"), encoding="utf-8").read()
    (tasks / "carry_add.yaml").write_text(task.replace("scaling_out/cpu_tiny/data/carry_add.jsonl", questions)
                                          .replace("max_gen_toks: 96", "max_gen_toks: 24"))
    spec_path = toy_spec(tmp_path, "cpu_downstream.yaml", data, include_path=str(tasks), batch_size=8)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "megatron_ixt.scaling", "launch", spec_path],
                          capture_output=True, text=True, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for arm, steer in (("baseline", "none"), ("ixt-quality", "quality")):
        run = os.path.join(str(tmp_path / "runs"), arm, "s1_8192_s1234")
        entry = json.load(open(os.path.join(run, "run.json")))["evaluation"]
        assert entry["steer"] == steer and 0.0 <= entry["scores"]["carry_add/exact_match"] <= 1.0
        results = json.load(open(entry["results"]))
        assert results["config"]["model_args"]["steer"] == steer
        assert set(results["results"]["carry_add"]) >= {"exact_match,answer"}
