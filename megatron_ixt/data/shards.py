"""IXT shard sets: naming, metadata, and the atomic writer / aligned reader of the stores.

An IXT shard set with output prefix ``P`` is these files (docs/preprocess.md has the details)::

    P_text_document.{bin,idx}   Megatron IndexedDataset, one document per sequence
                                (EOD appended when preprocessed with --append-eod).
                                Plain megatron-core GPTDataset trains on it unchanged.
    P_critique_prefix.{bin,idx} IndexedDataset aligned 1:1 with the text sequences: the
                                tokenized natural-language critique prefix of each
                                document; length 0 for unannotated documents.
    P_quality_prefix.{bin,idx}  Same, for the templated 5-level quality prefix.
    P_ixt_docs.npy              Per-document record: source (input file index, line) and
                                annotation (quality, scores; 0 = unannotated), ``DOC_DTYPE``.
    P_ixt.json                  Metadata (format version, tokenizer identity, templates,
                                counts, steering prefixes); see ``IXT_FORMAT_VERSION``.
                                Written last: a shard set without it is incomplete.

``--data-path`` style paths name the text store (``P_text_document``); the prefix stores
and metadata are found next to it. A text store without siblings is a plain store.
"""
from __future__ import annotations

import hashlib
import json
import os
import re

import numpy

from megatron_ixt.data.record import SCORE_AXES

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


def docs_path(output_prefix: str) -> str:
    """Path of the per-document table (``DOC_DTYPE`` rows, one per text sequence)."""
    return output_prefix + "_ixt_docs.npy"


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


# ---------------------------------------------------------------------------------------------
# Metadata (P_ixt.json)

IXT_FORMAT = "megatron-ixt-shards"
IXT_FORMAT_VERSION = 1
STORE_NAMES = ("text",) + PREFIX_KINDS
# One row per document: where it came from (index into metadata["inputs"], 1-based line) and its
# annotation (quality and scores in SCORE_AXES order; all 0 for an unannotated document).
DOC_DTYPE = numpy.dtype([("file", "<u4"), ("line", "<u8"), ("quality", "i1"), ("scores", "i1", (len(SCORE_AXES),))])


def token_dtype(vocab_size: int):
    """The token dtype of every store of a shard set: megatron-core's choice for ``vocab_size``."""
    from megatron.core.datasets.indexed_dataset import DType

    return DType.optimal_dtype(vocab_size)


def store_path(output_prefix: str, name: str) -> str:
    """Path prefix of store ``name`` ("text" or a prefix kind) of shard set ``output_prefix``."""
    return text_store_path(output_prefix) if name == "text" else prefix_store_path(output_prefix, name)


def write_metadata(output_prefix: str, metadata: dict) -> None:
    """Write ``P_ixt.json`` atomically (temporary file, then rename)."""
    path = metadata_path(output_prefix)
    tmp = f"{path}.tmp{os.getpid()}"
    text = json.dumps(metadata, indent=1)
    # one line per list of ints (steering tokens) instead of one line per int
    text = re.sub(r"\[\s*(-?\d+(?:,\s*-?\d+)*)\s*\]", lambda m: "[" + re.sub(r",\s*", ", ", m.group(1)) + "]", text)
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    os.replace(tmp, path)


def read_metadata(output_prefix: str) -> dict:
    """Read ``P_ixt.json`` of shard set ``output_prefix``; refuses unknown formats and versions."""
    path = metadata_path(output_prefix)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no IXT metadata; is {output_prefix!r} the --output-prefix "
                                "of a completed tools/preprocess_ixt.py run?")
    with open(path, encoding="utf-8") as f:
        try:
            metadata = json.load(f)
        except ValueError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(metadata, dict) or metadata.get("format") != IXT_FORMAT:
        raise ValueError(f"{path}: not an IXT shard-set metadata file (format != {IXT_FORMAT!r})")
    if metadata.get("version") != IXT_FORMAT_VERSION:
        raise ValueError(f"{path}: IXT shard format version {metadata.get('version')!r} is not supported "
                         f"by this megatron-ixt (it reads version {IXT_FORMAT_VERSION}); re-run "
                         "tools/preprocess_ixt.py or upgrade megatron-ixt")
    return metadata


