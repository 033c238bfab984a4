"""Checkpoints: resume reproduces the uninterrupted run, SIGTERM saves, bad --load fails loudly."""
import os
import signal
import subprocess
import sys
import time

import pytest

from megatron_ixt.distributed import free_port
from megatron_ixt.training.checkpoint import CheckpointError, iteration_dir, prune_checkpoints, read_latest_iteration
from tests.helpers.training import read_records, run_pretrain, tiny_model_args, train_losses


@pytest.mark.slow
def test_resume_reproduces_uninterrupted_losses(synth_data, tmp_path):
    # Dropout on, DP=2: the resumed run must restore RNG, optimizer, scheduler and data position.
    args = tiny_model_args(synth_data, str(tmp_path / "cache")) + [
        "--train-iters", "6", "--hidden-dropout", "0.1", "--eval-iters", "0"]
    full, part = str(tmp_path / "full"), str(tmp_path / "part")
    run_pretrain(args + ["--save", full], nproc=2)
    run_pretrain(args + ["--save", part, "--exit-interval", "3"], nproc=2)
    assert read_latest_iteration(part) == 3
    run_pretrain(args + ["--save", part, "--load", part], nproc=2)
    expected, got = train_losses(os.path.join(full, "metrics.jsonl")), train_losses(os.path.join(part, "metrics.jsonl"))
    assert sorted(got) == list(range(1, 7))
    for it in range(4, 7):
        assert got[it]["consumed_samples"] == expected[it]["consumed_samples"]
        assert got[it]["loss"] == pytest.approx(expected[it]["loss"], rel=1e-5), it
        assert got[it]["lr"] == pytest.approx(expected[it]["lr"], rel=1e-9), it
    assert len(read_records(os.path.join(part, "metrics.jsonl"), "header")) == 2


@pytest.mark.slow
def test_sigterm_to_every_process_of_the_step_saves_a_loadable_checkpoint(synth_data, tmp_path):
    # Like a Slurm job step under `scancel --signal=TERM` or `--signal=TERM@300`: two ranks started
    # directly (RANK/WORLD_SIZE, as srun does) in one process group, and SIGTERM goes to the whole
    # group, i.e. also to the helper processes the periodic save at iteration 2 left behind.
    save = str(tmp_path / "ckpt")
    args = tiny_model_args(synth_data, str(tmp_path / "cache")) + [
        "--eval-iters", "0", "--save", save, "--save-interval", "2", "--train-iters", "10000",
        "--exit-signal-handler"]
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", WORLD_SIZE="2",
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    ranks = []
    for rank in range(2):
        ranks.append(subprocess.Popen(
            [sys.executable, "-m", "megatron_ixt.pretrain", *args], env=dict(env, RANK=str(rank), LOCAL_RANK=str(rank)),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            process_group=ranks[0].pid if ranks else 0))
    group = ranks[0].pid
    metrics = os.path.join(save, "metrics.jsonl")
    try:
        deadline = time.time() + 180
        while time.time() < deadline and not (os.path.exists(metrics) and len(train_losses(metrics)) >= 3):
            assert all(p.poll() is None for p in ranks), ranks[0].communicate()[0][-3000:]
            time.sleep(0.5)
        table = subprocess.run(["ps", "-e", "-o", "pid=,pgid=,cmd="], capture_output=True, text=True).stdout
        helpers = [line for line in table.splitlines() if int(line.split()[1]) == group
                   and int(line.split()[0]) not in {p.pid for p in ranks}]
        assert helpers, f"no helper process in the group: the test would not cover them\n{table}"
        os.killpg(group, signal.SIGTERM)
        outs = [p.communicate(timeout=180)[0] for p in ranks]
    finally:
        for p in ranks:
            if p.poll() is None:
                p.kill()
    for p, out in zip(ranks, outs):
        assert p.returncode == 75, out[-3000:]  # stopped early, resumable
    assert "received SIGTERM" in outs[0]
    stopped = read_latest_iteration(save)
    assert stopped >= 3 and stopped == max(train_losses(metrics))
    run_pretrain(args[:-3] + ["--load", save, "--train-iters", str(stopped + 1)])
    assert max(train_losses(metrics)) == stopped + 1


