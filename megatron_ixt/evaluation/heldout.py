"""Held-out loss per conditioning: ONE implementation for the trainer's periodic eval and for
``python -m megatron_ixt.evaluation.cli``.

:func:`evaluate` runs megatron-core's forward-only schedule (any TP/PP layout) over one micro-batch
stream per conditioning and returns, per conditioning, :class:`LossStats` of the document tokens
(``doc``) and of the prefix tokens (``prefix``). Statistics are sums over sequences, so they reduce
exactly over micro-batches, data-parallel ranks and pipeline stages: per sequence ``i`` with loss
sum ``s_i`` over ``n_i`` tokens, ``(sum s, sum n, sum s^2, sum n^2, sum s*n, #sequences with
n > 0)``. The loss is ``sum s / sum n`` (mean nats per token); its standard error is the ratio
estimator's, treating sequences as the sampled units (tokens within a sequence are correlated).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from megatron.core import parallel_state

STAT_KEYS = ("doc", "prefix")  # document tokens; feedback-prefix tokens
NUM_STATS = 6


def token_kind_masks(loss_mask: torch.Tensor, prefix_mask: torch.Tensor | None) -> tuple:
    """``(mask, {"doc": mask, "prefix": mask})`` as floats: the loss mask, and its document tokens
    (``loss_mask * (1 - prefix_mask)``) and feedback-prefix tokens (``loss_mask * prefix_mask``); no
    ``prefix_mask`` means no prefix token. The one split of the trainer's loss and this evaluation."""
    mask = loss_mask.float()
    prefix = torch.zeros_like(mask) if prefix_mask is None else prefix_mask.float()
    return mask, {"doc": mask * (1.0 - prefix), "prefix": mask * prefix}


def eval_loss_func(loss_mask: torch.Tensor, prefix_mask: torch.Tensor | None, output: torch.Tensor):
    """``loss_func`` for megatron-core's forward-only schedule: (loss sum, token count, report) with
    ``report[key]`` the six per-sequence sums of the module docstring (``[b, s]`` inputs)."""
    losses = output.float()
    mask, kinds = token_kind_masks(loss_mask, prefix_mask)
    report = {}
    for key, m in kinds.items():
        s, n = (losses * m).sum(dim=1), m.sum(dim=1)
        report[key] = torch.stack([s.sum(), n.sum(), (s * s).sum(), (n * n).sum(), (s * n).sum(),
                                   (n > 0).sum().to(s.dtype)]).detach()
    return (losses * mask).sum(), mask.sum().to(torch.int), report


@dataclass
class LossStats:
    """The six sums of the module docstring for one conditioning and token kind."""
    sums: list[float]

    @property
    def tokens(self) -> int:
        return int(self.sums[1])

    @property
    def loss(self) -> float | None:
        return self.sums[0] / self.sums[1] if self.sums[1] > 0 else None

    @property
    def stderr(self) -> float | None:
        s, n, ss, nn, sn, m = self.sums
        if n <= 0 or m < 2:
            return None
        mean = s / n
        var = max(ss - 2 * mean * sn + mean * mean * nn, 0.0) * m / (m - 1)
        return math.sqrt(var) / n

    def to_dict(self) -> dict:
        return {"loss": self.loss, "tokens": self.tokens, "stderr": self.stderr, "sequences": int(self.sums[5])}


@torch.no_grad()
def evaluate(model, forward_backward: Callable, forward_step: Callable, streams: dict[str, Iterator], *,
             iters: int, num_microbatches: int, micro_batch_size: int, seq_length: int,
             device: torch.device) -> dict[str, dict[str, LossStats]]:
    """``{conditioning: {"doc": LossStats, "prefix": LossStats}}`` over ``iters`` global batches of
    each stream. ``model``: a module or Megatron-LM's list of model chunks. ``forward_step`` must return
    :func:`eval_loss_func` as its loss function; the sums are all-reduced over the data-parallel (with
    context-parallel) and pipeline groups (every rank gets the result). Leaves the model in eval mode."""
    chunks = model if isinstance(model, list) else [model]
    for chunk in chunks:
        chunk.eval()
    out = {}
    for name, stream in streams.items():
        totals = torch.zeros(len(STAT_KEYS), NUM_STATS, dtype=torch.float64, device=device)
        for _ in range(iters):
            reports = forward_backward(
                forward_step_func=forward_step, data_iterator=stream, model=chunks,
                num_microbatches=num_microbatches, seq_length=seq_length, micro_batch_size=micro_batch_size,
                decoder_seq_length=seq_length, forward_only=True)
            for report in reports:
                totals += torch.stack([report[k].to(totals) for k in STAT_KEYS])
        dist.all_reduce(totals, group=parallel_state.get_data_parallel_group(with_context_parallel=True))
        dist.all_reduce(totals, group=parallel_state.get_pipeline_model_parallel_group())
        out[name] = {k: LossStats(totals[i].tolist()) for i, k in enumerate(STAT_KEYS)}
    return out


def summary(stats: dict[str, dict[str, LossStats]]) -> dict[str, float | None]:
    """The logged eval losses of :func:`evaluate`'s result: ``<conditioning>/doc_loss`` for each
    conditioning and ``prefix/prefix_loss`` when the ``prefix`` conditioning has prefix tokens."""
    result = {}
    for name, s in stats.items():
        result[f"{name}/doc_loss"] = s["doc"].loss
        if name == "prefix" and s["prefix"].tokens > 0:
            result["prefix/prefix_loss"] = s["prefix"].loss
    return result
