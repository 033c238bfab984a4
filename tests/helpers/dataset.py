"""Helpers for the IXT dataset tests: synthetic shard sets on disk and a token-stream parser
(``from tests.helpers.dataset import ...``; fixtures live in tests/dataset/conftest.py).

Token layout of the synthetic corpora (NullTokenizer, vocab 1000, EOD = 1000):
- text of document ``i`` in store ``s``: ``[lo + i // 249, lo + i % 249, ...random...] + [EOD]``
  with tokens in ``[lo, lo + 249)``, ``lo = 1 + 250 * s`` (0 is never used: GPTDataset maps
  padding to 0), so the first two tokens identify the document;
- critique prefixes use ``[500, 750)``, quality prefixes ``[750, 1000)``.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from megatron.core.datasets.indexed_dataset import IndexedDataset
from megatron.core.datasets.utils import Split

from megatron_ixt.data.dataset import IXTGPTDataset
from megatron_ixt.data.shards import text_store_path
from tests.helpers.token_shards import write_token_shard_set

VOCAB = 1000
PREFIX_START = 500
CRITIQUE_RANGE = (500, 750)
QUALITY_RANGE = (750, 1000)
STEERING = {"critique": [740, 741, 742, 743, 744], "quality": [990, 991]}


@dataclasses.dataclass
class Corpus:
    """A shard set (or plain store) on disk and what was written into it."""

    path: str  # text-store path, as given to --data-path
    texts: list  # per document, without EOD
    prefixes: dict  # kind -> list of per-document prefix arrays (empty = unannotated); {} for plain
    store: int

    def document_id(self, text: np.ndarray) -> int:
        lo = 1 + 250 * self.store
        return int(text[0] - lo) * 249 + int(text[1] - lo)

    def annotated(self) -> np.ndarray:
        return np.array([len(p) > 0 for p in self.prefixes["critique"]])


def _documents(num_documents, annotated, store, seed):
    rng = np.random.default_rng(seed)
    lo = 1 + 250 * store
    texts, critiques, qualities = [], [], []
    for i in range(num_documents):
        head = [lo + i // 249, lo + i % 249]
        texts.append(np.array(head + list(rng.integers(lo, lo + 249, rng.integers(0, 60))), dtype=np.int64))
        is_annotated = rng.random() < annotated
        empty = np.zeros(0, dtype=np.int64)
        critiques.append(rng.integers(*CRITIQUE_RANGE, rng.integers(3, 25)) if is_annotated else empty)
        qualities.append(rng.integers(*QUALITY_RANGE, rng.integers(2, 5)) if is_annotated else empty)
    return texts, critiques, qualities


def write_shard_set(prefix, tokenizer, num_documents=300, annotated=0.7, store=0, seed=0) -> Corpus:
    """An IXT shard set per docs/CONTRACTS.md section 2: the three aligned stores, P_ixt_docs.npy and P_ixt.json."""
    texts, critiques, qualities = _documents(num_documents, annotated, store, seed)
    write_token_shard_set(prefix, {"text": [np.append(t, tokenizer.eod) for t in texts], "critique": critiques,
                                   "quality": qualities}, vocab_size=tokenizer.eod, steering=STEERING)
    return Corpus(text_store_path(prefix), texts, {"critique": critiques, "quality": qualities}, store)


def write_plain_store(prefix, tokenizer, num_documents=200, store=1, seed=1) -> Corpus:
    """A text-only IndexedDataset at ``text_store_path(prefix)`` (no prefix stores, no metadata)."""
    texts, _, _ = _documents(num_documents, 0.0, store, seed)
    write_token_shard_set(prefix, {"text": [np.append(t, tokenizer.eod) for t in texts]}, vocab_size=tokenizer.eod)
    return Corpus(text_store_path(prefix), texts, {}, store)


def build_dataset(corpus: Corpus, config, num_samples=None, split=Split.valid, cls=IXTGPTDataset):
    """A dataset over every document of ``corpus`` (``split=valid`` + ``num_samples=None``: one epoch)."""
    text = IndexedDataset(corpus.path)
    indices = np.arange(len(text), dtype=np.int32)
    return cls(text, corpus.path, indices, num_samples, split, config)


def samples_in_order(dataset) -> list:
    """``dataset[i]`` for every sample, in packing (un-shuffled) order."""
    order = np.argsort(np.asarray(dataset.shuffle_index), kind="stable")
    return [dataset[int(i)] for i in order]


def token_stream(dataset) -> np.ndarray:
    """The packed token stream of ``dataset`` in packing order, trailing padding removed."""
    samples = samples_in_order(dataset)
    parts = [s["tokens"].numpy() for s in samples] + [samples[-1]["labels"].numpy()[-1:]]
    return np.trim_zeros(np.concatenate(parts), "b")


def conditioned_documents(stream: np.ndarray, eod: int):
    """Split a token stream at EOD into ``(prefix, text)`` pairs (prefix = leading tokens >= 500),
    and the unterminated rest."""
    documents, start = [], 0
    for end in np.flatnonzero(stream == eod):
        chunk = stream[start:end]
        n_prefix = int(np.argmax(chunk < PREFIX_START))
        documents.append((chunk[:n_prefix], chunk[n_prefix:]))
        start = end + 1
    return documents, stream[start:]
