"""Launch and inspect a sweep: ``python -m megatron_ixt.scaling launch|status SPEC``.

Each run of a :class:`~megatron_ixt.scaling.spec.Spec` lives in ``ROOT/<arm>/<size>_<tokens>_s<seed>/``:

    run.json       the run's record: arm, size, tokens, seed, params, train_iters, world_size,
                   digest and argv of its command, state (running | interrupted | failed |
                   finished), exit_code, and once finished its held-out point (``point``: the
                   last eval record's FLOPs and default-metric loss; ``eval``: that whole record)
    metrics.jsonl  the trainer's metrics (``--metrics-file``)
    ckpt/          its checkpoints (``--save``; a relaunch resumes from here with ``--load``)
    train.log      the trainer's output
    hf/, lm_eval/  with an ``evaluate:`` section: the exported model and lm-eval's results and
                   per-item samples (``evaluation`` in run.json; eval.log the commands' output)

``launch`` is idempotent: finished runs are skipped, interrupted or failed ones resume from their
latest checkpoint (``--load``), and a run whose recorded command differs from the spec's is
refused before anything starts (its results would mix two specs). Executors: ``local`` runs the
grid one run after another on this machine (SIGTERM/SIGINT are forwarded to the trainer, which
saves and exits 75; the launch then stops with 75); ``slurm`` submits one job array through
submitit; a job whose trainer exits 75 (SIGTERM, ``--exit-duration-in-mins``) or that Slurm
preempts or times out is checkpointed and requeued by submitit. With an ``evaluate:`` section
each finished run is then evaluated (locally right after its training; on Slurm as a second job
array that depends on the training array); a run already scored under the same settings is skipped.
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time

from megatron_ixt.cli import EXIT_RESUMABLE
from megatron_ixt.fileio import atomic_write
from megatron_ixt.scaling.downstream import evaluate_run
from megatron_ixt.scaling.points import PointError, read_point
from megatron_ixt.scaling.spec import RunPlan, Spec, SpecError
from megatron_ixt.scaling.submitit_private import slurm_job_script
from megatron_ixt.training.metrics import read_metrics
from megatron_ixt.training.run_contract import TRACKER_FILE

RECORD = "run.json"
QUEUED = ("submitted", "running")  # states a Slurm relaunch leaves alone unless --resubmit


def read_record(plan: RunPlan) -> dict | None:
    path = os.path.join(plan.run_dir, RECORD)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise SpecError(f"{path}: unreadable run record ({e}); inspect it and remove it to restart the run") from None


def write_record(plan: RunPlan, **fields) -> dict:
    record = {**(read_record(plan) or {}), "arm": plan.arm, "size": plan.size, "tokens": plan.tokens,
              "seed": plan.seed, "params": plan.params, "train_iters": plan.train_iters,
              "world_size": plan.world_size, "digest": plan.digest, "argv": plan.argv, **fields,
              "updated": time.time()}
    os.makedirs(plan.run_dir, exist_ok=True)
    with atomic_write(os.path.join(plan.run_dir, RECORD)) as f:
        json.dump(record, f, indent=1)
    return record


def latest_iteration(plan: RunPlan) -> int | None:
    tracker = os.path.join(plan.ckpt_dir, TRACKER_FILE)
    if not os.path.isfile(tracker):
        return None
    return int(open(tracker, encoding="utf-8").read().strip())


def run_state(plan: RunPlan) -> str:
    """``pending``, ``submitted`` (queued on Slurm), ``running``, ``interrupted``, ``failed``,
    ``finished`` or ``changed`` (recorded with a different command)."""
    record = read_record(plan)
    if record is None:
        return "interrupted" if latest_iteration(plan) is not None else "pending"
    if record.get("digest") != plan.digest:
        return "changed"
    return record.get("state", "pending")


def check_unchanged(spec: Spec) -> None:
    """Refuse a spec that changed what an already started run computes."""
    changed = []
    for plan in spec.runs:
        if run_state(plan) == "changed":
            old, new = _flag_groups(read_record(plan).get("argv") or []), _flag_groups(plan.argv)
            removed = [g for g in old if g not in new]
            added = [g for g in new if g not in old]
            changed.append(f"{plan.run_dir}: recorded flags {removed} -> spec flags {added}")
    if changed:
        raise SpecError("the spec changed runs that already started; their results would mix two specs. Use a "
                        "new root (--root) or remove these run directories:\n  " + "\n  ".join(changed))


def _flag_groups(argv: list[str]) -> list[str]:
    """``["--lr", "3e-3", "--bf16"]`` -> ``["--lr 3e-3", "--bf16"]`` (each flag with its values)."""
    groups: list[list[str]] = []
    for word in argv:
        if word.startswith("--") or not groups:
            groups.append([word])
        else:
            groups[-1].append(word)
    return [" ".join(g) for g in groups]


def slurm_master_port(slurm_job_id: str) -> str:
    """The rendezvous port of a multi-node run: 20000 + job id mod 20000, as in
    ``examples/slurm/pretrain_ixt.sbatch``, so two jobs sharing a first node do not collide."""
    return str(20000 + int(slurm_job_id) % 20000)


def trainer_command(plan: RunPlan, spec: Spec, python: str = sys.executable, node_rank="0",
                    master_addr="127.0.0.1", master_port="29500") -> list[str]:
    """The trainer's command for ``plan``; ``--load`` when it has a checkpoint. One process per run
    without GPUs and ``nproc_per_node == 1``, else torchrun (``--standalone`` on one node, which picks
    its own port; multi-node: ``node_rank``/``master_addr``/``master_port``)."""
    launcher = spec.launcher
    nproc, nodes = int(launcher["nproc_per_node"]), int(launcher["nodes"])
    if nproc == 1 and nodes == 1:
        prefix = [python]
    elif nodes == 1:
        prefix = [python, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    else:
        prefix = [python, "-m", "torch.distributed.run", f"--nnodes={nodes}", f"--nproc-per-node={nproc}",
                  f"--node-rank={node_rank}", f"--master-addr={master_addr}", f"--master-port={master_port}"]
    load = ["--load", plan.ckpt_dir] if latest_iteration(plan) is not None else []
    return prefix + ["-m", "megatron_ixt.pretrain", *plan.argv, *load]


def finish(plan: RunPlan, exit_code: int) -> str:
    """Record the outcome of a trainer exit; a finished run gets its held-out point. Returns the state."""
    if exit_code == 0:
        try:
            point = read_point(plan.run_dir)
        except PointError as e:
            state = "interrupted" if latest_iteration(plan) is not None else "failed"
            write_record(plan, state=state, exit_code=exit_code, error=str(e))
            return state
        last_eval = [r for r in read_metrics(os.path.join(plan.run_dir, "metrics.jsonl")) if r["kind"] == "eval"][-1]
        write_record(plan, state="finished", exit_code=0, error=None, point=point.to_dict(), eval=last_eval,
                     training_flops=point.compute)
        return "finished"
    state = "interrupted" if exit_code == EXIT_RESUMABLE else "failed"
    write_record(plan, state=state, exit_code=exit_code)
    return state


class _Forward:
    """Forward SIGTERM/SIGINT to the running trainer (which saves and exits 75) and remember it."""

    def __init__(self):
        self.proc = None
        self.stopped = False
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.stopped = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _run(cmd: list[str], log_path: str, forward: _Forward) -> int:
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"$ {shlex.join(cmd)}\n")
        log.flush()
        # own session: a terminal's Ctrl-C reaches only this launcher, which forwards SIGTERM
        forward.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return forward.proc.wait()


def needs_evaluation(plan: RunPlan, spec: Spec) -> bool:
    """The spec evaluates and this run has no scores under its current evaluation settings."""
    if spec.evaluate is None:
        return False
    entry = (read_record(plan) or {}).get("evaluation") or {}
    return entry.get("digest") != spec.evaluate.digest(plan.arm) or not os.path.isfile(entry.get("results") or "")


def evaluate_plan(plan: RunPlan, spec: Spec, run_step, python: str = sys.executable) -> dict:
    """Evaluate a finished run (export cached, lm-eval) and record it in run.json."""
    device = "cuda" if spec.launcher["gpus"] else "cpu"
    entry = evaluate_run(plan.run_dir, plan.arm, spec.evaluate, python, device, run_step)
    write_record(plan, evaluation=entry)
    return entry


def launch_local(spec: Spec, dry_run: bool = False) -> int:
    """Run every unfinished run in order; 0 when all finished, 75 when stopped by a signal, 1 when
    some failed (the others still ran)."""
    check_unchanged(spec)
    failed = []
    with _Forward() as forward:
        for plan in spec.runs:
            state = run_state(plan)
            if state == "finished":
                print(f"skip {plan.name}: finished", flush=True)
            else:
                cmd = trainer_command(plan, spec)
                if dry_run:
                    print(shlex.join(cmd), flush=True)
                    continue
                print(f"run {plan.name} ({state}{', resuming' if '--load' in cmd else ''})", flush=True)
                write_record(plan, state="running", exit_code=None)
                exit_code = _run(cmd, os.path.join(plan.run_dir, "train.log"), forward)
                state = finish(plan, exit_code)
                print(f"  {plan.name}: {state} (exit {exit_code})", flush=True)
                if forward.stopped or exit_code == EXIT_RESUMABLE:
                    print("stopped; relaunch the same command to resume", flush=True)
                    return EXIT_RESUMABLE
            if state == "failed":
                failed.append(plan.name)
            elif state == "finished" and needs_evaluation(plan, spec):
                if dry_run:
                    print(f"# then evaluate {plan.name}: export to {plan.run_dir}/hf, lm-eval into "
                          f"{plan.run_dir}/lm_eval", flush=True)
                    continue
                print(f"evaluate {plan.name} (steer {spec.evaluate.steer[plan.arm]})", flush=True)
                log = os.path.join(plan.run_dir, "eval.log")
                entry = evaluate_plan(plan, spec, lambda cmd: _run(cmd, log, forward))
                print(f"  {plan.name}: {entry.get('scores') or 'evaluation failed (see eval.log)'}", flush=True)
                if forward.stopped:
                    print("stopped; relaunch the same command to resume", flush=True)
                    return EXIT_RESUMABLE
                if entry["exit_code"] != 0:
                    failed.append(plan.name + " (evaluation)")
    if failed:
        print(f"{len(failed)} run(s) failed (see their train.log or eval.log): {failed}", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------- Slurm (submitit)
SLURM_DEFAULTS = {"time": 240, "ntasks_per_node": 1, "signal_delay_s": 120, "array_parallelism": 64}


def _preempt_signal() -> int:
    """submitit's preemption signal (``SUBMITIT_PREEMPT_SIGNAL``, default USR2)."""
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"))


