"""Fixtures for the export / fast-generation / lm-eval tests; helpers live in ``tests.helpers.export``."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def dist():
    """megatron-core's parallel state in this process (a gloo world of one, TP = PP = 1; it sets no
    rendezvous variables, so the subprocesses of later tests start as worlds of their own)."""
    from megatron_ixt.distributed import init_distributed

    init_distributed(backend="gloo")
