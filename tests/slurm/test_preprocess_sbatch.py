"""examples/slurm/preprocess.sbatch, unchanged, on a real Slurm: the array plus the dependent merge
give the single run's bytes.

Submit mode (``bash examples/slurm/preprocess.sbatch`` from the repository root) submits a 2-task
array over 3 input files and the merge job (``afterok``); SBATCH_ARGS overrides the 32-CPU
default and puts the job logs in the test's directory.
"""
import json
import os
import re
import subprocess

import pytest

from tests.helpers.slurm_jobs import REPO, job_env, read_text, workdir
from tools.preprocess_ixt import main as preprocess

SCRIPT = os.path.join(REPO, "examples", "slurm", "preprocess.sbatch")
JOB_TIMEOUT = 300

pytestmark = pytest.mark.slow


def test_array_and_afterok_merge_give_the_single_runs_bytes(slurm, sp_model, write_annotated_jsonl, tmp_path_factory):
    work = workdir(tmp_path_factory, "preprocess_array")
    for k in range(3):
        write_annotated_jsonl(os.path.join(work, f"in{k}.jsonl"), n_docs=40, seed=k)
    common = ["--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", sp_model]
    single = os.path.join(work, "single", "corpus")
    assert preprocess(["--input", os.path.join(work, "in*.jsonl"), "--output-prefix", single, *common,
                       "--append-eod", "--workers", "1"]) == 0

    merged = os.path.join(work, "merged", "corpus")
    sbatch_args = slurm.sbatch_args + ["--cpus-per-task=1", f"--output={work}/%x-%j.out"]
    env = {**slurm.env, **job_env(INPUT=os.path.join(work, "in*.jsonl"), OUTPUT=merged, TOKENIZER_MODEL=sp_model,
                                  TOKENIZER_TYPE="SentencePieceTokenizer", NUM_SHARDS="2",
                                  SBATCH_ARGS=" ".join(sbatch_args))}
    proc = subprocess.run(["bash", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    array, merge = re.search(r"array (\d+) \(2 tasks\) and merge job (\d+)", proc.stdout).groups()
    [record] = slurm.wait_done(merge, JOB_TIMEOUT)
    logs = "\n".join(read_text(os.path.join(work, name)) for name in sorted(os.listdir(work)) if name.endswith(".out"))
    assert record["JobState"] == "COMPLETED", f"{record}\n{logs[-4000:]}"
    assert {t["JobState"] for t in slurm.jobs(array)} == {"COMPLETED"}

    names = sorted(os.listdir(os.path.dirname(single)))
    assert names == sorted(n for n in os.listdir(os.path.dirname(merged)) if "-part" not in n)
    for name in names:
        a, b = (os.path.join(os.path.dirname(p), name) for p in (single, merged))
        if name.endswith("_ixt.json"):  # provenance differs: created_by, merged_from
            a, b = ({k: v for k, v in json.loads(read_text(p)).items() if k not in ("created_by", "merged_from")}
                    for p in (a, b))
            assert a == b
        else:
            assert _bytes(a) == _bytes(b), name


def _bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()
