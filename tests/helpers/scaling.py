"""Synthetic scaling runs: real ``metrics.jsonl`` files written by the trainer's MetricsWriter
(``from tests.helpers.scaling import ...``; used by tests/scaling and tests/slurm).

``write_run(dir, loss, flops, ...)`` writes a header (a real ``Config.to_dict()``) and one final
eval record; ``write_arm`` writes a grid of runs whose loss follows a known power law.
"""
from __future__ import annotations

import os

import numpy as np

from megatron_ixt.scaling.fit import PowerLaw
from megatron_ixt.scaling.points import read_point
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


VOCAB = 127


def write_counting_text_store(prefix: str, num_documents: int = 200, seed: int = 0) -> str:
    """A learnable plain text store (NullTokenizer ``--vocab-size 127``): each document counts up
    from a random start; returns the ``--data-path``."""
    from megatron_ixt.data.shards import text_store_path
    from tests.helpers.token_shards import write_token_shard_set

    rng = np.random.default_rng(seed)
    docs = [np.append((int(rng.integers(1, 100)) + np.arange(int(rng.integers(20, 80)))) % 120 + 1, VOCAB)
            for _ in range(num_documents)]
    write_token_shard_set(prefix, {"text": docs}, vocab_size=VOCAB)
    return text_store_path(prefix)


def tiny_spec(path: str, data_path: str, root: str, *, lr: float = 3e-3, budgets=(1536, 3072), arms=None,
              gbs: int = 4, extra: str = "", vocab: int = VOCAB) -> str:
    """A 1-size sweep spec of a 1-layer toy model (4 x 32 tokens per iteration); ``vocab``: the
    NullTokenizer's ``--vocab-size`` of the corpus at ``data_path``."""
    arms = arms or {"baseline": "--ixt-prefix-kind none"}
    arm_lines = "".join(f"  {name}: \"{flags}\"\n" for name, flags in arms.items())
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"""root: {root}
common:
  - --num-layers 1 --hidden-size 32 --num-attention-heads 2 --seq-length 32 --micro-batch-size 4
  - --log-interval 5 --weight-decay 0.01
data:
  data_path: [{data_path}]
  split: "90,10,0"
  tokenizer_type: NullTokenizer
  vocab_size: {vocab}
  data_cache_path: {root}/cache
sizes:
  h32: {{flags: "--ffn-hidden-size 64"}}
budgets: {list(budgets)}
arms:
{arm_lines}seeds: [7]
hyperparameters:
  lr: {{rule: {{value: {lr}, scale_with: hidden_size, reference: 32, exponent: -1.0}}}}
  global_batch_size: {{table: {{h32: {gbs}}}}}
eval_iters: 2
checkpoints_per_run: 2
{extra}""")
    return path


def write_scores(run_dir: str, task: str, items, *, metric: str = "exact_match", version=1.0, n_shot=0,
                 steer: str = "none", stamp: str = "2026-01-01T00-00-00.000000", value=None) -> str:
    """lm-eval's output for one task under ``run_dir/lm_eval/<model>/``: ``results_<stamp>.json``
    (aggregate ``metric,none``, ``value`` or the items' mean; ``versions``, ``n-shot``,
    ``config.model_args``) and the ``--log_samples`` file ``samples_<task>_<stamp>.jsonl``."""
    import json

    out = os.path.join(run_dir, "lm_eval", "model")
    os.makedirs(out, exist_ok=True)
    items = [float(v) for v in items]
    results = {"results": {task: {"alias": task, f"{metric},none": float(np.mean(items)) if value is None else value,
                                  f"{metric}_stderr,none": 0.01}},
               "versions": {task: version}, "n-shot": {task: n_shot},
               "config": {"model": "ixt_hf", "model_args": {"pretrained": f"{run_dir}/hf", "steer": steer}}}
    with open(os.path.join(out, f"results_{stamp}.json"), "w", encoding="utf-8") as f:
        json.dump(results, f)
    with open(os.path.join(out, f"samples_{task}_{stamp}.jsonl"), "w", encoding="utf-8") as f:
        for i, v in enumerate(items):
            f.write(json.dumps({"doc_id": i, "filter": "none", "metrics": [metric], metric: v}) + "\n")
    return run_dir


def write_downstream_arm(root: str, arm: str, law: PowerLaw, *, kind: str, task: str = "carry_add",
                         items: int = 200, budgets=(1e15, 3e15, 1e16, 3e16), seeds=(1, 2), rng=None,
                         steer: str = "none", sizes=SIZES, **score_kwargs) -> list:
    """:func:`write_arm`'s grid, each run also scored on ``task``: ``items`` items, each right with
    probability ``1 - law(C)`` (the error rate follows ``law``)."""
    rng = rng or np.random.default_rng(0)
    runs = write_arm(root, arm, law, kind=kind, budgets=budgets, seeds=seeds, rng=rng, sizes=sizes)
    for run in runs:
        flops = read_point(run).compute
        error = min(float(law.loss(flops)), 1.0)
        write_scores(run, task, rng.random(items) >= error, steer=steer, **score_kwargs)
    return runs
