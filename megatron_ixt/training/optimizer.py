"""Optimizer and learning-rate schedule: megatron-core's, configured from ``cfg.optim``.

:func:`build_optimizer` is the one place both are made: ``get_megatron_optimizer`` (AdamW or SGD,
gradient clipping, bf16 master weights, the distributed optimizer on GPU) and Megatron's
``OptimizerParamScheduler``, stepped once per iteration (linear warmup, then the decay style,
constant weight decay).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from megatron.core.optimizer import MegatronOptimizer, OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
from megatron.core.transformer.transformer_config import TransformerConfig

if TYPE_CHECKING:
    from megatron_ixt.training.config import Config


def build_optimizer(cfg: Config, config: TransformerConfig,
                    model) -> tuple[MegatronOptimizer, OptimizerParamScheduler]:
    """``(optimizer, scheduler)`` for the DDP-wrapped ``model`` (``config``: its TransformerConfig).
    Sets ``config.grad_scale_func``, which megatron-core's schedules call to scale the loss."""
    o, t = cfg.optim, cfg.train
    optimizer = get_megatron_optimizer(OptimizerConfig(
        optimizer=o.optimizer, lr=o.lr, min_lr=o.min_lr, weight_decay=o.weight_decay,
        adam_beta1=o.adam_beta1, adam_beta2=o.adam_beta2, adam_eps=o.adam_eps,
        clip_grad=o.clip_grad, bf16=t.bf16, params_dtype=config.params_dtype,
        use_distributed_optimizer=cfg.parallel.use_distributed_optimizer), [model])
    config.grad_scale_func = optimizer.scale_loss
    iters = max(t.train_iters, 1)  # --train-iters 0 (an initial checkpoint): any valid decay
    kwargs = dict(
        optimizer=optimizer, init_lr=0.0, max_lr=o.lr, min_lr=o.min_lr,
        lr_warmup_steps=o.lr_warmup_iters,
        lr_decay_steps=max(o.lr_decay_iters or iters, o.lr_warmup_iters + 1),
        lr_decay_style=o.lr_decay_style, start_wd=o.weight_decay, end_wd=o.weight_decay,
        wd_incr_steps=iters, wd_incr_style="constant")
    if o.lr_decay_style == "WSD":
        kwargs.update(wsd_decay_steps=o.lr_wsd_decay_iters, lr_wsd_decay_style=o.lr_wsd_decay_style)
    return optimizer, OptimizerParamScheduler(**kwargs)