def compatibility_problems(a: dict, b: dict) -> list[str]:
    """Why two shard sets' metadata cannot be mixed (different tokenizer or templates); [] if they can."""
    from megatron_ixt.tokenizer import same_tokenizer

    problems = []
    if not same_tokenizer(a["tokenizer"], b["tokenizer"]):
        problems.append(f"tokenizer differs: {a['tokenizer']} vs {b['tokenizer']}")
    for kind in PREFIX_KINDS:
        ta, tb = a["templates"][kind], b["templates"][kind]
        if ta["sha256"] != tb["sha256"]:
            problems.append(f"{kind} template differs: {ta.get('name')} ({ta['sha256'][:12]}) vs "
                            f"{tb.get('name')} ({tb['sha256'][:12]})")
    if a.get("append_eod") != b.get("append_eod"):
        problems.append(f"append_eod differs: {a.get('append_eod')} vs {b.get('append_eod')}")
    return problems


# ---------------------------------------------------------------------------------------------
# Writer and reader of the three aligned stores


class ShardSetWriter:
    """Writes the text and prefix stores of one shard set, aligned 1:1, atomically.

    A store without any token (e.g. no annotated document) gets one unreferenced padding token
    in its ``.bin`` so that it can be memory-mapped.
    Everything is written under temporary names (``<final name>.tmp<pid>``); :meth:`commit`
    finalizes the indices and renames them into place, metadata last. Until then no file with a
    final name exists: an old ``P_ixt.json`` is removed first, so a crash never leaves a shard set
    that looks complete. Used as a context manager, an exception aborts (removes the temporaries).
    """

    def __init__(self, output_prefix: str, vocab_size: int, text_only: bool = False):
        from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

        os.makedirs(os.path.dirname(os.path.abspath(output_prefix)), exist_ok=True)
        self.output_prefix = output_prefix
        self.names = ("text",) if text_only else STORE_NAMES
        self.dtype = token_dtype(vocab_size)
        self._suffix = f".tmp{os.getpid()}"
        self._builders = {}
        self.sequences = 0
        self.tokens = {name: 0 for name in self.names}
        self._docs = []
        for name in self.names:
            bin_path = store_path(output_prefix, name) + ".bin"
            self._builders[name] = IndexedDatasetBuilder(bin_path + self._suffix, dtype=self.dtype)

    def _temporaries(self) -> list[str]:
        paths = [store_path(self.output_prefix, n) + ext for n in self.names for ext in (".bin", ".idx")]
        return [p + self._suffix for p in paths + [docs_path(self.output_prefix)]]

    def add(self, text, critique=None, quality=None) -> None:
        """Append one document: its text tokens and its two prefixes (1-D int arrays, may be empty;
        omitted when ``text_only``)."""
        for name, tokens in zip(self.names, (text, critique, quality)):
            self._builders[name].add_document(tokens, [len(tokens)])
            self.tokens[name] += len(tokens)
        self.sequences += 1

    def add_documents(self, tokens: dict, lengths: dict) -> None:
        """Append many documents at once: per store name, their concatenated tokens (1-D array) and
        each document's length (list of int, one per document, 0 = no prefix)."""
        n = len(lengths["text"])
        if n == 0:
            return
        for name in self.names:
            builder = self._builders[name]
            if isinstance(builder.document_indices, list):
                builder.add_document(tokens[name], lengths[name])  # one write for all n sequences ...
                end = len(builder.sequence_lengths)
                builder.document_indices[-1:] = range(end - n + 1, end + 1)  # ... each its own document
            else:  # a megatron-core whose builder keeps its index differently: one call per document
                for doc in numpy.split(tokens[name], numpy.cumsum(lengths[name])[:-1]):
                    builder.add_document(doc, [len(doc)])
            self.tokens[name] += len(tokens[name])
        self.sequences += n

    def add_docs(self, docs: numpy.ndarray) -> None:
        """Append ``DOC_DTYPE`` rows, one per document added (any grouping, same order)."""
        self._docs.append(numpy.asarray(docs, dtype=DOC_DTYPE))

    def add_shard_set(self, output_prefix: str, file_offset: int = 0) -> None:
        """Append every document of another (complete, same-dtype) shard set; its ``docs.file``
        indices are shifted by ``file_offset`` (its position in the merged ``inputs`` list)."""
        reader = ShardSet(output_prefix)
        if reader.text.index.dtype != self.dtype:
            raise ValueError(f"{output_prefix}: token dtype {reader.text.index.dtype} differs from {self.dtype}")
        for name in self.names:
            tokens = int(reader.store(name).sequence_lengths.sum())
            if tokens == 0:  # its .bin holds only the padding token (see commit)
                for _ in range(len(reader)):
                    self._builders[name].add_document(numpy.zeros(0, self.dtype), [0])
            else:
                self._builders[name].add_index(store_path(output_prefix, name))
            self.tokens[name] += tokens
        self.sequences += len(reader)
        if reader.docs is None:
            raise ValueError(f"{output_prefix}: no per-document table {docs_path(output_prefix)!r}")
        docs = numpy.array(reader.docs)
        docs["file"] += file_offset
        self.add_docs(docs)

    def commit(self, metadata: dict | None) -> dict | None:
        """Finalize and rename into place; ``metadata`` gets ``stores`` and is written last. Returns it.

        A text-only writer (``metadata=None``) leaves a plain Megatron store and removes stale
        prefix stores and metadata of an earlier shard set with the same prefix.
        """
        stale = [metadata_path(self.output_prefix)]
        if metadata is None:
            stale += [store_path(self.output_prefix, n) + ext for n in PREFIX_KINDS for ext in (".idx", ".bin")]
            stale.append(docs_path(self.output_prefix))
        for path in stale:
            if os.path.exists(path):
                os.remove(path)
        for name in self.names:
            if self.tokens[name] == 0:  # numpy cannot mmap an empty file: pad with one unused token
                self._builders[name].data_file.write(numpy.zeros(1, self.dtype).tobytes())
            self._builders[name].finalize(store_path(self.output_prefix, name) + ".idx" + self._suffix)
        for name in self.names:
            for ext in (".bin", ".idx"):
                final = store_path(self.output_prefix, name) + ext
                os.replace(final + self._suffix, final)
        if metadata is None:
            return None
        docs = numpy.concatenate(self._docs) if self._docs else numpy.zeros(0, DOC_DTYPE)
        if len(docs) != self.sequences:
            raise ValueError(f"{len(docs)} document rows for {self.sequences} documents")
        with open(docs_path(self.output_prefix) + self._suffix, "wb") as f:
            numpy.save(f, docs)
        os.replace(docs_path(self.output_prefix) + self._suffix, docs_path(self.output_prefix))
        metadata = dict(metadata)
        metadata["stores"] = {
            "dtype": self.dtype.__name__,
            "sequences": self.sequences,
            "tokens": dict(self.tokens),
            "bin_bytes": {n: os.path.getsize(store_path(self.output_prefix, n) + ".bin") for n in STORE_NAMES},
        }
        write_metadata(self.output_prefix, metadata)
        return metadata

    def abort(self) -> None:
        """Close and remove the temporaries."""
        for builder in self._builders.values():
            builder.data_file.close()
        for path in self._temporaries():
            if os.path.exists(path):
                os.remove(path)

    def __enter__(self) -> "ShardSetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


