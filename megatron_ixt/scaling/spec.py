"""Sweep specs (YAML): model sizes x token budgets x arms x seeds, expanded into run plans.

Keys (docs/scaling.md has a full example)::

    root: DIR                    # runs go to ROOT/<arm>/<size>_<tokens>_s<seed>/ (relative: to the cwd)
    common: [FLAGS, "@file.args", ...]   # flags of python -m megatron_ixt.pretrain for every run
    data: {data_path: [...], split: "98,2,0", tokenizer_type: ..., ...}   # KEY -> --key VALUE
    sizes: {NAME: "FLAGS" | {flags: "FLAGS"}}   # shape flags per size
    budgets: [TOKENS, ...]       # training tokens per run (one fully decayed run per budget)
    arms: {NAME: "FLAGS"}        # e.g. baseline: --ixt-prefix-kind none
    seeds: [INT, ...]
    hyperparameters:             # per-size values: a number, {table: {SIZE: v}}, {rule: {...}}, or both
      lr: {rule: {value: 3e-3, scale_with: hidden_size, reference: 64, exponent: -1}}
      global_batch_size: {table: {small: 16, large: 32}}
    schedule: {style: cosine, warmup_fraction: 0.05, min_lr_ratio: 0.1}
    eval_iters: 10
    checkpoints_per_run: 2       # --save-interval = train iters / this (resume granularity)
    launcher: {nproc_per_node: 1, nodes: 1, gpus: false}
    slurm: {partition, account, qos, time_min, array_parallelism, cpus_per_gpu, setup: [...], ...}
    evaluate: {tasks: [...], metrics: [TASK/METRIC], include_path, num_fewshot, limit, steer, ...}
                                 # lm-eval on each finished run (megatron_ixt/scaling/downstream.py)

A rule is ``value * (x / reference) ** exponent`` with ``x`` one of ``hidden_size``,
``num_layers`` or ``params`` (non-embedding matrix parameters); a table entry overrides it.
Each run's command is parsed and validated by the trainer's own parser at plan time, so a
bad spec fails before anything starts, naming the run.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shlex
from dataclasses import dataclass, field

import yaml

from megatron_ixt.scaling.downstream import Evaluate, parse_evaluate
from megatron_ixt.scaling.points import PointError, non_embedding_params

SPEC_KEYS = {"root", "common", "data", "sizes", "budgets", "arms", "seeds", "hyperparameters", "schedule",
             "eval_iters", "checkpoints_per_run", "launcher", "slurm", "evaluate"}
RULE_INPUTS = ("hidden_size", "num_layers", "params")
INTEGER_FLAGS = {"global_batch_size", "micro_batch_size"}
SCHEDULES = ("cosine", "linear")


class SpecError(ValueError):
    """A bad sweep spec; the message names the file and the key."""


@dataclass
class RunPlan:
    """One training run of a sweep. ``argv``: the full ``python -m megatron_ixt.pretrain`` flags
    (without ``--load``); ``digest``: sha256 of ``argv`` and the world size (a changed digest
    means the spec changed what this run computes)."""
    arm: str
    size: str
    tokens: int
    seed: int
    run_dir: str
    argv: list[str]
    train_iters: int
    params: float
    world_size: int
    digest: str = ""

    @property
    def name(self) -> str:
        return f"{self.arm}/{os.path.basename(self.run_dir)}"

    @property
    def ckpt_dir(self) -> str:
        return os.path.join(self.run_dir, "ckpt")


@dataclass
class Spec:
    path: str
    raw: dict
    root: str
    runs: list[RunPlan] = field(default_factory=list)
    arm_flags: dict[str, list[str]] = field(default_factory=dict)  # arm -> the flags that distinguish it
    evaluate: Evaluate | None = None  # the evaluate: section

    @property
    def launcher(self) -> dict:
        return {"nproc_per_node": 1, "nodes": 1, "gpus": False, **(self.raw.get("launcher") or {})}

    @property
    def slurm(self) -> dict:
        return dict(self.raw.get("slurm") or {})


def _flags(value, where: str) -> list[str]:
    """A flag string, or a list of flag strings / ``@file`` entries, as argv words."""
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [w for v in value for w in shlex.split(v)]
    raise SpecError(f"{where}: expected a flag string or a list of them, got {value!r}")


def _key_flags(mapping: dict) -> list[str]:
    out = []
    for key, value in (mapping or {}).items():
        flag = "--" + str(key).replace("_", "-")
        if value is True:
            out.append(flag)
        elif isinstance(value, list):
            out += [flag, *map(str, value)]
        elif value is not None and value is not False:
            out += [flag, str(value)]
    return out


def _per_size(name: str, setting, size: str, shape: dict, where: str) -> float:
    if isinstance(setting, (int, float)) and not isinstance(setting, bool):
        return float(setting)
    if not isinstance(setting, dict) or not set(setting) <= {"table", "rule"} or not setting:
        raise SpecError(f"{where}.{name}: expected a number, {{table: ...}} and/or {{rule: ...}}")
    table = setting.get("table") or {}
    if size in table:
        return float(table[size])
    rule = setting.get("rule")
    if rule is None:
        raise SpecError(f"{where}.{name}: no table entry for size {size!r} and no rule")
    missing = {"value", "scale_with", "reference", "exponent"} - set(rule)
    if missing or rule["scale_with"] not in RULE_INPUTS:
        raise SpecError(f"{where}.{name}.rule: needs value, scale_with (one of {RULE_INPUTS}), reference, "
                        f"exponent (missing: {sorted(missing)})")
    x = shape[rule["scale_with"]]
    return float(rule["value"]) * (x / float(rule["reference"])) ** float(rule["exponent"])


def _tokens(value, path: str) -> int:
    """A token budget; YAML reads ``2.5e9`` (no exponent sign) as a string, so parse it here."""
    try:
        tokens = float(value)
    except (TypeError, ValueError):
        raise SpecError(f"{path}: budgets: {value!r} is not a number of tokens") from None
    if tokens <= 0 or tokens != int(tokens):
        raise SpecError(f"{path}: budgets: {value!r} must be a positive whole number of tokens")
    return int(tokens)


def _format(name: str, value: float) -> str:
    return str(int(round(value))) if name in INTEGER_FLAGS else f"{value:.6g}"


def _digest(argv: list[str], world_size: int) -> str:
    return hashlib.sha256(json.dumps({"argv": argv, "world_size": world_size}).encode()).hexdigest()


def load_spec(path: str, root: str | None = None) -> Spec:
    """Read and expand a spec: every run planned and its command validated (SpecError otherwise)."""
    from megatron_ixt.training.config import ConfigError, parse_args

    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        raise SpecError(f"{path}: cannot read the spec ({e})") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: a spec is a YAML mapping")
    unknown = set(raw) - SPEC_KEYS
    if unknown:
        raise SpecError(f"{path}: unknown key(s) {sorted(unknown)}; known: {sorted(SPEC_KEYS)}")
    for key in ("sizes", "budgets", "arms"):
        if not raw.get(key):
            raise SpecError(f"{path}: '{key}' is required and must not be empty")
    root = os.path.abspath(root or raw.get("root") or os.path.splitext(path)[0])
    spec = Spec(path=path, raw=raw, root=root)
    schedule = {"style": "cosine", "warmup_fraction": 0.05, "min_lr_ratio": 0.1, **(raw.get("schedule") or {})}
    if schedule["style"] not in SCHEDULES:
        raise SpecError(f"{path}: schedule.style {schedule['style']!r}: one of {SCHEDULES} (each budget is its own "
                        f"fully decayed run)")
    launcher = spec.launcher
    world = int(launcher["nproc_per_node"]) * int(launcher["nodes"])
    common = _flags(raw.get("common"), f"{path}: common") + _key_flags(raw.get("data"))
    seeds = raw.get("seeds") or [1234]
    per_ckpt = int(raw.get("checkpoints_per_run", 2))
    spec.arm_flags = {arm: _flags(value, f"{path}: arms.{arm}") for arm, value in raw["arms"].items()}
    try:
        spec.evaluate = parse_evaluate(raw.get("evaluate"), spec.arm_flags, path)
    except PointError as e:
        raise SpecError(str(e)) from None
    for size, size_value in raw["sizes"].items():
        size_flags = _flags(size_value.get("flags") if isinstance(size_value, dict) else size_value,
                            f"{path}: sizes.{size}")
        for arm, arm_flags in spec.arm_flags.items():
            for tokens in raw["budgets"]:
                for seed in seeds:
                    plan = _plan(spec, size, size_flags, arm, arm_flags, _tokens(tokens, path), int(seed), common,
                                 schedule,
                                 world, per_ckpt, launcher, parse_args, ConfigError)
                    spec.runs.append(plan)
    return spec


def _plan(spec, size, size_flags, arm, arm_flags, tokens, seed, common, schedule, world, per_ckpt, launcher,
          parse_args, config_error) -> RunPlan:
    run_dir = os.path.join(spec.root, arm, f"{size}_{tokens}_s{seed}")
    where = f"{spec.path}: run {arm}/{size}_{tokens}_s{seed}"

    def parse(argv):
        try:
            return parse_args(argv, world_size=world, cuda=bool(launcher["gpus"]))
        except (config_error, SystemExit) as e:
            raise SpecError(f"{where}: the trainer refuses its flags: {e}") from None

    base = common + size_flags
    shape_cfg = parse(base + ["--train-tokens", str(tokens)]).model
    shape = {"hidden_size": shape_cfg.hidden_size, "num_layers": shape_cfg.num_layers,
             "params": non_embedding_params(vars(shape_cfg))}
    hyper = []
    lr = None
    for name, setting in (spec.raw.get("hyperparameters") or {}).items():
        value = _per_size(name, setting, size, shape, f"{spec.path}: hyperparameters")
        lr = value if name == "lr" else lr
        hyper += ["--" + name.replace("_", "-"), _format(name, value)]
    if lr is not None and "min_lr" not in (spec.raw.get("hyperparameters") or {}):
        hyper += ["--min-lr", _format("min_lr", lr * float(schedule["min_lr_ratio"]))]
    argv = base + hyper + ["--lr-decay-style", schedule["style"]] + arm_flags + [
        "--train-tokens", str(tokens), "--seed", str(seed)]
    iters = parse(argv).train.train_iters
    if iters < 2:
        raise SpecError(f"{where}: budget {tokens} tokens is {iters} iteration(s) at this batch size; raise it")
    warmup = min(max(1, math.ceil(iters * float(schedule["warmup_fraction"]))), iters - 1)
    argv += ["--lr-warmup-iters", str(warmup), "--eval-interval", str(iters),
             "--eval-iters", str(spec.raw.get("eval_iters", 10)),
             "--save", os.path.join(run_dir, "ckpt"), "--save-interval", str(max(1, iters // max(per_ckpt, 1))),
             "--metrics-file", os.path.join(run_dir, "metrics.jsonl"), "--exit-signal-handler"]
    parse(argv)
    return RunPlan(arm=arm, size=size, tokens=tokens, seed=seed, run_dir=run_dir, argv=argv, train_iters=iters,
                   params=shape["params"], world_size=world, digest=_digest(argv, world))
