"""Downstream scores of sweep runs: lm-evaluation-harness tasks on each finished run's export.

The spec's ``evaluate:`` section (docs/scaling.md)::

    evaluate:
      tasks: [carry_add]                    # lm-eval task names: hub tasks, or local YAML tasks
      include_path: examples/scaling/tasks  # a folder of local task YAMLs (optional)
      metrics: [carry_add/exact_match]      # TASK/METRIC[,FILTER] that `fit SPEC` fits (rates in [0, 1])
      num_fewshot: 0                        # optional (default: each task's own)
      limit: 200                            # optional: the first N items of each task
      batch_size: 16
      steer: {ARM: KIND[:LEVEL] | none}     # or `none` (every arm unsteered); an arm not named:
                                            # unsteered when trained with --ixt-prefix-kind none,
                                            # else steered to its kind's top level (KIND)

Per run: ``RUN/hf/`` the exported model (``tools/convert_to_hf.py``, written once and reused),
``RUN/lm_eval/`` lm-eval's own output (``results_*.json`` and, with ``--log_samples``, the
per-item ``samples_<task>_*.jsonl``), and ``run.json``'s ``evaluation`` entry (``digest`` of the
evaluation settings, ``steer``, ``results``: the results file, ``scores``). A score is read back by
:func:`read_score`: the task's aggregate and its per-item values, with the task version and
few-shot setting that :func:`check_same_evaluation` compares across one comparison.
"""
from __future__ import annotations

import glob
import hashlib
import importlib.util
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from megatron_ixt.scaling.points import Point, PointError

EVAL_DIR = "lm_eval"  # RUN/lm_eval/: lm-eval's --output_path
HF_DIR = "hf"  # RUN/hf/: the exported model
EVALUATE_KEYS = {"tasks", "include_path", "metrics", "num_fewshot", "limit", "batch_size", "steer"}


@dataclass
class Evaluate:
    """The ``evaluate:`` section of a spec; ``steer[arm]`` is that arm's ``ixt_hf`` steer spec."""
    tasks: list[str]
    metrics: list[str]
    steer: dict[str, str]
    include_path: str | None = None
    num_fewshot: int | None = None
    limit: int | None = None
    batch_size: str = "16"

    def digest(self, arm: str) -> str:
        """What an arm's evaluation computes: a changed digest re-evaluates the run."""
        key = {"tasks": self.tasks, "include_path": self.include_path, "num_fewshot": self.num_fewshot,
               "limit": self.limit, "steer": self.steer[arm]}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def default_steer(arm_flags: Sequence[str]) -> str:
    """``none`` for an arm trained with ``--ixt-prefix-kind none``, else its kind (top level)."""
    flags = list(arm_flags)
    kind = flags[flags.index("--ixt-prefix-kind") + 1] if "--ixt-prefix-kind" in flags[:-1] else "none"
    return kind


def split_metric(metric: str, where: str) -> tuple:
    """``TASK/METRIC[,FILTER]`` -> (task, metric, filter or None)."""
    task, sep, name = metric.partition("/")
    if not sep or not task or not name:
        raise PointError(f"{where}: downstream metric {metric!r}: expected TASK/METRIC[,FILTER], "
                         f"e.g. gsm8k/exact_match or gsm8k/exact_match,strict-match")
    name, _, flt = name.partition(",")
    return task, name, flt or None


def parse_evaluate(raw, arms: dict[str, list[str]], path: str) -> Evaluate | None:
    """The validated ``evaluate:`` section (None when absent); ``arms``: arm -> its flags."""
    if raw is None:
        return None
    where = f"{path}: evaluate"
    if not isinstance(raw, dict) or set(raw) - EVALUATE_KEYS:
        raise PointError(f"{where}: a mapping with keys among {sorted(EVALUATE_KEYS)}; got {raw!r}")
    tasks = raw.get("tasks")
    if not tasks or not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
        raise PointError(f"{where}.tasks: a non-empty list of lm-eval task names")
    metrics = raw.get("metrics") or []
    for metric in metrics:
        task = split_metric(str(metric), f"{where}.metrics")[0]
        if task not in tasks:
            raise PointError(f"{where}.metrics: {metric!r} names task {task!r}, not one of tasks {tasks}")
    steer = raw.get("steer") or {}
    if steer == "none":
        steer = {arm: "none" for arm in arms}
    if not isinstance(steer, dict) or set(steer) - set(arms):
        raise PointError(f"{where}.steer: `none` or a mapping ARM -> KIND[:LEVEL] | none over the arms "
                         f"{sorted(arms)}; got {steer!r}")
    steer = {arm: str(steer.get(arm) or default_steer(flags)) for arm, flags in arms.items()}
    include = raw.get("include_path")
    if include is not None and not os.path.isdir(include):
        raise PointError(f"{where}.include_path: {include!r} is not a directory")
    return Evaluate(tasks=list(tasks), metrics=[str(m) for m in metrics], steer=steer,
                    include_path=os.path.abspath(include) if include else None,
                    num_fewshot=None if raw.get("num_fewshot") is None else int(raw["num_fewshot"]),
                    limit=None if raw.get("limit") is None else int(raw["limit"]),
                    batch_size=str(raw.get("batch_size", 16)))


