"""Show an IXT shard set: its summary, or documents with decoded prefixes, text and annotation.

    python tools/inspect_ixt.py out/corpus                                  # summary
    python tools/inspect_ixt.py out/corpus --document 0 17 --tokenizer-model tok.model --record

Without ``--tokenizer-model`` (SentencePiece/HuggingFace sets) token ids are shown instead of text.
``--record`` also prints the document's ``ixt`` block from its source record (a JSONL line or a parquet
row), when that file
is still where it was preprocessed.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys

from megatron_ixt.cli import EXIT_BAD_INPUT, entry_point, failing_with
from megatron_ixt.data import shards
from megatron_ixt.data.inputs import source_record
from megatron_ixt.data.record import SCORE_AXES
from megatron_ixt.tokenizer import build_tokenizer, model_sha256


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stem", help="path stem P of the shard set (the --output-prefix of preprocess_ixt)")
    parser.add_argument("--document", "-i", type=int, nargs="+", default=[], help="document indices to show")
    parser.add_argument("--tokenizer-model", default=None, help="to decode tokens (checked against the metadata)")
    parser.add_argument("--chars", type=int, default=300, help="characters of text to show")
    parser.add_argument("--record", action="store_true", help="also show the ixt block of the source record")
    return parser


def get_args(argv=None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def load_decoder(metadata: dict, tokenizer_model: str | None):
    """A tokenizer matching the shard set, or None (show ids) when no model file was given."""
    identity = metadata["tokenizer"]
    if identity["type"] == "NullTokenizer":
        return build_tokenizer(tokenizer_type="NullTokenizer", vocab_size=identity["vocab_size"] - 1)
    if tokenizer_model is None:
        return None
    if model_sha256(tokenizer_model) != identity["model_sha256"]:
        raise ValueError(f"--tokenizer-model {tokenizer_model!r} is not the tokenizer this shard set was made "
                         f"with ({identity['model']}, sha256 {identity['model_sha256'][:12]}...)")
    return build_tokenizer(tokenizer_type=identity["type"], tokenizer_model=tokenizer_model)


def summary(reader: shards.ShardSet) -> str:
    m = reader.metadata
    c = collections.defaultdict(lambda: "?", m.get("counts", {}))  # hand-written sets may lack counts
    tok = m["tokenizer"]
    prefix_tokens = " / ".join(f"{c[shards.token_count_key(kind)]} {kind}" for kind in reader.kinds)
    lines = [f"{reader.stem}: {len(reader)} documents ({c['annotated']} annotated, "
             f"{c['unannotated']} unannotated), {c['text_tokens']} text tokens, "
             f"{prefix_tokens or 'no'} prefix tokens",
             f"prefix kinds: {', '.join(reader.kinds)} (format version {m['version']})",
             f"tokenizer: {tok['type']} {tok.get('model') or ''} (vocab {tok['vocab_size']}, eod {tok['eod']}), "
             f"append_eod={m.get('append_eod')}",
             "templates: " + ", ".join(f"{k} {t.get('name')} ({t['sha256'][:12]})" for k, t in m["templates"].items()),
             "quality histogram: " + ", ".join(f"{q}: {n}" for q, n in m.get("quality_histogram", {}).items()),
             "score means: " + ", ".join(f"{a} {v}" for a, v in m.get("score_means", {}).items())]
    lines += [f"steering {k}: {s['text']!r} ({len(s['tokens'])} tokens)" for k, s in m["steering"].items()]
    skipped = {r: n for r, n in m.get("skipped", {}).items() if n}
    lines.append("skipped: " + (", ".join(f"{r} {n}" for r, n in skipped.items()) if skipped else "none"))
    return "\n".join(lines)


def show_document(reader: shards.ShardSet, i: int, decoder, chars: int, record: bool) -> str:
    if not 0 <= i < len(reader):
        raise IndexError(f"document {i} out of range (the shard set has {len(reader)})")
    doc = reader[i]
    decode = (lambda ids: decoder.detokenize(ids.tolist())) if decoder else (lambda ids: str(ids.tolist()))
    if reader.docs is None:  # a set written without the per-document table
        lines = [f"document {i} of {len(reader)} (source and annotation unknown)"]
        row = {"quality": 0}
        record = False
    else:
        row = reader.docs[i]
        source = reader.metadata["inputs"][int(row["file"])]["path"]
        lines = [f"document {i} of {len(reader)} (from {source}:{int(row['line'])})"]
    if row["quality"]:
        scores = ", ".join(f"{a} {int(s)}" for a, s in zip(SCORE_AXES, row["scores"]))
        lines.append(f"annotation: quality {int(row['quality'])}/5; {scores}")
    else:
        lines.append("annotation: none (unannotated document)")
    for kind in reader.kinds:
        lines.append(f"{kind} prefix ({len(doc[kind])} tokens): {decode(doc[kind])!r}")
    text = decode(doc["text"])
    lines.append(f"text ({len(doc['text'])} tokens): {text[:chars]!r}{' ...' if len(text) > chars else ''}")
    if record:
        rec = source_record(reader.metadata["inputs"][int(row["file"])]["path"], int(row["line"]))
        lines.append("record ixt: " + (json.dumps(rec.get("ixt"), ensure_ascii=False) if rec is not None
                                       else f"(source {source} not readable)"))
    return "\n".join(lines)


@entry_point
def main(argv=None) -> int:
    args = get_args(argv)
    with failing_with(EXIT_BAD_INPUT, ValueError, FileNotFoundError, IndexError):
        reader = shards.ShardSet(args.stem)
        decoder = load_decoder(reader.metadata, args.tokenizer_model)
        print(summary(reader))
        for i in args.document:
            print()
            print(show_document(reader, i, decoder, args.chars, args.record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
