"""IXTGPTDataset on real shard sets: token stream, masks, options, equivalence with GPTDataset."""
import math

import numpy as np
import pytest
import torch
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
from megatron.core.datasets.utils import Split

from megatron_ixt.data.dataset import IXTGPTDataset
from megatron_ixt.data.shards import metadata_path, shard_set_stem
from tests.helpers.dataset import (
    PREFIX_START,
    STEERING,
    build_dataset,
    conditioned_documents,
    samples_in_order,
    token_stream,
)


def within(measured, p, n, sigmas=4.0):
    return abs(measured - p) <= sigmas * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("kind", ["critique", "quality", "none"])
def test_every_document_once_preceded_by_its_prefix(make_shard_set, config, tokenizer, kind):
    corpus = make_shard_set(num_documents=400)
    dataset = build_dataset(corpus, config(prefix_kind=kind))
    documents, rest = conditioned_documents(token_stream(dataset), tokenizer.eod)

    assert len(rest) == 0
    ids = [corpus.document_id(text) for _, text in documents]
    assert sorted(ids) == list(range(400))
    for (prefix, text), i in zip(documents, ids):
        np.testing.assert_array_equal(text, corpus.texts[i])
        expected = np.zeros(0) if kind == "none" else corpus.prefixes[kind][i]
        np.testing.assert_array_equal(prefix, expected)
    assert sum(len(p) > 0 for p, _ in documents) == (0 if kind == "none" else corpus.annotated().sum())


@pytest.mark.parametrize("split,num_samples", [(Split.train, 300), (Split.train, 220), (Split.valid, None)])
@pytest.mark.parametrize("extra_token", [True, False])
@pytest.mark.parametrize("resets", [False, True])
def test_none_equals_gpt_dataset(make_shard_set, config, split, num_samples, extra_token, resets):
    corpus = make_shard_set(num_documents=200)
    options = dict(add_extra_token_to_sequence=extra_token, reset_position_ids=resets,
                   reset_attention_mask=resets, eod_mask_loss=resets)
    ixt = build_dataset(corpus, config(prefix_kind="none", **options), num_samples, split)
    gpt_config = GPTDatasetConfig(**{k: v for k, v in vars(config(**options)).items()
                                     if k in GPTDatasetConfig.__dataclass_fields__
                                     and GPTDatasetConfig.__dataclass_fields__[k].init})
    gpt = build_dataset(corpus, gpt_config, num_samples, split, cls=GPTDataset)

    assert num_samples is None or len(gpt) >= num_samples
    assert len(ixt) == len(gpt)
    for i in range(len(gpt)):
        a, b = ixt[i], gpt[i]
        assert set(a) == set(b) | {"prefix_mask"}
        for key in b:
            assert torch.equal(a[key], b[key]), (i, key)
        assert not a["prefix_mask"].any()


@pytest.mark.parametrize("prefix_loss", ["train", "mask"])
@pytest.mark.parametrize("extra_token", [True, False])
@pytest.mark.parametrize("eod_mask_loss", [False, True])
def test_prefix_mask_and_loss_mask(make_shard_set, config, tokenizer, prefix_loss, extra_token, eod_mask_loss):
    corpus = make_shard_set(num_documents=200)
    dataset = build_dataset(corpus, config(prefix_kind="critique", prefix_loss=prefix_loss,
                                           add_extra_token_to_sequence=extra_token, eod_mask_loss=eod_mask_loss))
    seen_prefix = 0
    for sample in samples_in_order(dataset):
        labels, tokens = sample["labels"], sample["tokens"]
        is_prefix = (labels >= PREFIX_START) & (labels != tokenizer.eod)
        assert sample["prefix_mask"].dtype == torch.float and sample["prefix_mask"].shape == sample["loss_mask"].shape
        assert torch.equal(sample["prefix_mask"], is_prefix.float())
        expected = (labels != 0).float()  # padding labels are 0 (text tokens never are)
        if not extra_token:
            expected[-1] = 0.0  # the last label is padding without the extra token
        if eod_mask_loss:
            expected[tokens == tokenizer.eod] = 0.0
        if prefix_loss == "mask":
            expected[is_prefix] = 0.0
        assert torch.equal(sample["loss_mask"], expected)
        seen_prefix += int(is_prefix.sum())
    assert seen_prefix > 0


def test_resets_treat_conditioned_document_as_one_unit(make_shard_set, config, tokenizer):
    corpus = make_shard_set(num_documents=100, annotated=1.0)
    dataset = build_dataset(corpus, config(prefix_kind="critique", reset_position_ids=True,
                                           reset_attention_mask=True))
    checked = 0
    for sample in samples_in_order(dataset):
        tokens, positions, masked = sample["tokens"], sample["position_ids"], sample["attention_mask"][0]
        starts = [0] + [int(i) + 1 for i in torch.nonzero(tokens == tokenizer.eod).flatten() if i + 1 < len(tokens)]
        for a, b in zip(starts, starts[1:] + [len(tokens)]):
            # positions count from the start of the conditioned document (its prefix) ...
            assert torch.equal(positions[a:b] - positions[a], torch.arange(b - a))
            if a > 0:
                assert positions[a] == 0 and tokens[a] >= PREFIX_START  # a new document starts with its prefix
                # ... and its text attends to its own prefix but not to the previous document
                assert not masked[b - 1, a:b].any() and masked[b - 1, :a].all()
                checked += 1
    assert checked > 50


