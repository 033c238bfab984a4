"""Long-run guards: the NaN/Inf stop (exit 65), --skip-nonfinite-iters, ranks that exit with their
launcher, the process-group timeout on a hung peer, checkpoint retention."""
import glob
import os
import re
import signal
import subprocess
import time

import pytest
import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from megatron_ixt.cli import EXIT_NONFINITE
from megatron_ixt.training.checkpoint import iteration_dir, read_latest_iteration
from tests.helpers.training import pretrain_command, run_pretrain, tiny_model_args, train_losses


def checkpoint_tensors(path: str, scratch: str) -> dict:
    """Every tensor of the dist_checkpointing checkpoint ``path`` (model and optimizer), by name."""
    dcp_to_torch_save(path, scratch)
    tensors = {}

    def walk(obj, name):
        if isinstance(obj, torch.Tensor):
            tensors[name] = obj
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(v, f"{name}/{k}")
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                walk(v, f"{name}/{i}")

    walk(torch.load(scratch, weights_only=False), "")
    return tensors


def test_diverging_run_stops_with_exit_65_and_no_nonfinite_checkpoint(synth_data, tmp_path):
    save = str(tmp_path / "ckpt")
    metrics = os.path.join(save, "metrics.jsonl")
    args = tiny_model_args(synth_data, str(tmp_path / "cache")) + [
        "--train-iters", "30", "--eval-iters", "0", "--save", save, "--save-interval", "2", "--lr", "1e4"]
    proc = run_pretrain(args, check=False)
    assert proc.returncode == EXIT_NONFINITE == 65, proc.stdout[-3000:] + proc.stderr[-3000:]
    stop = re.search(r"iteration (\d+): non-finite (loss|gradient norm) \((nan|inf|-inf)\); rank\(s\) with a "
                     r"non-finite value in their [a-z -]+: 0; stopping \(exit 65\)", proc.stdout)
    assert stop, proc.stdout[-3000:]
    bad = int(stop.group(1))
    latest = read_latest_iteration(save)
    assert latest == (bad - 1) // 2 * 2  # the last periodic save before the bad iteration
    assert sorted(d for d in os.listdir(save) if d.startswith("iter_")) == \
        [os.path.basename(iteration_dir(save, i)) for i in range(2, latest + 1, 2)]
    records = train_losses(metrics)
    assert sorted(records) == list(range(1, bad))
    tensors = checkpoint_tensors(iteration_dir(save, latest), str(tmp_path / "latest.pt"))
    assert any("word_embeddings" in name for name in tensors) and any("exp_avg" in name for name in tensors)
    assert [n for n, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()] == []

    # The latest checkpoint loads; its next iteration diverges again (same data, same weights) and is
    # skipped with no update (the LR schedule stands still), as is the one after; the third stops.
    proc = run_pretrain(args + ["--load", save, "--skip-nonfinite-iters", "2"], check=False)
    assert proc.returncode == 65, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"loaded {save} at iteration {latest}" in proc.stdout
    skipped = re.findall(r"iteration (\d+): non-finite [^;]+; [^;]+; skipped, no update "
                         r"\((\d) of --skip-nonfinite-iters 2\)", proc.stdout)
    assert skipped == [(str(latest + 1), "1"), (str(latest + 2), "2")], proc.stdout[-3000:]
    assert f"iteration {latest + 3}: non-finite" in proc.stdout and "used up" in proc.stdout
    resumed = train_losses(metrics)
    for it in (latest + 1, latest + 2):
        assert resumed[it]["skipped_iters"] == 1 and resumed[it]["loss"] is None
        assert resumed[it]["lr"] == records[latest]["lr"]
        assert resumed[it]["consumed_samples"] == it * 8
    # a skipped iteration saves the unchanged, finite weights like any other; the stop saves nothing
    assert read_latest_iteration(save) == (latest + 2) // 2 * 2