def _ignore_preempt_signal() -> None:
    signal.signal(_preempt_signal(), signal.SIG_IGN)


class RunJob:
    """The callable of one Slurm array task (submitit ``Checkpointable`` protocol): runs the trainer,
    records the outcome, and requeues through submitit when the trainer exits 75."""

    def __init__(self, plan: RunPlan, spec: Spec, python: str):
        self.plan, self.spec, self.python = plan, spec, python
        self._proc = None

    def __call__(self) -> str:
        import submitit

        env = submitit.JobEnvironment()
        cmd = trainer_command(self.plan, self.spec, self.python, node_rank=str(env.node),
                              master_addr=env.hostnames[0],
                              master_port=slurm_master_port(os.environ["SLURM_JOB_ID"]))
        if env.global_rank == 0:
            write_record(self.plan, state="running", exit_code=None, slurm_job_id=env.job_id)
        with open(os.path.join(self.plan.run_dir, f"train.node{env.node}.log"), "a", encoding="utf-8") as log:
            log.write(f"$ {shlex.join(cmd)}\n")
            log.flush()
            # the trainer ignores submitit's preemption signal (Slurm may signal every process of
            # the step); checkpoint() stops it with SIGTERM, on which it saves
            self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                          preexec_fn=_ignore_preempt_signal)
            # poll, not wait(): a blocking wait() holds the Popen's waitpid lock, so checkpoint(),
            # run by submitit's signal handler in this thread, could not see the trainer exit and
            # would always wait its whole grace period and then SIGKILL it
            while self._proc.poll() is None:
                time.sleep(1)
            exit_code = self._proc.returncode
        state = finish(self.plan, exit_code) if env.global_rank == 0 else None
        if exit_code == EXIT_RESUMABLE:
            # the trainer saved and asked to be resumed: raise submitit's own preemption signal,
            # whose handler calls checkpoint() below and requeues this array task
            os.kill(os.getpid(), _preempt_signal())
            time.sleep(60)
        if exit_code != 0:
            raise RuntimeError(f"{self.plan.name}: the trainer exited {exit_code} (see {self.plan.run_dir})")
        return f"{self.plan.name}: {state}"

    def checkpoint(self, *args, **kwargs):
        """Preempted or timed out (or the trainer exited 75): stop the trainer with SIGTERM so it
        saves, then resubmit this callable; the requeued task resumes with ``--load``."""
        import submitit

        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            grace = int(self.spec.slurm.get("signal_delay_s", SLURM_DEFAULTS["signal_delay_s"]))
            try:
                self._proc.wait(timeout=max(grace - 20, 10))  # leave submitit time to requeue
            except subprocess.TimeoutExpired:
                self._proc.kill()
        self._proc = None
        return submitit.helpers.DelayedSubmission(RunJob(self.plan, self.spec, self.python))