SYNTHETIC = "synthetic"  # template name, input path and steering text of write_token_shard_set sets


def write_token_shard_set(output_prefix: str, documents: dict, *, vocab_size: int, steering: dict | None = None,
                          lengths: dict | None = None, quality=None, scores=None) -> dict | None:
    """Write a complete shard set (or a plain store) from already-tokenized documents; returns the
    metadata written (None for a plain store). For synthetic corpora: tests and benchmarks.

    ``documents[name]`` for each name in ``STORE_NAMES`` ("text", "critique", "quality"): one 1-D
    int token array (or list) per document; prefixes may be empty (unannotated document). With
    ``lengths``, ``documents[name]`` is instead all documents' tokens concatenated (1-D array) and
    ``lengths[name]`` each document's length (the vectorised path of ``add_documents``, for
    millions of documents). ``documents`` with only "text" gives a plain Megatron store at
    ``text_store_path(output_prefix)``, no prefix stores, no metadata.

    Token ids are a NullTokenizer's: ``0..vocab_size-1`` plus EOD ``vocab_size`` (``vocab_size`` is
    its ``--vocab-size``); ``append_eod`` in the metadata says whether every text ends with EOD.
    ``steering[kind]``: the steering-prefix token ids of each prefix kind (required with prefixes).
    ``quality`` (per document, 1..5, 0 = unannotated) and ``scores`` (per document, one 1..5 per
    ``SCORE_AXES``) fill the ``P_ixt_docs.npy`` annotation columns (default 0); every document's
    source is line ``i + 1`` of input 0, ``"synthetic"``. Written atomically by ``ShardSetWriter``.
    """
    names = ("text",) if set(documents) == {"text"} else STORE_NAMES
    if set(documents) != set(names):
        raise ValueError(f"documents has stores {sorted(documents)}; expected {list(STORE_NAMES)} or ['text']")
    if lengths is None:
        lengths = {name: [len(doc) for doc in documents[name]] for name in names}
        documents = {name: numpy.concatenate([numpy.zeros(0, numpy.int64)] + [
            numpy.asarray(doc, dtype=numpy.int64) for doc in documents[name]]) for name in names}
    lengths = {name: numpy.asarray(lengths[name], dtype=numpy.int64) for name in names}
    tokens = {name: numpy.asarray(documents[name]) for name in names}
    n = len(lengths["text"])
    for name in names:
        if len(lengths[name]) != n:
            raise ValueError(f"{name}: {len(lengths[name])} documents for {n} texts")
        if int(lengths[name].sum()) != len(tokens[name]):
            raise ValueError(f"{name}: lengths add up to {int(lengths[name].sum())} tokens, {len(tokens[name])} given")
        if len(tokens[name]) and (tokens[name].min() < 0 or tokens[name].max() > vocab_size):
            raise ValueError(f"{name}: token ids outside 0..{vocab_size} (vocab_size {vocab_size} plus EOD)")
    if names != ("text",) and (steering is None or set(steering) != set(PREFIX_KINDS)):
        raise ValueError(f"steering must give the token ids of the {' and '.join(PREFIX_KINDS)} steering prefixes")
    for field, values in (("quality", quality), ("scores", scores)):
        if values is not None and len(values) != n:
            raise ValueError(f"{field}: {len(values)} values for {n} documents")
    append_eod = bool(n > 0 and lengths["text"].all()
                      and (tokens["text"][numpy.cumsum(lengths["text"]) - 1] == vocab_size).all())

    with ShardSetWriter(output_prefix, vocab_size + 1, text_only=names == ("text",)) as writer:
        writer.add_documents(tokens, {name: lengths[name].tolist() for name in names})
        if names == ("text",):
            return writer.commit(None)
        docs = numpy.zeros(n, DOC_DTYPE)
        docs["line"] = numpy.arange(1, n + 1)
        if quality is not None:
            docs["quality"] = quality
        if scores is not None:
            docs["scores"] = scores
        writer.add_docs(docs)
        annotated = int(((lengths["critique"] > 0) | (lengths["quality"] > 0)).sum())
        template = {"name": SYNTHETIC, "text": "", "sha256": hashlib.sha256(SYNTHETIC.encode()).hexdigest()}
        return writer.commit({
            "format": IXT_FORMAT,
            "version": IXT_FORMAT_VERSION,
            "created_by": "megatron_ixt.data.shards.write_token_shard_set",
            # what megatron_ixt.tokenizer.tokenizer_identity gives for NullTokenizer --vocab-size vocab_size
            "tokenizer": {"type": "NullTokenizer", "model": None, "model_sha256": None,
                          "vocab_size": vocab_size + 1, "eod": vocab_size},
            "append_eod": append_eod,
            "templates": {kind: dict(template) for kind in PREFIX_KINDS},
            "steering": {kind: {"text": SYNTHETIC, "tokens": [int(t) for t in steering[kind]]}
                         for kind in PREFIX_KINDS},
            "inputs": [{"path": SYNTHETIC, "bytes": 0}],
            "counts": {"documents": n, "annotated": annotated, "unannotated": n - annotated,
                       "text_tokens": len(tokens["text"]), "critique_prefix_tokens": len(tokens["critique"]),
                       "quality_prefix_tokens": len(tokens["quality"])},
            "quality_histogram": {str(q): int((docs["quality"] == q).sum()) for q in range(1, 6)},
        })


