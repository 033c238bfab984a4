"""examples/slurm/pretrain_ixt.sbatch, unchanged, on a real Slurm: 2 tasks, gloo, TP=2, tiny model.

The GPU-sized #SBATCH lines are overridden on the sbatch command line (CPU_ARGS) and the model by
the script's MODEL_ARGS variable. What a user relies on: ``scancel --signal=TERM`` (what
``--signal=TERM@300`` and preemption do: every process of the step gets it) gives a checkpoint, exit
75 and the script's ``scontrol requeue``; the requeued job resumes and its losses equal an
uninterrupted run's; a job killed without warning resumes, when resubmitted, from the last complete
checkpoint; a diverging job (``--lr 1e4``) exits 65 and is not requeued.
"""
import os
import re

import pytest

from megatron_ixt.data.shards import text_store_path
from megatron_ixt.training.checkpoint import CheckpointError, read_latest_iteration
from tests.helpers.slurm_cluster import FINAL_STATES
from tests.helpers.slurm_jobs import REPO, job_env, read_text, workdir
from tests.helpers.training import train_losses

SCRIPT = os.path.join(REPO, "examples", "slurm", "pretrain_ixt.sbatch")
CPU_ARGS = ["--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1", "--time=00:30:00"]
# Long enough that the signal lands mid-run, with checkpoints every 3 (tiny_cpu.args). An iteration
# takes about 0.5 s on 2 cores, so the quarter-second polls of LocalSlurm.wait see every stage.
ITERS = 15
JOB_TIMEOUT = 420

pytestmark = pytest.mark.slow


def _submit(slurm, shards, work: str, extra: str = "") -> str:
    env = job_env(DATA=text_store_path(shards.prefix), TOKENIZER_MODEL=shards.tokenizer_model,
                  MODEL_ARGS=os.path.join(REPO, "tests", "slurm", "tiny_cpu.args"),
                  ARM_ARGS=os.path.join(REPO, "examples", "configs", "ixt.args"),
                  CKPT=os.path.join(work, "ckpt"), TP="2", EXTRA_ARGS=f"--train-iters {ITERS} {extra}")
    return slurm.sbatch(SCRIPT, CPU_ARGS, env, cwd=work)


def _log(work: str, job: str) -> str:
    return read_text(os.path.join(work, f"ixt-pretrain-{job}.out"))


def _last_iteration(work: str) -> int:
    try:
        return max(train_losses(os.path.join(work, "ckpt", "metrics.jsonl")), default=0)
    except (FileNotFoundError, ValueError):  # not written yet / a line being written
        return 0


def _tracker(work: str) -> int:
    try:
        return read_latest_iteration(os.path.join(work, "ckpt"))
    except CheckpointError:
        return 0


def _alive(slurm, job: str, work: str) -> bool:
    """True while ``job`` has not ended; fails the test if it did."""
    state = slurm.jobs(job)[0]["JobState"]
    assert state not in FINAL_STATES, f"job {job} is {state}:\n{_log(work, job)[-4000:]}"
    return True


def _kill_trainers(slurm, job: str) -> None:
    """SIGKILL the job's trainer processes, as a node failure or the OOM killer would: no signal the
    trainer can catch. (``scancel --signal=KILL`` is not that: Slurm ends the step with SIGTERM first,
    and the trainer checkpoints.) A step of the job itself does it, so it also works on a cluster that
    is not ours; the pattern matches the Python processes and not the ``srun`` lines that name them."""
    slurm.run(["srun", f"--jobid={job}", "--overlap", "--ntasks=1", "pkill", "-KILL", "-f",
               r"^[^ ]*python[^ ]* -m megatron_ixt\.pretrain "])


def _assert_completed(record: dict, log: str) -> None:
    assert record["JobState"] == "COMPLETED" and record["ExitCode"] == "0:0", f"{record}\n{log[-4000:]}"


def _assert_losses_match(work: str, reference: dict) -> None:
    got = train_losses(os.path.join(work, "ckpt", "metrics.jsonl"))
    assert sorted(got) == list(range(1, ITERS + 1))
    for it in range(1, ITERS + 1):
        assert got[it]["consumed_samples"] == reference[it]["consumed_samples"], it
        assert got[it]["loss"] == pytest.approx(reference[it]["loss"], rel=1e-5), it


@pytest.fixture(scope="module")
def reference(slurm, ixt_shard_set, tmp_path_factory):
    """Train records (iteration -> record) of the same job run uninterrupted."""
    work = workdir(tmp_path_factory, "pretrain_reference")
    job = _submit(slurm, ixt_shard_set, work)
    [record] = slurm.wait_done(job, JOB_TIMEOUT)
    log = _log(work, job)
    _assert_completed(record, log)
    assert "requeueing" not in log and record["Restarts"] == "0"
    return train_losses(os.path.join(work, "ckpt", "metrics.jsonl"))


