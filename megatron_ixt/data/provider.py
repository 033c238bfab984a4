"""Blends, splits and per-split paths -> IXT datasets through megatron-core's builder.

- :func:`add_ixt_dataset_args` (defined in ``megatron_ixt.data.options``) adds the ``--ixt-*``
  flags to an argparse parser (also usable as Megatron-LM's ``extra_args_provider``).
- :func:`dataset_config_from_args` makes an :class:`IXTGPTDatasetConfig` from Megatron-LM-named
  args (``--data-path`` weighted blends with ``--split``, or ``--train-data-path/--valid-data-path/
  --test-data-path``, ``--seq-length``, ``--seed``, ``--data-cache-path``, ``--reset-position-ids``,
  ...) and the ``--ixt-*`` flags, every IXT option read by name (a missing one fails, it never takes
  a default). The trainer's equivalent is ``megatron_ixt.training.data``.
- :func:`build_train_valid_test_datasets` runs ``BlendedMegatronDatasetBuilder`` with
  :class:`IXTGPTDataset`; :func:`valid_datasets` builds one validation dataset per conditioning.
- :func:`steering_prefix` and :func:`conditioning_configs`: the evaluation conditionings
  (true prefix, no prefix, steering prefix).
- :func:`train_valid_test_datasets_provider`: drop-in for Megatron-LM's ``pretrain_gpt.py``
  (see docs/dataset.md).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder

from megatron_ixt.data.blends import DEFAULT_SPLIT, blends_from_args
from megatron_ixt.data.dataset import (
    IXTGPTDataset,
    IXTGPTDatasetConfig,
    PrefixCooldownDataset,
    cooldown_start_sample,
)
from megatron_ixt.data.options import (
    NO_PREFIX,
    IXTOptions,
    add_ixt_dataset_args,  # noqa: F401 (public here too: Megatron-LM's entry)
)
from megatron_ixt.data.prefix_kinds import Level
from megatron_ixt.data.shards import metadata_path, read_metadata, shard_set_stem
from megatron_ixt.data.templates import recorded_template, steering

# GPTDatasetConfig field <- Megatron-LM arg, passed on when the args have it (else megatron-core's default).
_MEGATRON_LM_ARGS = {
    "num_dataset_builder_threads": "num_dataset_builder_threads",
    "path_to_cache": "data_cache_path",
    "mmap_bin_files": "mmap_bin_files",
    "create_attention_mask": "create_attention_mask_in_dataloader",
    "mid_level_dataset_surplus": "mid_level_dataset_surplus",
    "allow_ambiguous_pad_tokens": "allow_ambiguous_pad_tokens",
}
# Megatron-LM store_true flags that GPTDatasetConfig requires: absent means not given (False).
_MEGATRON_LM_SWITCHES = ("reset_position_ids", "reset_attention_mask", "eod_mask_loss")


def dataset_config_from_args(args, tokenizer, **overrides) -> IXTGPTDatasetConfig:
    """An :class:`IXTGPTDatasetConfig` from Megatron-LM-named args (with :func:`add_ixt_dataset_args`'
    flags); ``overrides`` win. Megatron-LM args the namespace lacks keep megatron-core's defaults."""
    blend, blend_per_split = blends_from_args(args)
    values = {field: getattr(args, name) for field, name in _MEGATRON_LM_ARGS.items() if hasattr(args, name)}
    values.update({name: bool(getattr(args, name, False)) for name in _MEGATRON_LM_SWITCHES})
    values.update(
        random_seed=args.seed, sequence_length=args.seq_length, tokenizer=tokenizer,
        blend=blend, blend_per_split=blend_per_split,
        split=(getattr(args, "split", None) or DEFAULT_SPLIT) if blend is not None else None,
        **IXTOptions.values_from_flags(args),
    )
    return IXTGPTDatasetConfig(**{**values, **overrides})


def build_train_valid_test_datasets(config: IXTGPTDatasetConfig, train_val_test_num_samples: Sequence[int | None],
                                    is_built_on_rank: Callable[[], bool] = lambda: True,
                                    global_batch_size: int = 1) -> list:
    """``[train, valid, test]`` datasets (``IXTGPTDataset`` or megatron-core ``BlendedDataset`` of
    them; None for a split that is not built). Call on every rank when torch.distributed is up.

    With ``config.prefix_cooldown_fraction`` the training split is a :class:`PrefixCooldownDataset`:
    the samples of its last iterations (of ``global_batch_size`` samples each, see
    :func:`cooldown_start_sample`) come from the same split built as ``conditioning_configs``'
    ``none`` variant. The validation and test splits are never cooled down.
    """
    sizes = list(train_val_test_num_samples)
    datasets = BlendedMegatronDatasetBuilder(
        IXTGPTDataset, sizes, is_built_on_rank, dataclasses.replace(config, prefix_cooldown_fraction=0.0)).build()
    fraction = config.prefix_cooldown_fraction
    if fraction and datasets[0] is not None:
        if not sizes[0]:
            raise ValueError("--ixt-prefix-cooldown-fraction needs the number of training samples")
        plain_config = one_split(conditioning_configs(config)["none"], 0)
        plain = BlendedMegatronDatasetBuilder(IXTGPTDataset, [sizes[0], 0, 0], is_built_on_rank,
                                              plain_config).build()[0]
        datasets[0] = PrefixCooldownDataset(datasets[0], plain,
                                            cooldown_start_sample(fraction, sizes[0], global_batch_size))
    return datasets


def config_paths(config: IXTGPTDatasetConfig) -> list[str]:
    """Every dataset path named by ``config.blend`` / ``config.blend_per_split``."""
    blends = [config.blend] if config.blend is not None else list(config.blend_per_split or [])
    return [path for blend in blends if blend is not None for path in blend[0]]


