"""Annotated JSONL -> IXT shard set (text store + one aligned store per prefix kind + P_ixt.json).

    python tools/preprocess_ixt.py --input 'data/*.jsonl.zst' --output-prefix out/corpus \\
        --tokenizer-type SentencePieceTokenizer --tokenizer-model tok.model --workers 8 --append-eod

Flags follow Megatron-LM's tools/preprocess_data.py; see docs/preprocess.md for the record schema,
the outputs and the bad-input reasons. Output is byte-identical for any --workers: input is cut
into fixed chunks of lines, encoded in worker processes and written in input order.
"""
from __future__ import annotations

import argparse
import collections
import itertools
import os
import sys
import time
from dataclasses import dataclass, field
from multiprocessing import Pool

import numpy

from megatron_ixt import __version__
from megatron_ixt.data import prefix_kinds, shards
from megatron_ixt.data.inputs import expand_inputs, open_jsonl
from megatron_ixt.data.prefix_kinds import STEERING_CRITIQUE, steering_annotation
from megatron_ixt.data.record import REASONS, SCORE_AXES, parse_line
from megatron_ixt.data.templates import load_template
from megatron_ixt.tokenizer import BatchEncoder, add_tokenizer_args, build_tokenizer, tokenizer_identity

CHUNK_LINES = 256  # lines per worker task; fixed, so that chunking never depends on --workers
EXAMPLES_PER_REASON = 5  # problems logged as file:line per reason


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_argument_group("input data")
    group.add_argument("--input", required=True, nargs="+",
                       help="JSONL files or globs (.jsonl, .jsonl.gz, .jsonl.zst), read in the order given (each glob "
                            "sorted, a file given twice read once)")
    group.add_argument("--json-keys", nargs="+", default=["text"],
                       help="the field holding the document text (exactly one key)")
    add_tokenizer_args(parser)
    group = parser.add_argument_group("IXT prefixes")
    group.add_argument("--prefix-kinds", nargs="+", choices=prefix_kinds.names(), default=list(prefix_kinds.names()),
                       metavar="KIND", help="the prefix kinds to write, one store each (default: all, "
                                            f"{' '.join(prefix_kinds.names())})")
    for kind in prefix_kinds.KINDS.values():
        group.add_argument(kind.flag, default="default", dest=f"{kind.name}_template",
                           help=f"template of the {kind.name} prefix ({kind.description}): 'default' "
                                f"({kind.default_template}), a built-in template name, or a template file")
    group.add_argument("--steering-critique", default=STEERING_CRITIQUE,
                       help="the critique rendered into the top-level steering prefixes (default: a built-in "
                            "'excellent' critique)")
    group.add_argument("--text-only", action="store_true",
                       help="write only P_text_document (a plain Megatron store, no prefixes, no P_ixt.json)")
    group = parser.add_argument_group("output data")
    group.add_argument("--output-prefix", required=True, metavar="STEM",
                       help="path stem P of the shard set: P_text_document.bin, P_<kind>_prefix.bin, P_ixt.json, ...")
    group.add_argument("--append-eod", action="store_true", help="append the EOD token to every document")
    group = parser.add_argument_group("runtime")
    group.add_argument("--workers", type=int, default=1, help="encoding processes")
    group.add_argument("--log-interval", type=int, default=10000, help="documents between progress lines")
    group.add_argument("--strict", action="store_true",
                       help="exit non-zero at the first bad record (nothing is written)")
    return parser


def get_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if len(args.json_keys) != 1:
        parser.error("--json-keys: IXT shard sets hold one text field; give exactly one key")
    if args.workers < 1:
        parser.error("--workers must be >= 1")
    args.prefix_kinds = [kind for kind in prefix_kinds.names() if kind in args.prefix_kinds]  # registry order
    return args


@dataclass
class ChunkResult:
    """The encoded documents of one chunk, as concatenated token arrays plus per-document lengths."""

    file_index: int
    tokens: dict  # store name -> 1-D array (all documents of the chunk concatenated)
    lengths: dict  # store name -> list[int], one per written document
    docs: numpy.ndarray | None = None  # shards.DOC_DTYPE rows, one per written document
    counts: collections.Counter = field(default_factory=collections.Counter)
    status: collections.Counter = field(default_factory=collections.Counter)
    quality: collections.Counter = field(default_factory=collections.Counter)
    score_sums: collections.Counter = field(default_factory=collections.Counter)
    problems: list = field(default_factory=list)  # (line number, reason, message)


