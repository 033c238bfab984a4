"""IXT shard sets: naming and metadata contract.

An IXT shard set with output prefix ``P`` is five things on disk::

    P_text_document.{bin,idx}   Megatron IndexedDataset, one document per sequence
                                (EOD appended when preprocessed with --append-eod).
                                Plain megatron-core GPTDataset trains on it unchanged.
    P_critique_prefix.{bin,idx} IndexedDataset aligned 1:1 with the text sequences: the
                                tokenized natural-language critique prefix of each
                                document; length 0 for unannotated documents.
    P_quality_prefix.{bin,idx}  Same, for the templated 5-level quality prefix.
    P_ixt.json                  Metadata (format version, tokenizer identity, templates,
                                counts, steering prefixes); see ``IXT_FORMAT_VERSION``.

``--data-path`` style paths name the text store (``P_text_document``); the prefix stores
and metadata are found next to it. A text store without siblings is a plain store.
"""
from __future__ import annotations

import os

TEXT_SUFFIX = "_text_document"
PREFIX_KINDS = ("critique", "quality")


def text_store_path(output_prefix: str) -> str:
    """Path prefix (no .bin/.idx) of the text store of shard set ``output_prefix``."""
    return output_prefix + TEXT_SUFFIX


def prefix_store_path(output_prefix: str, kind: str) -> str:
    """Path prefix (no .bin/.idx) of the ``kind`` prefix store of shard set ``output_prefix``."""
    if kind not in PREFIX_KINDS:
        raise ValueError(f"unknown prefix kind {kind!r}; expected one of {PREFIX_KINDS}")
    return f"{output_prefix}_{kind}_prefix"


def metadata_path(output_prefix: str) -> str:
    return output_prefix + "_ixt.json"


def shard_set_prefix(text_path: str) -> str | None:
    """Inverse of :func:`text_store_path`: ``P`` for ``P_text_document``, else None."""
    return text_path[: -len(TEXT_SUFFIX)] if text_path.endswith(TEXT_SUFFIX) else None


def has_prefix_store(text_path: str, kind: str) -> bool:
    """Whether the text store at ``text_path`` has an aligned ``kind`` prefix store."""
    prefix = shard_set_prefix(text_path)
    if prefix is None:
        return False
    store = prefix_store_path(prefix, kind)
    return os.path.exists(store + ".idx") and os.path.exists(store + ".bin")
