"""IXTGPTDataset on a shard set made by tools/preprocess_ixt.py (SentencePiece, --append-eod)."""
import numpy as np
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset
from megatron.core.datasets.utils import Split

from megatron_ixt.data.dataset import IXTGPTDataset, IXTGPTDatasetConfig
from megatron_ixt.data.provider import steering_prefix
from megatron_ixt.data.shards import prefix_store_path, read_metadata, text_store_path
from tests.helpers.dataset import token_stream


def dataset_over(shard_set, tokenizer, tmp_path, **options):
    path = text_store_path(shard_set.prefix)
    text = IndexedDataset(path)
    config = IXTGPTDatasetConfig(random_seed=3, sequence_length=96, tokenizer=tokenizer, reset_position_ids=False,
                                 reset_attention_mask=False, eod_mask_loss=False, split="100,0,0",
                                 drop_last_partial_validation_sequence=False, path_to_cache=str(tmp_path), **options)
    return IXTGPTDataset(text, path, np.arange(len(text), dtype=np.int32), None, Split.valid, config)


def chunks(stream, eod):
    ends = np.flatnonzero(stream == eod)
    assert ends[-1] == len(stream) - 1, "the stream ends with a complete document"
    return [c.tolist() for c in np.split(stream, ends + 1)[:-1]]  # each chunk ends with its EOD


@pytest.mark.parametrize("kind", ["critique", "quality", "scores"])
def test_preprocessed_documents_follow_their_prefixes(ixt_shard_set, sp_tokenizer, tmp_path, kind):
    text = IndexedDataset(text_store_path(ixt_shard_set.prefix))
    prefixes = IndexedDataset(prefix_store_path(ixt_shard_set.prefix, kind))
    documents = [text[i].tolist() for i in range(len(text))]
    expected = {tuple(prefixes[i].tolist() + documents[i]): i for i in range(len(text))}
    assert len(expected) == len(text)

    dataset = dataset_over(ixt_shard_set, sp_tokenizer, tmp_path, prefix_kind=kind)
    found = [expected.get(tuple(chunk)) for chunk in chunks(token_stream(dataset), sp_tokenizer.eod)]
    assert sorted(found) == list(range(len(text)))  # each conditioned document exactly once, intact

    # a document has a prefix exactly when its record carries a successful annotation
    ok = [isinstance(r.get("ixt"), dict) and r["ixt"].get("status") == "ok" for r in ixt_shard_set.records]
    assert [len(prefixes[i]) > 0 for i in range(len(text))] == ok
    assert 0 < sum(ok) < len(ok)


def test_preprocessed_steering_prefix(ixt_shard_set, sp_tokenizer, tmp_path):
    tokens = steering_prefix([text_store_path(ixt_shard_set.prefix)], "critique")
    assert list(tokens) == read_metadata(ixt_shard_set.prefix)["steering"]["critique"]["tokens"]
    dataset = dataset_over(ixt_shard_set, sp_tokenizer, tmp_path, prefix_kind="critique", steering_prefix=tokens)
    text = IndexedDataset(text_store_path(ixt_shard_set.prefix))
    documents = {tuple(text[i].tolist()) for i in range(len(text))}
    conditioned = chunks(token_stream(dataset), sp_tokenizer.eod)
    assert len(conditioned) == len(text)
    for chunk in conditioned:
        assert tuple(chunk[:len(tokens)]) == tokens and tuple(chunk[len(tokens):]) in documents
