"""Annotated JSONL -> IXT shard set (text store + one aligned store per prefix kind + P_ixt.json).

    python tools/preprocess_ixt.py --input 'data/*.jsonl.zst' --output-prefix out/corpus \\
        --tokenizer-type SentencePieceTokenizer --tokenizer-model tok.model --workers 8 --append-eod

Flags follow Megatron-LM's tools/preprocess_data.py; see docs/preprocess.md for the record schema,
the outputs and the bad-input reasons. Output is byte-identical for any --workers: input is cut
into chunks of whole lines (a plain file's chunks are byte ranges that the workers read themselves),
encoded by this process and worker processes, and written in input order.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import gc
import itertools
import multiprocessing
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

import numpy

from megatron_ixt import __version__
from megatron_ixt.cli import EXIT_BAD_INPUT, add_import_flag, entry_point, failing_with
from megatron_ixt.data import prefix_kinds, shards
from megatron_ixt.data.inputs import expand_inputs, is_compressed, open_jsonl
from megatron_ixt.data.prefix_kinds import STEERING_CRITIQUE, steering_annotation
from megatron_ixt.data.record import REASONS, SCORE_AXES, parse_line
from megatron_ixt.data.templates import load_template, render_kinds
from megatron_ixt.tokenizer import (ENGINES, BatchEncoder, add_tokenizer_args, build_tokenizer, tokenizer_config,
                                    tokenizer_identity)

CHUNK_BYTES = 1 << 20  # input bytes per worker task (whole lines); fixed, so chunking never depends on --workers
EXAMPLES_PER_REASON = 5  # problems logged as file:line per reason
IN_FLIGHT = 4  # tasks sent ahead to each worker
VERIFY_DOCS = 32  # first records of the input whose text and prefixes verify the tokenizer engine


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_import_flag(parser)
    group = parser.add_argument_group("input data")
    group.add_argument("--input", required=True, nargs="+",
                       help="JSONL files or globs (.jsonl, .jsonl.gz, .jsonl.zst), read in the order given (each glob "
                            "sorted, a file given twice read once)")
    group.add_argument("--json-keys", nargs="+", default=["text"],
                       help="the field holding the document text (exactly one key)")
    group.add_argument("--num-shards", type=int, default=1,
                       help="split the input files into this many contiguous parts (one per task of a job "
                            "array); tools/merge_ixt.py joins the parts, in shard order, into the single run's set")
    group.add_argument("--shard-index", type=int, default=0, help="the part this task writes, 0..num-shards-1")
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
    group.add_argument("--workers", type=int, default=1,
                       help="encoding processes, this one included (N: N-1 worker processes, and this one encodes "
                            "whenever it is not writing); each tokenizes on one thread, so N = the cores to use")
    group.add_argument("--tokenizer-engine", default="auto", choices=("auto",) + ENGINES,
                       help="how texts are tokenized: 'auto' takes the fastest engine that loads and encodes a "
                            "verification sample exactly like the reference tokenizer; a named engine fails "
                            "instead of falling back. The output is the same with any engine")
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
    if args.num_shards < 1 or not 0 <= args.shard_index < args.num_shards:
        parser.error(f"--shard-index {args.shard_index} must be in 0..num-shards-1 (--num-shards {args.num_shards})")
    args.prefix_kinds = [kind for kind in prefix_kinds.names() if kind in args.prefix_kinds]  # registry order
    return args


def shard_files(files: list[str], num_shards: int, shard_index: int) -> list[str]:
    """Part ``shard_index`` of ``num_shards`` contiguous, near-equal parts of ``files`` (the first
    ``len(files) % num_shards`` parts get one file more; a part may be empty). Contiguous, so that
    merging the parts in shard order gives the files in the order of a single run."""
    size, extra = divmod(len(files), num_shards)
    start = shard_index * size + min(shard_index, extra)
    return files[start:start + size + (shard_index < extra)]


@dataclass(frozen=True)
class Chunk:
    """Whole lines of one input file, about CHUNK_BYTES. A plain file's chunk is the byte range
    ``[offset, offset + size)``, which the encoding process reads itself (``data`` None), so the
    reading process does no I/O for it; a compressed file's chunk carries its decompressed lines in
    ``data`` (or, sent to a worker, in a scratch file). Either way the lines are newline-separated,
    without the last line's newline."""

    file_index: int
    path: str
    offset: int
    size: int
    data: bytes | None = None
    scratch: bool = False  # ``path`` is a scratch copy of the lines (Workers.send), removed once read

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            block = f.read(self.size)
        if self.scratch:
            os.remove(self.path)
        return block[:-1] if block.endswith(b"\n") else block