class ChunkEncoder:
    """Parses, validates, renders and tokenizes chunks of JSONL lines (runs in the workers)."""

    def __init__(self, args: argparse.Namespace):
        self.tokenizer = build_tokenizer(args)
        self.dtype = numpy.dtype(shards.token_dtype(self.tokenizer.vocab_size))
        self.encoder = BatchEncoder(self.tokenizer, self.dtype)
        self.text_key = args.json_keys[0]
        self.text_only = args.text_only
        self.eod = numpy.array([self.tokenizer.eod] if args.append_eod else [], self.dtype).tobytes()
        self.check_range = args.tokenizer_type == "NullTokenizer"  # the only one taking ids from the input
        self.vocab_size = self.tokenizer.vocab_size
        self.templates = {} if args.text_only else templates(args)

    def encode(self, texts: list[str]) -> list:
        """Each text's tokens as ``self.dtype`` bytes; None where the tokenizer fails or gives
        out-of-vocabulary ids."""
        if not self.check_range:
            try:
                return self.encoder.encode_bytes(texts)
            except Exception:  # find the culprit(s) below; the others still go through
                pass
        ids = []
        for text in texts:
            try:
                ids.append(self.tokenizer.tokenize(text))
            except Exception:
                ids.append(None)
        if self.check_range:
            ids = [t if t is None or all(0 <= i < self.vocab_size for i in t) else None for t in ids]
        return [None if t is None else numpy.array(t, self.dtype).tobytes() for t in ids]

    def encode_unique(self, texts: list[str]) -> list:
        """Like :meth:`encode`, tokenizing each distinct string once (quality prefixes repeat)."""
        unique = list(dict.fromkeys(texts))
        if len(unique) == len(texts):
            return self.encode(texts)
        encoded = dict(zip(unique, self.encode(unique)))
        return [encoded[t] for t in texts]

    def __call__(self, task: tuple) -> ChunkResult:
        file_index, first_line, lines = task
        result = ChunkResult(file_index, {}, {})
        texts, annotations, line_numbers, statuses, rejected = [], [], [], [], []
        for line_number, raw in enumerate(lines, first_line):
            result.counts["input_bytes"] += len(raw)
            if not raw.strip():
                result.counts["blank_lines"] += 1
                continue
            result.counts["records"] += 1
            record = parse_line(raw, self.text_key)
            result.problems += [(line_number, p.reason, p.message) for p in record.problems]
            if record.text is None:
                result.counts["dropped"] += 1
                continue
            texts.append(record.text)
            annotations.append(record.annotation)
            line_numbers.append(line_number)
            statuses.append(record.status)
            rejected.append(bool(record.problems))  # the text is valid: these are ixt problems

        text_ids = self.encode(texts)
        prefix_ids = {}
        annotated = [i for i, a in enumerate(annotations) if a is not None and text_ids[i]]
        for kind, template in self.templates.items():
            encoded = self.encode_unique([template.render(annotations[i]) for i in annotated])
            prefix_ids[kind] = dict(zip(annotated, encoded))

        per_store = {name: [] for name in (shards.TEXT,) + tuple(self.templates)}
        docs = []
        for i, ids in enumerate(text_ids):
            if not ids:
                why = "gave no tokens" if ids == b"" else "failed or gave ids outside the vocabulary"
                result.problems.append((line_numbers[i], "text_untokenizable", f"the tokenizer {why}"))
                result.counts["dropped"] += 1
                continue
            per_store[shards.TEXT].append(ids + self.eod)  # bytes
            annotation = annotations[i]
            prefixes = {kind: prefix_ids[kind].get(i) for kind in self.templates}
            if annotation is not None and not all(prefixes.values()):
                bad = [kind for kind, p in prefixes.items() if not p]
                result.problems.append((line_numbers[i], "prefix_untokenizable",
                                        f"the tokenizer failed on the rendered {' and '.join(bad)} prefix"))
                rejected[i] = True
                annotation = None
            for kind in self.templates:
                per_store[kind].append(prefixes[kind] if annotation is not None else b"")
            result.counts["documents"] += 1
            result.counts["degraded"] += rejected[i]
            result.status[statuses[i]] += 1
            if annotation is not None:
                result.counts["annotated"] += 1
                result.quality[annotation.quality] += 1
                result.score_sums.update(annotation.scores)
                docs.append((file_index, line_numbers[i], annotation.quality, tuple(annotation.scores.values())))
            else:
                docs.append((file_index, line_numbers[i], 0, (0,) * len(SCORE_AXES)))

        size = self.dtype.itemsize
        for name, sequences in per_store.items():
            result.lengths[name] = [len(b) // size for b in sequences]
            result.tokens[name] = numpy.frombuffer(b"".join(sequences), self.dtype)
        if not self.text_only:
            result.docs = numpy.array(docs, dtype=shards.DOC_DTYPE)
        result.problems.sort(key=lambda problem: problem[0])  # line order (stable within a line)
        return result


_ENCODER: ChunkEncoder | None = None


def _init_worker(args: argparse.Namespace) -> None:
    global _ENCODER
    _ENCODER = ChunkEncoder(args)


def _encode_chunk(task: tuple) -> ChunkResult:
    return _ENCODER(task)


def read_chunks(files: list[str]):
    """Yield ``(file index, first line number, [raw lines])`` tasks of CHUNK_LINES lines."""
    for file_index, path in enumerate(files):
        with open_jsonl(path) as f:
            line_number = 1
            while True:
                lines = [line.rstrip(b"\r\n") for line in itertools.islice(f, CHUNK_LINES)]
                if not lines:
                    break
                yield file_index, line_number, lines
                line_number += len(lines)


def encode_in_order(args: argparse.Namespace, tasks):
    """Encode tasks in a pool of ``args.workers`` processes; yields results in input order,
    keeping at most a few tasks per worker in flight (bounded memory on any input size)."""
    with Pool(args.workers, initializer=_init_worker, initargs=(args,)) as pool:
        pending = collections.deque()
        for task in tasks:
            pending.append(pool.apply_async(_encode_chunk, (task,)))
            if len(pending) >= 4 * args.workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


class StrictError(RuntimeError):
    pass


def templates(args: argparse.Namespace) -> dict:
    """kind -> PrefixTemplate for each of ``--prefix-kinds``, from its ``--<kind>-template``."""
    return {kind: load_template(kind, getattr(args, f"{kind}_template")) for kind in args.prefix_kinds}


def steering_prefixes(args, tokenizer) -> dict:
    """kind -> ``{text, tokens}`` of the top-level steering prefix (with ``--steering-critique``);
    fails early when a template cannot be tokenized at all (e.g. text with NullTokenizer)."""
    steering = {}
    for kind, template in templates(args).items():
        text = template.render(steering_annotation(critique=args.steering_critique))
        try:
            steering[kind] = {"text": text, "tokens": [int(t) for t in tokenizer.tokenize(text)]}
        except Exception as exc:
            raise ValueError(f"{args.tokenizer_type} cannot tokenize the {kind} template {template.name!r} "
                             f"({exc!r}); give a template it can encode, or --text-only") from None
    return steering


def preprocess(args: argparse.Namespace, log=None) -> dict | None:
    """Run the preprocessing; returns the metadata written (None with --text-only).
    Progress and problems go to ``log`` (default: stderr)."""
    log = log or sys.stderr
    files = expand_inputs(args.input)
    tokenizer = build_tokenizer(args)
    if args.append_eod and (tokenizer.eod is None or tokenizer.eod < 0):
        raise ValueError(f"--append-eod: the tokenizer {args.tokenizer_model!r} has no EOD/EOS token")
    steering = None if args.text_only else steering_prefixes(args, tokenizer)
    kinds = () if args.text_only else tuple(args.prefix_kinds)

    counts, status, quality, score_sums, skipped = (collections.Counter() for _ in range(5))
    start = time.time()
    next_log = args.log_interval
    with shards.ShardSetWriter(args.output_prefix, tokenizer.vocab_size, kinds=kinds) as writer:
        for result in encode_in_order(args, read_chunks(files)):
            for line_number, reason, message in result.problems:
                skipped[reason] += 1
                where = f"{files[result.file_index]}:{line_number}"
                if args.strict:
                    raise StrictError(f"{where}: {reason}: {message} (--strict)")
                if skipped[reason] <= EXAMPLES_PER_REASON:
                    print(f"{where}: {reason}: {message}", file=log)
            writer.add_documents(result.tokens, result.lengths)
            for name in writer.names:
                counts[shards.token_count_key(name)] += len(result.tokens[name])
            if result.docs is not None:
                writer.add_docs(result.docs)
            counts.update(result.counts)
            status.update(result.status)
            quality.update(result.quality)
            score_sums.update(result.score_sums)
            if counts["documents"] >= next_log:
                next_log += args.log_interval
                print(progress_line(counts, time.time() - start), file=log, flush=True)
        counts["unannotated"] = counts["documents"] - counts["annotated"]
        metadata = None if args.text_only else shards.build_metadata(
            created_by=f"megatron-ixt {__version__} tools/preprocess_ixt.py",
            tokenizer=tokenizer_identity(args, tokenizer=tokenizer), append_eod=args.append_eod,
            json_key=args.json_keys[0], templates={k: t.identity() for k, t in templates(args).items()},
            steering=steering, inputs=[{"path": p, "bytes": os.path.getsize(p)} for p in files], counts=counts,
            annotation_status=status, quality=quality, score_sums=score_sums, skipped=skipped)
        metadata = writer.commit(metadata)
    print(progress_line(counts, time.time() - start, final=True), file=log, flush=True)
    print(summary(counts, skipped), file=log, flush=True)
    return metadata


def progress_line(counts, elapsed: float, final: bool = False) -> str:
    elapsed = max(elapsed, 1e-9)
    return (f"{'Done: processed' if final else 'Processed'} {counts['documents']} documents "
            f"({counts['documents'] / elapsed:.1f} docs/s, {counts['input_bytes'] / elapsed / 1e6:.2f} MB/s, "
            f"{counts['text_tokens'] / elapsed:.0f} tokens/s) in {elapsed:.1f} s.")


def summary(counts, skipped) -> str:
    lines = [f"{counts['documents']} documents written ({counts['annotated']} annotated, "
             f"{counts['unannotated']} unannotated, {counts['degraded']} with a rejected annotation), "
             f"{counts['dropped']} records dropped."]
    lines += [f"  {reason}: {n}  ({REASONS[reason]})" for reason, n in sorted(skipped.items()) if n]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = get_args(argv)
    try:
        preprocess(args)
    except (StrictError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
