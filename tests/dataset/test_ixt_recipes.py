"""Conditioning recipes: a prefix on every segment of a split document, and the prefix-free cooldown."""
import dataclasses

import numpy as np
import pytest
import torch
from megatron.core.datasets import helpers
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
from megatron.core.datasets.utils import Split

from megatron_ixt.data.dataset import every_segment_sample_index
from megatron_ixt.data.provider import build_train_valid_test_datasets, conditioning_configs
from megatron_ixt.data.shards import text_store_path
from tests.helpers.dataset import CRITIQUE_RANGE, PREFIX_START, STEERING, Corpus, build_dataset
from tests.helpers.token_shards import write_token_shard_set

SEQ = 32


@pytest.fixture
def long_documents(tmp_path, tokenizer):
    """A shard set of 60 documents of 100 to 300 text tokens (3 to 10 samples of SEQ each), 80%
    annotated with critique prefixes of 3 to 9 tokens."""
    rng = np.random.default_rng(3)
    texts = [rng.integers(1, PREFIX_START, rng.integers(100, 300)) for _ in range(60)]
    prefixes = [rng.integers(*CRITIQUE_RANGE, rng.integers(3, 10)) if rng.random() < 0.8
                else np.zeros(0, dtype=np.int64) for _ in texts]
    prefix = str(tmp_path / "long")
    write_token_shard_set(prefix, {"text": [np.append(t, tokenizer.eod) for t in texts], "critique": prefixes,
                                   "quality": [p[:2] for p in prefixes]}, vocab_size=tokenizer.eod, steering=STEERING)
    return Corpus(text_store_path(prefix), texts, {"critique": prefixes}, 0)


def packing_order(dataset):
    """``(sample index position, sample)`` for every sample, in packing (un-shuffled) order."""
    order = np.argsort(np.asarray(dataset.shuffle_index), kind="stable")
    return [(int(dataset.shuffle_index[i]), dataset[int(i)]) for i in order]


def document_label_stream(dataset, skip_repeated=False) -> np.ndarray:
    """The labels that are not prefix tokens, over all samples in packing order, trailing padding
    removed; ``skip_repeated``: without the one document token a re-inserted prefix predicts again."""
    parts = []
    for position, sample in packing_order(dataset):
        labels = sample["labels"].numpy()[sample["prefix_mask"].numpy() == 0]
        beg, offset = dataset.sample_index[position].tolist()
        if skip_repeated and starts_inside_document(dataset, beg, offset) and \
                offset >= dataset.prefix_length[beg] > 0:
            labels = labels[1:]
        parts.append(labels)
    return np.trim_zeros(np.concatenate(parts), "b")


def starts_inside_document(dataset, beg, offset) -> bool:
    """The sample starting at (beg, offset) predicts more tokens of that conditioned document."""
    length = dataset.prefix_length[beg] + dataset.dataset.sequence_lengths[dataset.document_index[beg]]
    return 0 < offset and offset + 1 < length


@pytest.mark.parametrize("extra", [0, 1])
@pytest.mark.parametrize("drop_last", [True, False])
def test_every_segment_packing_without_prefixes_is_megatron_cores(extra, drop_last):
    rng = np.random.default_rng(0)
    for seq in (7, 16, 64):
        lengths = rng.integers(0, 50, 400).astype(np.int32)
        lengths[0] = 5
        expected = helpers.build_sample_idx(lengths, np.arange(len(lengths), dtype=np.int32), seq, 1,
                                            int(lengths.sum()), drop_last, bool(extra))
        got = every_segment_sample_index(lengths, np.zeros_like(lengths), seq, extra, drop_last)
        np.testing.assert_array_equal(got, expected, err_msg=f"seq {seq}")


