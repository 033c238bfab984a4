"""Helpers shared by the Slurm tests (``from tests.helpers.slurm_jobs import ...``; fixtures live in
tests/slurm/conftest.py, the cluster itself in ``tests.helpers.slurm_cluster``).

``job_env(**vars)`` is the environment a test job is submitted with (sbatch exports it): this
Python and this repository first on PATH/PYTHONPATH, one thread per task, plus ``vars`` (the
scripts' documented variables). ``workdir(tmp_path_factory, name)`` is a fresh directory for one
test's jobs, under ``IXT_SLURM_WORKDIR`` when set (a directory every node of a real cluster sees).
"""
from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def job_env(**variables) -> dict:
    bindir = os.path.dirname(sys.executable)
    return {"PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
            "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **variables}


def workdir(tmp_path_factory, name: str) -> str:
    root = os.environ.get("IXT_SLURM_WORKDIR")
    if not root:
        return str(tmp_path_factory.mktemp(name))
    path = os.path.join(root, f"{os.getpid()}-{name}")
    os.makedirs(path)
    return path


def read_text(path: str) -> str:
    """The file's text, '' while it does not exist (a job log before the job started)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""
