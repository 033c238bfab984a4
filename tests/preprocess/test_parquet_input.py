"""Corpus formats in preprocessing: parquet read by row group, byte-identical to the same rows as JSON
lines; unknown formats refused by name; a run that finds no document fails and writes nothing."""
from __future__ import annotations

import glob
import json
import os
import re

import make_corpus  # examples/data/make_corpus.py (pytest.ini's pythonpath)
import pytest

from tests.helpers.fineweb import fineweb_rows, jsonl_records, write_parquet
from tools import inspect_ixt
from tools.preprocess_ixt import main


def run(inputs, prefix, model, *extra):
    return main(["--input", *map(str, inputs), "--output-prefix", str(prefix), "--tokenizer-type",
                 "SentencePieceTokenizer", "--tokenizer-model", model, *map(str, extra)])


def outputs(prefix) -> tuple[dict, dict]:
    """(file suffix -> bytes of every store and the document table, the metadata)."""
    files = {path[len(str(prefix)):]: open(path, "rb").read() for path in glob.glob(f"{prefix}_*")}
    return files, json.loads(files.pop("_ixt.json"))


@pytest.fixture
def fineweb(tmp_path):
    """A FineWeb-like parquet (extra columns, 6 row groups, 60% annotated: ``ixt`` a struct column,
    null where a record has none), with a null text in row 20, and the same rows as JSON lines."""
    records = make_corpus.generate_records(90, seed=11, words=(10, 40))
    rows = fineweb_rows(records)
    rows[19]["text"] = None
    path = write_parquet(tmp_path / "fineweb.parquet", rows)
    make_corpus.write_jsonl(str(tmp_path / "fineweb.jsonl"), jsonl_records(path))
    return path, str(tmp_path / "fineweb.jsonl"), rows


def test_parquet_and_jsonl_give_the_same_shard_set(tmp_path, fineweb, sp_model, capsys):
    parquet, jsonl, rows = fineweb
    assert run([jsonl], tmp_path / "j", sp_model, "--append-eod") == 0
    assert "fineweb.jsonl:20: missing_text: " in capsys.readouterr().err
    expected, expected_meta = outputs(tmp_path / "j")
    assert expected_meta["counts"]["documents"] == len(rows) - 1 and expected_meta["counts"]["annotated"] > 40
    assert {reason: n for reason, n in expected_meta["skipped"].items() if n} == {"missing_text": 1}
    del expected_meta["inputs"], expected_meta["counts"]["input_bytes"]  # where the input came from
    for workers in (1, 2):  # with 2, row groups go to the worker process too
        assert run([parquet], tmp_path / f"p{workers}", sp_model, "--append-eod", "--workers", workers) == 0
        assert "fineweb.parquet:20: missing_text: no 'text' field" in capsys.readouterr().err  # file and row
        files, meta = outputs(tmp_path / f"p{workers}")
        assert files == expected  # every store and the document table, byte for byte
        assert meta["inputs"] == [{"path": parquet, "bytes": os.path.getsize(parquet)}]
        assert meta["counts"]["input_bytes"] > 0
        del meta["inputs"], meta["counts"]["input_bytes"]
        assert meta == expected_meta  # nothing else differs
    i = next(k for k, row in enumerate(rows) if (row.get("ixt") or {}).get("status") == "ok" and k > 19)
    assert inspect_ixt.main([str(tmp_path / "p2"), "-i", str(i - 1), "--record"]) == 0  # row 20 was dropped
    block = capsys.readouterr().out.split(f"document {i - 1} of")[1]
    assert f"from {parquet}:{i + 1}" in block  # its source row, read back from the parquet file
    printed = json.loads(block.split("record ixt: ")[1].splitlines()[0])
    assert {k: v for k, v in printed.items() if v is not None} == {k: v for k, v in rows[i]["ixt"].items()
                                                                  if v is not None}


def test_text_column_by_name_and_checked_before_reading(tmp_path, fineweb, sp_model, capsys):
    parquet, _, rows = fineweb
    renamed = [{("content" if k == "text" else k): v for k, v in row.items()} for row in rows]
    write_parquet(tmp_path / "content.parquet", renamed)
    assert run([tmp_path / "content.parquet"], tmp_path / "c", sp_model, "--text-key", "content") == 0
    assert run([parquet], tmp_path / "t", sp_model) == 0
    assert outputs(tmp_path / "c")[0] == outputs(tmp_path / "t")[0]
    assert run([tmp_path / "content.parquet"], tmp_path / "x", sp_model) == 1  # no 'text' column
    err = capsys.readouterr().err
    assert re.search(r"content\.parquet: no column 'text' \(--text-key\); its columns: id, .*content", err)
    write_parquet(tmp_path / "numbers.parquet", [{"text": i} for i in range(3)])
    assert run([tmp_path / "numbers.parquet"], tmp_path / "x", sp_model, "--json-keys", "text") == 1
    assert "numbers.parquet: column 'text' (--text-key) is of type int64, expected a string" in capsys.readouterr().err
    assert not glob.glob(str(tmp_path / "x*"))


@pytest.mark.parametrize("name", ["corpus.json", "corpus.jsonl.bz2", "corpus.parquet.gz", "corpus"])
def test_unknown_format_is_refused_by_name(tmp_path, fineweb, sp_model, capsys, name):
    (tmp_path / name).write_bytes(open(fineweb[1], "rb").read())
    assert run([fineweb[0], tmp_path / name], tmp_path / "o", sp_model) == 1
    assert f"error: {tmp_path / name}: unknown input format; inputs are parquet" in capsys.readouterr().err
    assert not glob.glob(str(tmp_path / "o*"))


def test_a_run_without_any_document_fails_and_writes_nothing(tmp_path, fineweb, sp_model, capsys):
    """A parquet file named .jsonl is read as JSON lines: every line invalid, no document: exit 1."""
    os.link(fineweb[0], tmp_path / "misnamed.jsonl")
    assert run([tmp_path / "misnamed.jsonl"], tmp_path / "o", sp_model, "--workers", 2) == 1
    err = capsys.readouterr().err
    assert re.search(r"error: no document in 1 input file\(s\) \(\S+misnamed.jsonl\): \d+ records, problems: "
                     r"invalid_json \d+[^;]*; nothing written", err)
    assert not glob.glob(str(tmp_path / "o*")) and not glob.glob(str(tmp_path / ".preprocess_ixt-*"))
    assert run([fineweb[1]], tmp_path / "o", sp_model, "--json-keys", "content", "--text-only") == 1
    assert "problems: missing_text 90; nothing written. Is the text in field 'content'" in capsys.readouterr().err
    assert not glob.glob(str(tmp_path / "o*"))


@pytest.mark.parametrize("suffix", [".jsonl.zst", ".jsonl.zstd", ".jsonl.gz", ".json.gz", ".json.zst"])
def test_compressed_jsonl_by_name(tmp_path, fineweb, sp_model, suffix):
    import gzip

    import zstandard

    data = open(fineweb[1], "rb").read()
    (tmp_path / f"c{suffix}").write_bytes(gzip.compress(data) if suffix.endswith(".gz")
                                          else zstandard.ZstdCompressor().compress(data))
    assert run([tmp_path / f"c{suffix}"], tmp_path / "c", sp_model, "--workers", 2) == 0
    assert run([fineweb[1]], tmp_path / "p", sp_model) == 0
    assert outputs(tmp_path / "c")[0] == outputs(tmp_path / "p")[0]
