"""Fixtures for the training tests: a learnable synthetic shard set and a launcher.

Helpers (launcher, metrics readers) are in ``train_testlib.py``.
"""
from __future__ import annotations

import pytest
from corpus import write_corpus


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory):
    """Text-store path of the synthetic IXT shard set (critique and quality prefixes, steering)."""
    return write_corpus(str(tmp_path_factory.mktemp("synth") / "synth"))