# --------------------------------------------------------------------------- running an evaluation
def _export_script() -> list[str]:
    """The export CLI: the installed ``megatron_ixt_tools`` package, else the checkout's tools/."""
    if importlib.util.find_spec("megatron_ixt_tools") is not None:
        return ["-m", "megatron_ixt_tools.convert_to_hf"]
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return [os.path.join(repo, "tools", "convert_to_hf.py")]


def export_command(run_dir: str, python: str) -> list[str]:
    """Export the run's final checkpoint into ``RUN/hf.tmp`` (renamed to ``RUN/hf`` when complete)."""
    return [python, *_export_script(), "--load", os.path.join(run_dir, "ckpt"),
            "--output", os.path.join(run_dir, HF_DIR + ".tmp")]


def lm_eval_command(run_dir: str, ev: Evaluate, arm: str, python: str, device: str) -> list[str]:
    """lm-eval (``ixt_hf``, the arm's steering) on ``RUN/hf``; its output goes to ``RUN/lm_eval``."""
    cmd = [python, "-m", "megatron_ixt.evaluation.lm_eval_cli", "run", "--model", "ixt_hf",
           "--model_args", f"pretrained={os.path.join(run_dir, HF_DIR)},steer={ev.steer[arm]}",
           "--tasks", ",".join(ev.tasks), "--batch_size", ev.batch_size, "--device", device,
           "--output_path", os.path.join(run_dir, EVAL_DIR), "--log_samples"]
    if ev.include_path:
        cmd += ["--include_path", ev.include_path]
    if ev.num_fewshot is not None:
        cmd += ["--num_fewshot", str(ev.num_fewshot)]
    if ev.limit is not None:
        cmd += ["--limit", str(ev.limit)]
    return cmd


def results_files(run_dir: str) -> list[str]:
    """lm-eval's results files under ``RUN/lm_eval``, oldest first."""
    return sorted(glob.glob(os.path.join(run_dir, EVAL_DIR, "**", "results_*.json"), recursive=True),
                  key=lambda p: (os.path.getmtime(p), p))


def evaluate_run(run_dir: str, arm: str, ev: Evaluate, python: str, device: str, run_step) -> dict:
    """Export (unless ``RUN/hf`` exists) and evaluate one finished run. ``run_step(cmd)`` runs a
    command and returns its exit status. Returns the ``evaluation`` entry for ``run.json`` (with
    ``exit_code`` and no ``results`` when a step failed)."""
    hf = os.path.join(run_dir, HF_DIR)
    if not os.path.isfile(os.path.join(hf, "config.json")):
        shutil.rmtree(hf + ".tmp", ignore_errors=True)  # what an interrupted export left
        code = run_step(export_command(run_dir, python))
        if code != 0:
            return {"digest": None, "steer": ev.steer[arm], "exit_code": code, "step": "export"}
        os.replace(hf + ".tmp", hf)
    before = set(results_files(run_dir))
    code = run_step(lm_eval_command(run_dir, ev, arm, python, device))
    new = [p for p in results_files(run_dir) if p not in before]
    if code != 0 or not new:
        return {"digest": None, "steer": ev.steer[arm], "exit_code": code or 1, "step": "lm_eval"}
    scores = {m: read_score(run_dir, m, new[-1]).score for m in ev.metrics}
    return {"digest": ev.digest(arm), "steer": ev.steer[arm], "exit_code": 0, "results": new[-1],
            "scores": scores}


# --------------------------------------------------------------------------- reading scores
@dataclass
class Score:
    """One run's score on ``TASK/METRIC``: the aggregate, the per-item values (``items``, in
    ``doc_ids`` order) and what must match across a comparison (version, few-shot, items)."""
    run: str
    file: str
    metric: str
    score: float
    items: np.ndarray
    doc_ids: tuple
    version: object
    n_shot: object
    steer: str | None


