"""Process-group setup and seeding, shared by every entry point that builds a model.

``init_distributed`` uses torchrun's / Slurm's ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``; without them the process is a world of one over an
in-process store (no port: concurrent single-process runs on one host cannot collide). A rank of a
launched world dies with its launcher (:func:`exit_with_parent`), and every collective times out
after ``timeout_minutes``. ``set_seed`` is Megatron-LM's seeding.
"""
from __future__ import annotations

import ctypes
import datetime as dt
import os
import random
import signal
import socket
import sys

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import parallel_state, tensor_parallel

from megatron_ixt import compat


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for MASTER_PORT, test servers)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def exit_with_parent() -> None:
    """Have the kernel SIGKILL this process when its parent (the torchrun agent, or slurmstepd /
    whatever started the rank) dies, so a rank never outlives its launcher blocked in a collective
    and holding its sockets and device. Linux only (a no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() == 1:  # the launcher died before the request took effect
        os.kill(os.getpid(), signal.SIGKILL)


def init_distributed(tensor_model_parallel_size: int = 1, pipeline_model_parallel_size: int = 1,
                     backend: str = "gloo", timeout_minutes: int = 10) -> None:
    """Process group (torchrun env, or a world of one) and megatron-core's parallel state, every
    collective bounded by ``timeout_minutes``. A rank of a launched world exits with its parent
    (:func:`exit_with_parent`); a world of one does not (``nohup`` / ``setsid`` keep working)."""
    compat.install()
    # no RANK: a world of one, and os.environ is left alone (processes this one starts, e.g. a
    # sweep's trainers, must not take themselves for ranks of a torchrun world)
    world_of_one = "RANK" not in os.environ
    timeout = dt.timedelta(minutes=timeout_minutes)
    if not world_of_one:
        exit_with_parent()
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        if world_of_one:
            # a free port picked here could be taken again before the TCP store listens (two
            # sweep runs started together on one node failed so); one process needs no socket
            dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1,
                                    timeout=timeout)
        else:
            dist.init_process_group(backend=backend, timeout=timeout)
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=tensor_model_parallel_size,
            pipeline_model_parallel_size=pipeline_model_parallel_size,
            distributed_timeout_minutes=timeout_minutes)


def set_seed(seed: int) -> None:
    """Megatron-LM's seeding: offset per pipeline stage, model-parallel RNG tracker."""
    seed = seed + 100 * parallel_state.get_pipeline_model_parallel_rank()
    tensor_parallel.model_parallel_cuda_manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
