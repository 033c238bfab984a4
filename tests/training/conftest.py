"""Fixtures for the training tests: a learnable synthetic shard set and a launcher.

Helpers (launcher, metrics readers) are in ``tests.helpers.training``, the corpus in
``tests.helpers.training_corpus``.
"""
from __future__ import annotations

import pytest

from tests.helpers.training_corpus import write_counting_shard_set


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory):
    """Text-store path of the synthetic IXT shard set (critique and quality prefixes, steering)."""
    return write_counting_shard_set(str(tmp_path_factory.mktemp("synth") / "synth"))
