"""IXT shard sets: naming, metadata, and the atomic writer / aligned reader of the stores.

An IXT shard set with path stem ``P`` (the ``--output-prefix`` of tools/preprocess_ixt.py) is
these files (docs/preprocess.md has the details)::

    P_text_document.{bin,idx}   Megatron IndexedDataset, one document per sequence
                                (EOD appended when preprocessed with --append-eod).
                                Plain megatron-core GPTDataset trains on it unchanged.
    P_<kind>_prefix.{bin,idx}   One per prefix kind the set holds (``kinds`` of P_ixt.json; by
                                default every registered kind: critique, quality, scores):
                                IndexedDataset aligned 1:1 with the text sequences, the tokenized
                                ``kind`` prefix of each document; length 0 for unannotated documents.
    P_ixt_docs.npy              Per-document record: source (input file index, line) and
                                annotation (quality, scores; 0 = unannotated), ``DOC_DTYPE``.
    P_ixt.json                  Metadata (format version, prefix kinds, tokenizer identity,
                                templates, counts, steering prefixes); see ``IXT_FORMAT_VERSION``.
                                Written last: a shard set without it is incomplete.

``--data-path`` style paths name the text store (``P_text_document``); the prefix stores
and metadata are found next to it. A text store without siblings is a plain store.
"""
from __future__ import annotations

import collections
import json
import os
import re
from collections.abc import Mapping, Sequence

import numpy as np

from megatron_ixt.data import prefix_kinds
from megatron_ixt.data.record import QUALITY_LEVELS, REASONS, SCORE_AXES
from megatron_ixt.fileio import atomic_write

TEXT_SUFFIX = "_text_document"
TEXT = "text"  # the store name of the text store; the others are named by their prefix kind


def text_store_path(stem: str) -> str:
    """Path stem (no .bin/.idx) of the text store of shard set ``stem``."""
    return stem + TEXT_SUFFIX


def prefix_store_path(stem: str, kind: str) -> str:
    """Path stem (no .bin/.idx) of the ``kind`` prefix store of shard set ``stem``."""
    return f"{stem}_{kind}_prefix"


def store_path(stem: str, name: str) -> str:
    """Path stem of store ``name`` ("text" or a prefix kind) of shard set ``stem``."""
    return text_store_path(stem) if name == TEXT else prefix_store_path(stem, name)


def metadata_path(stem: str) -> str:
    return stem + "_ixt.json"


def docs_path(stem: str) -> str:
    """Path of the per-document table (``DOC_DTYPE`` rows, one per text sequence)."""
    return stem + "_ixt_docs.npy"


def shard_set_stem(text_path: str) -> str | None:
    """Inverse of :func:`text_store_path`: ``P`` for ``P_text_document``, else None."""
    return text_path[: -len(TEXT_SUFFIX)] if text_path.endswith(TEXT_SUFFIX) else None


def token_count_key(name: str) -> str:
    """The ``counts`` key of ``P_ixt.json`` holding the token count of store ``name``."""
    return "text_tokens" if name == TEXT else f"{name}_prefix_tokens"


# ---------------------------------------------------------------------------------------------
# Metadata (P_ixt.json)

IXT_FORMAT = "megatron-ixt-shards"
IXT_FORMAT_VERSION = 2
"""2: ``kinds`` lists the prefix kinds (and stores) of the set. 1 (still read): always critique, quality."""
READ_VERSIONS = (1, 2)
VERSION_1_KINDS = ("critique", "quality")
# One row per document: where it came from (index into metadata["inputs"], 1-based line) and its
# annotation (quality and scores in SCORE_AXES order; all 0 for an unannotated document).
DOC_DTYPE = np.dtype([("file", "<u4"), ("line", "<u8"), ("quality", "i1"), ("scores", "i1", (len(SCORE_AXES),))])
DOCUMENT_COUNTS = ("records", "blank_lines", "documents", "annotated", "unannotated", "degraded", "dropped",
                   "input_bytes")


def token_dtype(vocab_size: int):
    """The token dtype of every store of a shard set: megatron-core's choice for ``vocab_size``."""
    from megatron.core.datasets.indexed_dataset import DType

    return DType.optimal_dtype(vocab_size)