def test_scancel_term_checkpoints_exits_75_requeues_and_resumes_exactly(slurm, ixt_shard_set, reference,
                                                                         tmp_path_factory):
    work = workdir(tmp_path_factory, "pretrain_preempt")
    job = _submit(slurm, ixt_shard_set, work)
    # Past the first periodic save: the checkpoint writer's helper processes exist in the step.
    slurm.wait("iteration 4", lambda: _alive(slurm, job, work) and _last_iteration(work) >= 4, JOB_TIMEOUT,
               lambda: _log(work, job)[-2000:])
    slurm.run(["scancel", "--signal=TERM", job])
    slurm.wait("the requeue", lambda: _alive(slurm, job, work) and slurm.jobs(job)[0]["Restarts"] != "0",
               JOB_TIMEOUT, lambda: _log(work, job)[-4000:])
    first = _log(work, job)
    stops = re.findall(r"exiting at iteration (\d+): received SIGTERM", first)
    assert len(stops) == 1 and f"requeueing job {job}" in first, first[-4000:]
    stopped = int(stops[0])
    assert 3 < stopped < ITERS
    assert f"saved checkpoint {os.path.join(work, 'ckpt', f'iter_{stopped:07d}')}" in first
    slurm.release_requeued(job, JOB_TIMEOUT)
    [record] = slurm.wait_done(job, JOB_TIMEOUT)
    log = _log(work, job)
    _assert_completed(record, log)
    assert record["Restarts"] == "1"
    assert f"loaded {os.path.join(work, 'ckpt')} at iteration {stopped}" in log, log[-4000:]
    _assert_losses_match(work, reference)


def test_scancel_kill_then_resubmit_resumes_from_the_last_complete_checkpoint(slurm, ixt_shard_set, reference,
                                                                              tmp_path_factory):
    work = workdir(tmp_path_factory, "pretrain_kill")
    job = _submit(slurm, ixt_shard_set, work)
    # Killed past a checkpoint: the iterations after it are lost and must be redone on resubmission.
    slurm.wait("a checkpoint and one more iteration", lambda: _alive(slurm, job, work) and _tracker(work) >= 3
               and _last_iteration(work) > _tracker(work), JOB_TIMEOUT, lambda: _log(work, job)[-2000:])
    _kill_trainers(slurm, job)
    [record] = slurm.wait_done(job, JOB_TIMEOUT)
    first = _log(work, job)
    assert record["JobState"] == "FAILED" and record["Restarts"] == "0", f"{record}\n{first[-4000:]}"
    assert "received SIG" not in first and "exiting at iteration" not in first, first[-4000:]  # no warning
    last = _tracker(work)
    assert 3 <= last < ITERS
    again = _submit(slurm, ixt_shard_set, work)
    [record] = slurm.wait_done(again, JOB_TIMEOUT)
    log = _log(work, again)
    _assert_completed(record, log)
    assert f"loaded {os.path.join(work, 'ckpt')} at iteration {last}" in log, log[-4000:]
    _assert_losses_match(work, reference)


@pytest.mark.parametrize("trainer, module, model_args, ckpt", [
    ("ixt", "megatron_ixt.pretrain", "examples/configs/llama_1b.args", "checkpoints/ixt"),
    ("megatron-lm", "megatron_ixt.megatron_lm", "examples/configs/llama_1b_megatron_lm.args",
     "checkpoints/megatron-lm-ixt"),
])
def test_trainer_selects_the_command(slurm, tmp_path_factory, trainer, module, model_args, ckpt):
    """TRAINER picks the entry point, its default model flags and checkpoint directory (DRY_RUN=1
    prints the srun command instead of running it: Megatron-LM's loop cannot train without CUDA)."""
    work = workdir(tmp_path_factory, f"pretrain_dry_{trainer}")
    job = slurm.sbatch(SCRIPT, CPU_ARGS, job_env(DATA="d_text_document", TOKENIZER_MODEL="tok.model",
                                                 TRAINER=trainer, DRY_RUN="1"), cwd=work)
    [record] = slurm.wait_done(job, JOB_TIMEOUT)
    log = _log(work, job)
    _assert_completed(record, log)
    assert f"dry run: srun --kill-on-bad-exit=1 --cpu-bind=none python -m {module} @{model_args} " \
           f"@examples/configs/ixt.args " in log, log
    assert f"--save {ckpt} " in log and "--data-path d_text_document " in log, log


def test_unknown_trainer_is_refused(slurm, tmp_path_factory):
    work = workdir(tmp_path_factory, "pretrain_dry_bogus")
    job = slurm.sbatch(SCRIPT, CPU_ARGS, job_env(DATA="d_text_document", TOKENIZER_MODEL="tok.model",
                                                 TRAINER="bogus", DRY_RUN="1"), cwd=work)
    [record] = slurm.wait_done(job, JOB_TIMEOUT)
    assert record["ExitCode"] == "2:0" and "TRAINER=bogus: use ixt or megatron-lm" in _log(work, job)


def test_a_diverging_job_exits_65_and_is_not_requeued(slurm, ixt_shard_set, tmp_path_factory):
    work = workdir(tmp_path_factory, "pretrain_diverge")
    job = _submit(slurm, ixt_shard_set, work, extra="--lr 1e4")
    [record] = slurm.wait_done(job, JOB_TIMEOUT)
    log = _log(work, job)
    assert (record["JobState"], record["ExitCode"], record["Restarts"]) == ("FAILED", "65:0", "0"), \
        f"{record}\n{log[-4000:]}"
    stop = re.search(r"iteration (\d+): non-finite (loss|gradient norm) .*; stopping \(exit 65\)", log)
    assert stop and f"not requeueing job {job}" in log and "requeueing job" not in log.replace("not requeueing", ""), \
        log[-4000:]
    assert _tracker(work) < int(stop.group(1))  # nothing saved from the non-finite iteration on
