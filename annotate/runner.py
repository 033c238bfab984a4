"""The annotation loop: shards in, annotated records out, bounded concurrency, resumable.

One producer walks this task's shards in order and starts a task per document not yet
annotated whenever one of ``concurrency`` request slots is free; the task builds the prompt
(rubric first, document last, head+tail truncated), calls the backend, parses the verdict
(re-asking after a ``length`` / unparseable answer up to ``max_parse_retries`` times) and
appends the record to its shard's writer. A shard is committed once its last document is
written, while the next shard's documents already keep the servers busy.

``ixt`` blocks written here (docs/CONTRACTS.md section 1, plus bookkeeping fields)::

    ok:     {"status": "ok", "quality", "scores", "critique", "reasoning", "annotator",
             "truncation": null | {"unit", "original", "kept_head", "kept_tail"},
             "usage": {"prompt_tokens", "completion_tokens", "cached_tokens", "requests"}}
    failed: {"status": "failed:<http|length|parse|unverifiable>", "error": str,
             "annotator", "truncation", "usage",
             "answer", "reasoning", "finish_reason" (the judge's last answer, if any; bounded)}

Every block also has ``completed_at`` (Unix seconds), which ``annotate report`` turns into
throughput over time.
"""
from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass

from annotate.backends import Backend, BackendError, Misconfigured, Request
from annotate.parse import ParseError, parse_output
from annotate.store import (
    ShardPaths,
    ShardStats,
    ShardWriter,
    count_records,
    encode_record,
    fsync_dir,
    iter_records,
    write_json_atomic,
)
from megatron_ixt.data.record import STATUS_OK, parse_record
from megatron_ixt.fileio import atomic_write

log = logging.getLogger("annotate")
MAX_LOGGED_REJECTS = 20
MAX_KEPT_ANSWER = 4000  # characters of a failed answer kept in its record (head and tail)
RECENT_S = 300.0  # the "last minutes" window of the progress line


@dataclass
class RunConfig:
    output_dir: str
    concurrency: int = 256
    max_doc_tokens: int = 16384  # 0: never truncate
    max_parse_retries: int = 2
    fsync_interval: float = 5.0
    log_interval: float | None = None  # None: 1 s on a terminal, 30 s otherwise
    fail_fast_window: int = 16  # stop when this many documents in a row are refused alike; 0: never
    judge_settings: dict | None = None  # retry-failed --new-judge: result flags recorded in every record


def bounded(text: str, limit: int = MAX_KEPT_ANSWER) -> str:
    """``text``, or its head and tail with a marker when longer than ``limit`` characters."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n[... {len(text) - 2 * half} characters cut ...]\n{text[-half:]}"


def document_id(obj: dict, text: str) -> str | None:
    """The record's stable id: its ``id`` field (str or int), else a hash of its text.
    None when ``id`` is present but unusable."""
    if "id" not in obj:
        return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]
    value = obj["id"]
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        return None
    return str(value)


class _Job:
    """One shard's work. Subclasses define which documents to do and how to finish."""

    kind = ""

    def __init__(self, paths: ShardPaths, fsync_interval: float):
        self.paths = paths
        self.stats = ShardStats()
        self.writer: ShardWriter | None = None
        self.done_ids: set = set()
        self.total = 0  # documents this job will hold when finished (estimate before the scan)
        self.pending = 0
        self.scanned = False
        self.finished = False
        self.fsync_interval = fsync_interval
        self.annotator_seen = None

    def _on_recovered(self, rec_id, ixt) -> None:
        self.stats.add(ixt)
        if self.annotator_seen is None:
            self.annotator_seen = ixt.get("annotator")

    def check_annotator(self, annotator: dict) -> None:
        """Refuse to mix prompt versions / models in one shard."""
        seen = self.annotator_seen
        if seen is None:
            return
        for key in ("backend", "model", "prompt_version"):
            if seen.get(key) != annotator.get(key):
                raise RuntimeError(f"{self.writer.path}: already holds records annotated with {key}="
                                   f"{seen.get(key)!r}, this run uses {annotator.get(key)!r}; "
                                   "use a new --output directory (or the same settings) to continue")

    def drop_if_empty(self) -> None:
        """After an aborted run: remove this job's output file if no record reached it (and, for
        ``run``, its stats and an empty list of bad lines, which the next scan rewrites)."""
        path = self.writer.path
        if self.finished or not os.path.exists(path) or os.path.getsize(path):
            return
        os.remove(path)
        self.writer = None
        if self.kind == "run":
            for other in (self.paths.stats, self.paths.rejected):
                if os.path.exists(other) and (other == self.paths.stats or not os.path.getsize(other)):
                    os.remove(other)

    def write(self, record: dict) -> None:
        self.writer.append(record)
        self.stats.add(record["ixt"])
        self.pending -= 1
        if self.scanned and self.pending == 0:
            self.finish()

    def prepare(self) -> bool:
        """Open the output for appending (recovering a crash); False when there is nothing to do."""
        raise NotImplementedError

    def documents(self):
        """Yield ``(id, record_dict, text)`` of the documents still to annotate."""
        raise NotImplementedError

    def finish(self) -> None:
        """Publish the shard's output once every document is written."""
        raise NotImplementedError