def build_metadata(*, created_by: str, tokenizer: dict, append_eod: bool, templates: Mapping[str, dict],
                   steering: Mapping[str, dict], inputs: list, counts: Mapping[str, int],
                   annotation_status: Mapping[str, int], quality: Mapping, score_sums: Mapping[str, int],
                   skipped: Mapping[str, int], json_key: str = "text", **extra) -> dict:
    """The ``P_ixt.json`` dict (without ``stores``, which :meth:`ShardSetWriter.commit` adds).

    ``templates`` (kind -> ``PrefixTemplate.identity()``) names the kinds, in order; ``steering``
    has the same kinds (``{text, tokens}`` of the top level). ``counts`` holds ``DOCUMENT_COUNTS``
    (missing ones are 0) and each store's ``token_count_key``; ``quality`` counts documents per
    quality level (int or str keys); ``score_sums`` per axis over annotated documents; ``skipped``
    per reason of ``record.REASONS``. ``extra`` keys (e.g. ``merged_from``) are added as given.
    """
    kinds = list(templates)
    if list(steering) != kinds:
        raise ValueError(f"steering prefixes for {list(steering)}, templates for {kinds}")
    counts = collections.Counter(counts)
    quality = collections.Counter({int(q): n for q, n in quality.items()})
    annotated = counts["annotated"]
    return {
        "format": IXT_FORMAT,
        "version": IXT_FORMAT_VERSION,
        "created_by": created_by,
        "kinds": kinds,
        "tokenizer": dict(tokenizer),
        "append_eod": bool(append_eod),
        "json_key": json_key,
        "templates": {kind: dict(templates[kind]) for kind in kinds},
        "steering": {kind: {"text": steering[kind]["text"], "tokens": [int(t) for t in steering[kind]["tokens"]]}
                     for kind in kinds},
        "inputs": list(inputs),
        "counts": {k: int(counts[k]) for k in DOCUMENT_COUNTS + tuple(map(token_count_key, (TEXT, *kinds)))},
        "annotation_status": dict(sorted(annotation_status.items())),
        "quality_histogram": {str(q): int(quality[q]) for q in QUALITY_LEVELS},
        "score_sums": {a: int(score_sums.get(a, 0)) for a in SCORE_AXES},
        "score_means": {a: round(score_sums.get(a, 0) / annotated, 4) if annotated else None for a in SCORE_AXES},
        "skipped": {reason: int(skipped.get(reason, 0)) for reason in REASONS},
        **extra,
    }


def write_metadata(stem: str, metadata: dict) -> None:
    """Write ``P_ixt.json`` atomically (temporary file, then rename)."""
    path = metadata_path(stem)
    text = json.dumps(metadata, indent=1)
    # one line per list of ints (steering tokens) instead of one line per int
    text = re.sub(r"\[\s*(-?\d+(?:,\s*-?\d+)*)\s*\]", lambda m: "[" + re.sub(r",\s*", ", ", m.group(1)) + "]", text)
    with atomic_write(path) as f:
        f.write(text + "\n")


def read_metadata(stem: str) -> dict:
    """Read ``P_ixt.json`` of shard set ``stem``; refuses unknown formats and versions.

    A version-1 file (written before ``kinds`` existed) gets ``kinds = ["critique", "quality"]``.
    """
    path = metadata_path(stem)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no IXT metadata; is {stem!r} the --output-prefix "
                                "of a completed tools/preprocess_ixt.py run?")
    with open(path, encoding="utf-8") as f:
        try:
            metadata = json.load(f)
        except ValueError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(metadata, dict) or metadata.get("format") != IXT_FORMAT:
        raise ValueError(f"{path}: not an IXT shard-set metadata file (format != {IXT_FORMAT!r})")
    if metadata.get("version") not in READ_VERSIONS:
        raise ValueError(f"{path}: IXT shard format version {metadata.get('version')!r} is not supported "
                         f"by this megatron-ixt (it reads versions {', '.join(map(str, READ_VERSIONS))}); "
                         "re-run tools/preprocess_ixt.py or upgrade megatron-ixt")
    if metadata["version"] == 1:
        metadata["kinds"] = list(VERSION_1_KINDS)
    if not isinstance(metadata.get("kinds"), list) or not all(k in metadata.get("templates", {})
                                                              for k in metadata["kinds"]):
        raise ValueError(f"{path}: 'kinds' must list prefix kinds that all have a 'templates' entry")
    return metadata


