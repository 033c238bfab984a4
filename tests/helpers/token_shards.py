"""Already-tokenized shard sets for tests and benchmarks: :func:`write_token_shard_set`.

    from tests.helpers.token_shards import write_token_shard_set
"""
from __future__ import annotations

import collections
import hashlib

import numpy as np

from megatron_ixt.data import shards
from megatron_ixt.data.record import SCORE_AXES

SYNTHETIC = "synthetic"  # template name, input path and steering text of write_token_shard_set sets


def write_token_shard_set(stem: str, documents: dict, *, vocab_size: int, steering: dict | None = None,
                          lengths: dict | None = None, quality=None, scores=None) -> dict | None:
    """Write a complete shard set (or a plain store) from already-tokenized documents; returns the
    metadata written (None for a plain store). For synthetic corpora: tests and benchmarks.

    ``documents["text"]`` and ``documents[kind]`` for each prefix kind the set is to hold (any
    registered kinds, e.g. "critique" and "quality"): one 1-D int token array (or list) per
    document; prefixes may be empty (unannotated document). With ``lengths``, ``documents[name]``
    is instead all documents' tokens concatenated (1-D array) and ``lengths[name]`` each document's
    length (the vectorised path of ``add_documents``, for millions of documents). ``documents``
    with only "text" gives a plain Megatron store at ``text_store_path(stem)``, no prefix stores,
    no metadata.

    Token ids are a NullTokenizer's: ``0..vocab_size-1`` plus EOD ``vocab_size`` (``vocab_size`` is
    its ``--vocab-size``); ``append_eod`` in the metadata says whether every text ends with EOD.
    ``steering[kind]``: the top-level steering-prefix token ids of each prefix kind (required with
    prefixes). ``quality`` (per document, 1..5, 0 = unannotated) and ``scores`` (per document, one
    1..5 per ``SCORE_AXES``) fill the ``P_ixt_docs.npy`` annotation columns (default 0); every
    document's source is line ``i + 1`` of input 0, ``"synthetic"``. Written atomically by
    ``ShardSetWriter``.
    """
    if shards.TEXT not in documents:
        raise ValueError(f"documents has stores {sorted(documents)}; a 'text' store is required")
    kinds = tuple(name for name in documents if name != shards.TEXT)
    names = (shards.TEXT,) + kinds
    if lengths is None:
        lengths = {name: [len(doc) for doc in documents[name]] for name in names}
        documents = {name: np.concatenate([np.zeros(0, np.int64)] + [
            np.asarray(doc, dtype=np.int64) for doc in documents[name]]) for name in names}
    lengths = {name: np.asarray(lengths[name], dtype=np.int64) for name in names}
    tokens = {name: np.asarray(documents[name]) for name in names}
    n = len(lengths[shards.TEXT])
    for name in names:
        if len(lengths[name]) != n:
            raise ValueError(f"{name}: {len(lengths[name])} documents for {n} texts")
        if int(lengths[name].sum()) != len(tokens[name]):
            raise ValueError(f"{name}: lengths add up to {int(lengths[name].sum())} tokens, {len(tokens[name])} given")
        if len(tokens[name]) and (tokens[name].min() < 0 or tokens[name].max() > vocab_size):
            raise ValueError(f"{name}: token ids outside 0..{vocab_size} (vocab_size {vocab_size} plus EOD)")
    if kinds and (steering is None or set(steering) != set(kinds)):
        raise ValueError(f"steering must give the token ids of the {' and '.join(kinds)} steering prefixes")
    for field, values in (("quality", quality), ("scores", scores)):
        if values is not None and len(values) != n:
            raise ValueError(f"{field}: {len(values)} values for {n} documents")
    append_eod = bool(n > 0 and lengths[shards.TEXT].all()
                      and (tokens[shards.TEXT][np.cumsum(lengths[shards.TEXT]) - 1] == vocab_size).all())

    with shards.ShardSetWriter(stem, vocab_size + 1, kinds=kinds) as writer:
        writer.add_documents(tokens, {name: lengths[name].tolist() for name in names})
        if not kinds:
            return writer.commit(None)
        docs = np.zeros(n, shards.DOC_DTYPE)
        docs["line"] = np.arange(1, n + 1)
        if quality is not None:
            docs["quality"] = quality
        if scores is not None:
            docs["scores"] = scores
        writer.add_docs(docs)
        annotated = int(np.any([lengths[kind] > 0 for kind in kinds], axis=0).sum())
        template = {"name": SYNTHETIC, "text": "", "sha256": hashlib.sha256(SYNTHETIC.encode()).hexdigest()}
        counts = {"records": n, "documents": n, "annotated": annotated, "unannotated": n - annotated}
        counts.update({shards.token_count_key(name): len(tokens[name]) for name in names})
        return writer.commit(shards.build_metadata(
            created_by="tests.helpers.token_shards.write_token_shard_set",
            # what megatron_ixt.tokenizer.tokenizer_identity gives for NullTokenizer --vocab-size vocab_size
            tokenizer={"type": "NullTokenizer", "model": None, "model_sha256": None,
                       "vocab_size": vocab_size + 1, "eod": vocab_size},
            append_eod=append_eod, templates={kind: template for kind in kinds},
            steering={kind: {"text": SYNTHETIC, "tokens": steering[kind]} for kind in kinds},
            inputs=[{"path": SYNTHETIC, "bytes": 0}], counts=counts, annotation_status={},
            quality=collections.Counter(int(q) for q in docs["quality"] if q),
            score_sums={a: int(docs["scores"][:, i][docs["quality"] > 0].sum()) for i, a in enumerate(SCORE_AXES)},
            skipped={}))