def test_a_nonfinite_loss_stops_every_rank_before_any_update(synth_data, tmp_path):
    """The loss branch of the check (the --lr 1e4 run above trips the gradient norm first): weights
    initialised at std 1e38 overflow the forward pass, so iteration 1's loss is NaN on both
    data-parallel ranks; both stop with exit 65, naming the loss and both ranks, and nothing is saved."""
    save = str(tmp_path / "ckpt")
    args = tiny_model_args(synth_data, str(tmp_path / "cache")) + [
        "--train-iters", "5", "--eval-iters", "0", "--save", save, "--save-interval", "1",
        "--init-method-std", "1e38"]
    proc = run_pretrain(args, nproc=2, check=False)
    # torchrun exits 1 when a worker fails; its report gives each worker's own status
    assert proc.returncode != 0 and re.findall(r"rank +: (\d) \(local_rank: \d\)\n +exitcode +: 65 ", proc.stderr) \
        in (["0", "1"], ["1", "0"]), proc.stdout[-3000:] + proc.stderr[-3000:]
    assert re.search(r"iteration 1: non-finite loss \((nan|inf|-inf)\); rank\(s\) with a non-finite value in their "
                     r"own micro-batches: 0, 1; stopping \(exit 65\)", proc.stdout), proc.stdout[-3000:]
    assert not os.path.exists(os.path.join(save, "latest_checkpointed_iteration.txt"))
    assert glob.glob(os.path.join(save, "iter_*")) == []


