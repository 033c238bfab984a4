"""Resumable, exactly-once output of one shard, and its statistics.

Files in the output directory for an input shard ``<stem>`` (``data/foo.jsonl.zst`` -> ``foo``)::

    <stem>.jsonl            the committed output: one annotated record per valid input document
    <stem>.jsonl.partial    the output while the shard is in progress (append-only)
    <stem>.jsonl.retry      the records produced by ``retry-failed`` before they are merged
    <stem>.rejected.jsonl   bad input lines: {"file", "line", "reason", "message", "raw"}
    <stem>.stats.json       statistics (rewritten atomically while running and at commit)

Crash safety: each record is appended as one whole line with an unbuffered write (so a killed
process loses no written record) and the file is fsynced every ``fsync_interval`` seconds
(against power loss); :meth:`ShardWriter.open` drops a torn last line left by a kill, and
returns the ids already written so they are not redone. A finished shard is fsynced and
renamed to ``<stem>.jsonl`` (atomic), so a committed file is always complete; a shard with a
committed file is never touched again by ``run``.
"""
from __future__ import annotations

import datetime as dt
import fcntl
import json
import logging
import os
import time

from megatron_ixt.data.inputs import (
    JSONL_SUFFIXES,
    PARQUET_SUFFIXES,
    input_format,
    open_jsonl,
    open_parquet,
    parquet_rows,
)
from megatron_ixt.data.record import SCORE_AXES, STATUS_OK
from megatron_ixt.fileio import atomic_write

log = logging.getLogger("annotate")


def shard_stem(path: str) -> str:
    """``data/foo.jsonl.zst`` -> ``foo``, ``data/foo.parquet`` -> ``foo``."""
    name = os.path.basename(path)
    for suffix in JSONL_SUFFIXES + PARQUET_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def iter_records(path: str, text_key: str = "text", id_key: str = "id"):
    """Yield ``(number, record, problem, raw)`` for each record of the input file ``path`` (JSON lines or
    parquet, by name; ValueError for any other name, or a parquet file whose ``text_key`` column is
    missing or not strings, or whose ``id_key`` column holds neither strings nor integers).

    ``number`` counts from 1: the line (blank lines are skipped, not yielded) or the row. ``record``
    is the decoded record with its text moved from ``text_key`` to ``text`` and its id copied from
    ``id_key`` to ``id`` (the annotated record's fields); ``problem`` is None or ``(reason, message)``
    when the record cannot be read or mapped (``record`` is then None). ``raw`` is the line (a row:
    its JSON) for the rejected-lines file."""
    if input_format(path) == "parquet":
        with open_parquet(path, text_key, id_key) as parquet:
            for number, row in enumerate(parquet_rows(parquet), 1):
                yield number, *_map_keys(row, text_key, id_key), encode_record(row)[:-1]
        return
    with open_jsonl(path) as f:
        for number, raw in enumerate(f, 1):
            raw = raw.rstrip(b"\r\n")
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as e:
                yield number, None, ("invalid_json", f"invalid JSON: {e}"), raw
                continue
            yield number, *_map_keys(record, text_key, id_key), raw


def _map_keys(record, text_key: str, id_key: str) -> tuple[dict | None, tuple | None]:
    """``record`` with its text under ``text`` and its id under ``id``; ``(None, problem)`` when a field
    of the record would be overwritten."""
    if not isinstance(record, dict) or (text_key == "text" and id_key == "id"):
        return record, None  # parse_record reports a record that is not an object
    if text_key != "text" and text_key not in record:
        return None, ("missing_text", f"no {text_key!r} field (--text-key)")
    for key, flag, target in ((text_key, "--text-key", "text"), (id_key, "--id-key", "id")):
        if key != target and target in record:
            return None, ("key_conflict", f"has both {flag} {key!r} and a {target!r} field, which it would replace")
    record = dict(record)
    if text_key != "text":
        record["text"] = record.pop(text_key)
    if id_key != "id" and id_key in record:
        record["id"] = record[id_key]
    return record, None


def count_records(path: str, text_key: str = "text", id_key: str = "id") -> int:
    """Number of records of ``path`` (non-blank lines, or rows), for progress and ETA."""
    if input_format(path) == "parquet":
        with open_parquet(path, text_key, id_key) as parquet:
            return parquet.metadata.num_rows
    with open_jsonl(path) as f:
        return sum(1 for raw in f if raw.strip())


def write_json_atomic(path: str, obj) -> None:
    """``obj`` as indented JSON at ``path``, synced to disk, replacing any old file in one step."""
    with atomic_write(path, fsync=True) as f:
        json.dump(obj, f, indent=1, sort_keys=True)


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def encode_record(record: dict) -> bytes:
    """One JSON line. Values JSON lacks (parquet's dates, times, decimals, binaries) are written as
    ISO 8601 (dates and times) or text."""
    return (json.dumps(record, ensure_ascii=False, default=_json_value) + "\n").encode("utf-8")


def _json_value(value) -> str:
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