def test_prefix_dropout_per_document_and_epoch(make_shard_set, config, tokenizer):
    corpus = make_shard_set(num_documents=1000, annotated=1.0)
    p = 0.3
    dataset = build_dataset(corpus, config(prefix_kind="critique", prefix_dropout=p), num_samples=1800,
                            split=Split.train)
    documents, _ = conditioned_documents(token_stream(dataset), tokenizer.eod)
    ids = np.array([corpus.document_id(text) for _, text in documents])
    dropped = np.array([len(prefix) == 0 for prefix, _ in documents])
    for (prefix, _), i in zip(documents, ids):
        assert len(prefix) == 0 or np.array_equal(prefix, corpus.prefixes["critique"][i])

    epochs = int(np.bincount(ids).max())
    assert epochs >= 3
    counts = np.bincount(ids, minlength=1000)
    assert set(counts) <= {epochs - 1, epochs} and (counts == epochs - 1).sum() <= 64 // 3
    assert within(dropped.mean(), p, len(dropped))
    # decided per document AND epoch: documents shown both with and without their prefix
    full = counts == epochs
    dropped_per_doc = np.bincount(ids, weights=dropped, minlength=1000)[full]
    mixed = ((dropped_per_doc > 0) & (dropped_per_doc < epochs)).mean()
    assert within(mixed, 1 - p ** epochs - (1 - p) ** epochs, full.sum())
    # deterministic from the seed
    again = build_dataset(corpus, config(prefix_kind="critique", prefix_dropout=p, path_to_cache=None),
                          num_samples=1800, split=Split.train)
    other = build_dataset(corpus, config(prefix_kind="critique", prefix_dropout=p, random_seed=99),
                          num_samples=1800, split=Split.train)
    np.testing.assert_array_equal(again.prefix_length, dataset.prefix_length)
    assert not np.array_equal(other.prefix_length[np.argsort(other.document_index, kind="stable")],
                                 dataset.prefix_length[np.argsort(dataset.document_index, kind="stable")])


def test_annotated_fraction(make_shard_set, config, tokenizer):
    corpus = make_shard_set(num_documents=3000, annotated=0.7)
    annotated = corpus.annotated()
    used = {}
    for fraction in (0.15, 0.3):
        dataset = build_dataset(corpus, config(prefix_kind="critique", annotated_fraction=fraction))
        documents, _ = conditioned_documents(token_stream(dataset), tokenizer.eod)
        ids = np.array([corpus.document_id(text) for _, text in documents])
        has_prefix = np.zeros(3000, dtype=bool)
        has_prefix[ids] = [len(prefix) > 0 for prefix, _ in documents]
        assert not (has_prefix & ~annotated).any()
        assert within(has_prefix[annotated].mean(), fraction, annotated.sum())
        used[fraction] = has_prefix
    assert not (used[0.15] & ~used[0.3]).any()  # the smaller subset is inside the larger one


def test_steering_prefix_conditions_every_document(make_shard_set, make_plain_store, config, tokenizer):
    from megatron_ixt.data.provider import steering_prefix

    corpus, plain = make_shard_set(num_documents=200, annotated=0.5), make_plain_store(num_documents=100)
    tokens = steering_prefix([plain.path, corpus.path], "critique")
    assert list(tokens) == STEERING["critique"]
    for store in (corpus, plain):
        dataset = build_dataset(store, config(prefix_kind="critique", steering_prefix=tokens))
        documents, rest = conditioned_documents(token_stream(dataset), tokenizer.eod)
        assert len(documents) == len(store.texts) and len(rest) == 0
        for prefix, _ in documents:
            assert list(prefix) == STEERING["critique"]


def test_plain_store_gets_no_prefix(make_plain_store, config, tokenizer):
    plain = make_plain_store(num_documents=100)
    dataset = build_dataset(plain, config(prefix_kind="critique"))
    assert dataset.prefix_dataset is None
    documents, _ = conditioned_documents(token_stream(dataset), tokenizer.eod)
    assert len(documents) == 100 and all(len(prefix) == 0 for prefix, _ in documents)


def test_cache_key_changes_with_every_option(make_shard_set, config):
    corpus = make_shard_set(num_documents=100)
    variants = {
        "base": {},
        "quality": dict(prefix_kind="quality"),
        "none": dict(prefix_kind="none"),
        "mask": dict(prefix_loss="mask"),
        "dropout": dict(prefix_dropout=0.1),
        "fraction": dict(annotated_fraction=0.5),
        "every_segment": dict(prefix_every_segment=True),
        "steering": dict(steering_prefix=(740, 741)),
        "steering2": dict(steering_prefix=(740, 742)),
        "extra_token": dict(add_extra_token_to_sequence=False),
        "seed": dict(random_seed=7),
    }
    datasets = {name: build_dataset(corpus, config(**options)) for name, options in variants.items()}
    hashes = {name: d.unique_description_hash for name, d in datasets.items()}
    assert len(set(hashes.values())) == len(variants), hashes

    # the same options hit the cache: indices are loaded (memory-mapped), samples identical
    again = build_dataset(corpus, config(**variants["dropout"]))
    assert isinstance(again.sample_index.base, np.memmap) and isinstance(again.prefix_length.base, np.memmap)
    for i in range(len(again)):
        for key, value in again[i].items():
            assert torch.equal(value, datasets["dropout"][i][key])


