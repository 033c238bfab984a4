"""examples/slurm/annotate.sbatch, unchanged, as a real Slurm job array against the SGLang stand-in.

Four input shards, one array task each (the GPU-sized #SBATCH lines overridden on the sbatch
command line, the server given by the script's SERVER_URL). One task is killed without warning
(``scancel --signal=KILL``) mid-shard and resubmitted alone (``NUM_SHARDS=4 sbatch --array=1``);
in the end every document is in OUTPUT exactly once.
"""
import collections
import os
import socket

import pytest

from tests.helpers.annotate import read_jsonl, write_jsonl
from tests.helpers.sglang_standin import StandinConfig, StandinServer
from tests.helpers.slurm_cluster import FINAL_STATES
from tests.helpers.slurm_jobs import REPO, job_env, read_text, workdir

SCRIPT = os.path.join(REPO, "examples", "slurm", "annotate.sbatch")
CPU_ARGS = ["--gpus-per-node=0", "--cpus-per-task=1", "--time=00:10:00"]
SHARDS, DOCS_PER_SHARD, VICTIM = 4, 40, 1
JOB_TIMEOUT = 300

pytestmark = pytest.mark.slow


def _lines(path: str) -> int:
    try:
        with open(path, "rb") as f:
            return f.read().count(b"\n")
    except FileNotFoundError:
        return 0


@pytest.fixture
def server(slurm):
    # On our own one-node cluster the jobs run here; on a user's cluster they connect by host name.
    with StandinServer(StandinConfig(latency=0.25), host="127.0.0.1" if slurm.local else "0.0.0.0") as s:
        yield s.url if slurm.local else s.url.replace("0.0.0.0", socket.getfqdn())


def test_array_task_killed_and_resubmitted_annotates_every_document_once(slurm, server, tmp_path_factory):
    work = workdir(tmp_path_factory, "annotate_array")
    docs = [{"id": f"doc-{k}-{i:03d}", "text": f"document {i} of shard {k}. " + "word " * (i % 30)}
            for k in range(SHARDS) for i in range(DOCS_PER_SHARD)]
    for k in range(SHARDS):
        write_jsonl(os.path.join(work, f"in{k}.jsonl"), docs[k * DOCS_PER_SHARD:(k + 1) * DOCS_PER_SHARD])
    out = os.path.join(work, "out")
    env = job_env(INPUT=os.path.join(work, "in*.jsonl"), OUTPUT=out, SERVER_URL=server, TOKENIZER="",
                  CONCURRENCY="2", EXTRA_CLIENT_ARGS="--fsync-interval 0.05 --log-interval 1")

    job = slurm.sbatch(SCRIPT, CPU_ARGS + [f"--array=0-{SHARDS - 1}"], env, cwd=work)
    victim = f"{job}_{VICTIM}"
    partial = os.path.join(out, f"in{VICTIM}.jsonl.partial")

    def victim_mid_shard():
        [task] = slurm.jobs(victim)
        assert task["JobState"] not in FINAL_STATES, (
            f"{victim} is {task['JobState']} before it was killed:\n"
            + read_text(os.path.join(work, f"ixt-annotate-{job}_{VICTIM}.out"))[-3000:])
        return 5 <= _lines(partial) < DOCS_PER_SHARD - 5

    slurm.wait(f"{victim} half-way through its shard", victim_mid_shard, JOB_TIMEOUT,
               lambda: read_text(os.path.join(work, f"ixt-annotate-{job}_{VICTIM}.out"))[-3000:])
    slurm.run(["scancel", "--signal=KILL", victim])
    states = {t["ArrayTaskId"]: t["JobState"] for t in slurm.wait_done(job, JOB_TIMEOUT)}
    assert states == {**{str(k): "COMPLETED" for k in range(SHARDS)}, str(VICTIM): "CANCELLED"}, states
    assert os.path.exists(partial) and not os.path.exists(os.path.join(out, f"in{VICTIM}.jsonl"))

    again = slurm.sbatch(SCRIPT, CPU_ARGS + [f"--array={VICTIM}"], dict(env, NUM_SHARDS=str(SHARDS)), cwd=work)
    [task] = slurm.wait_done(again, JOB_TIMEOUT)
    log = read_text(os.path.join(work, f"ixt-annotate-{again}_{VICTIM}.out"))
    assert task["JobState"] == "COMPLETED", f"{task}\n{log[-3000:]}"

    ids = collections.Counter()
    for k in range(SHARDS):
        assert not os.path.exists(os.path.join(out, f"in{k}.jsonl.partial"))
        for record in read_jsonl(os.path.join(out, f"in{k}.jsonl")):
            ids[record["id"]] += 1
            assert record["ixt"]["status"] == "ok", record
    assert set(ids) == {d["id"] for d in docs} and max(ids.values()) == 1
