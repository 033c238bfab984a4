"""Fixtures for the scaling tests; helpers (synthetic run directories) are in ``scaling_testlib.py``
(importable everywhere: pytest.ini's pythonpath)."""
