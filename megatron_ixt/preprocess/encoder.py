"""Encoding one chunk: parse and validate its records, render the prefixes, tokenize, build the arrays.

Runs in every encoding process (the main one and the workers of megatron_ixt.preprocess.pool).
"""
from __future__ import annotations

import collections
from dataclasses import dataclass, field

import numpy as np

from megatron_ixt.data import shards
from megatron_ixt.data.record import SCORE_AXES
from megatron_ixt.data.templates import PrefixTemplate, render_kinds
from megatron_ixt.preprocess.chunks import Chunk
from megatron_ixt.tokenizer import BatchEncoder, TokenizerConfig, build_tokenizer

VERIFY_DOCS = 32  # first records of the input whose text and prefixes verify the tokenizer engine


@dataclass
class ChunkResult:
    """The encoded documents of one chunk, as concatenated token arrays plus per-document lengths.
    Record numbers (``docs["line"]``, ``problems``) count from 1 at the chunk's first record: a chunk
    does not know how many records precede it; the run adds them (``lines`` of the chunks before)."""

    file_index: int
    lines: int = 0  # records in the chunk (a JSON-lines chunk's lines, blank ones included)
    tokens: dict = field(default_factory=dict)  # store name -> 1-D array (the chunk's documents concatenated); a
    # worker sends them as a pool.TokenFile instead
    lengths: dict = field(default_factory=dict)  # store name -> list[int], one per written document
    docs: np.ndarray | None = None  # shards.DOC_DTYPE rows, one per written document
    counts: collections.Counter = field(default_factory=collections.Counter)
    status: collections.Counter = field(default_factory=collections.Counter)
    quality: collections.Counter = field(default_factory=collections.Counter)
    score_sums: collections.Counter = field(default_factory=collections.Counter)
    problems: list = field(default_factory=list)  # (record number, reason, message)


