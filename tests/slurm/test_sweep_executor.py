"""The sweep's Slurm executor (``python -m megatron_ixt.scaling launch SPEC --executor slurm``,
submitit) on a real Slurm: a 2-run grid (1 size x 1 budget x the baseline and ixt-quality arms,
4 iterations each, CPU only) as one job array.

What a user relies on: every array task leaves its run directory with a ``finished`` run.json
holding the held-out point; a relaunch while the array is queued or running, and one after it
finished, submits nothing; ``fit`` reads the points the jobs wrote (and, with one point per arm,
refuses the fit naming the arm instead of writing a meaningless one).
"""
import json
import os
import re
import subprocess
import sys

import pytest

from megatron_ixt.scaling.points import read_arm
from tests.helpers.scaling import tiny_spec
from tests.helpers.slurm_jobs import REPO, job_env, read_text, workdir
from tests.helpers.training_corpus import VOCAB, write_counting_shard_set

ARMS = {"baseline": "--ixt-prefix-kind none", "ixt-quality": "--ixt-prefix-kind quality"}
JOB_TIMEOUT = 420

pytestmark = pytest.mark.slow


def _spec_slurm_keys(sbatch_args) -> dict:
    """The spec's ``slurm`` block: CPU-only tasks (the launcher has no GPUs, so no --gpus-per-node),
    and the fixture's placement (``--partition=P`` ...) as submitit's additional sbatch parameters."""
    extra = {}
    for arg in sbatch_args:
        if not arg.startswith("--"):
            raise ValueError(f"sbatch argument {arg!r} (IXT_SBATCH_ARGS): write it as --name=value for the sweep test")
        name, _, value = arg[2:].partition("=")
        extra[name.replace("-", "_")] = value or True
    return {"time": 30, "cpus_per_task": 1, "signal_delay_s": 30, "additional_parameters": extra}


def _scaling(args, env, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "megatron_ixt.scaling", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def _logs(root: str) -> str:
    """submitit's task logs and the trainers' logs, for failure messages."""
    texts = []
    for top, _, files in os.walk(root):
        texts += [f"== {os.path.join(top, n)}\n{read_text(os.path.join(top, n))[-3000:]}"
                  for n in sorted(files) if n.endswith((".out", ".err", ".log"))]
    return "\n".join(texts)


def test_job_array_runs_the_grid_relaunch_submits_nothing_and_fit_reads_the_points(slurm, tmp_path_factory):
    work = workdir(tmp_path_factory, "sweep_executor")
    data = write_counting_shard_set(os.path.join(work, "corpus", "ixt"))
    root = os.path.join(work, "runs")
    spec = tiny_spec(os.path.join(work, "sweep.yaml"), data, root, budgets=(512,), arms=ARMS, vocab=VOCAB,
                     extra=f"slurm: {json.dumps(_spec_slurm_keys(slurm.sbatch_args))}\n")
    env = {**slurm.env, **job_env()}
    names = ["baseline/h32_512_s7", "ixt-quality/h32_512_s7"]

    proc = _scaling(["launch", spec, "--executor", "slurm"], env, work)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    array = re.search(r"submitted 2 run\(s\) as job array (\d+)", proc.stdout).group(1)

    # relaunch while the array is queued or running: both runs skipped, no new job
    again = _scaling(["launch", spec, "--executor", "slurm"], env, work)
    assert again.returncode == 0, again.stderr
    assert "submitted" not in again.stdout.replace(": submitted", "")
    assert [re.search(rf"skip {n}: (submitted|running)", again.stdout) is not None for n in names] == [True, True]
    tasks = slurm.wait_done(array, JOB_TIMEOUT)
    assert sorted(t["JobId"] for t in tasks) == sorted({t["JobId"] for t in tasks}) and len(tasks) == 2
    assert {t["JobState"] for t in tasks} == {"COMPLETED"}, f"{tasks}\n{_logs(root)}"
    assert slurm.run(["squeue", "-h"]).stdout.strip() == ""  # nothing else was submitted

    status = _scaling(["status", spec, "--json"], env, work)
    assert status.returncode == 0, status.stderr
    rows = json.loads(status.stdout)
    assert [(r["run"], r["state"], r["iteration"]) for r in rows] == [(n, "finished", 4) for n in names], _logs(root)
    records = {}
    for i, name in enumerate(names):
        path = os.path.join(root, name, "run.json")
        records[name] = json.loads(read_text(path))
        r = records[name]
        assert r["state"] == "finished" and r["exit_code"] == 0 and r["slurm_job_id"] == f"{array}_{i}", r
        assert r["point"]["iteration"] == r["train_iters"] == 4 and r["training_flops"] > 0
        assert r["point"]["metric"] == ("none/doc_loss" if name.startswith("baseline") else "steering/doc_loss")
        assert r["eval"][r["point"]["metric"]] == r["point"]["loss"] > 0
    mtimes = {n: os.path.getmtime(os.path.join(root, n, "run.json")) for n in names}

    # relaunch after the array finished: nothing submitted, nothing rewritten
    done = _scaling(["launch", spec, "--executor", "slurm"], env, work)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"skip {n}: finished" for n in names]
    assert slurm.run(["squeue", "-h"]).stdout.strip() == ""
    assert mtimes == {n: os.path.getmtime(os.path.join(root, n, "run.json")) for n in names}

    # fit collects exactly the points the jobs recorded; one point per arm is refused, naming the arm
    for name in names:
        arm = name.split("/")[0]
        [point] = read_arm(arm, os.path.join(root, arm, "*"), None)
        assert point.to_dict() == records[name]["point"]
    out = os.path.join(work, "fit")
    fit = _scaling(["fit", "--arm", f"baseline={root}/baseline/*", "--arm", f"ixt-quality={root}/ixt-quality/*",
                    "--reference", "baseline", "--bootstrap", "10", "--output", out], env, REPO)
    assert fit.returncode == 2, fit.stdout + fit.stderr
    assert re.search(r"error: arm '(baseline|ixt-quality)': 1 distinct compute value\(s\); the fit .* needs at "
                     r"least 4", fit.stderr), fit.stderr
    assert not os.path.exists(os.path.join(out, "fits.json"))
