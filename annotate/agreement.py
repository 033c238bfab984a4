"""``python -m annotate agreement DIR --sample N``: the judge's self-consistency.

A random sample of DIR's ok records is re-annotated with the judge settings saved in
DIR/run_config.json into its own directory (default ``DIR/agreement``; the committed shards are
never touched), then each rubric axis and the quality are compared between the two passes:
exact agreement, agreement within 1, Spearman's rho and Cohen's quadratic-weighted kappa, each
with a 95% bootstrap interval. Written to ``agreement.json`` and ``agreement.md`` there.
"""
from __future__ import annotations

import json
import os
import random

import numpy as np

from annotate.report import iter_records
from megatron_ixt.data.record import SCORE_AXES, SCORE_MAX, SCORE_MIN, STATUS_OK
from megatron_ixt.fileio import atomic_write

AXES = (*SCORE_AXES, "quality")
METRICS = ("exact", "within_1", "spearman", "kappa_quadratic")


def add_agreement_args(p) -> None:
    p.add_argument("output", help="an annotated directory written by `run` (its run_config.json gives the judge)")
    p.add_argument("--sample", type=int, required=True, help="how many of its ok documents to re-annotate")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample and of the bootstrap")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% intervals")
    p.add_argument("--agreement-dir", default=None,
                   help="where the sample and its re-annotations go (a `run` output directory); default DIR/agreement")


def _scores(ixt: dict) -> list[int]:
    return [*(ixt["scores"][a] for a in SCORE_AXES), ixt["quality"]]


def sample_documents(output: str, out: str, n: int, seed: int) -> str:
    """Write ``n`` random ok records of ``output`` (committed shards), without their ``ixt``, to
    ``out/inputs/sample-n<n>-seed<seed>.jsonl`` (kept if there, so a rerun resumes); its path."""
    path = os.path.join(out, "inputs", f"sample-n{n}-seed{seed}.jsonl")
    if os.path.exists(path):
        return path
    ok = [rec["id"] for rec in iter_records(output, committed_only=True) if rec["ixt"]["status"] == STATUS_OK]
    if not ok or n <= 0:
        raise ValueError(f"{output}: no committed ok record to sample (or --sample {n} < 1)")
    chosen = set(random.Random(seed).sample(ok, min(n, len(ok))))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_write(path) as f:
        for rec in iter_records(output, committed_only=True):
            if rec["id"] in chosen:
                f.write(json.dumps({k: v for k, v in rec.items() if k != "ixt"}, ensure_ascii=False) + "\n")
    return path


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing their average rank."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    return (np.bincount(inverse, weights=ranks) / counts)[inverse]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho (nan when one side has no variance)."""
    ra, rb = _ranks(a), _ranks(b)
    da, db = ra - ra.mean(), rb - rb.mean()
    den = np.sqrt((da * da).sum() * (db * db).sum())
    return float((da * db).sum() / den) if den > 0 else float("nan")


def kappa_quadratic(a: np.ndarray, b: np.ndarray) -> float:
    """Cohen's kappa with quadratic weights on the 1..5 scale (nan when no disagreement is expected)."""
    k = SCORE_MAX - SCORE_MIN + 1
    observed = np.zeros((k, k))
    np.add.at(observed, (a - SCORE_MIN, b - SCORE_MIN), 1)
    expected = np.outer(observed.sum(1), observed.sum(0)) / len(a)
    i, j = np.indices((k, k))
    weights = (i - j) ** 2 / (k - 1) ** 2
    den = (weights * expected).sum()
    return float(1 - (weights * observed).sum() / den) if den > 0 else float("nan")


def metrics(a: np.ndarray, b: np.ndarray) -> dict:
    return {"exact": float(np.mean(a == b)), "within_1": float(np.mean(np.abs(a - b) <= 1)),
            "spearman": spearman(a, b), "kappa_quadratic": kappa_quadratic(a, b)}


def _json_number(x: float):
    return None if np.isnan(x) else round(x, 4)


def compare(first: np.ndarray, second: np.ndarray, bootstrap: int, seed: int) -> dict:
    """Per axis: each metric's value and 95% bootstrap interval (None where undefined)."""
    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, len(first), len(first)) for _ in range(bootstrap)]
    result = {}
    for col, axis in enumerate(AXES):
        a, b = first[:, col], second[:, col]
        point = metrics(a, b)
        boots = [metrics(a[idx], b[idx]) for idx in draws]
        result[axis] = {}
        for m in METRICS:
            values = np.array([bt[m] for bt in boots])
            values = values[~np.isnan(values)]
            ci = [_json_number(np.percentile(values, q)) for q in (2.5, 97.5)] if len(values) else [None, None]
            result[axis][m] = {"value": _json_number(point[m]), "ci95": ci}
    return result


def agreement_report(output: str, shard: str, bootstrap: int, seed: int) -> str:
    """Compare the re-annotations in ``shard`` (a committed output file) with ``output``'s; write
    agreement.json/.md next to ``shard``; the Markdown."""
    out = os.path.dirname(shard)
    with open(shard, encoding="utf-8") as f:
        again = {rec["id"]: rec["ixt"] for rec in map(json.loads, f)}
    pairs = [(_scores(rec["ixt"]), _scores(again[rec["id"]])) for rec in iter_records(output, committed_only=True)
             if rec["id"] in again and rec["ixt"]["status"] == STATUS_OK and again[rec["id"]]["status"] == STATUS_OK]
    failed = sum(1 for ixt in again.values() if ixt["status"] != STATUS_OK)
    if not pairs:
        raise ValueError(f"{out}: no re-annotated document to compare ({failed} failed)")
    first, second = (np.array(side) for side in zip(*pairs))
    result = {"pairs": len(pairs), "reannotation_failed": failed, "bootstrap": bootstrap, "axes": compare(
        first, second, bootstrap, seed)}
    with open(os.path.join(out, "agreement.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)

    def cell(v):
        if v["value"] is None:
            return "n/a (no variance)"
        return f"{v['value']:.3f} [{v['ci95'][0]:.3f}, {v['ci95'][1]:.3f}]"

    lines = [f"# Judge self-consistency: {output}", "",
             f"{len(pairs)} documents annotated twice with the same settings ({failed} re-annotation(s) failed). "
             f"Value [95% bootstrap interval, {bootstrap} resamples].", "",
             "| axis | exact | within 1 | Spearman | quadratic kappa |", "|---|---|---|---|---|"]
    lines += [f"| {axis} | " + " | ".join(cell(result["axes"][axis][m]) for m in METRICS) + " |" for axis in AXES]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, "agreement.md"), "w", encoding="utf-8") as f:
        f.write(text)
    return text