class EvalJob:
    """The callable of one Slurm array task of the evaluation array: evaluates its run once the
    training task has finished it (a run that did not finish is left for a later launch)."""

    def __init__(self, plan: RunPlan, spec: Spec, python: str):
        self.plan, self.spec, self.python = plan, spec, python

    def __call__(self) -> str:
        if run_state(self.plan) != "finished":
            return f"{self.plan.name}: not finished; not evaluated"
        log_path = os.path.join(self.plan.run_dir, "eval.log")

        def run_step(cmd):
            with open(log_path, "a", encoding="utf-8") as log:
                log.write(f"$ {shlex.join(cmd)}\n")
                log.flush()
                return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode

        entry = evaluate_plan(self.plan, self.spec, run_step, self.python)
        if entry["exit_code"] != 0:
            raise RuntimeError(f"{self.plan.name}: evaluation failed at {entry['step']} (see {log_path})")
        return f"{self.plan.name}: {entry['scores']}"


def slurm_executor(spec: Spec):
    import submitit

    params = {**SLURM_DEFAULTS, "job_name": os.path.basename(spec.root), **spec.slurm}
    launcher = spec.launcher
    params.setdefault("nodes", int(launcher["nodes"]))
    if launcher["gpus"]:
        params.setdefault("gpus_per_node", int(launcher["nproc_per_node"]))
    executor = submitit.SlurmExecutor(folder=os.path.join(spec.root, "slurm", "%j"), max_num_timeout=20)
    executor.update_parameters(**params)
    return executor