class ShardStats:
    """Counters of one shard; ``add`` takes each output record's ``ixt`` block."""

    def __init__(self):
        self.ok = 0
        self.failed: dict[str, int] = {}
        self.prompt_tokens = self.completion_tokens = self.cached_tokens = 0
        self.truncated = 0
        self.requests = 0
        self.quality = {str(q): 0 for q in range(1, 6)}
        self.score_sums = {a: 0 for a in SCORE_AXES}
        self.annotators: dict[str, int] = {}  # the judges of the records (JSON of ixt.annotator) -> count

    @property
    def done(self) -> int:
        return self.ok + sum(self.failed.values())

    def add(self, ixt: dict) -> None:
        usage = ixt.get("usage") or {}
        self.prompt_tokens += usage.get("prompt_tokens", 0)
        self.completion_tokens += usage.get("completion_tokens", 0)
        self.cached_tokens += usage.get("cached_tokens", 0)
        self.requests += usage.get("requests", 0)
        if ixt.get("truncation"):
            self.truncated += 1
        judge = json.dumps(ixt.get("annotator"), sort_keys=True)
        self.annotators[judge] = self.annotators.get(judge, 0) + 1
        status = ixt["status"]
        if status == STATUS_OK:
            self.ok += 1
            self.quality[str(ixt["quality"])] += 1
            for a in SCORE_AXES:
                self.score_sums[a] += ixt["scores"][a]
        else:
            self.failed[status] = self.failed.get(status, 0) + 1

    def to_dict(self) -> dict:
        return {
            "done": self.done, "ok": self.ok, "failed": dict(sorted(self.failed.items())),
            "requests": self.requests,
            "tokens": {"prompt": self.prompt_tokens, "completion": self.completion_tokens,
                       "cached": self.cached_tokens,
                       "cached_share": (round(self.cached_tokens / self.prompt_tokens, 4) if self.prompt_tokens
                                        else 0.0)},
            "truncated": self.truncated,
            "quality_histogram": dict(self.quality),
            "score_means": {a: round(v / self.ok, 4) if self.ok else None for a, v in self.score_sums.items()},
            "annotators": [{"annotator": json.loads(k), "records": n} for k, n in sorted(self.annotators.items())],
        }


class ShardWriter:
    """Append-only writer of ``path`` (a ``.partial`` or ``.retry`` file) with periodic fsync."""

    def __init__(self, path: str, fsync_interval: float = 5.0):
        self.path = path
        self.fsync_interval = fsync_interval
        self._f = None
        self._last_sync = 0.0
        self._dirty = False

    def open(self, on_record=None) -> set:
        """Recover after a crash and open for appending. Returns the ids of the records already
        there, calling ``on_record(id, ixt)`` for each; a torn last line is cut off. Takes an
        exclusive lock on the file (released when the process ends, even by kill -9), so two
        tasks given the same shard by mistake cannot both write it."""
        self._f = open(self.path, "ab", buffering=0)  # each record reaches the OS at once: a kill loses none
        try:
            fcntl.flock(self._f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._f.close()
            self._f = None
            raise RuntimeError(f"{self.path} is being written by another process (same shard in two tasks?)") from None
        except OSError as e:  # file systems without flock support: go on unlocked
            log.warning("%s: cannot lock (%s); make sure no other task writes this shard", self.path, e)
        done, good_end = set(), 0
        if os.path.getsize(self.path):
            with open(self.path, "rb") as f:
                for lineno, raw in enumerate(f, 1):
                    try:
                        if not raw.endswith(b"\n"):
                            raise ValueError("no newline")
                        rec = json.loads(raw)
                        rec_id, ixt = rec["id"], rec["ixt"]
                    except (ValueError, KeyError, TypeError):
                        if f.read(1):  # not the last line: real corruption, not a torn write
                            self.close()
                            raise RuntimeError(f"{self.path}:{lineno}: corrupt record in the middle of the file; "
                                               "move the file away to redo this shard") from None
                        break
                    done.add(rec_id)
                    if on_record is not None:
                        on_record(rec_id, ixt)
                    good_end += len(raw)
            if good_end != os.path.getsize(self.path):
                log.warning("%s: dropped a torn last line (%d bytes) left by an interrupted run",
                            self.path, os.path.getsize(self.path) - good_end)
                self._f.truncate(good_end)
        self._last_sync = time.monotonic()
        return done

    def append(self, record: dict) -> None:
        data = memoryview(encode_record(record))
        while data:
            data = data[self._f.write(data):]
        self._dirty = True
        if time.monotonic() - self._last_sync >= self.fsync_interval:
            self.sync()

    def sync(self) -> None:
        if self._f is not None and self._dirty:
            os.fsync(self._f.fileno())
            self._dirty = False
        self._last_sync = time.monotonic()

    def close(self) -> None:
        if self._f is not None:
            self.sync()
            self._f.close()
            self._f = None


class ShardPaths:
    def __init__(self, output_dir: str, stem: str):
        base = os.path.join(output_dir, stem)
        self.dir = output_dir
        self.stem = stem
        self.final = base + ".jsonl"
        self.partial = base + ".jsonl.partial"
        self.retry = base + ".jsonl.retry"
        self.rejected = base + ".rejected.jsonl"
        self.stats = base + ".stats.json"

    def commit(self) -> None:
        """Atomically publish the finished partial file as the final file."""
        os.replace(self.partial, self.final)
        fsync_dir(self.dir)


def holds_annotations(output_dir: str) -> bool:
    """Whether ``output_dir`` holds an annotated record: a non-empty committed, in-progress or
    retry output file (``<stem>.jsonl``, ``.jsonl.partial``, ``.jsonl.retry``)."""
    for name in os.listdir(output_dir):
        if name.endswith((".jsonl", ".jsonl.partial", ".jsonl.retry")) and not name.endswith(".rejected.jsonl"):
            if os.path.getsize(os.path.join(output_dir, name)) > 0:
                return True
    return False
