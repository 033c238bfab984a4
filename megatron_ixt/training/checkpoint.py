"""Checkpoints with ``megatron.core.dist_checkpointing`` in Megatron-LM's directory layout.

Layout under ``--save DIR``::

    DIR/latest_checkpointed_iteration.txt   the last complete iteration, e.g. "200"
    DIR/iter_0000200/                       one dist_checkpointing checkpoint
    DIR/metrics.jsonl                       (written by the trainer)

A checkpoint holds the model (sharded, so it loads under any TP/PP layout), the optimizer,
the LR scheduler, per-rank RNG states, the iteration and the number of consumed samples.
The tracker file is written (atomically, by rank 0) only after every rank finished saving,
so a crash mid-save leaves the previous checkpoint as the latest one. With ``async_queue``
(``--async-save``) the tensors are written by a forked process while training goes on, and the
tracker moves in the request's finalization, which megatron-core runs only once the write is done
on every rank. Retention (``keep_last``) runs right after the tracker moved and deletes only
checkpoints older than the tracker's: never the tracker's own nor one still being written.

Loading a directory without a tracker file, an unreadable tracker, a missing iteration
directory or an unreadable checkpoint raises :class:`CheckpointError`: ``--load`` never
silently starts from scratch.
"""
from __future__ import annotations

import os
import random
import re
import shutil
import signal
from functools import partial

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, parallel_state, tensor_parallel
from megatron.core.dist_checkpointing.mapping import ShardedObject

from megatron_ixt.cli import EXIT_CHECKPOINT
from megatron_ixt.fileio import atomic_write
from megatron_ixt.mcore_private import async_save_request, start_checkpoint_writer_helper
from megatron_ixt.training.run_contract import TRACKER_FILE

CHECKPOINT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded; the message names the path."""

    exit_code = EXIT_CHECKPOINT  # megatron_ixt.cli's exit-status table


def iteration_dir(root: str, iteration: int) -> str:
    return os.path.join(root, f"iter_{iteration:07d}")


def read_latest_iteration(root: str) -> int:
    """The iteration in ``root``'s tracker file; CheckpointError if absent or malformed."""
    if not os.path.isdir(root):
        raise CheckpointError(f"--load {root}: directory does not exist")
    tracker = os.path.join(root, TRACKER_FILE)
    if not os.path.isfile(tracker):
        raise CheckpointError(f"--load {root}: no {TRACKER_FILE}; not a checkpoint directory "
                              f"(or no checkpoint was completed). Drop --load to start fresh.")
    with open(tracker, encoding="utf-8") as f:
        text = f.read().strip()
    try:
        iteration = int(text)
    except ValueError:
        raise CheckpointError(f"{tracker}: expected an iteration number, found {text[:80]!r}") from None
    if iteration < 0:
        raise CheckpointError(f"{tracker}: negative iteration {iteration}")
    if not os.path.isdir(iteration_dir(root, iteration)):
        raise CheckpointError(f"{tracker} names iteration {iteration} but "
                              f"{iteration_dir(root, iteration)} does not exist")
    return iteration


def checkpoint_path(root: str, iteration: int | None = None) -> str:
    """The directory of ``root``'s checkpoint of ``iteration`` (default: the latest); CheckpointError
    if it does not exist."""
    if iteration is None:
        return iteration_dir(root, read_latest_iteration(root))
    path = iteration_dir(root, iteration)
    if not os.path.isdir(path):
        raise CheckpointError(f"--load {root} --iteration {iteration}: {path} does not exist")
    return path


def _unwrap(model):
    """The module that owns ``sharded_state_dict`` (inside DDP)."""
    return model.module if hasattr(model, "module") else model