def launch_slurm(spec: Spec, dry_run: bool = False, python: str = sys.executable, resubmit: bool = False) -> int:
    """Submit every unfinished run as one job array; ``dry_run`` prints the commands and the script.
    Runs already submitted or running are left alone unless ``resubmit`` (their job is gone)."""
    check_unchanged(spec)
    pending = []
    for plan in spec.runs:
        state = run_state(plan)
        if state == "finished" or (state in QUEUED and not resubmit):
            print(f"skip {plan.name}: {state}", flush=True)
        else:
            pending.append(plan)
    # evaluated after this launch's training array: its runs and finished runs without scores
    to_score = [p for p in spec.runs if p in pending or (run_state(p) == "finished" and needs_evaluation(p, spec))]
    if not pending and not to_score:
        return 0
    executor = slurm_executor(spec)
    if dry_run:
        for i, plan in enumerate(pending):
            cmd = trainer_command(plan, spec, python, node_rank="$SLURM_NODEID", master_addr="$MASTER_ADDR",
                                  master_port="$MASTER_PORT")
            print(f"# array task {i}: {plan.name}\n{shlex.join(cmd)}")
        if pending:
            print(f"# job script ({len(pending)}-task array; each task runs python -m submitit.core._submit, "
                  f"which calls the command above):")
            print(slurm_job_script(executor, len(pending)))
        if spec.evaluate is not None and to_score:
            print(f"# evaluation array ({len(to_score)} task(s){', after the training array' if pending else ''}): "
                  f"export to RUN/hf, then lm-eval into RUN/lm_eval, for " + ", ".join(p.name for p in to_score))
        return 0
    train_array = None
    if pending:
        with executor.batch():
            jobs = [executor.submit(RunJob(plan, spec, python)) for plan in pending]
        for plan, job in zip(pending, jobs):
            write_record(plan, state="submitted", slurm_job_id=job.job_id)
        train_array = jobs[0].job_id.split("_")[0]
        print(f"submitted {len(jobs)} run(s) as job array {train_array}; "
              f"python -m megatron_ixt.scaling status {spec.path} shows the grid")
    if spec.evaluate is not None and to_score:
        evaluator = slurm_executor(spec)
        evaluator.update_parameters(job_name=os.path.basename(spec.root) + "-eval",
                                    **({"dependency": f"afterany:{train_array}"} if train_array else {}))
        with evaluator.batch():
            eval_jobs = [evaluator.submit(EvalJob(plan, spec, python)) for plan in to_score]
        print(f"submitted {len(eval_jobs)} evaluation(s) as job array {eval_jobs[0].job_id.split('_')[0]}"
              f"{f' (after array {train_array})' if train_array else ''}")
    return 0


