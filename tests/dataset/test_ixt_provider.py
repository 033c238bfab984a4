"""Blends, splits and Megatron-LM-named args through megatron-core's BlendedMegatronDatasetBuilder."""
import argparse

import numpy as np
import pytest
import torch
from megatron.core.datasets.blended_dataset import BlendedDataset

from megatron_ixt.data import (
    IXTGPTDataset,
    add_ixt_dataset_args,
    build_train_valid_test_datasets,
    conditioning_configs,
    config_paths,
    dataset_config_from_args,
    steering_prefix,
)
from tests.helpers.dataset import PREFIX_START, STEERING


def complete_documents(tokens: np.ndarray, eod: int):
    """(prefix, text) of every conditioned document that starts and ends inside ``tokens``."""
    ends = np.flatnonzero(tokens == eod)
    for start, end in zip(ends[:-1] + 1, ends[1:]):
        chunk = tokens[start:end]
        n_prefix = int(np.argmax(chunk < PREFIX_START))
        yield chunk[:n_prefix], chunk[n_prefix:]


def check_blend_samples(dataset, corpus, plain, eod):
    """Every complete document in every sample: IXT documents carry their own prefix, plain ones none."""
    seen = {corpus.store: 0, plain.store: 0}
    for i in range(len(dataset)):
        sample = dataset[i]
        assert torch.equal(sample["prefix_mask"],
                           ((sample["labels"] >= PREFIX_START) & (sample["labels"] != eod)).float())
        text = np.append(sample["tokens"].numpy(), sample["labels"].numpy()[-1])
        for prefix, body in complete_documents(text, eod):
            store = corpus if body[0] < 251 else plain
            seen[store.store] += 1
            expected = corpus.prefixes["critique"][store.document_id(body)] if store is corpus else []
            np.testing.assert_array_equal(prefix, expected)
            np.testing.assert_array_equal(body, store.texts[store.document_id(body)])
    return seen


def test_blend_of_ixt_and_plain_store(make_shard_set, make_plain_store, config, tokenizer, process_group):
    corpus, plain = make_shard_set(num_documents=600), make_plain_store(num_documents=400)
    cfg = config(blend=([corpus.path, plain.path], [0.6, 0.4]), split="90,5,5")
    train, valid, test = build_train_valid_test_datasets(cfg, [300, 30, 30])

    assert isinstance(train, BlendedDataset) and len(train) >= 300
    assert [type(d) for d in train.datasets] == [IXTGPTDataset, IXTGPTDataset]
    assert train.datasets[0].prefix_dataset is not None and train.datasets[1].prefix_dataset is None
    seen = check_blend_samples(train, corpus, plain, tokenizer.eod)
    assert seen[corpus.store] > 100 and seen[plain.store] > 50
    for split in (valid, test):
        assert len(split) >= 30 and check_blend_samples(split, corpus, plain, tokenizer.eod)


def test_blend_per_split_with_plain_validation(make_shard_set, make_plain_store, config, tokenizer):
    corpus, plain = make_shard_set(num_documents=300), make_plain_store(num_documents=200)
    cfg = config(blend_per_split=[([corpus.path], None), ([plain.path], None), None], split=None)
    train, valid, test = build_train_valid_test_datasets(cfg, [100, 20, None])
    assert test is None
    assert isinstance(train, IXTGPTDataset) and isinstance(valid, IXTGPTDataset)
    assert any(train[i]["prefix_mask"].any() for i in range(len(train)))
    assert not any(valid[i]["prefix_mask"].any() for i in range(len(valid)))


