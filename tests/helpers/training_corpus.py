"""A small learnable IXT shard set for the training tests (NullTokenizer, vocab 511, EOD 511: 512 ids, so
TP=1 and TP=2 pad the vocabulary alike): ``from tests.helpers.training_corpus import write_counting_shard_set``.

Document ``i`` counts upwards from a random start in steps of 1 ("good", quality 5) or of a
random step with noise ("bad", quality 1). Annotated documents get a short critique prefix
that names their kind; the steering prefix is the "good" critique. A model can learn the
counting quickly, so the loss of a few-layer model falls within tens of iterations.
"""
from __future__ import annotations

import numpy as np

from megatron_ixt.data.shards import text_store_path
from tests.helpers.token_shards import write_token_shard_set

VOCAB = 511
EOD = VOCAB
GOOD_CRITIQUE = [490, 491, 492, 493]
BAD_CRITIQUE = [490, 494, 495, 496]
GOOD_QUALITY, BAD_QUALITY = [497, 498], [497, 499]


def write_counting_shard_set(prefix: str, num_documents: int = 400, annotated: float = 0.8, seed: int = 0) -> str:
    """Write shard set ``prefix`` (CONTRACTS.md section 2); returns the text-store path to pass as
    ``--data-path``. Annotated documents have quality 5 ("good") or 1 ("bad") in P_ixt_docs.npy."""
    rng = np.random.default_rng(seed)
    documents = {"text": [], "critique": [], "quality": []}
    quality = np.zeros(num_documents, dtype=np.int8)
    for i in range(num_documents):
        good = rng.random() < 0.5
        length = int(rng.integers(40, 200))
        start = int(rng.integers(1, 400))
        if good:
            text = (start + np.arange(length)) % 480 + 1
        else:
            step = int(rng.integers(2, 7))
            text = (start + step * np.arange(length) + rng.integers(0, 3, length)) % 480 + 1
        is_annotated = rng.random() < annotated
        documents["text"].append(np.append(text, EOD))
        documents["critique"].append((GOOD_CRITIQUE if good else BAD_CRITIQUE) if is_annotated else [])
        documents["quality"].append((GOOD_QUALITY if good else BAD_QUALITY) if is_annotated else [])
        quality[i] = (5 if good else 1) if is_annotated else 0
    write_token_shard_set(prefix, documents, vocab_size=VOCAB, quality=quality,
                          steering={"critique": GOOD_CRITIQUE, "quality": GOOD_QUALITY})
    return text_store_path(prefix)