def compatibility_problems(a: dict, b: dict) -> list[str]:
    """Why two shard sets' metadata cannot be mixed (different tokenizer, kinds or templates); [] if they can."""
    from megatron_ixt.tokenizer import same_tokenizer

    problems = []
    if not same_tokenizer(a["tokenizer"], b["tokenizer"]):
        problems.append(f"tokenizer differs: {a['tokenizer']} vs {b['tokenizer']}")
    if a["kinds"] != b["kinds"]:
        problems.append(f"prefix kinds differ: {a['kinds']} vs {b['kinds']}")
    for kind in (k for k in a["kinds"] if k in b["kinds"]):
        ta, tb = a["templates"][kind], b["templates"][kind]
        if ta["sha256"] != tb["sha256"]:
            problems.append(f"{kind} template differs: {ta.get('name')} ({ta['sha256'][:12]}) vs "
                            f"{tb.get('name')} ({tb['sha256'][:12]})")
    if a.get("append_eod") != b.get("append_eod"):
        problems.append(f"append_eod differs: {a.get('append_eod')} vs {b.get('append_eod')}")
    return problems


# ---------------------------------------------------------------------------------------------
# Writer and reader of the aligned stores


class ShardSetWriter:
    """Writes the text store and one prefix store per kind of ``kinds`` of one shard set, aligned
    1:1, atomically. ``kinds`` defaults to every registered prefix kind; ``()`` writes a plain
    Megatron text store.

    A store without any token (e.g. no annotated document) gets one unreferenced padding token
    in its ``.bin`` so that it can be memory-mapped.
    Everything is written under temporary names (``<final name>.tmp<pid>``); :meth:`commit`
    finalizes the indices and renames them into place, metadata last. Until then no file with a
    final name exists: an old ``P_ixt.json`` is removed first, so a crash never leaves a shard set
    that looks complete. Used as a context manager, an exception aborts (removes the temporaries).
    """

    def __init__(self, stem: str, vocab_size: int, kinds: Sequence[str] | None = None):
        from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

        os.makedirs(os.path.dirname(os.path.abspath(stem)), exist_ok=True)
        self.stem = stem
        self.kinds = prefix_kinds.names() if kinds is None else tuple(kinds)
        for kind in self.kinds:
            prefix_kinds.get(kind)
        self.names = (TEXT,) + self.kinds
        self.dtype = token_dtype(vocab_size)
        self._suffix = f".tmp{os.getpid()}"
        self._builders = {}
        self.sequences = 0
        self.tokens = {name: 0 for name in self.names}
        self._docs = []
        for name in self.names:
            bin_path = store_path(stem, name) + ".bin"
            self._builders[name] = IndexedDatasetBuilder(bin_path + self._suffix, dtype=self.dtype)

    def _temporaries(self) -> list[str]:
        paths = [store_path(self.stem, n) + ext for n in self.names for ext in (".bin", ".idx")]
        return [p + self._suffix for p in paths + [docs_path(self.stem)]]

    def add(self, text, prefixes: Mapping[str, Sequence[int]]) -> None:
        """Append one document: its text tokens and ``prefixes`` (kind -> tokens; a kind left out,
        or given no tokens, is no prefix). Token sequences are 1-D int arrays or lists."""
        unknown = set(prefixes) - set(self.kinds)
        if unknown:
            raise ValueError(f"prefixes for kinds {sorted(unknown)} that this writer does not hold ({self.kinds})")
        empty = np.zeros(0, self.dtype)
        for name in self.names:
            tokens = text if name == TEXT else prefixes.get(name, empty)
            self._builders[name].add_document(tokens, [len(tokens)])
            self.tokens[name] += len(tokens)
        self.sequences += 1

    def add_documents(self, tokens: dict, lengths: dict) -> None:
        """Append many documents at once: per store name, their concatenated tokens (1-D array) and
        each document's length (list of int, one per document, 0 = no prefix)."""
        from megatron_ixt.mcore_private import add_sequences

        self._check_lengths(lengths)
        for name in self.names:
            add_sequences(self._builders[name], tokens[name], lengths[name])
            self.tokens[name] += len(tokens[name])
        self.sequences += len(lengths[TEXT])

    def add_documents_from_file(self, fd: int, ranges: dict, lengths: dict) -> None:
        """:meth:`add_documents` with the tokens in the open file ``fd``: per store name, ``ranges[name]``
        is ``(offset, nbytes)`` of its concatenated tokens (raw bytes of the set's token dtype), copied
        in the kernel."""
        from megatron_ixt.mcore_private import add_sequences_from_file

        self._check_lengths(lengths)
        for name in self.names:
            offset, nbytes = ranges[name]
            add_sequences_from_file(self._builders[name], fd, offset, nbytes, lengths[name])
            self.tokens[name] += nbytes // np.dtype(self.dtype).itemsize
        self.sequences += len(lengths[TEXT])

    def _check_lengths(self, lengths: dict) -> None:
        n = len(lengths[TEXT])
        for name in self.names:
            if len(lengths[name]) != n:
                raise ValueError(f"{name}: {len(lengths[name])} lengths for {n} documents")

    def add_docs(self, docs: np.ndarray) -> None:
        """Append ``DOC_DTYPE`` rows, one per document added (any grouping, same order)."""
        self._docs.append(np.asarray(docs, dtype=DOC_DTYPE))

    def add_shard_set(self, stem: str, file_offset: int = 0) -> None:
        """Append every document of another (complete, same-dtype) shard set holding this writer's
        kinds; its ``docs.file`` indices are shifted by ``file_offset`` (its position in the merged
        ``inputs`` list)."""
        reader = ShardSet(stem)
        if reader.text.index.dtype != self.dtype:
            raise ValueError(f"{stem}: token dtype {reader.text.index.dtype} differs from {self.dtype}")
        missing = [k for k in self.kinds if k not in reader.kinds]
        if missing:
            raise ValueError(f"{stem}: has no {', '.join(missing)} prefix store (it holds {reader.kinds})")
        if reader.docs is None:
            raise ValueError(f"{stem}: no per-document table {docs_path(stem)!r}")
        for name in self.names:
            tokens = int(reader.store(name).sequence_lengths.sum())
            if tokens == 0:  # its .bin holds only the padding token (see commit)
                for _ in range(len(reader)):
                    self._builders[name].add_document(np.zeros(0, self.dtype), [0])
            else:
                self._builders[name].add_index(store_path(stem, name))
            self.tokens[name] += tokens
        self.sequences += len(reader)
        docs = np.array(reader.docs)
        docs["file"] += file_offset
        self.add_docs(docs)

    def _stale_paths(self, metadata: dict | None) -> list[str]:
        """Files of an earlier shard set under the same stem that the new one does not replace."""
        stale_kinds = set(prefix_kinds.names()) if metadata is None else set()
        try:
            stale_kinds |= set(read_metadata(self.stem)["kinds"])
        except (FileNotFoundError, ValueError):
            pass
        paths = [metadata_path(self.stem)]
        paths += [store_path(self.stem, k) + ext for k in sorted(stale_kinds - set(self.kinds))
                  for ext in (".idx", ".bin")]
        if metadata is None:
            paths.append(docs_path(self.stem))
        return paths

    def commit(self, metadata: dict | None) -> dict | None:
        """Finalize and rename into place; ``metadata`` (see :func:`build_metadata`; its ``kinds``
        must be the writer's) gets ``stores`` and is written last. Returns it.

        A text-only writer (``metadata=None``) leaves a plain Megatron store. Prefix stores and
        metadata of an earlier shard set with the same stem that the new one lacks are removed.
        """
        from megatron_ixt.mcore_private import finalize_builder, write_raw_tokens

        if (metadata is None) != (not self.kinds):
            raise ValueError("metadata is written for a shard set with prefix kinds, and only for one")
        if metadata is not None and list(metadata["kinds"]) != list(self.kinds):
            raise ValueError(f"metadata kinds {metadata['kinds']} differ from the stores written {list(self.kinds)}")
        for path in self._stale_paths(metadata):
            if os.path.exists(path):
                os.remove(path)
        for name in self.names:
            if self.tokens[name] == 0:  # numpy cannot mmap an empty file: pad with one unused token
                write_raw_tokens(self._builders[name], np.zeros(1, self.dtype))
            finalize_builder(self._builders[name], store_path(self.stem, name) + ".idx" + self._suffix)
        for name in self.names:
            for ext in (".bin", ".idx"):
                final = store_path(self.stem, name) + ext
                os.replace(final + self._suffix, final)
        if metadata is None:
            return None
        docs = np.concatenate(self._docs) if self._docs else np.zeros(0, DOC_DTYPE)
        if len(docs) != self.sequences:
            raise ValueError(f"{len(docs)} document rows for {self.sequences} documents")
        with open(docs_path(self.stem) + self._suffix, "wb") as f:
            np.save(f, docs)
        os.replace(docs_path(self.stem) + self._suffix, docs_path(self.stem))
        metadata = dict(metadata)
        metadata["stores"] = {
            "dtype": self.dtype.__name__,
            "sequences": self.sequences,
            "tokens": dict(self.tokens),
            "bin_bytes": {n: os.path.getsize(store_path(self.stem, n) + ".bin") for n in self.names},
        }
        write_metadata(self.stem, metadata)
        return metadata

    def abort(self) -> None:
        """Close and remove the temporaries."""
        from megatron_ixt.mcore_private import close_builder

        for builder in self._builders.values():
            close_builder(builder)
        for path in self._temporaries():
            if os.path.exists(path):
                os.remove(path)

    def __enter__(self) -> ShardSetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


