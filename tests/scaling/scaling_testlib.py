"""Synthetic scaling runs: real ``metrics.jsonl`` files written by the trainer's MetricsWriter.

``write_run(dir, loss, flops, ...)`` writes a header (a real ``Config.to_dict()``) and one final
eval record; ``write_arm`` writes a grid of runs whose loss follows a known power law.
"""
from __future__ import annotations

import os

import numpy as np

from megatron_ixt.scaling.fit import PowerLaw
from megatron_ixt.tokenizer import TokenizerConfig
from megatron_ixt.training.config import Config
from megatron_ixt.training.metrics import MetricsWriter

SIZES = {"h64": 64, "h96": 96, "h128": 128}  # hidden sizes of the synthetic ladder


def write_run(run_dir: str, loss, flops: float, *, kind: str = "quality", hidden: int = 64, tokens: int = 1000,
              seed: int = 1, train_iters: int = 10, eval_iteration=None, tokenizer_vocab: int = 512,
              data_path: str = "/data/heldout_text_document", evals: int = 1) -> str:
    """One run directory; ``loss`` is a float (the arm's default metric) or a dict of eval keys."""
    cfg = Config()
    cfg.model.hidden_size, cfg.model.ffn_hidden_size, cfg.model.num_layers = hidden, 4 * hidden, 2
    cfg.train.train_iters, cfg.train.seed = train_iters, seed
    cfg.data.ixt_prefix_kind, cfg.data.data_path = kind, [data_path]
    cfg.tokenizer = TokenizerConfig("NullTokenizer", None, tokenizer_vocab)
    metric = "none/doc_loss" if kind == "none" else "steering/doc_loss"
    record = loss if isinstance(loss, dict) else {metric: loss}
    writer = MetricsWriter(os.path.join(run_dir, "metrics.jsonl"), stdout=False)
    writer.header(cfg.to_dict(), world_size=1)
    last = train_iters if eval_iteration is None else eval_iteration
    for i in range(evals):
        it = last * (i + 1) // evals
        writer.log("eval", {"iteration": it, "consumed_tokens": tokens * it // last,
                            "cumulative_flops": flops * it / last, **record})
    writer.close()
    return run_dir


def write_arm(root: str, arm: str, law: PowerLaw, *, kind: str, budgets=(1e15, 3e15, 1e16, 3e16), seeds=(1, 2),
              noise: float = 0.003, rng=None, sizes=SIZES) -> list:
    """A sizes x budgets x seeds grid under ``root/arm/<size>_<tokens>_s<seed>``; loss = law(C) with
    multiplicative log-normal noise. The compute of a cell grows with both size and budget."""
    rng = rng or np.random.default_rng(0)
    runs = []
    for j, (size, hidden) in enumerate(sizes.items()):
        for b in budgets:
            for seed in seeds:
                flops = b * (1 + j) ** 2
                loss = float(law.loss(flops)) * float(np.exp(rng.normal(0, noise)))
                tokens = int(flops / (6 * hidden * hidden * 24))
                runs.append(write_run(os.path.join(root, arm, f"{size}_{tokens}_s{seed}"), loss, flops,
                                      kind=kind, hidden=hidden, tokens=tokens, seed=seed))
    return runs
