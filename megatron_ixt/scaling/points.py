"""Scaling points: one per training run, read from the run's ``metrics.jsonl``.

A run directory holds ``metrics.jsonl`` (format of megatron_ixt/training/metrics.py). Its point
is the LAST ``eval`` record: ``cumulative_flops`` (training FLOPs, Megatron-LM's formula,
prefix tokens included) and the loss under METRIC, any key of that record. The default METRIC is
the arm's evaluation conditioning, read from the last header's config: ``none/doc_loss`` for the
baseline (``--ixt-prefix-kind none``), ``steering/doc_loss`` for IXT arms. With a header config
the point must come from the run's final iteration (every point fully decayed), and the
tokenizer and held-out set are recorded so that :func:`check_comparable` can refuse mixing them.

Annotation FLOPs (``2 * N_annotator * tokens read and written``) come from annotate's
``*.stats.json`` files (``tokens.prompt + tokens.completion``) and are added on the IXT side.
"""
from __future__ import annotations

import glob
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from megatron_ixt.data.blends import flag_blend
from megatron_ixt.tokenizer import model_sha256
from megatron_ixt.training.flops import annotation_flops, layer_matrix_params
from megatron_ixt.training.metrics import read_metrics

METRICS_FILE = "metrics.jsonl"
BASELINE_METRIC = "none/doc_loss"  # the baseline is judged without a prefix
IXT_METRIC = "steering/doc_loss"  # IXT arms under their steering prefix


class PointError(ValueError):
    """A run or file that cannot give a scaling point; the message names it."""


@dataclass
class Point:
    """One run's held-out point. ``compute`` = training FLOPs; ``total_compute`` adds the
    arm's annotation FLOPs. ``key`` (the run directory's name, ``<size>_<tokens>_s<seed>``
    under a sweep) pairs runs across arms in the bootstrap."""
    run: str
    key: str
    metric: str
    loss: float
    compute: float
    iteration: int
    tokens: int | None = None
    params: float | None = None  # non-embedding matrix parameters
    seed: int | None = None
    tokenizer: str | None = None
    heldout: str | None = None
    annotation_flops: float = 0.0

    @property
    def total_compute(self) -> float:
        return self.compute + self.annotation_flops

    def to_dict(self) -> dict:
        return {**asdict(self), "total_compute": self.total_compute}


def non_embedding_params(model: dict) -> float:
    """Matrix parameters of the transformer layers (QKV, output projection, MLP) of a
    ``config["model"]`` dict (flops.py's shape formula); embeddings, logits, norms and biases are
    not counted."""
    return model["num_layers"] * layer_matrix_params(
        hidden_size=model["hidden_size"], ffn_hidden_size=model["ffn_hidden_size"],
        num_attention_heads=model["num_attention_heads"], num_query_groups=model.get("num_query_groups"),
        kv_channels=model.get("kv_channels"), swiglu=bool(model.get("swiglu")))


def default_metric(config: dict | None, run: str) -> str:
    if not config:
        raise PointError(f"{run}: no header config in {METRICS_FILE}; give the metric explicitly "
                         f"(--arm NAME=GLOB:METRIC)")
    return BASELINE_METRIC if config["data"].get("ixt_prefix_kind") == "none" else IXT_METRIC


def _tokenizer_id(config: dict) -> str:
    tk = config.get("tokenizer") or {}
    path = tk.get("tokenizer_model")
    digest = model_sha256(path) if path and os.path.exists(path) else path
    return f"{tk.get('tokenizer_type')}:{digest or tk.get('vocab_size')}"


def _heldout_id(config: dict) -> str:
    """The held-out documents: the validation blend, or the split of the ``--data-path`` blend."""
    d = config["data"]

    def blend(name):
        prefixes, weights = flag_blend(d, name) or ([], None)
        return " ".join(os.path.realpath(p) for p in prefixes) + (f" weights {weights}" if weights else "")

    if d.get("valid_data_path"):
        return "valid " + blend("valid_data_path")
    return f"split {d.get('split')} of " + blend("data_path")


