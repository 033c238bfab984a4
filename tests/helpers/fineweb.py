"""FineWeb-like parquet corpora for the input tests: FineWeb's columns, several row groups.

    from tests.helpers.fineweb import fineweb_rows, jsonl_records, write_parquet
"""
from __future__ import annotations

ROW_GROUP_SIZE = 16


def fineweb_rows(records: list[dict]) -> list[dict]:
    """``records`` (each with ``text``, perhaps ``ixt``) with FineWeb's other columns: ``id``
    (``<urn:uuid:...>``), ``dump``, ``url``, ``date`` (a string, as FineWeb's), ``language``,
    ``language_score`` (float) and ``token_count`` (int)."""
    return [{"id": f"<urn:uuid:00000000-0000-0000-0000-{i:012d}>", "dump": "CC-MAIN-2024-10",
             "url": f"https://example.org/page/{i}", "date": f"2024-02-{1 + i % 28:02d}T10:00:00Z", "language": "en",
             "language_score": round(0.5 + (i % 50) / 100, 2), "token_count": len(r["text"].split()) if r.get("text")
             else 0, **r} for i, r in enumerate(records)]


def write_parquet(path, rows: list[dict], row_group_size: int = ROW_GROUP_SIZE, schema=None) -> str:
    """Write ``rows`` (a field a row lacks is null there) as a parquet file of row groups of
    ``row_group_size`` rows; returns the path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows, schema=schema), str(path),
                     row_group_size=row_group_size)
    assert pq.ParquetFile(str(path)).metadata.num_row_groups == -(-len(rows) // row_group_size)
    return str(path)


def jsonl_records(path) -> list[dict]:
    """The rows of a parquet file as the JSON-lines records they are read as: a null is an absent field."""
    import pyarrow.parquet

    return [{k: v for k, v in row.items() if v is not None}
            for row in pyarrow.parquet.read_table(str(path)).to_pylist()]

