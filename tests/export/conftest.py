"""Fixtures for the export / fast-generation / lm-eval tests; helpers live in ``export_testlib.py``."""
from __future__ import annotations

import os

import pytest

_RENDEZVOUS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(scope="session")
def dist():
    """megatron-core's parallel state in this process (a gloo world of one, TP = PP = 1).

    The rendezvous variables init_distributed sets are removed again afterwards, so that the
    subprocesses of later tests (torchrun, the trainer) do not take themselves for ranks of a torchrun world.
    """
    from megatron_ixt.distributed import init_distributed

    before = {name: os.environ.get(name) for name in _RENDEZVOUS}
    init_distributed(backend="gloo")
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
