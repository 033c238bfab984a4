#!/usr/bin/env bash
# Install what tests/slurm needs to start its own Slurm cluster: Debian's slurmctld, slurmd,
# slurm-client and munge (Slurm 22.05 on Debian 12). Idempotent: does nothing when the commands
# are there. Needs root and apt-get; exits 1 (with the reason) otherwise. Called by .ci/run and,
# when the packages are missing, by the tests/slurm session fixture.
set -euo pipefail
if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        && command -v munged >/dev/null; then
    exit 0
fi
if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
    echo "cannot install slurmctld slurmd slurm-client munge: needs root and apt-get" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq slurmctld slurmd slurm-client munge
