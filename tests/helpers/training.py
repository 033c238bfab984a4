"""Helpers shared by the training tests (``from tests.helpers.training import ...``; fixtures live in
tests/training/conftest.py; the synthetic corpus is in ``tests.helpers.training_corpus``).

``run_pretrain(args, nproc=1)`` runs ``python -m megatron_ixt.pretrain`` (``nproc`` > 1: under
``torch.distributed.run`` with gloo) in a subprocess and returns the CompletedProcess
(``pretrain_command`` gives its command line and environment, for tests that start it themselves);
``train_losses(metrics_jsonl)`` maps iteration -> loss record of the last run that logged it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.helpers.training_corpus import VOCAB


def tiny_model_args(data_path: str, cache: str) -> list:
    """A 2-layer GQA model on the synthetic corpus; per-test flags are appended."""
    return ["--tokenizer-type", "NullTokenizer", "--vocab-size", str(VOCAB),
            "--data-path", data_path, "--split", "90,10,0", "--data-cache-path", cache,
            "--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
            "--num-query-groups", "2", "--seq-length", "128",
            "--micro-batch-size", "2", "--global-batch-size", "8",
            "--lr", "3e-3", "--min-lr", "3e-4", "--lr-warmup-iters", "2", "--log-interval", "1"]


def pretrain_command(args, nproc: int = 1) -> tuple[list, dict]:
    """The command line and environment that run ``python -m megatron_ixt.pretrain args`` on ``nproc``
    gloo processes (``torch.distributed.run`` for more than one), outside any torchrun world of ours."""
    env = dict(os.environ, OMP_NUM_THREADS="1" if nproc > 1 else os.environ.get("OMP_NUM_THREADS", "2"),
               PYTHONWARNINGS="ignore")
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    if nproc == 1:
        return [sys.executable, "-m", "megatron_ixt.pretrain", *args], env
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
            "-m", "megatron_ixt.pretrain", *args], env


def run_pretrain(args, nproc: int = 1, timeout: int = 240, check: bool = True) -> subprocess.CompletedProcess:
    cmd, env = pretrain_command(args, nproc)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-4000:]}\n"
                             f"{proc.stderr[-6000:]}")
    return proc


def read_records(path: str, kind: str) -> list:
    with open(path) as f:
        return [r for r in map(json.loads, f) if r["kind"] == kind]


def train_losses(path: str) -> dict:
    """iteration -> train record (later lines win: a resumed run overrides nothing it repeats)."""
    return {r["iteration"]: r for r in read_records(path, "train")}
