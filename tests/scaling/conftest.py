"""Fixtures for the scaling tests; helpers (synthetic run directories) are in ``tests.helpers.scaling``."""
