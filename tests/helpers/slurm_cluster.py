"""A real single-node Slurm cluster for the tests: munged, slurmctld and slurmd on this machine.

``LocalSlurm(root).start()`` writes a munge key, a ``slurm.conf`` and the spool/state/log
directories under ``root``, starts its own ``munged`` (own socket) and the two Slurm daemons in
the foreground as child processes on fixed test-owned ports, and waits until ``sinfo`` reports the
node idle. ``stop()`` ends exactly those processes. Client commands (``sbatch``, ``squeue``,
``scancel``, ``scontrol``, ``sinfo``; no accounting, so no ``sacct``) find the cluster through
``SLURM_CONF``: :attr:`Cluster.env` holds it, and :meth:`Cluster.run` uses it.

``Cluster()`` alone is a user's own, already running cluster (``IXT_SLURM=existing``, see
docs/slurm.md): the same client methods, plus the ``sbatch`` arguments that place test jobs there
(partition, account, anything else).

Needs root (slurmd launches jobs as the submitting user, and the daemons run as SlurmUser=root)
and the Debian packages ``slurmctld slurmd slurm-client munge`` (``tests/slurm/install_slurm.sh``, run by
``.ci/run``); :func:`unavailable_reason` says why a machine cannot run it. Tested with Slurm 22.05
(Debian 12).
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
import warnings
from collections.abc import Callable

COMMANDS = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "scontrol", "scancel", "sinfo")
# Fixed, test-owned ports: SlurmctldPort = base, SlurmdPort = base + 1. The next pairs of the range
# are tried in turn when another cluster of these tests already runs on this machine.
PORT_BASE = int(os.environ.get("IXT_SLURM_PORT_BASE", "16817"))
PORT_PAIRS = 4
PARTITION = "ixt"
# Job states after which a job does not run again by itself (COMPLETING, REQUEUED, ... are transient).
FINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                          "BOOT_FAIL", "DEADLINE", "PREEMPTED"})
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
INSTALL = os.path.join(REPO, "tests", "slurm", "install_slurm.sh")


def unavailable_reason() -> str | None:
    """Why this machine cannot run the local cluster (None when it can). Missing packages are
    installed first (``install_slurm.sh``, as ``.ci/run`` does) where root and apt-get allow it."""
    if os.geteuid() != 0:
        return "not root: slurmd and the daemons' SlurmUser=root need root"
    if any(shutil.which(c) is None for c in COMMANDS):
        if shutil.which("apt-get") is None:
            return f"no apt-get to install the Slurm and munge packages ({INSTALL})"
        proc = subprocess.run([INSTALL], capture_output=True, text=True)
        if proc.returncode != 0:
            return f"{INSTALL} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}"
    missing = [c for c in COMMANDS if shutil.which(c) is None]
    if missing:
        return f"commands still missing after {INSTALL}: {', '.join(missing)}"
    return None


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


class SlurmError(RuntimeError):
    """A daemon or client command failed; the message names the log to read."""


class Cluster:
    """Client side of a cluster: run commands, submit jobs, read their state."""

    def __init__(self, sbatch_args: list[str] | None = None):
        # Slurm variables of a surrounding job (pytest run inside an allocation) would leak into
        # every sbatch/srun here; only SLURM_CONF is kept.
        self.env: dict[str, str] = {k: v for k, v in os.environ.items()
                                    if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_")) or k == "SLURM_CONF"}
        self.sbatch_args: list[str] = list(sbatch_args or [])
        self.local = False

    def run(self, cmd: list[str], check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        """Run a Slurm client command against this cluster."""
        proc = subprocess.run(cmd, env=kwargs.pop("env", self.env), capture_output=True, text=True,
                              timeout=kwargs.pop("timeout", 60), **kwargs)
        if check and proc.returncode != 0:
            raise SlurmError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()}")
        return proc

    def sbatch(self, script: str, args: list[str], env: dict[str, str], cwd: str) -> str:
        """Submit ``script`` with ``args``, then :attr:`sbatch_args` (which win), from ``cwd``; the job id."""
        out = self.run(["sbatch", "--parsable", *args, *self.sbatch_args, script],
                       env={**self.env, **env}, cwd=cwd).stdout
        return out.strip().split(";")[0]

    def jobs(self, job: str) -> list[dict[str, str]]:
        """``scontrol show job -o`` of ``job`` (one dict per array task), [] once it is forgotten."""
        proc = self.run(["scontrol", "show", "job", "-o", job], check=False)
        return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in proc.stdout.splitlines() if line.strip()]

    def wait(self, what: str, ok: Callable[[], bool], timeout: float, hint: Callable[[], str] = str) -> None:
        """Poll ``ok`` every quarter second until it is true; SlurmError after ``timeout`` seconds,
        with ``hint()`` (e.g. the job's log) in the message."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if ok():
                return
            time.sleep(0.25)
        raise SlurmError(f"timed out after {timeout:.0f} s waiting for {what}. {hint()}")

    def wait_done(self, job: str, timeout: float) -> list[dict[str, str]]:
        """Wait until every task of ``job`` reached a final state; their records."""
        self.wait(f"job {job} to finish",
                  lambda: all(j["JobState"] in FINAL_STATES for j in self.jobs(job) or [{"JobState": ""}]),
                  timeout, lambda: f"squeue: {self.run(['squeue'], check=False).stdout}")
        return self.jobs(job)

    def release_requeued(self, job: str, timeout: float) -> None:
        """Let a requeued job start in a few seconds instead of after Slurm's ~2-minute hold.

        Only once its previous run has fully ended (pending, no steps left): slurmd refuses a batch
        launch in the same second as the old run's kill ("Job credential revoked": the job FAILS).
        """
        def previous_run_ended():
            state = self.jobs(job)[0]["JobState"]
            assert state not in FINAL_STATES, f"requeued job {job} is {state}"
            steps = self.run(["squeue", "-h", "-s", "-j", job], check=False).stdout.strip()
            return state == "RUNNING" or (state == "PENDING" and not steps)

        self.wait(f"the previous run of job {job} to end", previous_run_ended, timeout)
        if self.jobs(job)[0]["JobState"] == "PENDING":
            self.run(["scontrol", "update", f"JobId={job}", "StartTime=now+5"], check=False)

    def stop(self) -> None:
        """Nothing to stop for a cluster that is not ours."""


class LocalSlurm(Cluster):
    """One-node cluster under ``root`` (see the module docstring)."""

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self.host = socket.gethostname().split(".")[0]
        self.cpus = os.cpu_count() or 1
        self.conf = os.path.join(self.root, "slurm.conf")
        self.munge_socket = os.path.join(self.root, "munge", "munge.socket")
        self.logs = os.path.join(self.root, "log")
        super().__init__()
        self.env["SLURM_CONF"] = self.conf
        self.local = True
        self._procs: list[subprocess.Popen] = []
        self.ctld_port: int | None = None

    # ------------------------------------------------------------------ setup
    def _write_munge(self) -> list[str]:
        d = os.path.join(self.root, "munge")
        os.makedirs(d, mode=0o700, exist_ok=True)
        key = os.path.join(d, "munge.key")
        with open(os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
            f.write(os.urandom(1024))
        return ["munged", "--foreground", "--force", f"--socket={self.munge_socket}", f"--key-file={key}",
                f"--pid-file={d}/munged.pid", f"--seed-file={d}/munged.seed",
                f"--log-file={self.logs}/munged.log"]

    def _write_conf(self, ctld_port: int) -> None:
        state, spool = os.path.join(self.root, "state"), os.path.join(self.root, "spool")
        for d in (state, spool, self.logs):
            os.makedirs(d, exist_ok=True)
        lines = [
            "ClusterName=ixt-test",
            f"SlurmctldHost={self.host}",
            f"SlurmctldPort={ctld_port}",
            f"SlurmdPort={ctld_port + 1}",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"AuthInfo=socket={self.munge_socket}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"StateSaveLocation={state}",
            f"SlurmdSpoolDir={spool}/slurmd-%n",
            f"SlurmctldPidFile={self.root}/slurmctld.pid",
            f"SlurmdPidFile={self.root}/slurmd-%n.pid",
            f"SlurmctldLogFile={self.logs}/slurmctld.log",
            f"SlurmdLogFile={self.logs}/slurmd.log",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "MpiDefault=none",
            "SwitchType=switch/none",
            "JobCompType=jobcomp/none",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "ReturnToService=2",
            "SchedulerParameters=sched_interval=2",
            "MessageTimeout=30",
            "KillWait=10",
            "MinJobAge=600",
            f"NodeName={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} State=UNKNOWN",
            f"PartitionName={PARTITION} Nodes={self.host} Default=YES MaxTime=INFINITE State=UP",
        ]
        with open(self.conf, "w") as f:
            f.write("# Written by tests/helpers/slurm_cluster.py for one test session.\n" + "\n".join(lines) + "\n")

    def _spawn(self, cmd: list[str], name: str) -> subprocess.Popen:
        with open(os.path.join(self.logs, f"{name}.stdout"), "wb") as out:  # the child keeps its copy
            proc = subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self._procs.append(proc)
        return proc

    def _wait(self, what: str, ok, timeout: float, log: str) -> None:
        def up_and_ok():
            for p in self._procs:
                if p.poll() is not None:
                    raise SlurmError(f"{p.args[0]} exited {p.returncode} while waiting for {what}; read {log}")
            return ok()

        self.wait(what, up_and_ok, timeout, lambda: f"read {log}")

    def start(self, timeout: float = 120) -> LocalSlurm:
        os.makedirs(self.logs, exist_ok=True)
        free = [b for b in range(PORT_BASE, PORT_BASE + 2 * PORT_PAIRS, 2) if _port_free(b) and _port_free(b + 1)]
        if not free:
            raise SlurmError(f"ports {PORT_BASE}-{PORT_BASE + 2 * PORT_PAIRS - 1} are all in use "
                             f"(set IXT_SLURM_PORT_BASE to another free range)")
        self.ctld_port = free[0]
        self._write_conf(self.ctld_port)
        self._spawn(self._write_munge(), "munged")
        self._wait("munged's socket", lambda: os.path.exists(self.munge_socket), 30, f"{self.logs}/munged.log")
        self._spawn(["slurmctld", "-D", "-i"], "slurmctld")
        self._wait("slurmctld", lambda: self.run(["scontrol", "ping"], check=False).returncode == 0,
                   timeout, f"{self.logs}/slurmctld.log")
        self._spawn(["slurmd", "-D", "-N", self.host], "slurmd")
        self._wait(f"node {self.host} idle", lambda: "idle" in self.run(
            ["sinfo", "-h", "-N", "-o", "%t"], check=False).stdout, timeout, f"{self.logs}/slurmd.log")
        return self

    def stop(self) -> None:
        """Cancel every job and let it end, then stop slurmd, slurmctld and munged (the processes
        started here; a job step's slurmstepd would outlive slurmd)."""
        if len(self._procs) == 3 and all(p.poll() is None for p in self._procs):
            self.run(["scancel", "--full", "--user", "root"], check=False)
            try:
                self.wait("the cancelled jobs to end",
                          lambda: not self.run(["squeue", "-h"], check=False).stdout.strip(), 60,
                          lambda: self.run(["squeue"], check=False).stdout)
            except SlurmError as e:  # stop the daemons anyway, and say what was left running
                warnings.warn(f"local Slurm cluster: {e}")
        for p in reversed(self._procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self._procs.clear()
