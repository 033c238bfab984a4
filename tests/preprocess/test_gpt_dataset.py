"""The text store is a plain Megatron store: megatron-core's GPTDataset trains on it unchanged."""
from __future__ import annotations

from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
from megatron.core.datasets.indexed_dataset import IndexedDataset

from megatron_ixt.data import shards


def test_plain_gpt_dataset_builds_and_yields_samples(ixt_shard_set, sp_tokenizer, tmp_path):
    text_path = shards.text_store_path(ixt_shard_set.prefix)
    seq = 64
    config = GPTDatasetConfig(random_seed=1234, sequence_length=seq, blend=([text_path], None), split="90,10,0",
                              tokenizer=sp_tokenizer, reset_position_ids=False, reset_attention_mask=False,
                              eod_mask_loss=False, path_to_cache=str(tmp_path / "cache"))
    train, valid, test = BlendedMegatronDatasetBuilder(GPTDataset, [40, 5, None], lambda: True, config).build()
    assert test is None and len(train) >= 40 and len(valid) >= 5
    store = IndexedDataset(text_path)
    eod = sp_tokenizer.eod
    documents = [store[i].tolist() for i in range(len(store))]
    assert all(d[-1] == eod and eod not in d[:-1] for d in documents)
    bodies = [d[:-1] for d in documents]
    crossed = False
    for k in range(len(train)):
        sample = train[k]
        tokens, labels = sample["tokens"].tolist(), sample["labels"].tolist()
        assert len(tokens) == seq and tokens[1:] == labels[:-1]
        assert sample["loss_mask"].shape == (seq,) and "prefix_mask" not in sample
        # the sample is a window over whole documents joined by EOD: split at EOD, the inner pieces
        # are complete documents, the outer ones a document's suffix and prefix
        window = tokens + labels[-1:]
        pieces = [[]]
        for t in window:
            if t == eod:
                pieces.append([])
            else:
                pieces[-1].append(t)
        if len(pieces) == 1:  # inside one document
            assert any(contains(b, pieces[0]) for b in bodies)
            continue
        crossed = True
        assert any(b[len(b) - len(pieces[0]):] == pieces[0] for b in bodies) or not pieces[0]
        assert all(p in bodies for p in pieces[1:-1])
        assert any(b[:len(pieces[-1])] == pieces[-1] for b in bodies)
    assert crossed, "some sample should span a document boundary"


def contains(sequence: list, part: list) -> bool:
    return any(sequence[i:i + len(part)] == part for i in range(len(sequence) - len(part) + 1))