def _descendants(pid: int) -> list:
    """Process ids below ``pid`` in the process tree (from /proc)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _launch_two_ranks(args: list, save: str, **popen) -> subprocess.Popen:
    """torchrun with 2 trainer ranks on ``args``, returned once ``save`` holds a checkpoint and 3
    iterations are logged."""
    cmd, env = pretrain_command(args, nproc=2)
    launcher = subprocess.Popen(cmd, env=env, **popen)
    metrics = os.path.join(save, "metrics.jsonl")
    deadline = time.time() + 240
    while not (os.path.exists(metrics) and len(train_losses(metrics)) >= 3 and os.path.exists(
            os.path.join(save, "latest_checkpointed_iteration.txt"))):
        if time.time() > deadline or launcher.poll() is not None:
            launcher.kill()
            raise AssertionError(f"no checkpoint and 3 iterations in 240 s (launcher exit {launcher.poll()})")
        time.sleep(0.5)
    return launcher


def _rank_pid(tree: list, rank: int) -> int:
    """The trainer process of ``rank`` among ``tree`` (torchrun sets RANK in its environment)."""
    for pid in tree:
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v)
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if env.get(b"RANK") == str(rank).encode() and b"megatron_ixt.pretrain" in cmdline:
            return pid
    raise AssertionError(f"no rank {rank} among {tree}")


def _kill_all(pids: list) -> None:
    for p in pids:
        if _running(p):
            os.kill(p, signal.SIGKILL)


def _long_run_args(synth_data, tmp_path) -> list:
    return tiny_model_args(synth_data, str(tmp_path / "cache")) + [
        "--train-iters", "100000", "--eval-iters", "0", "--save", str(tmp_path / "ckpt"), "--save-interval", "2"]


@pytest.mark.slow
def test_workers_exit_when_torchrun_is_killed(synth_data, tmp_path):
    launcher = _launch_two_ranks(_long_run_args(synth_data, tmp_path), str(tmp_path / "ckpt"),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tree = _descendants(launcher.pid)
    try:
        assert len(tree) >= 2, tree  # the two trainer ranks (and the checkpoint writer's helpers)
        launcher.kill()
        launcher.wait()
        deadline = time.time() + 10
        while time.time() < deadline and any(_running(p) for p in tree):
            time.sleep(0.2)
        assert [p for p in tree if _running(p)] == []
    finally:
        _kill_all(tree)


@pytest.mark.slow
def test_a_hung_peer_ends_the_run_after_distributed_timeout_minutes(synth_data, tmp_path):
    """Rank 1 stopped (SIGSTOP: alive, holding its sockets, answering nothing): rank 0 fails its next
    collective after --distributed-timeout-minutes with the process group's timeout error and exits,
    instead of waiting forever. (torchrun then ends the run; its own teardown of the stopped rank
    takes another 30 s, so the test ends it itself.)"""
    log = tmp_path / "torchrun.log"  # a file, not a pipe: nobody reads while rank 0 waits
    with open(log, "w") as out:
        launcher = _launch_two_ranks(_long_run_args(synth_data, tmp_path) + ["--distributed-timeout-minutes", "1"],
                                     str(tmp_path / "ckpt"), stdout=out, stderr=subprocess.STDOUT)
    tree = _descendants(launcher.pid)
    try:
        rank0, rank1 = _rank_pid(tree, 0), _rank_pid(tree, 1)
        os.kill(rank1, signal.SIGSTOP)
        stopped = time.time()
        while _running(rank0) and time.time() - stopped < 180:
            time.sleep(0.5)
        waited = time.time() - stopped
        assert 55 < waited < 150, waited  # the 1-minute timeout, not a hang and not an earlier failure
        out = log.read_text()
        assert re.search(r"[Tt]imed out|[Tt]imeout", out), out[-3000:]
    finally:
        launcher.kill()
        _kill_all(tree)


def _iter_dirs(save: str) -> list:
    return sorted(int(d[5:]) for d in os.listdir(save) if d.startswith("iter_")) if os.path.isdir(save) else []


def _tracker(save: str):
    try:
        with open(os.path.join(save, "latest_checkpointed_iteration.txt")) as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


# When to kill -9 a run during an async save of iteration `newest` (not yet in the tracker):
MOMENTS = {
    "save started": lambda save, newest, metrics: True,  # its directory exists
    "writer wrote data": lambda save, newest, metrics: any(
        f.endswith(".distcp") for f in os.listdir(iteration_dir(save, newest))),
    "training went on": lambda save, newest, metrics: max(train_losses(metrics), default=0) > newest,
}


def _kill_during_async_save(args: list, save: str, moment: str) -> int:
    """Start ``args`` in its own process group and ``kill -9`` the group (trainer, forked writer,
    helper) at ``moment`` of an async save that follows a complete one; returns the tracker's
    iteration at the kill."""
    cmd, env = pretrain_command(args)
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    metrics = os.path.join(save, "metrics.jsonl")
    try:
        while proc.poll() is None:
            tracker, dirs = _tracker(save), _iter_dirs(save)
            try:
                if tracker is not None and dirs[-1] > tracker and MOMENTS[moment](save, dirs[-1], metrics):
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    return tracker
            except OSError:  # a directory deleted by retention while we looked
                pass
            time.sleep(0.01)
        raise AssertionError(f"the run ended before the moment {moment!r} of an async save was seen:\n"
                             f"{proc.stdout.read()[-3000:]}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.slow
@pytest.mark.timeout(1800)  # five launches; on a loaded 2-core machine each takes one to four minutes
def test_async_save_matches_sync_and_kill_9_during_it_resumes_exactly(synth_data, tmp_path):
    # A sync reference, then one async run killed (-9, the whole process group) at three moments of
    # async saves, each time resumed: every iteration's loss equals the sync run's (the iterations
    # before the first kill are uninterrupted async training), retention never loses the tracker's.
    iters = 14
    args = tiny_model_args(synth_data, str(tmp_path / "cache")) + [
        "--train-iters", str(iters), "--eval-iters", "0", "--save-interval", "2", "--hidden-dropout", "0.1"]
    keep = ["--async-save", "--ckpt-keep-last", "2"]
    sync, crashed = str(tmp_path / "sync"), str(tmp_path / "crashed")
    run_pretrain(args + ["--save", sync], timeout=600)
    expected = train_losses(os.path.join(sync, "metrics.jsonl"))
    assert _iter_dirs(sync) == list(range(2, iters + 1, 2))

    resumed_from = []
    for moment in MOMENTS:
        tracker = _kill_during_async_save(args + ["--save", crashed, *keep] +
                                          (["--load", crashed] if resumed_from else []), crashed, moment)
        assert tracker >= max(resumed_from, default=2), (moment, tracker, resumed_from)
        # retention kept the tracker's checkpoint and at most one older one; newer: the killed save
        assert tracker in _iter_dirs(crashed) and len([i for i in _iter_dirs(crashed) if i <= tracker]) <= 2
        resumed_from.append(tracker)
    proc = run_pretrain(args + ["--save", crashed, "--load", crashed, *keep], timeout=600)
    assert f"loaded {crashed} at iteration {resumed_from[-1]}" in proc.stdout
    final = train_losses(os.path.join(crashed, "metrics.jsonl"))
    assert [final[i]["loss"] for i in range(1, iters + 1)] == [expected[i]["loss"] for i in range(1, iters + 1)]
    assert _iter_dirs(crashed) == [iters - 2, iters] and _tracker(crashed) == iters