class RunJob(_Job):
    """Annotate input shard ``input_path`` (its text in field ``text_key``, its id in ``id_key``) into
    ``<stem>.jsonl``."""

    kind = "run"

    def __init__(self, input_path: str, paths: ShardPaths, fsync_interval: float, text_key: str = "text",
                 id_key: str = "id"):
        super().__init__(paths, fsync_interval)
        self.input_path = input_path
        self.keys = (text_key, id_key)
        self.rejected: dict[str, int] = {}
        self.valid = 0
        self.input_lines = 0
        self.started = time.monotonic()
        self.previous_elapsed = 0.0  # annotation time spent on this shard by earlier (killed) runs

    def prepare(self) -> bool:
        """Recover the partial output; False when the shard is already committed."""
        if os.path.exists(self.paths.final):
            return False
        self.total = count_records(self.input_path, *self.keys)
        try:
            with open(self.paths.stats, encoding="utf-8") as f:
                self.previous_elapsed = float(json.load(f).get("elapsed_s", 0.0))
        except (OSError, ValueError, TypeError):
            self.previous_elapsed = 0.0
        self.writer = ShardWriter(self.paths.partial, self.fsync_interval)
        self.done_ids = self.writer.open(self._on_recovered)
        return True

    def documents(self):
        """Yield ``(id, record_dict, text)`` of the valid documents not yet annotated."""
        seen, rejects = set(), []
        self.started = time.monotonic()
        for lineno, obj, problem, raw in iter_records(self.input_path, *self.keys):
            self.input_lines += 1
            if problem is None:
                rec = parse_record(obj)
                problem = (rec.problems[0].reason, rec.problems[0].message) if rec.text is None else None
            if problem is None:
                doc_id = document_id(obj, rec.text)
                if doc_id is None:
                    problem = ("bad_id", f"{self.keys[1]!r} is {obj['id']!r}, expected a non-empty string or an "
                                         "integer")
                elif doc_id in seen:
                    problem = ("duplicate_id", f"id {doc_id!r} already used in this shard")
            if problem is not None:
                self._reject(rejects, lineno, raw, *problem)
                continue
            seen.add(doc_id)
            self.valid += 1
            if doc_id not in self.done_ids:
                yield doc_id, obj, rec.text
        unknown = self.done_ids - seen
        if unknown:
            raise RuntimeError(f"{self.paths.partial} holds {len(unknown)} id(s) that are not in {self.input_path} "
                               f"(e.g. {sorted(unknown)[0]!r}): the input changed since the run started; "
                               "restore it or use a new --output directory")
        self.total = self.valid
        with atomic_write(self.paths.rejected, "wb") as f:
            for r in rejects:
                f.write(encode_record(r))
        if self.input_lines and not self.valid:
            reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(self.rejected.items()))
            raise RuntimeError(f"{self.input_path}: none of its {self.input_lines} records is a valid document "
                               f"({reasons}; all listed in {self.paths.rejected}); nothing committed. Is the text in "
                               f"--text-key {self.keys[0]!r} and the id in --id-key {self.keys[1]!r}?")

    def _reject(self, rejects, lineno, raw, reason, message) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        n = sum(self.rejected.values())
        if n <= MAX_LOGGED_REJECTS:
            log.warning("%s:%d: skipped (%s): %s", self.input_path, lineno, reason, message)
        elif n == MAX_LOGGED_REJECTS + 1:
            log.warning("%s: more bad lines; all are listed in %s", self.input_path, self.paths.rejected)
        rejects.append({"file": self.input_path, "line": lineno, "reason": reason, "message": message,
                        "raw": raw.decode("utf-8", "replace")})

    def finish(self) -> None:
        self.writer.close()
        if self.stats.done != self.valid:
            raise RuntimeError(f"{self.paths.partial}: {self.stats.done} records for {self.valid} valid input "
                               "documents; not committing")
        # the committed stats first, then the output under its final name: a process killed between the
        # two leaves the .partial, which the next run recovers whole and commits (rewriting these stats);
        # the other order could leave a committed shard with the last "running" stats for good
        self.finished = True
        write_json_atomic(self.paths.stats, self.stats_dict("committed"))
        self.paths.commit()
        log.info("committed %s (%d ok, %d failed)", self.paths.final, self.stats.ok, self.stats.done - self.stats.ok)

    def stats_dict(self, state: str) -> dict:
        return {"shard": self.paths.stem, "input": os.path.abspath(self.input_path), "state": state,
                "input_lines": self.input_lines if self.scanned else None,
                "documents": self.valid if self.scanned else self.total,
                "rejected": dict(sorted(self.rejected.items())), **self.stats.to_dict(),
                "elapsed_s": round(self.previous_elapsed + time.monotonic() - self.started, 3),
                "annotator": self.annotator_seen, "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


class RetryJob(_Job):
    """Re-annotate the failed records of a committed shard and merge the results atomically."""

    kind = "retry"

    def __init__(self, paths: ShardPaths, fsync_interval: float, statuses: set | None):
        super().__init__(paths, fsync_interval)
        self.statuses = statuses  # None: every failure status

    def _wanted(self, ixt) -> bool:
        status = ixt.get("status") if isinstance(ixt, dict) else None
        return status != STATUS_OK and (self.statuses is None or status in self.statuses)

    def prepare(self) -> bool:
        if not os.path.exists(self.paths.final):
            return False
        with open(self.paths.final, "rb") as f:
            self.total = sum(1 for raw in f if self._wanted(json.loads(raw).get("ixt")))
        if self.total == 0 and not os.path.exists(self.paths.retry):
            return False
        self.writer = ShardWriter(self.paths.retry, self.fsync_interval)
        self.done_ids = self.writer.open(self._on_recovered)
        return True

    def documents(self):
        with open(self.paths.final, "rb") as f:
            for raw in f:
                rec = json.loads(raw)
                if self._wanted(rec.get("ixt")) and rec["id"] not in self.done_ids:
                    obj = {k: v for k, v in rec.items() if k != "ixt"}
                    yield rec["id"], obj, obj["text"]

    def finish(self) -> None:
        self.writer.close()
        new = {}
        with open(self.paths.retry, "rb") as f:
            for raw in f:
                rec = json.loads(raw)
                new[rec["id"]] = raw
        tmp, merged = self.paths.final + ".merge", ShardStats()
        with open(self.paths.final, "rb") as src, open(tmp, "wb") as dst:
            for raw in src:
                rec = json.loads(raw)
                if rec["id"] in new and rec["ixt"]["status"] != STATUS_OK:
                    raw = new[rec["id"]]
                    rec = json.loads(raw)
                merged.add(rec["ixt"])
                dst.write(raw)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(tmp, self.paths.final)
        fsync_dir(self.paths.dir)
        os.remove(self.paths.retry)
        self.finished = True
        try:
            with open(self.paths.stats, encoding="utf-8") as f:
                stats = json.load(f)
        except (OSError, ValueError):
            stats = {"shard": self.paths.stem}
        stats.update(merged.to_dict(), state="committed", retried=stats.get("retried", 0) + len(new),
                     updated=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        write_json_atomic(self.paths.stats, stats)
        log.info("merged %d retried record(s) into %s (%d still failed)", len(new), self.paths.final,
                 merged.done - merged.ok)


class Progress:
    """Progress lines with docs/s, tokens/s (over the run, and over the last ``RECENT_S``
    seconds) and ETA: redrawn in place on a terminal, one timestamped line per ``interval``
    otherwise (Slurm logs)."""

    def __init__(self, total: int, already: int, stream=None, interval: float | None = None):
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.interval = interval if interval is not None else (1.0 if self.tty else 30.0)
        self.total, self.already = total, already
        self.docs = self.ok = self.tokens_in = self.tokens_out = self.cached = 0
        self.start = time.monotonic()
        self.samples = collections.deque([(self.start, 0, 0, 0)])  # (time, docs, tokens in, tokens out)

    def add(self, ixt: dict) -> None:
        usage = ixt["usage"]
        self.docs += 1
        self.ok += ixt["status"] == STATUS_OK
        self.tokens_in += usage["prompt_tokens"]
        self.tokens_out += usage["completion_tokens"]
        self.cached += usage["cached_tokens"]

    def recent(self, now: float) -> tuple[float, float, float, float]:
        """``(seconds, docs/s, tokens in/s, tokens out/s)`` over about the last ``RECENT_S`` seconds."""
        current = (now, self.docs, self.tokens_in, self.tokens_out)
        self.samples.append(current)
        while len(self.samples) > 2 and self.samples[1][0] <= now - RECENT_S:
            self.samples.popleft()
        base = self.samples[0]
        dt = max(now - base[0], 1e-9)
        return (dt, *((c - b) / dt for c, b in zip(current[1:], base[1:])))

    def line(self) -> str:
        now = time.monotonic()
        dt = max(now - self.start, 1e-9)
        rate = self.docs / dt
        span, recent_docs, recent_in, recent_out = self.recent(now)
        done = self.already + self.docs
        left = max(self.total - done, 0)
        eta = _fmt_duration(left / recent_docs) if recent_docs > 0 else "?"
        pct = 100.0 * done / self.total if self.total else 100.0
        cached = f" cached {100.0 * self.cached / self.tokens_in:.0f}%" if self.tokens_in else ""
        return (f"{done}/{self.total} docs ({pct:.1f}%) | {rate:.1f} docs/s | in {self.tokens_in / dt:.0f} tok/s, "
                f"out {self.tokens_out / dt:.0f} tok/s{cached} | last {_fmt_duration(span)}: {recent_docs:.1f} docs/s, "
                f"in {recent_in:.0f} tok/s, out {recent_out:.0f} tok/s | ok {self.ok} failed {self.docs - self.ok} "
                f"| elapsed {_fmt_duration(dt)} | ETA {eta}")

    def show(self, final: bool = False) -> None:
        if self.tty:
            self.stream.write("\r" + self.line() + ("\n" if final else "\x1b[K"))
        else:
            self.stream.write(time.strftime("%Y-%m-%d %H:%M:%S ") + "[annotate] " + self.line() + "\n")
        self.stream.flush()


def _fmt_duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Runner:
    """Drives ``jobs`` (RunJob / RetryJob) through ``backend`` (see :class:`annotate.backends.Backend`)."""

    def __init__(self, cfg: RunConfig, backend: Backend, template, counter, jobs: list, progress_stream=None):
        self.cfg = cfg
        self.backend = backend
        self.template = template
        self.counter = counter
        self.jobs = jobs
        self.progress_stream = progress_stream
        self.annotator: dict = {}
        self.progress: Progress | None = None
        self.stopped_by: int | None = None  # the signal that interrupted run()
        self._slots: asyncio.Semaphore | None = None  # request slots (concurrency)
        self._tasks: set = set()  # document tasks alive
        self._fatal: asyncio.Future | None = None  # the first exception of a document task
        self._refused: list = []  # (job, record): the latest documents in a row, all refused alike
        self._refusal: BackendError | None = None  # their common refusal
        self._refused_since = float("inf")  # when the first of them came back

    async def annotate(self, doc_id: str, text: str, slot_held: bool = False) -> tuple[dict, BackendError | None]:
        """The ``ixt`` block for one document (never raises for a per-document failure), and the
        backend's error when the server refused it (``BackendError.refusal``).

        Each request holds one of the ``concurrency`` slots only while it is in flight; once
        the answer is in, the slot is freed and the task yields, so the next document's request
        goes out before this one is parsed and written (no idle slot during post-processing)."""
        document, truncation = self.counter.truncate(text, self.cfg.max_doc_tokens)
        request = Request(doc_id=doc_id, prompt=self.template.render(document), document=document)
        usage = {"prompt_tokens": 0, "completion_tokens": 0, "cached_tokens": 0, "requests": 0}
        failure, last, refused = ("parse", "no attempt made"), None, None
        for _ in range(self.cfg.max_parse_retries + 1):
            if not slot_held:
                await self._slots.acquire()
            slot_held = False
            try:
                c = await self.backend.complete(request)
            except BackendError as e:
                usage["requests"] += e.attempts
                failure, refused = (e.reason, str(e)), (e if e.refusal else None)
                break
            finally:
                self._slots.release()
            await asyncio.sleep(0)
            usage["requests"] += 1
            usage["prompt_tokens"] += c.prompt_tokens
            usage["completion_tokens"] += c.completion_tokens
            usage["cached_tokens"] += c.cached_tokens
            last = c
            try:
                j = parse_output(c.text, c.reasoning)
            except ParseError as e:
                reason = "length" if c.finish_reason == "length" else e.reason
                failure = (reason, f"{e} (finish_reason={c.finish_reason})")
                continue
            return {"status": STATUS_OK, "quality": j.quality, "scores": j.scores, "critique": j.critique,
                    "reasoning": j.reasoning, "annotator": self.annotator, "truncation": truncation, "usage": usage,
                    "completed_at": round(time.time(), 3)}, None
        ixt = {"status": f"failed:{failure[0]}", "error": failure[1], "annotator": self.annotator,
               "truncation": truncation, "usage": usage, "completed_at": round(time.time(), 3)}
        if last is not None:  # the evidence: what the judge last answered
            ixt.update(answer=bounded(last.text), reasoning=bounded(last.reasoning or "") or None,
                       finish_reason=last.finish_reason)
        return ixt, refused

    async def _process(self, job: _Job, doc_id: str, obj: dict, text: str) -> None:
        started = time.monotonic()
        ixt, refused = await self.annotate(doc_id, text, slot_held=True)
        obj["id"] = doc_id
        obj["ixt"] = ixt
        if refused is not None and self.cfg.fail_fast_window > 0:
            if self._refusal is None or refused.refusal != self._refusal.refusal:
                self._release_refused()
                self._refusal, self._refused_since = refused, time.monotonic()
            self._refused.append((job, obj))  # held back until another outcome shows it is not the setup
            if len(self._refused) >= self.cfg.fail_fast_window:
                raise self._misconfigured()
            return
        if started > self._refused_since:  # sent after the refusals began, and not refused: they were not the setup
            self._release_refused()
        self._write(job, obj)

    def _write(self, job: _Job, obj: dict) -> None:
        job.write(obj)
        self.progress.add(obj["ixt"])

    def _release_refused(self) -> None:
        """Record the held-back refused documents as failed (another outcome came in between)."""
        held, self._refused, self._refusal, self._refused_since = self._refused, [], None, float("inf")
        for job, obj in held:
            self._write(job, obj)

    def _misconfigured(self) -> Misconfigured:
        e = self._refusal
        return Misconfigured(f"stopped: {len(self._refused)} document(s) in a row failed with {e}. Likely fix: "
                             f"{e.hint}. They were not recorded as failed: rerun with the fixed flags to annotate them")

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and not self._fatal.done():
            self._fatal.set_exception(task.exception())

    async def _produce(self) -> None:
        """Start one task per document, each when a request slot is free; wait for all."""
        for job in self.jobs:
            for doc_id, obj, text in job.documents():
                await self._slots.acquire()
                job.pending += 1
                task = asyncio.create_task(self._process(job, doc_id, obj, text))
                self._tasks.add(task)
                task.add_done_callback(self._task_done)
            job.scanned = True
            if job.pending == 0:
                job.finish()
        while self._tasks:
            await asyncio.wait(set(self._tasks))
        if self._refused and self.progress.docs == 0:
            raise self._misconfigured()  # every document of this run was refused alike
        self._release_refused()

    async def _report(self) -> None:
        while True:
            await asyncio.sleep(self.progress.interval)
            self.progress.total = sum(j.total for j in self.jobs)
            self.progress.show()
            self._write_stats("running")

    def _write_stats(self, state: str) -> None:
        for job in self.jobs:
            if job.kind == "run" and job.writer is not None and not job.finished:
                write_json_atomic(job.paths.stats, job.stats_dict(state))

    async def run(self) -> dict:
        """Run all jobs; returns a summary. Raises AllServersDown (after saving) when the
        servers stay down, and CancelledError on SIGINT/SIGTERM (after saving)."""
        loop = asyncio.get_running_loop()
        me = asyncio.current_task()

        def on_signal(signum):
            self.stopped_by = signum
            me.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, on_signal, sig)
            except (NotImplementedError, RuntimeError, ValueError):
                pass
        self.jobs = [job for job in self.jobs if job.prepare()]
        if not self.jobs:
            log.info("nothing to do: every shard of this task is committed")
            return {"documents": 0, "ok": 0, "failed": 0, "shards_committed": 0, "errors": {}}
        state = "interrupted"
        tasks, reporter = [], None
        try:
            await self.backend.start()
            self.annotator = {**self.backend.info(), "prompt_version": self.template.version,
                              "prompt_sha256": self.template.sha256}
            if self.cfg.judge_settings:
                self.annotator["settings"] = self.cfg.judge_settings
            for job in self.jobs:
                job.check_annotator(self.annotator)
                job.annotator_seen = job.annotator_seen or self.annotator
            total = sum(j.total for j in self.jobs)
            already = sum(len(j.done_ids) for j in self.jobs)
            self.progress = Progress(total, already, self.progress_stream, self.cfg.log_interval)
            self._slots = asyncio.Semaphore(self.cfg.concurrency)
            self._fatal = loop.create_future()
            producer = asyncio.create_task(self._produce())
            tasks = [producer]
            reporter = asyncio.create_task(self._report())
            await asyncio.wait([producer, self._fatal], return_when=asyncio.FIRST_COMPLETED)
            if self._fatal.done():
                self._fatal.result()  # re-raise the first failure of a document task
            producer.result()
            state = "done"
        finally:
            others = [t for t in [*tasks, *self._tasks, reporter] if t is not None]
            for t in others:
                t.cancel()
            await asyncio.gather(*others, return_exceptions=True)
            for job in self.jobs:
                if job.writer is not None:
                    job.writer.close()
                    job.drop_if_empty()
            self._write_stats(state)
            if self.progress is not None:
                self.progress.total = sum(j.total for j in self.jobs)
                self.progress.show(final=True)
            await self.backend.close()
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    loop.remove_signal_handler(sig)
                except (NotImplementedError, RuntimeError, ValueError):
                    pass
        return {"documents": self.progress.docs, "ok": self.progress.ok,
                "failed": self.progress.docs - self.progress.ok,
                "shards_committed": sum(j.finished for j in self.jobs),
                "errors": dict(self.backend.errors)}