def _recorded_results(run_dir: str) -> str | None:
    path = os.path.join(run_dir, "run.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return ((json.load(f).get("evaluation") or {}).get("results"))


def read_score(run_dir: str, metric: str, results: str | None = None) -> Score:
    """The score of a run on ``TASK/METRIC[,FILTER]`` from lm-eval's results JSON (``results``, else
    the one ``run.json`` records, else the newest under ``RUN/lm_eval`` holding the task) and its
    per-item samples file; :class:`PointError` naming the run and file otherwise."""
    task, name, flt = split_metric(metric, run_dir)
    recorded = _recorded_results(run_dir)
    candidates = [results] if results else (
        [recorded] if recorded and os.path.isfile(recorded) else results_files(run_dir))
    data = path = None
    for path in reversed(candidates):
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            raise PointError(f"run {run_dir}: {path}: unreadable lm-eval results ({e})") from None
        if task in data.get("results", {}):
            break
    else:
        where = candidates[-1] if candidates else os.path.join(run_dir, EVAL_DIR)
        raise PointError(f"run {run_dir}: no lm-eval results for task {task!r} ({where}); evaluate it "
                         f"(the spec's evaluate: section and `launch`) or check the task name")
    task_results = data["results"][task]
    keys = [k for k in task_results if k.split(",")[0] == name and "_stderr" not in k]
    if flt is not None:
        keys = [k for k in keys if k == f"{name},{flt}"]
    if len(keys) > 1:
        keys = [k for k in keys if k == f"{name},none"] or keys
    if len(keys) != 1:
        listing = sorted(k for k in task_results if k != "alias" and "_stderr" not in k)
        raise PointError(f"run {run_dir}: {path}: task {task!r} has {'no' if not keys else 'several'} "
                         f"{name!r} ({listing}); name one as TASK/METRIC,FILTER")
    key = keys[0]
    value = task_results[key]
    if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise PointError(f"run {run_dir}: {path}: {task}/{key} = {value!r} is not a rate in [0, 1]; a downstream "
                         f"fit needs an accuracy-like metric (error rate = 1 - score)")
    flt = key.split(",", 1)[1] if "," in key else "none"
    stamp = os.path.basename(path)[len("results_"):-len(".json")]
    samples = glob.glob(os.path.join(os.path.dirname(path), f"samples_{task}_{stamp}.jsonl"))
    if not samples:
        raise PointError(f"run {run_dir}: {path}: no per-item samples_{task}_{stamp}.jsonl next to it; run "
                         f"lm-eval with --log_samples (the bootstrap resamples items)")
    items = {}
    with open(samples[0], encoding="utf-8") as f:
        for line in f:
            sample = json.loads(line)
            if sample.get("filter", "none") != flt:
                continue
            v = sample.get(name)
            if not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise PointError(f"run {run_dir}: {samples[0]}: item {sample.get('doc_id')} has {name} = {v!r}, "
                                 f"not a rate in [0, 1]")
            items[sample["doc_id"]] = float(v)
    if not items:
        raise PointError(f"run {run_dir}: {samples[0]}: no item with metric {name!r} under filter {flt!r}")
    doc_ids = tuple(sorted(items))
    steer = None
    model_args = (data.get("config") or {}).get("model_args")
    if isinstance(model_args, str) and "steer=" in model_args:
        steer = model_args.split("steer=", 1)[1].split(",")[0]
    elif isinstance(model_args, dict):
        steer = model_args.get("steer")
    return Score(run=run_dir, file=path, metric=f"{task}/{key}", score=float(value),
                 items=np.array([items[d] for d in doc_ids]), doc_ids=doc_ids,
                 version=(data.get("versions") or {}).get(task), n_shot=(data.get("n-shot") or {}).get(task),
                 steer=steer)


def check_same_evaluation(scores: Sequence[Score]) -> None:
    """Refuse one comparison whose runs differ in task version, few-shot setting or item set."""
    first = scores[0]
    for s in scores[1:]:
        for attr, what in (("version", "task versions"), ("n_shot", "few-shot settings"),
                           ("doc_ids", "item sets")):
            a, b = getattr(first, attr), getattr(s, attr)
            if a != b:
                shown = (len(a), len(b)) if attr == "doc_ids" else (a, b)
                raise PointError(f"different {what} in one comparison of {first.metric}: {shown[0]!r} in run "
                                 f"{first.run} ({first.file}) vs {shown[1]!r} in run {s.run} ({s.file})")


def downstream_points(points: Sequence[Point], metric: str):
    """``points`` (one arm's held-out loss points, annotation FLOPs included) re-read as points of
    ``TASK/METRIC``: ``loss`` is the error rate ``1 - score`` (at least :func:`error_floor`), same
    compute. Returns (points, scores)."""
    scores = [read_score(p.run, metric) for p in points]
    floor = error_floor(len(scores[0].items))
    out = [replace(p, metric=s.metric, loss=max(1.0 - s.score, floor)) for p, s in zip(points, scores)]
    return out, scores


def error_matrix(scores: Sequence[Score]) -> np.ndarray:
    """Per-item error (1 - item score) of each run: shape (runs, items)."""
    return 1.0 - np.stack([s.items for s in scores])


def error_floor(items: int) -> float:
    """The smallest error rate a fit uses (half an item): a run that got every item right has
    error 0, which the log-space fit cannot take."""
    return 0.5 / items