def steering_prefix(paths: Sequence[str], kind: str, level: Level | None = None, *, tokenizer=None,
                    critique: str | None = None) -> tuple[int, ...]:
    """The ``kind`` steering-prefix tokens of the IXT shard sets among ``paths`` (text-store paths).

    ``level`` None and no ``critique``: the stored top-level prefix, ``steering.<kind>.tokens`` of
    ``P_ixt.json``. Otherwise the ``kind`` template recorded in the shard sets is rendered for
    ``level`` (see ``prefix_kinds.steering_annotation``) and tokenized with ``tokenizer``.
    Raises if none of the paths is an IXT shard set, if one lacks ``kind``, or if they disagree.
    """
    found = {}
    for path in paths:
        stem = shard_set_stem(path)
        if stem is None:
            continue
        try:
            metadata = read_metadata(stem)
        except FileNotFoundError:
            continue
        if kind not in metadata["kinds"]:
            raise ValueError(f"{metadata_path(stem)} holds the prefix kinds {metadata['kinds']}, not {kind!r}")
        if level is None and critique is None:
            found[metadata_path(stem)] = tuple(int(t) for t in metadata["steering"][kind]["tokens"])
        else:
            found[metadata_path(stem)] = recorded_template(metadata, kind)
    if not found:
        raise ValueError(f"no IXT shard set (P_text_document with P_ixt.json) among {list(paths)}: "
                         "cannot read a steering prefix")
    if len(set(found.values())) > 1:
        raise ValueError(f"the shard sets disagree on the {kind} steering prefix: {sorted(found)}")
    value = next(iter(found.values()))
    if isinstance(value, tuple):
        return value
    if tokenizer is None:
        raise ValueError("a steering level other than the stored top level needs the tokenizer to tokenize it")
    return tuple(int(t) for t in tokenizer.tokenize(steering(kind, level, critique=critique, template=value)))


def conditioning_configs(config: IXTGPTDatasetConfig,
                         steering_tokens: Sequence[int] | None = None) -> dict[str, IXTGPTDatasetConfig]:
    """Evaluation variants of ``config``: ``prefix`` (each document with its true prefix, no
    dropout, all annotations), ``none`` (no prefix: GPTDataset samples) and, when
    ``steering_tokens`` are given, ``steering`` (every document under that one prefix), none of
    them cooled down; ``prefix`` and ``steering`` keep ``prefix_every_segment``.
    For ``prefix_kind='none'`` only ``none`` is returned."""
    plain = dataclasses.replace(config, prefix_kind=NO_PREFIX, prefix_dropout=0.0, annotated_fraction=1.0,
                                steering_prefix=None, prefix_cooldown_fraction=0.0, prefix_every_segment=False)
    if config.prefix_kind == NO_PREFIX:
        return {"none": plain}
    conditioned = dataclasses.replace(config, prefix_dropout=0.0, annotated_fraction=1.0, steering_prefix=None,
                                      prefix_cooldown_fraction=0.0)
    variants = {"prefix": conditioned, "none": plain}
    if steering_tokens is not None:
        variants["steering"] = dataclasses.replace(conditioned, steering_prefix=tuple(steering_tokens))
    return variants


def valid_datasets(variants: dict[str, IXTGPTDatasetConfig], num_samples: int) -> dict[str, object]:
    """``{conditioning: validation-split dataset of num_samples samples}`` for each config variant
    (the trainer's eval and ``python -m megatron_ixt.evaluation.cli``); variants without a validation
    split are left out."""
    out = {}
    for name, variant in variants.items():
        dataset = build_train_valid_test_datasets(one_split(variant, 1), [0, num_samples, 0])[1]
        if dataset is not None:
            out[name] = dataset
    return out


def one_split(config, split: int):
    """A copy of a dataset config that builds only ``split`` (0 train, 1 valid, 2 test): the same
    documents as the full build (same split boundaries), the other splits are left out (None)."""
    config = dataclasses.replace(config)
    if config.blend_per_split is not None:
        config.blend_per_split = [b if i == split else None for i, b in enumerate(config.blend_per_split)]
    else:
        config.split_matrix = [m if i == split else None for i, m in enumerate(config.split_matrix)]
    return config


def _is_dataset_built_on_rank(vp_stage: int | None = None) -> bool:
    """Megatron-LM's rule: first or last pipeline stage, tensor-parallel rank 0."""
    from megatron.core import parallel_state

    first = parallel_state.is_pipeline_first_stage(ignore_virtual=vp_stage is None, vp_stage=vp_stage)
    last = parallel_state.is_pipeline_last_stage(ignore_virtual=vp_stage is None, vp_stage=vp_stage)
    return (first or last) and parallel_state.get_tensor_model_parallel_rank() == 0


def train_valid_test_datasets_provider(train_val_test_num_samples, vp_stage: int | None = None):
    """Megatron-LM ``pretrain_gpt.py`` dataset provider building IXT datasets.

    Reads ``megatron.training.get_args()`` and ``get_tokenizer()`` at call time; pass
    :func:`add_ixt_dataset_args` as ``extra_args_provider`` to ``pretrain`` for the IXT flags.
    """
    from megatron.training import get_args, get_tokenizer, print_rank_0

    args = get_args()
    config = dataset_config_from_args(args, get_tokenizer())
    print_rank_0(f"> building IXT train, validation, and test datasets (prefix_kind={config.prefix_kind}) ...")
    datasets = build_train_valid_test_datasets(config, train_val_test_num_samples,
                                               lambda: _is_dataset_built_on_rank(vp_stage),
                                               global_batch_size=args.global_batch_size)
    print_rank_0("> finished creating IXT datasets ...")
    return datasets


train_valid_test_datasets_provider.is_distributed = True
