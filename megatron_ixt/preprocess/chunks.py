"""The input of a preprocessing run, cut into chunks: the unit of work of one encoding process.

A chunk is whole records of one input file: about ``CHUNK_BYTES`` of lines of a JSON-lines file, or
one row group of a parquet file. The cut is fixed (it never depends on the number of workers), and a
chunk numbers its records from 1: the run adds the records of the chunks before it, so that
``file:line`` (a row, for parquet) is the same whoever encodes it. A chunk is small to send: a plain
file's chunk is a byte range and a parquet chunk a row-group index, which the encoding process reads
itself; only a compressed file's chunk carries its lines (decompressed by the reading process).
"""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass

from megatron_ixt.data.inputs import input_format, is_compressed, open_jsonl, open_parquet, parquet_rows
from megatron_ixt.data.record import Record, parse_line, parse_record

CHUNK_BYTES = 1 << 20  # JSON-lines bytes per chunk (whole lines); fixed, so chunking never depends on --workers
ANNOTATION_KEY = "ixt"  # the one field besides the text that preprocessing reads


@dataclass(frozen=True)
class LineChunk:
    """Whole lines of a JSON-lines file. A plain file's chunk is the byte range ``[offset, offset +
    size)``, read by :meth:`records` (``data`` None); a compressed file's chunk carries its
    decompressed lines in ``data`` (or, sent to a worker, in a scratch file, ``scratch``: removed once
    read). Either way the lines are newline-separated, without the last line's newline."""

    file_index: int
    path: str
    offset: int
    size: int
    data: bytes | None = None
    scratch: bool = False

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            block = f.read(self.size)
        if self.scratch:
            os.remove(self.path)
        return block[:-1] if block.endswith(b"\n") else block

    def records(self, text_key: str, limit: int | None = None) -> tuple[list[Record | None], int]:
        """(one parsed :class:`Record` per line, None for a blank one; the bytes of the lines, without
        newlines): the first ``limit`` lines only, if given."""
        block = self.read()
        lines = block.split(b"\n") if limit is None else block.split(b"\n", limit)[:limit]
        records, size = [], 0
        for raw in lines:  # a chunk holds at least one line, perhaps an empty one
            raw = raw.rstrip(b"\r")
            size += len(raw)
            records.append(parse_line(raw, text_key) if raw.strip() else None)
        return records, size


@dataclass(frozen=True)
class RowGroupChunk:
    """Row group ``row_group`` of a parquet file, read by :meth:`records` (only the text column and
    ``ixt``); ``size`` is its uncompressed size in bytes (what a run counts as input bytes)."""

    file_index: int
    path: str
    row_group: int
    size: int

    def records(self, text_key: str, limit: int | None = None) -> tuple[list[Record], int]:
        """(one parsed :class:`Record` per row; ``size``): the first ``limit`` rows only, if given."""
        with open_parquet(self.path, text_key) as parquet:
            columns = [c for c in (text_key, ANNOTATION_KEY) if c in parquet.schema_arrow.names]
            rows = parquet_rows(parquet, row_groups=[self.row_group], columns=columns)
            return [parse_record(row, text_key) for row in itertools.islice(rows, limit)], self.size


Chunk = LineChunk | RowGroupChunk


def read_chunks(files: list[str], text_key: str):
    """Yield the chunks of ``files`` in order. A plain JSON-lines file is cut by seeking (reading only
    the line at each cut) into whole lines of about CHUNK_BYTES (more for a longer line), a compressed
    one is decompressed here, and a parquet file gives one chunk per row group (ValueError when its
    ``text_key`` column is missing or not a string). This process does no per-record work."""
    for file_index, path in enumerate(files):
        if input_format(path) == "parquet":
            with open_parquet(path, text_key) as parquet:
                metadata = parquet.metadata
                for group in range(metadata.num_row_groups):
                    yield RowGroupChunk(file_index, path, group, metadata.row_group(group).total_byte_size)
        elif not is_compressed(path):  # byte ranges, read by whoever encodes them
            size = os.path.getsize(path)
            with open(path, "rb") as f:
                start = 0
                while start < size:
                    f.seek(start + CHUNK_BYTES)
                    end = min(size, start + CHUNK_BYTES + len(f.readline()))  # through the next newline
                    yield LineChunk(file_index, path, start, end - start)
                    start = end
        else:
            yield from _decompressed_chunks(file_index, path)


def _decompressed_chunks(file_index: int, path: str):
    with open_jsonl(path) as f:
        offset, rest = 0, b""
        while True:
            data = f.read(CHUNK_BYTES)
            block = rest + data
            if not data:  # end of file: what is left is the last line, without a newline
                if block:
                    yield LineChunk(file_index, path, offset, len(block), block)
                return
            end = block.rfind(b"\n")
            if end < 0:
                rest = block
                continue
            block, rest = block[:end], block[end + 1:]
            yield LineChunk(file_index, path, offset, len(block) + 1, block)
            offset += len(block) + 1