class ChunkEncoder:
    """Parses, validates, renders and tokenizes chunks (``encoder(chunk) -> ChunkResult``).

    ``tokenizer``: the megatron-core tokenizer to build; ``templates``: kind -> template, one prefix
    store each (empty: a plain text store, no prefixes and no document table); ``text_key``: the
    field holding the text; ``append_eod``: end every text with the tokenizer's EOD; ``engine``: the
    ``BatchEncoder`` engine (``"auto"``: the fastest that loads). Pickles as these fields and the
    engine in use (a spawned worker rebuilds it; a forked one inherits it)."""

    def __init__(self, tokenizer: TokenizerConfig, templates: dict[str, PrefixTemplate], *, text_key: str = "text",
                 append_eod: bool = False, engine: str = "auto"):
        self.config = tokenizer
        self.templates = dict(templates)
        self.text_key = text_key
        self.append_eod = append_eod
        self.tokenizer = build_tokenizer(tokenizer)
        self.dtype = np.dtype(shards.token_dtype(self.tokenizer.vocab_size))
        self.encoder = BatchEncoder(self.tokenizer, tokenizer, self.dtype, engine)
        if append_eod and (self.tokenizer.eod is None or self.tokenizer.eod < 0):
            raise ValueError(f"--append-eod: the tokenizer {tokenizer.tokenizer_model!r} has no EOD/EOS token")
        self.eod = self.tokenizer.eod if append_eod else None

    def __getstate__(self) -> dict:
        return {"tokenizer": self.config, "templates": self.templates, "text_key": self.text_key,
                "append_eod": self.append_eod, "engine": self.encoder.engine}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def parse(self, chunk: Chunk, result: ChunkResult) -> tuple[list, list, list, list, list]:
        """The valid records of ``chunk``: (texts, annotations, record numbers counted from 1,
        statuses, rejected); the record count, counts and problems go to ``result``."""
        texts, annotations, line_numbers, statuses, rejected = [], [], [], [], []
        records, input_bytes = chunk.records(self.text_key)
        problems = result.problems
        blank = dropped = 0  # counted here, added to result.counts once
        for line_number, record in enumerate(records, 1):
            if record is None:
                blank += 1
                continue
            if record.problems:
                problems += [(line_number, p.reason, p.message) for p in record.problems]
            if record.text is None:
                dropped += 1
                continue
            texts.append(record.text)
            annotations.append(record.annotation)
            line_numbers.append(line_number)
            statuses.append(record.status)
            rejected.append(bool(record.problems))  # the text is valid: these are ixt problems
        result.lines = len(records)
        result.counts.update(input_bytes=input_bytes, blank_lines=blank, records=len(records) - blank,
                             dropped=dropped)
        return texts, annotations, line_numbers, statuses, rejected

    def verification_sample(self, chunk: Chunk | None) -> list[str]:
        """The texts and rendered prefixes of the first VERIFY_DOCS records of ``chunk`` (what
        ``BatchEncoder.verify`` checks against the reference tokenizer, which is slow)."""
        records = chunk.records(self.text_key, VERIFY_DOCS)[0] if chunk is not None else []
        valid = [r for r in records if r is not None and r.text is not None]
        return [r.text for r in valid] + [t.render(r.annotation) for r in valid if r.annotation is not None
                                          for t in self.templates.values()]

    def encode_with_prefixes(self, texts: list[str], prefixes: dict) -> tuple[tuple, dict]:
        """Tokenize ``texts`` and the strings ``prefixes[kind]`` in one ``BatchEncoder.encode`` call
        (each call has a fixed cost); a prefix that repeats in the chunk (the quality prefix has 5
        values) is tokenized once. Returns ``(tokens, lengths)`` of the texts and ``{kind: (tokens,
        lengths)}``, lengths as ``BatchEncoder.encode`` gives them (-1: failed, no tokens)."""
        distinct = {}  # prefix -> its position among the chunk's distinct prefixes
        index = {kind: np.fromiter((distinct.setdefault(p, len(distinct)) for p in strings), np.int64,
                                      len(strings))
                 for kind, strings in prefixes.items()}
        tokens, lengths = self.encoder.encode(texts + list(distinct))
        n = len(texts)
        split = int(np.maximum(lengths[:n], 0).sum())
        encoded = {kind: take_sequences(tokens[split:], lengths[n:], i) for kind, i in index.items()}
        return (tokens[:split], lengths[:n]), encoded
    def __call__(self, chunk: Chunk) -> ChunkResult:
        file_index = chunk.file_index
        result = ChunkResult(file_index)
        texts, annotations, line_numbers, statuses, rejected = self.parse(chunk, result)
        annotated = np.array([i for i, a in enumerate(annotations) if a is not None], np.int64)
        (tokens, lengths), prefixes = self.encode_with_prefixes(
            texts, render_kinds(self.templates, [annotations[i] for i in annotated.tolist()]))

        has_tokens = lengths > 0  # lengths: -1 failed, 0 no tokens
        for i in np.flatnonzero(~has_tokens).tolist():
            why = "gave no tokens" if lengths[i] == 0 else "failed or gave ids outside the vocabulary"
            result.problems.append((line_numbers[i], "text_untokenizable", f"the tokenizer {why}"))
            result.counts["dropped"] += 1
        kept = np.flatnonzero(has_tokens)
        lengths = lengths[kept]
        if self.eod is not None:
            tokens = np.insert(tokens, np.cumsum(lengths), np.array(self.eod, self.dtype))
            lengths = lengths + 1
        result.tokens[shards.TEXT], result.lengths[shards.TEXT] = tokens, lengths.tolist()

        # prefixes of the kept annotated documents; a prefix the tokenizer fails on rejects the annotation
        text_kept = has_tokens[annotated]
        valid = text_kept.copy()
        for _, prefix_lengths in prefixes.values():
            valid &= prefix_lengths > 0
        for a in np.flatnonzero(text_kept & ~valid).tolist():
            i = int(annotated[a])
            bad = [kind for kind, (_, n) in prefixes.items() if n[a] <= 0]
            result.problems.append((line_numbers[i], "prefix_untokenizable",
                                    f"the tokenizer failed on the rendered {' and '.join(bad)} prefix"))
            rejected[i] = True
            annotations[i] = None
        position = np.cumsum(has_tokens) - 1  # of each text among the kept ones
        for kind, (prefix_tokens, prefix_lengths) in prefixes.items():
            per_doc = np.zeros(len(kept), np.int64)
            per_doc[position[annotated[valid]]] = prefix_lengths[valid]
            result.tokens[kind] = prefix_tokens[np.repeat(valid, np.maximum(prefix_lengths, 0))]
            result.lengths[kind] = per_doc.tolist()

        kept = kept.tolist()
        final = [annotations[i] for i in kept]
        rows = [j for j, a in enumerate(final) if a is not None]  # the annotated documents
        docs = np.zeros(len(kept), shards.DOC_DTYPE)
        docs["file"] = file_index
        docs["line"] = [line_numbers[i] for i in kept]
        docs["quality"][rows] = [final[j].quality for j in rows]
        scores = [tuple(final[j].scores.values()) for j in rows]
        docs["scores"][rows] = np.array(scores, np.int8).reshape(len(rows), len(SCORE_AXES))
        result.counts.update(documents=len(kept), annotated=len(rows), degraded=sum(rejected[i] for i in kept))
        result.status.update(statuses[i] for i in kept)
        result.quality.update(docs["quality"][rows].tolist())
        result.score_sums.update(dict(zip(SCORE_AXES, docs["scores"][rows].sum(axis=0).tolist())))
        if self.templates:
            result.docs = docs
        result.problems.sort(key=lambda problem: problem[0])  # line order (stable within a line)
        return result


def take_sequences(tokens: np.ndarray, lengths: np.ndarray, index: np.ndarray) -> tuple:
    """Sequences ``index`` (1-D int array) of ``tokens``, the concatenation of sequences of
    ``lengths`` tokens each (-1 counts as 0): ``(their tokens concatenated, lengths[index])``."""
    counted = np.maximum(lengths, 0)
    starts = np.cumsum(counted) - counted
    taken = counted[index]
    ends = np.cumsum(taken)
    positions = np.arange(ends[-1] if len(ends) else 0) + np.repeat(starts[index] - (ends - taken), taken)
    return tokens[positions], lengths[index]