class ShardSet:
    """Read access to a complete shard set: metadata, the aligned IndexedDatasets of its text and
    of each prefix kind it holds (``kinds``, from ``P_ixt.json``), and the per-document table
    ``docs`` (``DOC_DTYPE``; None for a set without one).

    ``shard_set[i]`` is ``{"text": array, <kind>: array, ...}`` (token ids of document ``i``; prefix
    arrays are empty for unannotated documents). Construction checks that the stores exist, are
    aligned, and match the metadata.
    """

    def __init__(self, stem: str, mmap: bool = True):
        from megatron.core.datasets.indexed_dataset import IndexedDataset

        self.stem = stem
        self.metadata = read_metadata(stem)
        self.kinds = tuple(self.metadata["kinds"])
        self.stores = {}
        self.docs = None
        for name in (TEXT,) + self.kinds:
            path = store_path(stem, name)
            if not IndexedDataset.exists(path):
                raise FileNotFoundError(f"{path}.{{bin,idx}} missing: shard set {stem!r} is incomplete")
            self.stores[name] = IndexedDataset(path, mmap=mmap)
        stats = self.metadata.get("stores")  # absent in sets written by hand with write_metadata
        expected = stats["sequences"] if stats else len(self.stores[TEXT])
        for name, store in self.stores.items():
            if len(store) != expected:
                raise ValueError(f"{store_path(stem, name)}: {len(store)} sequences, expected "
                                 f"{expected}; the shard set is inconsistent")
            size = os.path.getsize(store_path(stem, name) + ".bin")
            if stats and size != stats["bin_bytes"][name]:
                raise ValueError(f"{store_path(stem, name)}.bin: {size} bytes, metadata says "
                                 f"{stats['bin_bytes'][name]}; the shard set is inconsistent")
        if os.path.exists(docs_path(stem)):
            self.docs = np.load(docs_path(stem), mmap_mode="r")
            if len(self.docs) != expected:
                raise ValueError(f"{docs_path(stem)}: {len(self.docs)} rows, expected {expected}")

    @property
    def text(self):
        return self.stores[TEXT]

    def store(self, name: str):
        """The IndexedDataset of store ``name`` ("text" or one of ``kinds``)."""
        return self.stores[name]

    def __len__(self) -> int:
        return len(self.stores[TEXT])

    def __getitem__(self, i: int) -> dict:
        return {name: store[i] for name, store in self.stores.items()}
