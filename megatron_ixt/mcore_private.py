"""The one place where megatron-ixt touches megatron-core's private API.

Every use names the megatron-core versions it was read against (0.16.1; 0.17-0.19 by source) and
says what it is for, so an upgrade has one file to check.
"""
from __future__ import annotations


def start_checkpoint_writer_helper() -> None:
    """Start now the helper process that ``dist_checkpointing.save`` would start at its first save.

    megatron-core's ``torch_dist`` writer (``FileSystemWriterAsync``) collects results through a
    ``multiprocessing`` Manager queue that is spawned lazily by the first save and cached in the
    module (``filesystem_async._results_queue``) for every later save. Its getter is
    ``_get_write_results_queue()`` in 0.16 and ``get_write_results_queue(mp_mode="spawn")`` in later
    versions. A process spawned now inherits the caller's ignored signals (see
    :class:`megatron_ixt.training.checkpoint.ExitSignalHandler`).
    """
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    getter = getattr(filesystem_async, "get_write_results_queue", None) or \
        filesystem_async._get_write_results_queue
    getter()
