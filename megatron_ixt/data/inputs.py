"""Input files: the one ``--input`` glob behaviour, and the one reader of corpus files for every tool.

A corpus file is JSON lines (``.jsonl``, ``.jsonl.gz``, ``.jsonl.zst``/``.zstd``, and Dolma's
``.json.gz``/``.json.zst``: one JSON object per line) or parquet (``.parquet``: one record per row,
read by row group), told apart by its name (:func:`input_format`); any other name is refused.
Records are numbered from 1 in their file (a line, blank ones included, or a row). Used by
megatron_ixt.preprocess, tools/merge_ixt.py, tools/inspect_ixt.py and annotate/.
"""
from __future__ import annotations

import glob
import gzip
import io
import itertools
import json
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


JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".jsonl.zstd", ".json.gz", ".json.zst")  # .json.*: Dolma
PARQUET_SUFFIXES = (".parquet",)
INPUT_FORMATS = f"parquet ({', '.join(PARQUET_SUFFIXES)}) or JSON lines ({', '.join(JSONL_SUFFIXES)})"  # for help
ROWS_PER_BATCH = 1024  # parquet rows decoded at a time when iterating a whole file


def input_format(path: str) -> str:
    """``"jsonl"`` or ``"parquet"``, by file name (``JSONL_SUFFIXES``, ``PARQUET_SUFFIXES``); any other
    name raises ValueError naming the file: an input is never read as a format it may not be."""
    if path.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if path.endswith(JSONL_SUFFIXES):
        return "jsonl"
    raise ValueError(f"{path}: unknown input format; inputs are {INPUT_FORMATS}, recognised by the file name")


def is_compressed(path: str) -> bool:
    """Whether :func:`open_jsonl` decompresses ``path`` (``.gz``, ``.zst``, ``.zstd``); other files are
    read as they are, so a byte offset in the file is one in its text."""
    return path.endswith((".gz", ".zst", ".zstd"))


def open_jsonl(path: str) -> io.BufferedIOBase:
    """Binary line reader of a JSON-lines input (``JSONL_SUFFIXES``); ValueError for any other file name."""
    if input_format(path) != "jsonl":
        raise ValueError(f"{path}: not a JSON-lines file")
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    if path.endswith((".zst", ".zstd")):
        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True))
    return open(path, "rb")


def open_parquet(path: str, text_key: str, id_key: str | None = None):
    """A ``pyarrow.parquet.ParquetFile`` whose column ``text_key`` is a string column and whose column
    ``id_key`` (when given and present) holds strings or integers; ValueError naming the file and the
    column otherwise (the type of a parquet column is the same in every row, so a wrong one is the
    whole file's problem, found before any row is read)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    schema = parquet.schema_arrow
    checks = [(text_key, "--text-key", (pa.types.is_string, pa.types.is_large_string), True)]
    if id_key is not None:
        checks.append((id_key, "--id-key", (pa.types.is_string, pa.types.is_large_string,
                                            pa.types.is_integer), False))
    for column, flag, accepted, required in checks:
        index = schema.get_field_index(column)
        if index < 0 and required:
            parquet.close()
            raise ValueError(f"{path}: no column {column!r} ({flag}); its columns: {', '.join(schema.names)}")
        if index >= 0 and not any(accept(schema.field(index).type) for accept in accepted):
            parquet.close()
            raise ValueError(f"{path}: column {column!r} ({flag}) is of type {schema.field(index).type}, "
                             f"expected {'a string' if required else 'strings or integers'}")
    return parquet


def parquet_rows(parquet, *, row_groups=None, columns=None):
    """The rows of an open parquet file (``row_groups``: those only, in order; ``columns``: those
    only), as records: ``{column: value}``, a null value left out (a parquet row holds every column of
    the file, so a field that a record lacks is null there; a null is read as that absent field).
    Decoded ``ROWS_PER_BATCH`` rows at a time: memory is bounded by a row group's size."""
    for batch in parquet.iter_batches(batch_size=ROWS_PER_BATCH, row_groups=row_groups, columns=columns):
        for row in batch.to_pylist():
            yield {key: value for key, value in row.items() if value is not None}


def source_record(path: str, number: int) -> dict | None:
    """Record ``number`` (from 1: a line of a JSON-lines file, a row of a parquet file) of an input
    file; None when the file or the record is gone or unreadable."""
    try:
        if input_format(path) == "parquet":
            import pyarrow.parquet

            with pyarrow.parquet.ParquetFile(path) as parquet:
                if not 0 < number <= parquet.metadata.num_rows:
                    return None
                return next(itertools.islice(parquet_rows(parquet), number - 1, number))
        with open_jsonl(path) as f:
            raw = next(itertools.islice(f, number - 1, number), None)
        return json.loads(raw) if raw is not None else None
    except (OSError, ValueError):
        return None