@dataclass
class ChunkResult:
    """The encoded documents of one chunk, as concatenated token arrays plus per-document lengths.
    Line numbers (``docs["line"]``, ``problems``) count from 1 at the chunk's first line: a chunk does
    not know how many lines precede it; :func:`preprocess` adds them (``lines`` of the chunks before)."""

    file_index: int
    lines: int = 0  # lines in the chunk, blank ones included
    tokens: dict = field(default_factory=dict)  # store name -> 1-D array (the chunk's documents concatenated); a
    # worker sends them as a shards.TokenFile instead
    lengths: dict = field(default_factory=dict)  # store name -> list[int], one per written document
    docs: numpy.ndarray | None = None  # shards.DOC_DTYPE rows, one per written document
    counts: collections.Counter = field(default_factory=collections.Counter)
    status: collections.Counter = field(default_factory=collections.Counter)
    quality: collections.Counter = field(default_factory=collections.Counter)
    score_sums: collections.Counter = field(default_factory=collections.Counter)
    problems: list = field(default_factory=list)  # (line number, reason, message)


class ChunkEncoder:
    """Parses, validates, renders and tokenizes chunks of JSONL lines (runs in the workers).
    Pickles as its arguments and engine (a spawned worker rebuilds it; a forked one inherits it)."""

    def __init__(self, args: argparse.Namespace, engine: str | None = None):
        self.args = args
        self.tokenizer = build_tokenizer(args)
        self.dtype = numpy.dtype(shards.token_dtype(self.tokenizer.vocab_size))
        self.encoder = BatchEncoder(self.tokenizer, tokenizer_config(args), self.dtype,
                                    engine or args.tokenizer_engine)
        self.text_key = args.json_keys[0]
        self.text_only = args.text_only
        self.eod = self.tokenizer.eod if args.append_eod else None
        self.templates = {} if args.text_only else templates(args)

    def __getstate__(self) -> tuple:
        return self.args, self.encoder.engine

    def __setstate__(self, state: tuple) -> None:
        self.__init__(*state)

    def parse(self, block: bytes, result: ChunkResult) -> tuple[list, list, list, list, list]:
        """The valid records of ``block`` (newline-separated lines): (texts, annotations, line numbers
        counted from 1, statuses, rejected); the line count, counts and problems go to ``result``."""
        texts, annotations, line_numbers, statuses, rejected = [], [], [], [], []
        lines = block.split(b"\n")  # a chunk holds at least one line, perhaps an empty one
        problems, text_key = result.problems, self.text_key
        input_bytes = blank = dropped = 0  # counted here, added to result.counts once
        for line_number, raw in enumerate(lines, 1):
            raw = raw.rstrip(b"\r")
            input_bytes += len(raw)
            if not raw.strip():
                blank += 1
                continue
            record = parse_line(raw, text_key)
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
        result.lines = len(lines)
        result.counts.update(input_bytes=input_bytes, blank_lines=blank, records=len(lines) - blank, dropped=dropped)
        return texts, annotations, line_numbers, statuses, rejected

    def verification_sample(self, block: bytes) -> list[str]:
        """The texts and rendered prefixes of the first VERIFY_DOCS records of ``block`` (what
        ``BatchEncoder.verify`` checks against the reference tokenizer, which is slow)."""
        first = b"\n".join(block.split(b"\n", VERIFY_DOCS)[:VERIFY_DOCS])
        texts, annotations, *_ = self.parse(first, ChunkResult(0))
        return texts + [t.render(a) for a in annotations if a is not None for t in self.templates.values()]

    def encode_with_prefixes(self, texts: list[str], prefixes: dict) -> tuple[tuple, dict]:
        """Tokenize ``texts`` and the strings ``prefixes[kind]`` in one ``BatchEncoder.encode`` call
        (each call has a fixed cost); a prefix that repeats in the chunk (the quality prefix has 5
        values) is tokenized once. Returns ``(tokens, lengths)`` of the texts and ``{kind: (tokens,
        lengths)}``, lengths as ``BatchEncoder.encode`` gives them (-1: failed, no tokens)."""
        distinct = {}  # prefix -> its position among the chunk's distinct prefixes
        index = {kind: numpy.fromiter((distinct.setdefault(p, len(distinct)) for p in strings), numpy.int64,
                                      len(strings))
                 for kind, strings in prefixes.items()}
        tokens, lengths = self.encoder.encode(texts + list(distinct))
        n = len(texts)
        split = int(numpy.maximum(lengths[:n], 0).sum())
        encoded = {kind: take_sequences(tokens[split:], lengths[n:], i) for kind, i in index.items()}
        return (tokens[:split], lengths[:n]), encoded

    def __call__(self, chunk: Chunk) -> ChunkResult:
        file_index = chunk.file_index
        result = ChunkResult(file_index)
        texts, annotations, line_numbers, statuses, rejected = self.parse(chunk.read(), result)
        annotated = numpy.array([i for i, a in enumerate(annotations) if a is not None], numpy.int64)
        (tokens, lengths), prefixes = self.encode_with_prefixes(
            texts, render_kinds(self.templates, [annotations[i] for i in annotated.tolist()]))

        has_tokens = lengths > 0  # lengths: -1 failed, 0 no tokens
        for i in numpy.flatnonzero(~has_tokens).tolist():
            why = "gave no tokens" if lengths[i] == 0 else "failed or gave ids outside the vocabulary"
            result.problems.append((line_numbers[i], "text_untokenizable", f"the tokenizer {why}"))
            result.counts["dropped"] += 1
        kept = numpy.flatnonzero(has_tokens)
        lengths = lengths[kept]
        if self.eod is not None:
            tokens = numpy.insert(tokens, numpy.cumsum(lengths), numpy.array(self.eod, self.dtype))
            lengths = lengths + 1
        result.tokens[shards.TEXT], result.lengths[shards.TEXT] = tokens, lengths.tolist()

        # prefixes of the kept annotated documents; a prefix the tokenizer fails on rejects the annotation
        text_kept = has_tokens[annotated]
        valid = text_kept.copy()
        for _, prefix_lengths in prefixes.values():
            valid &= prefix_lengths > 0
        for a in numpy.flatnonzero(text_kept & ~valid).tolist():
            i = int(annotated[a])
            bad = [kind for kind, (_, n) in prefixes.items() if n[a] <= 0]
            result.problems.append((line_numbers[i], "prefix_untokenizable",
                                    f"the tokenizer failed on the rendered {' and '.join(bad)} prefix"))
            rejected[i] = True
            annotations[i] = None
        position = numpy.cumsum(has_tokens) - 1  # of each text among the kept ones
        for kind, (prefix_tokens, prefix_lengths) in prefixes.items():
            per_doc = numpy.zeros(len(kept), numpy.int64)
            per_doc[position[annotated[valid]]] = prefix_lengths[valid]
            result.tokens[kind] = prefix_tokens[numpy.repeat(valid, numpy.maximum(prefix_lengths, 0))]
            result.lengths[kind] = per_doc.tolist()

        kept = kept.tolist()
        final = [annotations[i] for i in kept]
        rows = [j for j, a in enumerate(final) if a is not None]  # the annotated documents
        docs = numpy.zeros(len(kept), shards.DOC_DTYPE)
        docs["file"] = file_index
        docs["line"] = [line_numbers[i] for i in kept]
        docs["quality"][rows] = [final[j].quality for j in rows]
        scores = [tuple(final[j].scores.values()) for j in rows]
        docs["scores"][rows] = numpy.array(scores, numpy.int8).reshape(len(rows), len(SCORE_AXES))
        result.counts.update(documents=len(kept), annotated=len(rows), degraded=sum(rejected[i] for i in kept))
        result.status.update(statuses[i] for i in kept)
        result.quality.update(docs["quality"][rows].tolist())
        result.score_sums.update(dict(zip(SCORE_AXES, docs["scores"][rows].sum(axis=0).tolist())))
        if not self.text_only:
            result.docs = docs
        result.problems.sort(key=lambda problem: problem[0])  # line order (stable within a line)
        return result