def read_point(run: str, metric: str | None = None) -> Point:
    """The point of one run directory (or its ``metrics.jsonl``); :class:`PointError` otherwise."""
    path = run if os.path.isfile(run) else os.path.join(run, METRICS_FILE)
    run_dir = os.path.dirname(os.path.abspath(path))
    if not os.path.isfile(path):
        raise PointError(f"{run}: no {METRICS_FILE}")
    records = read_metrics(path)
    headers = [r for r in records if r.get("kind") == "header"]
    config = headers[-1].get("config") if headers else None
    evals = [r for r in records if r.get("kind") == "eval"]
    if not evals:
        raise PointError(f"{path}: no eval record (train with --eval-interval dividing --train-iters "
                         f"and --eval-iters > 0)")
    last = evals[-1]
    metric = metric or default_metric(config, path)
    if metric not in last:
        keys = sorted(k for k in last if k not in ("kind", "iteration", "time"))
        raise PointError(f"{path}: the last eval record (iteration {last.get('iteration')}) has no "
                         f"{metric!r}; its keys: {keys}")
    loss = last[metric]
    if loss is None or not isinstance(loss, (int, float)) or not math.isfinite(loss):
        raise PointError(f"{path}: {metric} is {loss!r} (NaN or missing) in the last eval record "
                         f"(iteration {last.get('iteration')})")
    flops = last.get("cumulative_flops")
    if not isinstance(flops, (int, float)) or not flops > 0:
        raise PointError(f"{path}: the last eval record has no positive cumulative_flops ({flops!r})")
    point = Point(run=run_dir, key=os.path.basename(run_dir), metric=metric, loss=float(loss),
                  compute=float(flops), iteration=int(last["iteration"]), tokens=last.get("consumed_tokens"))
    if config:
        iters = config["train"].get("train_iters")
        if iters is not None and point.iteration != iters:
            raise PointError(f"{path}: the last eval is at iteration {point.iteration} of {iters}: the run is "
                             f"unfinished or its schedule not fully decayed; finish it (or evaluate its final "
                             f"checkpoint) before fitting")
        point.params = non_embedding_params(config["model"])
        point.seed = config["train"].get("seed")
        point.tokenizer = _tokenizer_id(config)
        point.heldout = _heldout_id(config)
    return point


def expand(pattern: str, arm: str) -> list[str]:
    """Run directories matched by a glob (a matched ``metrics.jsonl`` stands for its directory)."""
    runs = sorted({os.path.dirname(m) if os.path.basename(m) == METRICS_FILE else m
                   for m in glob.glob(pattern)})
    runs = [r for r in runs if os.path.isdir(r)]
    if not runs:
        raise PointError(f"arm {arm!r}: {pattern!r} matches no run directory")
    return runs


def read_arm(arm: str, pattern: str, metric: str | None = None) -> list[Point]:
    return [read_point(run, metric) for run in expand(pattern, arm)]


def annotation_tokens(pattern: str) -> int:
    """Tokens the annotator read and wrote (``tokens.prompt + tokens.completion``) summed over
    annotate's ``*.stats.json`` files matching ``pattern``."""
    files = sorted(glob.glob(pattern))
    if not files:
        raise PointError(f"--annotation-stats {pattern!r} matches no file")
    total = 0
    for path in files:
        try:
            with open(path, encoding="utf-8") as f:
                tokens = json.load(f)["tokens"]
            total += int(tokens["prompt"]) + int(tokens["completion"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise PointError(f"{path}: not an annotate stats file with tokens.prompt/completion "
                             f"({type(e).__name__}: {e})") from None
    return total


def add_annotation(points: Sequence[Point], annotator_params: float, tokens: int) -> float:
    """Charge every point of an arm the annotation FLOPs of its corpus; returns them."""
    flops = annotation_flops(annotator_params, tokens)
    for p in points:
        p.annotation_flops = flops
    return flops


def frontier(points: Sequence[Point]) -> list[Point]:
    """The compute-optimal envelope: runs that no run with less or equal compute beats on loss."""
    kept, best = [], math.inf
    for p in sorted(points, key=lambda p: (p.total_compute, p.loss)):
        if p.loss < best:
            kept.append(p)
            best = p.loss
    return kept


def check_comparable(arms: dict[str, list[Point]]) -> None:
    """Refuse mixed tokenizers or held-out sets across the runs of one comparison."""
    for attr, what in (("tokenizer", "tokenizers"), ("heldout", "held-out sets")):
        seen: dict[str, str] = {}
        for points in arms.values():
            for p in points:
                value = getattr(p, attr)
                if value is not None:
                    seen.setdefault(value, p.run)
        if len(seen) > 1:
            listing = "; ".join(f"{v} (e.g. {r})" for v, r in seen.items())
            raise PointError(f"mixed {what} in one comparison: {listing}")


def monotonicity_warnings(arm: str, points: Sequence[Point], noise: float) -> list[str]:
    """For each model size, a larger token budget should not raise the loss by more than 3x the
    noise (``noise``: a relative loss scale, e.g. the robust spread of the fit's log residuals)."""
    by_size: dict[float, dict[float, list[Point]]] = {}
    for p in points:
        if p.params is not None:
            by_size.setdefault(p.params, {}).setdefault(p.compute, []).append(p)
    out = []
    for params, cells in sorted(by_size.items()):
        budgets = sorted(cells)
        means = [np.mean([p.loss for p in cells[c]]) for c in budgets]
        for i in range(1, len(budgets)):
            if means[i] > means[i - 1] * (1 + 3 * noise):
                out.append(f"arm {arm!r}: loss rises from {means[i - 1]:.4f} to {means[i]:.4f} with more compute "
                           f"at {params:.3g} params ({cells[budgets[i - 1]][0].run} -> {cells[budgets[i]][0].run}), "
                           f"beyond 3x the noise ({noise:.2%})")
    return out