class ShardSet:
    """Read access to a complete shard set: metadata, the three aligned IndexedDatasets and the
    per-document table ``docs`` (``DOC_DTYPE``; None for a set without one).

    ``shard_set[i]`` is ``{"text": array, "critique": array, "quality": array}`` (token ids of
    document ``i``; prefix arrays are empty for unannotated documents). Construction checks
    that the stores exist, are aligned, and match the metadata.
    """

    def __init__(self, output_prefix: str, mmap: bool = True):
        from megatron.core.datasets.indexed_dataset import IndexedDataset

        self.output_prefix = output_prefix
        self.metadata = read_metadata(output_prefix)
        self.stores = {}
        self.docs = None
        for name in STORE_NAMES:
            path = store_path(output_prefix, name)
            if not IndexedDataset.exists(path):
                raise FileNotFoundError(f"{path}.{{bin,idx}} missing: shard set {output_prefix!r} is incomplete")
            self.stores[name] = IndexedDataset(path, mmap=mmap)
        stats = self.metadata.get("stores")  # absent in sets written by hand with write_metadata
        expected = stats["sequences"] if stats else len(self.stores["text"])
        for name, store in self.stores.items():
            if len(store) != expected:
                raise ValueError(f"{store_path(output_prefix, name)}: {len(store)} sequences, expected "
                                 f"{expected}; the shard set is inconsistent")
            size = os.path.getsize(store_path(output_prefix, name) + ".bin")
            if stats and size != stats["bin_bytes"][name]:
                raise ValueError(f"{store_path(output_prefix, name)}.bin: {size} bytes, metadata says "
                                 f"{stats['bin_bytes'][name]}; the shard set is inconsistent")
        if os.path.exists(docs_path(output_prefix)):
            self.docs = numpy.load(docs_path(output_prefix), mmap_mode="r")
            if len(self.docs) != expected:
                raise ValueError(f"{docs_path(output_prefix)}: {len(self.docs)} rows, expected {expected}")

    @property
    def text(self):
        return self.stores["text"]

    def store(self, name: str):
        """The IndexedDataset of store ``name`` ("text", "critique" or "quality")."""
        return self.stores[name]

    def __len__(self) -> int:
        return len(self.stores["text"])

    def __getitem__(self, i: int) -> dict:
        return {name: store[i] for name, store in self.stores.items()}