def take_sequences(tokens: numpy.ndarray, lengths: numpy.ndarray, index: numpy.ndarray) -> tuple:
    """Sequences ``index`` (1-D int array) of ``tokens``, the concatenation of sequences of
    ``lengths`` tokens each (-1 counts as 0): ``(their tokens concatenated, lengths[index])``."""
    counted = numpy.maximum(lengths, 0)
    starts = numpy.cumsum(counted) - counted
    taken = counted[index]
    ends = numpy.cumsum(taken)
    positions = numpy.arange(ends[-1] if len(ends) else 0) + numpy.repeat(starts[index] - (ends - taken), taken)
    return tokens[positions], lengths[index]


def _worker(encoder: ChunkEncoder, scratch: str, tasks: Connection, results: Connection) -> None:
    """A worker process: encodes the chunks it receives until None, and sends back each result
    (its tokens in a ``shards.TokenFile`` under ``scratch``) or the exception that stopped it."""
    while (chunk := tasks.recv()) is not None:
        try:
            result = encoder(chunk)
            result.tokens = shards.TokenFile.write(scratch, result.tokens)  # a file name through the pipe
        except Exception as exc:  # noqa: BLE001  re-raised by the main process, which stops the run
            results.send(exc)
            return
        results.send(result)


class Workers:
    """``n`` encoding processes, each with a pipe of tasks and a pipe of results; a worker's results
    come back in the order of its tasks. Every task is small (a chunk is a byte range of a file: a
    compressed file's chunk is first written to ``scratch``), so sending one never blocks on a
    worker that is itself sending a result: no deadlock, whatever the sizes of results. No helper
    threads (multiprocessing.Pool's cost ~0.1 CPU-s per 100 MB here, its worker handler waking at
    every result)."""

    def __init__(self, n: int, encoder: ChunkEncoder, scratch: str):
        self.scratch = scratch
        self.tasks, self.results, self.processes = [], [], []
        gc.freeze()  # forked workers inherit this process's objects: a collection there would touch (copy) them all
        try:
            for _ in range(n):
                task_reader, task_writer = multiprocessing.Pipe(duplex=False)
                result_reader, result_writer = multiprocessing.Pipe(duplex=False)
                process = multiprocessing.Process(target=_worker, args=(encoder, scratch, task_reader, result_writer),
                                                  daemon=True)
                process.start()
                task_reader.close()
                result_writer.close()
                self.tasks.append(task_writer)
                self.results.append(result_reader)
                self.processes.append(process)
        finally:
            gc.unfreeze()

    def send(self, worker: int, chunk: Chunk) -> None:
        if chunk.data is not None:  # a compressed file's lines: through a file, not the pipe
            fd, path = tempfile.mkstemp(dir=self.scratch, suffix=".jsonl")
            with open(fd, "wb") as f:
                f.write(chunk.data + b"\n")  # read() takes off one final newline: the lines stay the same
            chunk = Chunk(chunk.file_index, path, 0, len(chunk.data) + 1, scratch=True)
        try:
            self.tasks[worker].send(chunk)
        except BrokenPipeError:
            raise self._died(worker) from None

    def ready(self, worker: int) -> bool:
        """Whether ``worker``'s next result (or its end) can be received without waiting."""
        return self.results[worker].poll()

    def receive(self, worker: int) -> ChunkResult:
        """The next result of ``worker``; raises its exception, or RuntimeError if it died."""
        try:
            result = self.results[worker].recv()  # EOF once the worker is gone: only it holds the other end
        except EOFError:
            raise self._died(worker) from None
        if isinstance(result, BaseException):
            raise result
        return result

    def _died(self, worker: int) -> RuntimeError:
        self.processes[worker].join()
        return RuntimeError(f"preprocessing worker {worker} died (exit code {self.processes[worker].exitcode})")

    def stop(self) -> None:
        """Tell every worker to exit after its last task."""
        for tasks in self.tasks:
            try:
                tasks.send(None)
            except OSError:  # that worker has exited
                pass

    def close(self) -> None:
        """Stop the workers: after their last task if they are idle, else at once."""
        self.stop()
        for process in self.processes:
            process.join(timeout=1)
            if process.is_alive():
                process.terminate()
                process.join()