def test_misaligned_or_missing_prefix_store_is_a_clear_error(make_shard_set, config, tmp_path):
    import os
    import shutil

    corpus = make_shard_set("a", num_documents=50)
    other = make_shard_set("b", num_documents=40)
    stem_a = shard_set_stem(corpus.path)
    for ext in (".bin", ".idx"):
        shutil.copy(shard_set_stem(other.path) + "_critique_prefix" + ext, stem_a + "_critique_prefix" + ext)
    with pytest.raises(ValueError, match=r"a_critique_prefix: 40 prefixes for 50 documents"):
        build_dataset(corpus, config(prefix_kind="critique"))

    os.remove(stem_a + "_quality_prefix.idx")
    assert os.path.exists(metadata_path(stem_a))
    with pytest.raises(FileNotFoundError, match="no quality prefix store"):
        build_dataset(corpus, config(prefix_kind="quality"))


@pytest.mark.parametrize("options,message", [
    (dict(prefix_kind="critic"), "prefix_kind"),
    (dict(prefix_loss="none"), "prefix_loss"),
    (dict(prefix_dropout=1.5), "prefix_dropout"),
    (dict(annotated_fraction=-0.1), "annotated_fraction"),
    (dict(prefix_kind="none", steering_prefix=(1, 2)), "steering_prefix"),
    (dict(prefix_dropout=0.1, steering_prefix=(1, 2)), "prefix_dropout=0.0"),
])
def test_bad_config_is_rejected(config, options, message):
    with pytest.raises(ValueError, match=message):
        config(**options)


def test_index_types_match_gpt_dataset(make_shard_set, config):
    dataset = build_dataset(make_shard_set(num_documents=50), config(), num_samples=100, split=Split.train)
    assert isinstance(dataset, GPTDataset) and isinstance(dataset, IXTGPTDataset)
    assert dataset.document_index.dtype == np.int32 and dataset.prefix_length.dtype == np.int32
    assert dataset.sample_index.shape == (len(dataset) + 1, 2) and len(dataset) >= 100


def test_inter_document_masking_treats_conditioned_document_as_one_unit(make_shard_set, config, tokenizer):
    """megatron-core >= 0.17: cu_seqlens cut at conditioned-document boundaries (before each prefix)."""
    if "inter_document_masking" not in GPTDatasetConfig.__dataclass_fields__:
        pytest.skip("this megatron-core has no inter_document_masking (added in 0.17)")
    corpus = make_shard_set(num_documents=100, annotated=1.0)
    dataset = build_dataset(corpus, config(prefix_kind="critique", inter_document_masking=True))
    for sample in samples_in_order(dataset)[:-1]:  # the last one is padded
        tokens = sample["tokens"]
        cu = sample["cu_seqlens"][sample["cu_seqlens"] < len(tokens)].tolist()
        starts = [0] + [int(i) + 1 for i in torch.nonzero(tokens[:-1] == tokenizer.eod).flatten()]
        assert cu == starts
        for a in starts[1:]:
            assert tokens[a] >= PREFIX_START and sample["position_ids"][a] == 0


def test_stale_cache_is_refused(make_shard_set, config):
    corpus = make_shard_set("a", num_documents=100, seed=0)
    build_dataset(corpus, config())
    make_shard_set("a", num_documents=100, seed=5)  # preprocessed again: other prefixes, same name
    with pytest.raises(ValueError, match="does not match the prefix store"):
        build_dataset(corpus, config())


def test_cache_files_are_renamed_into_place(make_shard_set, config, tmp_path):
    """A second build of the same indices (another run sharing the cache) replaces each file by a
    rename, never rewriting it in place: a run reading (memory-mapping) the first build's files
    keeps whole files, and no temporary file is left."""
    corpus = make_shard_set("a", num_documents=100, seed=0)
    first = build_dataset(corpus, config())
    cache = tmp_path / "cache"
    before = {p.name: (p.stat().st_ino, p.read_bytes()) for p in cache.iterdir()}
    assert len(before) == 5 and any(name.endswith("-description.txt") for name in before)
    (cache / next(n for n in before if n.endswith("-description.txt"))).unlink()  # as if still being built
    second = build_dataset(corpus, config())
    after = {p.name: (p.stat().st_ino, p.read_bytes()) for p in cache.iterdir()}
    assert after.keys() == before.keys()
    for name, (inode, data) in after.items():
        assert data == before[name][1], name
        if name.endswith(".npy"):  # (the deleted description's inode may be reused)
            assert inode != before[name][0], name
    assert len(first) == len(second) and first[0]["tokens"].tolist() == second[0]["tokens"].tolist()
