"""Writing a file so that readers see the old version or the whole new one, never a part.

Every metadata, index, record and tracker file of megatron-ixt that other processes read while it
may be rewritten (index caches shared by a sweep's array tasks, ``P_ixt.json``, a run's
``run.json``, annotate's ``run_config.json`` and stats, the checkpoint tracker) goes through
:func:`atomic_write`. Imports neither torch nor megatron.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import IO


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w", *, fsync: bool = False) -> Iterator[IO]:
    """Open ``<path>.tmp<pid>`` for writing (``mode`` ``"w"``: UTF-8 text, ``"wb"``: bytes); on a clean
    exit flush it (and with ``fsync``, sync it to disk), then rename it onto ``path`` in one step. On
    an exception the temporary file is removed and ``path`` is left as it was."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
