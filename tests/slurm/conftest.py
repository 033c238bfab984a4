"""Fixtures for the Slurm tests: a real Slurm cluster and the environment of test jobs.

By default the session starts its own one-node cluster (:class:`tests.helpers.slurm_cluster.LocalSlurm`: munged,
slurmctld, slurmd as root; packages from ``install_slurm.sh``) and stops it at the end. With
``IXT_SLURM=existing`` the tests submit to the cluster the Slurm commands already reach instead
(docs/slurm.md): ``IXT_SLURM_PARTITION``, ``IXT_SLURM_ACCOUNT`` and ``IXT_SBATCH_ARGS`` place the jobs,
``IXT_SLURM_WORKDIR`` is a directory every node sees (default: pytest's tmp dir).

Fixtures
    slurm      the Cluster [session]; skipped, with a warning, where this machine cannot run one

Helpers (job environment, work directories) are in ``tests.helpers.slurm_jobs``. One test module per
script: test_pretrain_sbatch.py, test_annotate_sbatch.py, test_preprocess_sbatch.py, and the sweep
executor's (``launch --executor slurm``, submitit): test_sweep_executor.py.
"""
from __future__ import annotations

import os
import shlex
import warnings

import pytest

from tests.helpers.slurm_cluster import Cluster, LocalSlurm, unavailable_reason


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    if os.environ.get("IXT_SLURM") == "existing":
        args = [f"--partition={os.environ['IXT_SLURM_PARTITION']}"] if os.environ.get("IXT_SLURM_PARTITION") else []
        if os.environ.get("IXT_SLURM_ACCOUNT"):
            args.append(f"--account={os.environ['IXT_SLURM_ACCOUNT']}")
        yield Cluster(args + shlex.split(os.environ.get("IXT_SBATCH_ARGS", "")))
        return
    reason = unavailable_reason()
    if reason:
        warnings.warn(pytest.PytestWarning(f"tests/slurm SKIPPED, the Slurm scripts are untested here: {reason}"))
        pytest.skip(f"cannot start a local Slurm cluster: {reason}")
    cluster = LocalSlurm(str(tmp_path_factory.mktemp("slurm")))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