def test_latest_iteration_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_latest_iteration(str(tmp_path / "nope"))
    with pytest.raises(CheckpointError, match="latest_checkpointed_iteration.txt"):
        read_latest_iteration(str(tmp_path))
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("release\n")
    with pytest.raises(CheckpointError, match="expected an iteration number"):
        read_latest_iteration(str(tmp_path))
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("7\n")
    with pytest.raises(CheckpointError, match="iter_0000007 does not exist"):
        read_latest_iteration(str(tmp_path))
    (tmp_path / "iter_0000007").mkdir()
    assert read_latest_iteration(str(tmp_path)) == 7


def test_load_of_missing_or_corrupt_checkpoint_is_an_error(synth_data, tmp_path):
    args = tiny_model_args(synth_data, str(tmp_path / "cache")) + ["--train-iters", "3", "--eval-iters", "0"]
    proc = run_pretrain(args + ["--load", str(tmp_path / "missing")], check=False)
    assert proc.returncode == 3 and "missing: directory does not exist" in proc.stderr
    corrupt = tmp_path / "corrupt"
    (corrupt / "iter_0000005").mkdir(parents=True)
    (corrupt / "iter_0000005" / "metadata.json").write_text("{not json")
    (corrupt / "latest_checkpointed_iteration.txt").write_text("5")
    proc = run_pretrain(args + ["--load", str(corrupt)], check=False)
    assert proc.returncode == 3 and "iter_0000005: cannot" in proc.stderr, proc.stderr[-2000:]
    assert not (corrupt / "metrics.jsonl").exists()


@pytest.mark.slow
def test_prefix_cooldown_switches_at_its_iteration_and_resumes_exactly(synth_data, tmp_path):
    # 6 iterations, the last round(0.5 * 6) = 3 without prefixes; the interrupted run stops before
    # the switch (iteration 2) and inside the cooldown (iteration 4)
    args = tiny_model_args(synth_data, str(tmp_path / "cache")) + [
        "--train-iters", "6", "--ixt-prefix-cooldown-fraction", "0.5", "--eval-interval", "2", "--eval-iters", "1"]
    full, part = str(tmp_path / "full"), str(tmp_path / "part")
    run_pretrain(args + ["--save", full])
    run_pretrain(args + ["--save", part, "--exit-interval", "2"])
    run_pretrain(args + ["--save", part, "--load", part, "--exit-interval", "4"])
    assert read_latest_iteration(part) == 4
    run_pretrain(args + ["--save", part, "--load", part])
    expected, got = train_losses(os.path.join(full, "metrics.jsonl")), train_losses(os.path.join(part, "metrics.jsonl"))
    assert sorted(got) == list(range(1, 7))
    for it in range(1, 7):
        assert got[it]["loss"] == pytest.approx(expected[it]["loss"], rel=1e-5), it
        assert got[it]["lr"] == pytest.approx(expected[it]["lr"], rel=1e-9), it
        assert (expected[it]["prefix_loss"] is None) == (it > 3), it  # prefix tokens only before the switch
    for path in (full, part):
        evals = read_records(os.path.join(path, "metrics.jsonl"), "eval")
        assert sorted({r["iteration"] for r in evals}) == [2, 4, 6]
        for record in evals:  # every conditioning is evaluated on both sides of the switch
            assert {"prefix/doc_loss", "none/doc_loss", "steering/doc_loss"} <= set(record), record


def test_retention_keeps_the_newest_up_to_the_tracker_and_never_newer_ones(tmp_path):
    for it in (2, 4, 6, 8, 12345678):
        os.makedirs(iteration_dir(str(tmp_path), it))
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("6")  # 8 and 12345678: being written / stale
    assert prune_checkpoints(str(tmp_path), 2) == [2]
    assert prune_checkpoints(str(tmp_path), 1) == [4]
    assert sorted(os.listdir(tmp_path)) == ["iter_0000006", "iter_0000008", "iter_12345678",
                                            "latest_checkpointed_iteration.txt"]
