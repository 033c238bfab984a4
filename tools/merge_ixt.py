"""Merge IXT shard sets into one (text and prefix stores together, in the order given).

    python tools/merge_ixt.py --input out/part-* --output-prefix out/all

``--input`` takes shard-set prefixes (``P`` of ``P_ixt.json``), or globs matching their
``P_ixt.json`` / ``P_text_document.idx`` files. Refuses sets made with a different tokenizer,
different templates or a different ``--append-eod``. Written atomically like preprocess_ixt.
"""
from __future__ import annotations

import argparse
import collections
import glob
import sys

from megatron_ixt import __version__
from megatron_ixt.data import shards
from megatron_ixt.data.record import SCORE_AXES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", nargs="+", required=True, help="shard-set prefixes or globs")
    parser.add_argument("--output-prefix", required=True, help="path prefix of the merged shard set")
    return parser


def get_args(argv=None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def shard_set_prefixes(patterns: list[str]) -> list[str]:
    """Normalize ``--input`` entries to shard-set prefixes, expanding globs (sorted) in order."""
    prefixes = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        for path in matches:
            for suffix in ("_ixt.json", shards.TEXT_SUFFIX + ".idx", shards.TEXT_SUFFIX + ".bin", shards.TEXT_SUFFIX):
                if path.endswith(suffix):
                    path = path[: -len(suffix)]
                    break
            if path not in prefixes:
                prefixes.append(path)
    if not prefixes:
        raise FileNotFoundError(f"--input {patterns}: no shard sets found")
    return prefixes


def merged_metadata(parts: list[dict], prefixes: list[str]) -> dict:
    """The first part's identity (tokenizer, templates, steering) with counts summed over all parts."""
    first = parts[0]
    counts, status, histogram, score_sums, skipped = (collections.Counter() for _ in range(5))
    for meta in parts:
        counts.update(meta["counts"])
        status.update(meta["annotation_status"])
        histogram.update(meta["quality_histogram"])
        score_sums.update(meta["score_sums"])
        skipped.update(meta["skipped"])
    annotated = counts["annotated"]
    return {
        **{k: first[k] for k in ("format", "version", "tokenizer", "append_eod", "json_key", "templates", "steering")},
        "created_by": f"megatron-ixt {__version__} tools/merge_ixt.py",
        "merged_from": prefixes,
        "inputs": [i for meta in parts for i in meta["inputs"]],
        "counts": {k: counts[k] for k in first["counts"]},
        "annotation_status": dict(sorted(status.items())),
        "quality_histogram": {q: histogram[q] for q in first["quality_histogram"]},
        "score_sums": {a: score_sums[a] for a in SCORE_AXES},
        "score_means": {a: round(score_sums[a] / annotated, 4) if annotated else None for a in SCORE_AXES},
        "skipped": {r: skipped[r] for r in first["skipped"]},
    }


def merge(prefixes: list[str], output_prefix: str) -> dict:
    """Merge shard sets ``prefixes`` into ``output_prefix``; returns the metadata written."""
    if output_prefix in prefixes:
        raise ValueError(f"--output-prefix {output_prefix!r} is also an input")
    parts = [shards.read_metadata(p) for p in prefixes]
    for prefix, meta in zip(prefixes[1:], parts[1:]):
        problems = shards.compatibility_problems(parts[0], meta)
        if problems:
            raise ValueError(f"cannot merge {prefix!r} with {prefixes[0]!r}: " + "; ".join(problems))
    with shards.ShardSetWriter(output_prefix, parts[0]["tokenizer"]["vocab_size"]) as writer:
        file_offset = 0
        for prefix, meta in zip(prefixes, parts):
            writer.add_shard_set(prefix, file_offset=file_offset)
            file_offset += len(meta["inputs"])
        return writer.commit(merged_metadata(parts, prefixes))


def main(argv=None) -> int:
    args = get_args(argv)
    try:
        meta = merge(shard_set_prefixes(args.input), args.output_prefix)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"merged {len(meta['merged_from'])} shard sets: {meta['counts']['documents']} documents "
          f"({meta['counts']['annotated']} annotated) -> {args.output_prefix}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
