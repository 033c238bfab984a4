"""Input files: the one ``--input`` glob behaviour and the one JSONL opener of every tool.

Used by tools/preprocess_ixt.py, tools/merge_ixt.py, tools/inspect_ixt.py and annotate/.
"""
from __future__ import annotations

import glob
import gzip
import io
import os


def expand_inputs(patterns: list[str], *, files: bool = True, error: type = FileNotFoundError) -> list[str]:
    """``--input`` entries -> paths: in the order given, each glob sorted, duplicates dropped (first kept).

    A glob that matches nothing, or (with ``files``) a literal entry that is not a file, raises
    ``error`` naming the entry. With ``files=False`` literal entries are kept as given (e.g. a
    shard-set stem, which is not itself a file) and globs may match any path.
    """
    paths, seen = [], set()
    for pattern in patterns:
        if glob.has_magic(pattern):
            matches = sorted(p for p in glob.glob(pattern) if not files or os.path.isfile(p))
            if not matches:
                raise error(f"--input {pattern!r}: matches no file")
        elif files and not os.path.isfile(pattern):
            raise error(f"--input {pattern!r}: no such file")
        else:
            matches = [pattern]
        for m in matches:
            if m not in seen:
                seen.add(m)
                paths.append(m)
    return paths


def is_compressed(path: str) -> bool:
    """Whether :func:`open_jsonl` decompresses ``path`` (``.gz``, ``.zst``); other files are read as
    they are, so a byte offset in the file is one in its text."""
    return path.endswith((".gz", ".zst"))


def open_jsonl(path: str) -> io.BufferedIOBase:
    """Binary line reader for ``.jsonl``, ``.jsonl.gz`` and ``.jsonl.zst`` files (by extension)."""
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    if path.endswith(".zst"):
        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True))
    return open(path, "rb")