def test_config_from_megatron_lm_args(make_shard_set, make_plain_store, tokenizer, tmp_path, process_group):
    corpus, plain = make_shard_set(num_documents=300), make_plain_store(num_documents=200)
    parser = add_ixt_dataset_args(argparse.ArgumentParser())
    args = parser.parse_args(["--ixt-prefix-kind", "quality", "--ixt-prefix-loss", "mask",
                              "--ixt-prefix-dropout", "0.1", "--ixt-annotated-fraction", "0.5"])
    args.data_path = ["0.7", corpus.path, "0.3", plain.path]
    args.seed, args.seq_length, args.split = 5, 32, "96,2,2"
    args.data_cache_path = str(tmp_path / "cache")
    args.eod_mask_loss = True
    cfg = dataset_config_from_args(args, tokenizer)

    assert ((cfg.prefix_kind, cfg.prefix_loss, cfg.prefix_dropout, cfg.annotated_fraction)
            == ("quality", "mask", 0.1, 0.5))
    assert cfg.blend == ([corpus.path, plain.path], [0.7, 0.3]) and cfg.split == "96,2,2"
    assert cfg.eod_mask_loss and not cfg.reset_position_ids and config_paths(cfg) == [corpus.path, plain.path]
    train, valid, _ = build_train_valid_test_datasets(cfg, [50, 5, 5])
    assert len(train) >= 50 and len(valid) >= 5
    sample = train[0]
    assert sample["tokens"].shape == (32,) and not (sample["loss_mask"] * sample["prefix_mask"]).any()

    args.train_data_path = [corpus.path]
    with pytest.raises(ValueError, match="exclusive"):
        dataset_config_from_args(args, tokenizer)


def test_conditioning_configs(make_shard_set, config, tokenizer):
    corpus = make_shard_set(num_documents=200)
    cfg = config(prefix_dropout=0.2, annotated_fraction=0.5, blend=([corpus.path], None))
    variants = conditioning_configs(cfg, steering_prefix(config_paths(cfg), "critique"))
    assert set(variants) == {"prefix", "none", "steering"}
    assert variants["steering"].steering_prefix == tuple(STEERING["critique"])
    assert variants["prefix"].prefix_dropout == 0.0 and variants["prefix"].annotated_fraction == 1.0
    assert variants["none"].prefix_kind == "none"
    assert len({v.steering_prefix for v in variants.values()}) == 2
    assert set(conditioning_configs(config(prefix_kind="none"))) == {"none"}


def test_steering_prefix_needs_an_ixt_shard_set(make_plain_store):
    plain = make_plain_store(num_documents=10)
    with pytest.raises(ValueError, match="no IXT shard set"):
        steering_prefix([plain.path], "critique")


def test_dataset_config_of_cfg_data_reads_every_field(make_shard_set, tokenizer):
    """The trainer's DataConfig reaches IXTGPTDatasetConfig field by field; a renamed field is an
    error, never a silent default; every IXT default is the dataset config's own."""
    import dataclasses
    import types

    from megatron_ixt.data.blends import DEFAULT_SPLIT
    from megatron_ixt.data.options import IXTOptions
    from megatron_ixt.training.config import DataConfig
    from megatron_ixt.training.data import dataset_config

    corpus = make_shard_set(num_documents=40)
    data = DataConfig(data_path=[corpus.path], eod_mask_loss=True, ixt_prefix_kind="quality", ixt_prefix_loss="mask",
                      ixt_prefix_dropout=0.25, ixt_annotated_fraction=0.5)
    cfg = dataset_config(data, seed=3, sequence_length=32, tokenizer=tokenizer)
    assert ((cfg.prefix_kind, cfg.prefix_loss, cfg.prefix_dropout, cfg.annotated_fraction)
            == ("quality", "mask", 0.25, 0.5))
    assert cfg.split == DEFAULT_SPLIT and cfg.eod_mask_loss and cfg.random_seed == 3 and cfg.sequence_length == 32
    renamed = types.SimpleNamespace(**{k: v for k, v in dataclasses.asdict(data).items() if k != "ixt_prefix_loss"},
                                    ixt_loss="mask")
    with pytest.raises(AttributeError, match="ixt_prefix_loss"):
        dataset_config(renamed, seed=3, sequence_length=32, tokenizer=tokenizer)
    defaults, flags = DataConfig(), add_ixt_dataset_args(argparse.ArgumentParser()).parse_args([])
    for field in dataclasses.fields(IXTOptions):
        name = field.name
        assert getattr(defaults, f"ixt_{name}") == getattr(flags, f"ixt_{name}") == getattr(IXTOptions(), name)
    assert DataConfig().split == DEFAULT_SPLIT