def _rng_object(replica_id: int) -> ShardedObject:
    """This rank's RNG states, keyed by its (pipeline, tensor) rank; replicated over DP."""
    state = {"random": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state(),
             "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
             "tracker": tensor_parallel.get_cuda_rng_tracker().get_states()}
    pp, tp = (parallel_state.get_pipeline_model_parallel_world_size(),
              parallel_state.get_tensor_model_parallel_world_size())
    pp_rank, tp_rank = (parallel_state.get_pipeline_model_parallel_rank(),
                        parallel_state.get_tensor_model_parallel_rank())
    return ShardedObject("rng_state", state, (pp, tp), (pp_rank, tp_rank), replica_id=replica_id)


def _set_rng(state: dict) -> None:
    random.setstate(state["random"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def _parallel_layout() -> dict:
    return {"tp": parallel_state.get_tensor_model_parallel_world_size(),
            "pp": parallel_state.get_pipeline_model_parallel_world_size()}


def save_checkpoint(root: str, iteration: int, model, optimizer, scheduler,
                    consumed_samples: int, config: dict, *, keep_last: int = 0, async_queue=None) -> str:
    """Save a checkpoint of ``iteration`` under ``root`` (collective: every rank calls it), then
    move the tracker and keep the newest ``keep_last`` checkpoints (0: all). With ``async_queue``
    (megatron-core's ``AsyncCallsQueue``) only the staging happens here: the write is scheduled on
    the queue and the tracker moves when the queue finalizes it."""
    start_checkpoint_writer_helper()
    path = iteration_dir(root, iteration)
    if dist.get_rank() == 0:
        os.makedirs(path, exist_ok=True)
    dist.barrier()
    model_sd = _unwrap(model).sharded_state_dict()
    state = {
        "model": model_sd,
        "optimizer": optimizer.sharded_state_dict(model_sd),
        "scheduler": scheduler.state_dict(),
        "rng_state": _rng_object(parallel_state.get_data_parallel_rank()),
        "iteration": iteration,
        "consumed_samples": consumed_samples,
        "parallel_layout": _parallel_layout(),
        "checkpoint_version": CHECKPOINT_VERSION,
        "config": config,
    }
    if async_queue is not None:
        request = async_save_request(state, path)
        request.add_finalize_fn(partial(_commit, root, iteration, keep_last))
        async_queue.schedule_async_request(request)
        return path
    dist_checkpointing.save(state, path)
    dist.barrier()
    _commit(root, iteration, keep_last)
    return path


def _commit(root: str, iteration: int, keep_last: int) -> None:
    """After every rank wrote ``iteration``: rank 0 moves the tracker to it, then deletes what
    ``keep_last`` does not keep (:func:`prune_checkpoints`). Collective."""
    if dist.get_rank() == 0:
        tracker = os.path.join(root, TRACKER_FILE)
        with atomic_write(tracker) as f:
            f.write(str(iteration))
        # a print, not a log record: tests/slurm, docs/slurm.md and users grep this line for a complete checkpoint
        print(f"saved checkpoint {iteration_dir(root, iteration)}", flush=True)  # noqa: T201
        if keep_last:
            prune_checkpoints(root, keep_last)
    dist.barrier()


def prune_checkpoints(root: str, keep_last: int) -> list:
    """Delete ``root``'s checkpoints older than the newest ``keep_last`` ones up to the tracker's
    iteration; returns the deleted iterations. Checkpoints newer than the tracker's (being written,
    or left incomplete by a crash and rewritten after the resume) are never touched."""
    latest = read_latest_iteration(root)
    older = sorted((int(m.group(1)) for m in map(re.compile(r"iter_(\d{7,})$").match, os.listdir(root))
                    if m and int(m.group(1)) < latest), reverse=True)
    deleted = older[keep_last - 1:]
    for iteration in deleted:
        shutil.rmtree(iteration_dir(root, iteration))
    return deleted


def read_config(root: str, iteration: int | None = None) -> dict:
    """The training config (``Config.to_dict()``) stored in ``root``'s checkpoint of ``iteration``
    (default: the latest)."""
    path = checkpoint_path(root, iteration)
    try:
        return dist_checkpointing.load_common_state_dict(path)["config"]
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read the stored config ({type(e).__name__}: {e})") from e


def load_checkpoint(root: str, model, optimizer, scheduler, *, load_optim: bool = True,
                    load_rng: bool = True, finetune: bool = False):
    """Load the latest checkpoint of ``root`` into model/optimizer/scheduler (collective).

    Returns ``(iteration, consumed_samples)``; ``(0, 0)`` with ``finetune`` (weights only).
    RNG states are restored only when the TP/PP layout matches the saved one.
    """
    iteration = read_latest_iteration(root)
    path = iteration_dir(root, iteration)
    try:
        common = dist_checkpointing.load_common_state_dict(path)
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read checkpoint metadata ({type(e).__name__}: {e})") from e
    version = common.get("checkpoint_version")
    if version != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint_version {version!r} unknown "
                              f"(this trainer reads {CHECKPOINT_VERSION})")
    load_optim = load_optim and not finetune
    load_rng = load_rng and not finetune and common.get("parallel_layout") == _parallel_layout()
    model_sd = _unwrap(model).sharded_state_dict()
    request = {"model": model_sd}
    if load_optim:
        request["optimizer"] = optimizer.sharded_state_dict(model_sd, is_loading=True)
    if load_rng:
        request["rng_state"] = _rng_object(parallel_state.get_data_parallel_rank())
    try:
        state = dist_checkpointing.load(request, path)
    except Exception as e:
        raise CheckpointError(f"{path}: cannot load checkpoint ({type(e).__name__}: {e})") from e
    _unwrap(model).load_state_dict(state["model"], strict=True)
    if finetune:
        return 0, 0
    if load_optim:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    if load_rng:
        _set_rng(state["rng_state"])
    return int(state["iteration"]), int(state["consumed_samples"])


def load_model_weights(model, path: str) -> None:
    """Load only the model weights of the checkpoint directory ``path`` (an ``iter_*`` dir) into
    ``model`` (collective; any saved TP/PP layout, resharded by dist_checkpointing). Raises
    CheckpointError naming ``path`` when they cannot be read or do not match the model."""
    try:
        state = dist_checkpointing.load({"model": model.sharded_state_dict()}, path)
        model.load_state_dict(state["model"], strict=True)
    except Exception as e:  # dist_checkpointing raises many types for an unreadable or mismatched checkpoint
        raise CheckpointError(f"{path}: cannot load model weights ({type(e).__name__}: {e})") from e


class ExitSignalHandler:
    """Records ``signum`` (default SIGTERM, Slurm's preemption signal) instead of dying.

    :meth:`received` is collective: it is true on every rank once any rank got the signal,
    so all ranks save the same checkpoint and exit together.

    Slurm (``--signal=TERM@300``, ``scancel --signal=TERM``, preemption) signals *every* process
    of the job step, not only the trainer. ``dist_checkpointing.save`` keeps a helper process for
    its writer (a ``multiprocessing`` Manager server, spawned at the first save and reused); with
    the default disposition that helper dies on the same signal, and the very save the signal asks
    for then fails with BrokenPipeError. So before installing the handler, this starts that helper
    with ``signum`` ignored, a disposition it keeps across ``exec``. (Its per-save workers are
    forked from the trainer and inherit this handler, which only sets a flag.)
    """

    def __init__(self, signum: int = signal.SIGTERM):
        previous = signal.signal(signum, signal.SIG_IGN)
        try:
            start_checkpoint_writer_helper()
        finally:
            signal.signal(signum, previous)
        self._got = False
        signal.signal(signum, self._handle)

    def _handle(self, signum, frame):
        self._got = True

    def received(self) -> bool:
        flag = torch.tensor([1 if self._got else 0], dtype=torch.int32)
        if dist.get_backend() == "nccl":
            flag = flag.cuda()
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())
