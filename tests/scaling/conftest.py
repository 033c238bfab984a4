"""Fixtures for the scaling tests; helpers (synthetic run directories) are in ``scaling_testlib.py``."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