@pytest.mark.parametrize("prefix_loss", ["train", "mask"])
def test_every_sample_inside_a_document_starts_with_its_prefix(long_documents, config, prefix_loss):
    corpus = long_documents
    on = build_dataset(corpus, config(sequence_length=SEQ, prefix_every_segment=True, prefix_loss=prefix_loss))
    off = build_dataset(corpus, config(sequence_length=SEQ, prefix_loss=prefix_loss))
    np.testing.assert_array_equal(on.document_index, off.document_index)

    reinserted = 0
    for position, sample in packing_order(on):
        beg, offset = on.sample_index[position].tolist()
        document = int(on.document_index[beg])
        prefix = corpus.prefixes["critique"][document]
        tokens = sample["tokens"].numpy()
        if not (starts_inside_document(on, beg, offset) and len(prefix) > 0):
            continue
        reinserted += 1
        p = len(prefix)
        np.testing.assert_array_equal(tokens[:p], prefix)
        conditioned = np.concatenate([prefix, corpus.texts[document]])
        assert tokens[p] == conditioned[max(offset, p)]  # the document goes on where the last sample ended
        assert sample["prefix_mask"][:p - 1].all() and not sample["prefix_mask"][p - 1]
        in_loss = sample["loss_mask"][:p - 1]
        assert (in_loss.all() if prefix_loss == "train" else not in_loss.any())
    assert reinserted > 100

    # no document token is lost or added: the document labels are the flag-off ones, plus the one
    # token after each re-inserted prefix that the previous sample predicted last
    np.testing.assert_array_equal(document_label_stream(on, skip_repeated=True), document_label_stream(off))
    assert len(on) > len(off)  # the re-inserted prefixes take room: more samples per epoch


def test_every_segment_is_cached_and_meets_the_sample_count(long_documents, config):
    options = dict(sequence_length=SEQ, prefix_every_segment=True, prefix_dropout=0.3)
    per_epoch = len(build_dataset(long_documents, config(**options)))
    num_samples = 3 * per_epoch + 5  # several epochs; prefixes dropped differently in each
    first = build_dataset(long_documents, config(**options), num_samples, Split.train)
    assert len(first) >= num_samples
    assert sorted(np.asarray(first.shuffle_index).tolist()) == list(range(len(first)))
    again = build_dataset(long_documents, config(**options), num_samples, Split.train)
    assert isinstance(again.sample_index.base, np.memmap)  # loaded from the cache
    assert '"prefix_every_segment": true' in again.unique_description
    for i in range(0, len(first), 7):
        for key, value in first[i].items():
            assert torch.equal(value, again[i][key]), (i, key)
    off = build_dataset(long_documents, config(sequence_length=SEQ, prefix_dropout=0.3), num_samples, Split.train)
    assert off.unique_description_hash != first.unique_description_hash


def test_every_segment_with_no_prefix_is_gpt_dataset(long_documents, config):
    ixt = build_dataset(long_documents, config(sequence_length=SEQ, prefix_kind="none", prefix_every_segment=True),
                        200, Split.train)
    gpt_config = GPTDatasetConfig(**{k: v for k, v in vars(config(sequence_length=SEQ)).items()
                                     if k in GPTDatasetConfig.__dataclass_fields__
                                     and GPTDatasetConfig.__dataclass_fields__[k].init})
    gpt = build_dataset(long_documents, gpt_config, 200, Split.train, cls=GPTDataset)
    assert len(ixt) == len(gpt)
    for i in range(len(gpt)):
        for key, value in gpt[i].items():
            assert torch.equal(ixt[i][key], value), (i, key)


def test_cooldown_switches_to_prefix_free_samples_at_its_iteration(long_documents, config):
    cfg = config(sequence_length=SEQ, blend=([long_documents.path], None), prefix_cooldown_fraction=0.3)
    train = build_train_valid_test_datasets(cfg, [40, 0, 0], global_batch_size=4)[0]
    conditioned = build_train_valid_test_datasets(dataclasses.replace(cfg, prefix_cooldown_fraction=0.0),
                                                  [40, 0, 0])[0]
    plain = build_train_valid_test_datasets(conditioning_configs(cfg)["none"], [40, 0, 0])[0]
    start = 28  # 10 iterations of 4 samples; the last round(0.3 * 10) = 3 are the cooldown
    assert train.first_plain_sample == start
    for i in range(40):
        expected = conditioned[i] if i < start else plain[i]
        for key, value in expected.items():
            assert torch.equal(train[i][key], value), (i, key)
    assert any(train[i]["prefix_mask"].any() for i in range(start))
    assert not any(train[i]["prefix_mask"].any() for i in range(start, 40))
    with pytest.raises(ValueError, match="build_train_valid_test_datasets"):
        build_dataset(long_documents, cfg)
