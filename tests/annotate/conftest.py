"""Fixtures for the annotate tests: the SGLang stand-in server and synthetic corpora.

The CPU judge of these tests is the demo's ``verifier`` (examples/demo/ixt_demo, a plugin outside the
package): importing it here registers ``--backend verifier`` in this process."""
from __future__ import annotations

import ixt_demo.verifier  # noqa: F401  (registers --backend verifier)
import pytest
from ixt_demo.synthetic import SynthConfig, generate

from tests.helpers.sglang_standin import StandinConfig, StandinServer


@pytest.fixture
def standin():
    """Factory: ``standin(**StandinConfig fields)`` -> a started StandinServer (stopped after the test)."""
    servers = []

    def make(port: int = 0, **kwargs) -> StandinServer:
        server = StandinServer(StandinConfig(**kwargs), port=port)
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def arith_docs():
    """Factory: ``arith_docs(n, **SynthConfig fields)`` -> list of synthetic records."""

    def make(n: int, **kwargs) -> list[dict]:
        return list(generate(SynthConfig(num_docs=n, **kwargs)))

    return make
