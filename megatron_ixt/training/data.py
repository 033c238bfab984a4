"""The trainer's datasets: the training split and one validation dataset per evaluation conditioning.

:func:`dataset_config` turns the trainer's config (``cfg.data`` with its ``ixt_*`` options, the
seed, the sequence length) into an ``IXTGPTDatasetConfig``; :func:`build_datasets` builds through
``megatron_ixt.data.provider`` what :class:`~megatron_ixt.training.trainer.Trainer` trains and
evaluates on. ``python -m megatron_ixt.evaluate`` uses the same two.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from megatron_ixt.data.blends import blends_from_args
from megatron_ixt.data.dataset import IXTGPTDatasetConfig
from megatron_ixt.data.options import NO_PREFIX, IXTOptions
from megatron_ixt.data.provider import (
    build_train_valid_test_datasets,
    conditioning_configs,
    config_paths,
    one_split,
    steering_prefix,
    valid_datasets,
)

if TYPE_CHECKING:
    from megatron_ixt.training.config import Config, DataConfig


def dataset_config(data: DataConfig, *, seed: int, sequence_length: int, tokenizer,
                   **overrides) -> IXTGPTDatasetConfig:
    """The :class:`IXTGPTDatasetConfig` of ``cfg.data`` (every field read by name: a renamed one is
    an AttributeError, never a silent default); ``overrides`` win."""
    blend, blend_per_split = blends_from_args(data)
    values = dict(
        random_seed=seed, sequence_length=sequence_length, tokenizer=tokenizer,
        blend=blend, blend_per_split=blend_per_split, split=data.split if blend is not None else None,
        path_to_cache=data.data_cache_path, reset_position_ids=data.reset_position_ids,
        reset_attention_mask=data.reset_attention_mask, eod_mask_loss=data.eod_mask_loss,
        create_attention_mask=data.reset_attention_mask,
        **IXTOptions.values_from_flags(data),
    )
    return IXTGPTDatasetConfig(**{**values, **overrides})


def build_datasets(cfg: Config, tokenizer):
    """``(train dataset, {conditioning: valid dataset})``.

    Conditionings (``conditioning_configs``): ``prefix`` (true prefixes), ``none`` and, when the
    shard sets carry one, ``steering`` (the top-quality prefix of ``P_ixt.json``); the baseline
    arm (``--ixt-prefix-kind none``) has only ``none``.
    """
    t = cfg.train
    config = dataset_config(cfg.data, seed=t.seed, sequence_length=cfg.model.seq_length, tokenizer=tokenizer)
    n_train = t.train_iters * t.global_batch_size
    n_valid = cfg.eval.eval_iters * t.global_batch_size
    train = build_train_valid_test_datasets(one_split(config, 0), [n_train, 0, 0],
                                            global_batch_size=t.global_batch_size)[0]
    steer = None
    if config.prefix_kind != NO_PREFIX:
        try:
            steer = steering_prefix(config_paths(config), config.prefix_kind)
        except ValueError:
            steer = None  # plain stores only: no steering conditioning to evaluate
    valid = valid_datasets(conditioning_configs(config, steer), n_valid) if n_valid else {}
    return train, valid
