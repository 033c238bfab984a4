"""Merge IXT shard sets into one (text and prefix stores together, in the order given).

    python tools/merge_ixt.py --input 'out/part-*_ixt.json' --output-prefix out/all

``--input`` takes shard-set path stems (``P`` of ``P_ixt.json``), their files, or globs matching
their ``P_ixt.json`` / ``P_text_document.idx`` files. Refuses sets made with a different tokenizer,
different prefix kinds, different templates or a different ``--append-eod``. Written atomically
like preprocess_ixt.
"""
from __future__ import annotations

import argparse
import collections
import sys

from megatron_ixt import __version__
from megatron_ixt.cli import EXIT_BAD_INPUT, entry_point, failing_with
from megatron_ixt.data import shards
from megatron_ixt.data.inputs import expand_inputs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", nargs="+", required=True,
                        help="shard-set path stems P (or their P_ixt.json / P_text_document files), or globs; "
                             "merged in the order given, each glob sorted")
    parser.add_argument("--output-prefix", required=True, metavar="STEM", help="path stem of the merged shard set")
    return parser


def get_args(argv=None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def shard_set_stems(patterns: list[str]) -> list[str]:
    """Normalize ``--input`` entries to shard-set stems, in order (globs expanded as everywhere, see
    ``expand_inputs``); a glob match that is not a ``P_ixt.json`` or text-store file is skipped."""
    suffixes = ("_ixt.json", shards.TEXT_SUFFIX + ".idx", shards.TEXT_SUFFIX + ".bin", shards.TEXT_SUFFIX)
    stems = []
    for pattern in patterns:
        for path in expand_inputs([pattern], files=False):
            suffix = next((x for x in suffixes if path.endswith(x)), None)
            if suffix is None and path != pattern:
                continue  # another file of a shard set matched by the glob
            stem = path[: -len(suffix)] if suffix else path
            if stem not in stems:
                stems.append(stem)
    if not stems:
        raise FileNotFoundError(f"--input {patterns}: no shard sets found")
    return stems


def merged_metadata(parts: list[dict], stems: list[str]) -> dict:
    """The first part's identity (tokenizer, kinds, templates, steering) with counts summed over all parts."""
    first = parts[0]
    counts, status, histogram, score_sums, skipped = (collections.Counter() for _ in range(5))
    for meta in parts:
        counts.update(meta["counts"])
        status.update(meta["annotation_status"])
        histogram.update({int(q): n for q, n in meta["quality_histogram"].items()})
        score_sums.update(meta["score_sums"])
        skipped.update(meta["skipped"])
    return shards.build_metadata(
        created_by=f"megatron-ixt {__version__} tools/merge_ixt.py", tokenizer=first["tokenizer"],
        append_eod=first["append_eod"], json_key=first.get("json_key", "text"),
        templates={kind: first["templates"][kind] for kind in first["kinds"]},
        steering={kind: first["steering"][kind] for kind in first["kinds"]},
        inputs=[i for meta in parts for i in meta["inputs"]], counts=counts, annotation_status=status,
        quality=histogram, score_sums=score_sums, skipped=skipped, merged_from=stems,
        tokenizer_engines=list(dict.fromkeys(e for meta in parts for e in meta.get("tokenizer_engines", []))))


def merge(stems: list[str], output: str) -> dict:
    """Merge shard sets ``stems`` into the shard set ``output`` (a stem); returns the metadata written."""
    if output in stems:
        raise ValueError(f"--output-prefix {output!r} is also an input")
    parts = [shards.read_metadata(p) for p in stems]
    for stem, meta in zip(stems[1:], parts[1:]):
        problems = shards.compatibility_problems(parts[0], meta)
        if problems:
            raise ValueError(f"cannot merge {stem!r} with {stems[0]!r}: " + "; ".join(problems))
    with shards.ShardSetWriter(output, parts[0]["tokenizer"]["vocab_size"], kinds=parts[0]["kinds"]) as writer:
        file_offset = 0
        for stem, meta in zip(stems, parts):
            writer.add_shard_set(stem, file_offset=file_offset)
            file_offset += len(meta["inputs"])
        return writer.commit(merged_metadata(parts, stems))


@entry_point
def main(argv=None) -> int:
    args = get_args(argv)
    with failing_with(EXIT_BAD_INPUT, ValueError, FileNotFoundError):
        meta = merge(shard_set_stems(args.input), args.output_prefix)
    print(f"merged {len(meta['merged_from'])} shard sets: {meta['counts']['documents']} documents "
          f"({meta['counts']['annotated']} annotated) -> {args.output_prefix}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
