"""A small learnable IXT shard set for the training tests (NullTokenizer, vocab 511, EOD 511: 512 ids, so TP=1 and TP=2 pad the vocabulary alike).

Document ``i`` counts upwards from a random start in steps of 1 ("good", quality 5) or of a
random step with noise ("bad", quality 1). Annotated documents get a short critique prefix
that names their kind; the steering prefix is the "good" critique. A model can learn the
counting quickly, so the loss of a few-layer model falls within tens of iterations.
"""
from __future__ import annotations

import numpy

from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

from megatron_ixt.data.shards import (IXT_FORMAT, IXT_FORMAT_VERSION, prefix_store_path,
                                      text_store_path, write_metadata)

VOCAB = 511
EOD = VOCAB
GOOD_CRITIQUE = [490, 491, 492, 493]
BAD_CRITIQUE = [490, 494, 495, 496]
GOOD_QUALITY, BAD_QUALITY = [497, 498], [497, 499]


def write_corpus(prefix: str, num_documents: int = 400, annotated: float = 0.8, seed: int = 0) -> str:
    """Write shard set ``prefix`` (CONTRACTS.md section 2) with megatron-core's IndexedDatasetBuilder;
    returns the text-store path to pass as ``--data-path``."""
    rng = numpy.random.default_rng(seed)
    paths = {"text": text_store_path(prefix), "critique": prefix_store_path(prefix, "critique"),
             "quality": prefix_store_path(prefix, "quality")}
    builders = {k: IndexedDatasetBuilder(p + ".bin", dtype=DType.optimal_dtype(VOCAB + 1))
                for k, p in paths.items()}
    for _ in range(num_documents):
        good = rng.random() < 0.5
        length = int(rng.integers(40, 200))
        start = int(rng.integers(1, 400))
        if good:
            text = (start + numpy.arange(length)) % 480 + 1
        else:
            step = int(rng.integers(2, 7))
            text = (start + step * numpy.arange(length) + rng.integers(0, 3, length)) % 480 + 1
        doc = {"text": numpy.append(text, EOD)}
        is_annotated = rng.random() < annotated
        doc["critique"] = (GOOD_CRITIQUE if good else BAD_CRITIQUE) if is_annotated else []
        doc["quality"] = (GOOD_QUALITY if good else BAD_QUALITY) if is_annotated else []
        for kind, tokens in doc.items():
            builders[kind].add_document(numpy.asarray(tokens, dtype=numpy.int64), [len(tokens)])
    for kind, builder in builders.items():
        builder.finalize(paths[kind] + ".idx")
    write_metadata(prefix, {
        "format": IXT_FORMAT, "version": IXT_FORMAT_VERSION,
        "tokenizer": {"type": "NullTokenizer", "model_sha256": None, "vocab_size": VOCAB + 1, "eod": EOD},
        "templates": {k: {"text": "synthetic", "sha256": "0" * 64} for k in ("critique", "quality")},
        "steering": {"critique": {"text": "good", "tokens": GOOD_CRITIQUE},
                     "quality": {"text": "5", "tokens": GOOD_QUALITY}},
        "counts": {}, "quality_histogram": {}, "score_means": {}, "skipped": {},
    })
    return paths["text"]
