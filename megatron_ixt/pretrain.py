"""Pretrain a GPT model with Introspective Training: ``python -m megatron_ixt.pretrain [flags]``.

Launch one process per GPU with ``torchrun`` (``--nproc-per-node N``) or one Slurm task per GPU
(``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT`` set); on a machine without
CUDA the same command runs on CPU with gloo. Flags: ``--help`` and docs/training.md.

Exit status: 0 finished (or stopped at ``--exit-interval``); 75 stopped early by SIGTERM
(``--exit-signal-handler``) or ``--exit-duration-in-mins`` after saving a checkpoint, so a
requeued job resumes with ``--load`` (``StopReason.exit_code``); 65 stopped by a NaN/Inf loss or
gradient norm (``--check-for-nan-in-loss-and-grad``; no checkpoint after the last finite iteration,
not to be requeued as is); 2 bad flags; 3 unusable ``--load`` checkpoint (the table of every
command: ``megatron_ixt.cli``). ``--import MODULE`` imports a module registering prefix kinds before
the flags are read.
"""
from __future__ import annotations

import os
import signal
import sys

import torch

from megatron_ixt.cli import EXIT_NONFINITE, EXIT_RESUMABLE, EXIT_USAGE, entry_point, failing_with
from megatron_ixt.training.config import ConfigError, build_parser, check_data_paths, parse_args

__all__ = ["build_parser", "main"]


@entry_point(plugins=True)
def main(argv: list[str] | None = None) -> int:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    with failing_with(EXIT_USAGE, ConfigError, ValueError):
        cfg = parse_args(argv, world_size=world_size, cuda=torch.cuda.is_available())
        check_data_paths(cfg)
    from megatron_ixt.training.trainer import Trainer

    try:
        code = Trainer(cfg).train().exit_code
        if code in (EXIT_RESUMABLE, EXIT_NONFINITE):
            # Every rank has stopped together; what is left is exiting. `srun --kill-on-bad-exit`
            # SIGTERMs the other ranks as soon as the first one exits: they must exit alike, not 143.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return code
    finally:
        _shutdown()


def _shutdown() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