# --------------------------------------------------------------------------- status
def status_rows(spec: Spec) -> list[dict]:
    rows = []
    for plan in spec.runs:
        record = read_record(plan) or {}
        state = run_state(plan)
        point = record.get("point") or {}
        scores = None
        if spec.evaluate is not None:
            scores = None if needs_evaluation(plan, spec) else record["evaluation"]["scores"]
        rows.append({"run": plan.name, "state": state, "iteration": latest_iteration(plan),
                     "train_iters": plan.train_iters, "loss": point.get("loss"), "metric": point.get("metric"),
                     "flops": point.get("compute"), "scores": scores})
    return rows


def print_status(spec: Spec, as_json: bool = False) -> int:
    rows = status_rows(spec)
    if as_json:
        print(json.dumps(rows, indent=1))
        return 0
    width = max(len(r["run"]) for r in rows)
    print(f"{'run':<{width}}  {'state':<11} {'checkpoint':>12} {'loss':>8} {'FLOPs':>10}"
          + ("  scores" if spec.evaluate is not None else ""))
    for r in rows:
        ckpt = f"{r['iteration'] or 0}/{r['train_iters']}"
        loss = "" if r["loss"] is None else f"{r['loss']:.4f}"
        flops = "" if r["flops"] is None else f"{r['flops']:.3g}"
        scores = ""
        if spec.evaluate is not None:
            scores = "  " + (", ".join(f"{m}={v:.3f}" for m, v in r["scores"].items()) if r["scores"] is not None
                             else "-")
        print(f"{r['run']:<{width}}  {r['state']:<11} {ckpt:>12} {loss:>8} {flops:>10}{scores}")
    counts = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    scored = "" if spec.evaluate is None else f"; {sum(r['scores'] is not None for r in rows)} with scores"
    print(", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + f" of {len(rows)} runs under {spec.root}"
          + scored)
    return 0
