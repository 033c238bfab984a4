"""The ordered process pool of a preprocessing run: chunks in, :class:`ChunkResult` s out in input order.

``encode_in_order`` runs an encoder in N processes, this one included. Only small messages cross
the pipes: a task is a chunk (a byte range, a row group, or a scratch file of a compressed file's
lines) and a worker's result carries its tokens as a :class:`TokenFile`, which the writer copies
into the stores in the kernel.
"""
from __future__ import annotations

import collections
import contextlib
import gc
import itertools
import multiprocessing
import os
import tempfile
from dataclasses import dataclass
from multiprocessing.connection import Connection

import numpy as np

from megatron_ixt.data.shards import ShardSetWriter
from megatron_ixt.preprocess.chunks import Chunk, LineChunk
from megatron_ixt.preprocess.encoder import ChunkEncoder, ChunkResult

IN_FLIGHT = 4  # tasks sent ahead to each worker


@dataclass(frozen=True)
class TokenFile:
    """Token arrays that a worker leaves in a file for the writing process (they then never pass
    through a pipe). The file is the arrays' raw bytes (the shard set's token dtype) back to back, in
    the order of ``nbytes`` (store name -> bytes)."""

    path: str
    nbytes: dict

    @classmethod
    def write(cls, directory: str, tokens: dict) -> TokenFile:
        """Write ``tokens`` (store name -> 1-D array) to a new file in ``directory``."""
        fd, path = tempfile.mkstemp(dir=directory, suffix=".tokens")
        with open(fd, "wb") as f:
            for array in tokens.values():
                f.write(np.ascontiguousarray(array))
        return cls(path, {name: array.nbytes for name, array in tokens.items()})

    def add_to(self, writer: ShardSetWriter, lengths: dict) -> None:
        """``writer.add_documents`` of these tokens (copied in the kernel); the file is removed."""
        offsets = itertools.accumulate(self.nbytes.values(), initial=0)
        ranges = {name: (offset, n) for (name, n), offset in zip(self.nbytes.items(), offsets)}
        with open(self.path, "rb") as f:
            writer.add_documents_from_file(f.fileno(), ranges, lengths)
        os.remove(self.path)


def add_result(writer: ShardSetWriter, result: ChunkResult) -> None:
    """Append a result's documents to ``writer``, whichever process encoded it."""
    if isinstance(result.tokens, TokenFile):
        result.tokens.add_to(writer, result.lengths)
    else:
        writer.add_documents(result.tokens, result.lengths)


def _worker(encoder: ChunkEncoder, scratch: str, tasks: Connection, results: Connection) -> None:
    """A worker process: encodes the chunks it receives until None, and sends back each result
    (its tokens in a :class:`TokenFile` under ``scratch``) or the exception that stopped it."""
    while (chunk := tasks.recv()) is not None:
        try:
            result = encoder(chunk)
            result.tokens = TokenFile.write(scratch, result.tokens)  # a file name through the pipe
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
        if isinstance(chunk, LineChunk) and chunk.data is not None:  # a compressed file's lines: through a file
            fd, path = tempfile.mkstemp(dir=self.scratch, suffix=".jsonl")
            with open(fd, "wb") as f:
                f.write(chunk.data + b"\n")  # read() takes off one final newline: the lines stay the same
            chunk = LineChunk(chunk.file_index, path, 0, len(chunk.data) + 1, scratch=True)
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
    encode those tasks again. A worker's result holds its tokens as a :class:`TokenFile` in a
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