def read_chunks(files: list[str]):
    """Yield the :class:`Chunk` s of ``files`` in order: whole lines of about CHUNK_BYTES (more for a
    longer line). A plain file is cut by seeking, reading only the line at each cut; a compressed
    one is decompressed here. The reading process does no per-line work."""
    for file_index, path in enumerate(files):
        if not is_compressed(path):  # byte ranges, read by whoever encodes them
            size = os.path.getsize(path)
            with open(path, "rb") as f:
                start = 0
                while start < size:
                    f.seek(start + CHUNK_BYTES)
                    end = min(size, start + CHUNK_BYTES + len(f.readline()))  # through the next newline
                    yield Chunk(file_index, path, start, end - start)
                    start = end
            continue
        with open_jsonl(path) as f:
            offset, rest = 0, b""
            while True:
                data = f.read(CHUNK_BYTES)
                block = rest + data
                if not data:  # end of file: what is left is the last line, without a newline
                    if block:
                        yield Chunk(file_index, path, offset, len(block), block)
                    break
                end = block.rfind(b"\n")
                if end < 0:
                    rest = block
                    continue
                block, rest = block[:end], block[end + 1:]
                yield Chunk(file_index, path, offset, len(block) + 1, block)
                offset += len(block) + 1


def encode_in_order(encoder: ChunkEncoder, workers: int, tasks, verify, scratch_parent: str,
                    cleanup: contextlib.ExitStack):
    """Encode tasks with ``encoder`` in ``workers`` processes, this one included; yields results in
    input order.

    With more than one, ``workers - 1`` are worker processes (:class:`Workers`), each kept
    IN_FLIGHT tasks ahead (bounded memory on any input size), and this process encodes the next task
    itself whenever the result it must yield next is not ready (it keeps at most IN_FLIGHT results
    of its own), so it never idles while the workers have work, and on N cores N processes run.

    ``verify()`` checks the encoder's tokenizer engine (``BatchEncoder.verify``, which may move it
    to another engine) before the first result is yielded. With workers it runs while they encode
    the first tasks, so that its cost is not added to theirs; if it moves the engine, new workers
    encode those tasks again. A worker's result holds its tokens as a ``shards.TokenFile`` in a
    temporary directory under ``scratch_parent`` (the output's directory, so that the writer's
    kernel copy stays on one filesystem). Closing ``cleanup`` stops the workers (once the tasks
    ran out they have been told to exit; this waits for them) and then removes that directory: the
    caller closes it after its last use of the results, so that the workers' exit overlaps it."""
    if workers == 1:
        verify()
        yield from map(encoder, tasks)
        return
    n = workers - 1
    scratch = cleanup.enter_context(tempfile.TemporaryDirectory(dir=scratch_parent, prefix=".preprocess_ixt-"))
    tasks = iter(tasks)
    first = list(itertools.islice(tasks, IN_FLIGHT * n))

    def start() -> Workers:  # workers with the encoder's engine, encoding the first tasks
        started = cleanup.enter_context(contextlib.closing(Workers(n, encoder, scratch)))
        for i, task in enumerate(first):
            started.send(i % n, task)
        return started

    engine = encoder.encoder.engine
    group = start()
    verify()
    if encoder.encoder.engine != engine:  # the workers use an engine that failed verification
        group.close()
        group = start()
    # in task order: the worker that encodes each task in flight, or the result encoded here
    pending = collections.deque(i % n for i in range(len(first)))
    own = 0  # results encoded here, in pending
    more = len(first) == IN_FLIGHT * n  # the tasks may not all be taken yet
    if not more:
        group.stop()  # the workers exit once their tasks are done

    def next_task() -> Chunk | None:  # None at the end of the tasks
        nonlocal more
        task = next(tasks, None)
        if task is None:
            more = False
            group.stop()
        return task

    while pending:
        head = pending[0]
        if isinstance(head, ChunkResult):
            own -= 1
            yield pending.popleft()
        elif more and own < IN_FLIGHT and not group.ready(head):
            if (task := next_task()) is not None:
                pending.append(encoder(task))
                own += 1
        else:
            pending.popleft()
            yield group.receive(head)
            if more and (task := next_task()) is not None:  # the worker stays IN_FLIGHT tasks ahead
                group.send(head, task)
                pending.append(head)


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
    files = shard_files(expand_inputs(args.input), args.num_shards, args.shard_index)
    encoder = ChunkEncoder(args)
    tokenizer = encoder.tokenizer
    if args.append_eod and (tokenizer.eod is None or tokenizer.eod < 0):
        raise ValueError(f"--append-eod: the tokenizer {args.tokenizer_model!r} has no EOD/EOS token")
    steering = None if args.text_only else steering_prefixes(args, tokenizer)
    kinds = () if args.text_only else tuple(args.prefix_kinds)

    def verify() -> None:  # the engine against the reference tokenizer, on the input's first records
        first_chunk = next(read_chunks(files), None)
        encoder.encoder.verify(encoder.verification_sample(first_chunk.read() if first_chunk else b""))
        for note in encoder.encoder.notes:
            print(f"warning: tokenizer engine {note}", file=log)
        print(f"tokenizer engine: {encoder.encoder.label}", file=log, flush=True)

    counts, status, quality, score_sums, skipped = (collections.Counter() for _ in range(5))
    start = time.time()
    next_log = args.log_interval
    file_index, lines_before = 0, 0  # lines of the current file in the chunks already written
    scratch_parent = os.path.dirname(os.path.abspath(args.output_prefix))
    with contextlib.ExitStack() as encoding, \
            shards.ShardSetWriter(args.output_prefix, tokenizer.vocab_size, kinds=kinds) as writer:
        # the workers are waited for (and their scratch directory removed) after the writer's commit or abort
        results = encode_in_order(encoder, args.workers, read_chunks(files), verify, scratch_parent, encoding)
        for result in results:
            if result.file_index != file_index:
                file_index, lines_before = result.file_index, 0
            for line_number, reason, message in result.problems:
                skipped[reason] += 1
                where = f"{files[file_index]}:{lines_before + line_number}"
                if args.strict:
                    raise StrictError(f"{where}: {reason}: {message} (--strict)")
                if skipped[reason] <= EXAMPLES_PER_REASON:
                    print(f"{where}: {reason}: {message}", file=log)
            writer.add_documents(result.tokens, result.lengths)
            for name, n in writer.tokens.items():
                counts[shards.token_count_key(name)] = n
            if result.docs is not None:
                result.docs["line"] += lines_before
                writer.add_docs(result.docs)
            lines_before += result.lines
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
            annotation_status=status, quality=quality, score_sums=score_sums, skipped=skipped,
            tokenizer_engines=[encoder.encoder.label])
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


@entry_point(plugins=True)
def main(argv=None) -> int:
    args = get_args(argv)
    with failing_with(EXIT_BAD_INPUT, StrictError, ValueError, FileNotFoundError):
        preprocess(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
