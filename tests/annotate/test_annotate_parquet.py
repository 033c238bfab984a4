"""Parquet shards in annotate: a file is a shard, read by row group; its other columns are kept; bad
rows are reported by file and row; kill -9 and resume annotate every row exactly once; --text-key and
--id-key name the columns; an unknown format, a wrong column type or a shard without any valid row
stop the run with nothing committed."""
import collections
import datetime as dt
import json
import os
import subprocess
import sys

import pytest

from annotate.cli import main
from annotate.runner import document_id
from tests.helpers.annotate import REPO, read_jsonl, sigkill_when, subprocess_env, write_jsonl
from tests.helpers.fineweb import fineweb_rows, write_parquet


def fineweb_shard(path, n: int, start: int) -> list[dict]:
    """A FineWeb-like parquet shard of ``n`` rows (row groups of 16) with a timestamp column; returns the rows."""
    rows = fineweb_rows([{"text": f"document {start + i} " + "word " * (i % 40)} for i in range(n)])
    for i, row in enumerate(rows):
        row["id"] = f"{row['id']}-{start}"
        row["crawled"] = dt.datetime(2024, 2, 1 + i % 28, 10, 0, 0)
    write_parquet(path, rows)
    return rows


@pytest.mark.slow
def test_parquet_shards_killed_and_resumed_exactly_once(standin, tmp_path):
    server = standin(latency=0.03)
    shards = {"fw-000": fineweb_shard(tmp_path / "fw-000.parquet", 150, 0),
              "fw-001": fineweb_shard(tmp_path / "fw-001.parquet", 150, 1000)}
    shards["fw-000"][19]["text"] = None  # a bad row: row 20 of fw-000
    shards["fw-001"][4]["id"] = None  # no id: identified by its text's hash, as a JSON line without one
    for stem, rows in shards.items():
        write_parquet(tmp_path / f"{stem}.parquet", rows)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "annotate", "run", "--input", str(tmp_path / "fw-*.parquet"), "--output", str(out),
           "--url", server.url, "--concurrency", "8", "--fsync-interval", "0.05", "--log-interval", "0.2"]
    for threshold in (0, 40, 170):  # records already in the outputs when we pull the plug
        sigkill_when(cmd, out, shards, threshold)
    final = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert final.returncode == 0, final.stderr[-3000:]
    for stem, rows in shards.items():
        valid = [r for r in rows if r["text"] is not None]
        expected = {r["id"] if r["id"] is not None else document_id({}, r["text"]): r for r in valid}
        records = read_jsonl(out / f"{stem}.jsonl")
        ids = collections.Counter(r["id"] for r in records)
        assert set(ids) == set(expected) and max(ids.values()) == 1  # exactly once
        for record in records:  # the other columns are kept, a timestamp as ISO 8601
            row = expected[record["id"]]
            assert record["ixt"]["status"] == "ok" and record["text"] == row["text"]
            assert record["url"] == row["url"] and record["language_score"] == row["language_score"]
            assert record["crawled"] == row["crawled"].isoformat()
        stats = json.load(open(out / f"{stem}.stats.json"))
        assert stats["state"] == "committed" and stats["ok"] == len(valid) and stats["input_lines"] == 150
    rejected = read_jsonl(out / "fw-000.rejected.jsonl")
    assert [(r["file"], r["line"], r["reason"]) for r in rejected] == [
        (str(tmp_path / "fw-000.parquet"), 20, "missing_text")]
    assert json.loads(rejected[0]["raw"])["url"] == shards["fw-000"][19]["url"]
    assert read_jsonl(out / "fw-001.rejected.jsonl") == []


def test_columns_by_name_and_a_wrong_id_type_commits_nothing(standin, tmp_path, caplog):
    server = standin()
    rows = [{"url": f"https://example.org/{i}", "content": f"page {i} text", "score": i + 0.5} for i in range(40)]
    write_parquet(tmp_path / "dclm.parquet", rows)
    out = tmp_path / "out"
    args = ["run", "--input", str(tmp_path / "dclm.parquet"), "--output", str(out), "--url", server.url,
            "--log-interval", "60", "--text-key", "content"]
    assert main(args + ["--id-key", "score"]) == 1  # floats: refused before any row is read
    assert "dclm.parquet: column 'score' (--id-key) is of type double, expected strings or integers" in caplog.text
    assert not [name for name in os.listdir(out) if ".jsonl" in name]  # nothing committed, no partial output
    assert main(args + ["--id-key", "url"]) == 0  # the same output directory, the right column
    records = read_jsonl(out / "dclm.jsonl")
    assert sorted(r["id"] for r in records) == sorted(r["url"] for r in rows)
    assert all(r["text"] == f"page {r['url'].rsplit('/', 1)[1]} text" and "content" not in r for r in records)

    lines = [{"url": "https://a", "text": "one"}, {"url": "https://b", "id": "b", "text": "two"}, {"text": "three"}]
    write_jsonl(tmp_path / "web.jsonl", lines)
    assert main(["run", "--input", str(tmp_path / "web.jsonl"), "--output", str(tmp_path / "web"), "--url",
                 server.url, "--log-interval", "60", "--id-key", "url"]) == 0
    assert [(r["line"], r["reason"]) for r in read_jsonl(tmp_path / "web" / "web.rejected.jsonl")] == [
        (2, "key_conflict")]  # its own 'id' would be replaced by its url
    assert sorted(r["id"] for r in read_jsonl(tmp_path / "web" / "web.jsonl")) == [
        "https://a", document_id({}, "three")]


def test_unknown_format_or_a_shard_without_a_valid_row_is_an_error(standin, tmp_path, caplog):
    server = standin()
    write_parquet(tmp_path / "fw.parquet", fineweb_rows([{"text": f"doc {i}"} for i in range(20)]))
    (tmp_path / "fw.json").write_bytes((tmp_path / "fw.parquet").read_bytes())
    out = tmp_path / "out"
    common = ["--output", str(out), "--url", server.url, "--log-interval", "60"]
    assert main(["run", "--input", str(tmp_path / "fw.parquet"), str(tmp_path / "fw.json"), *common]) == 1
    assert f"{tmp_path / 'fw.json'}: unknown input format; inputs are parquet (.parquet) or JSON lines" in caplog.text
    assert not out.exists()  # refused before any work
    os.rename(tmp_path / "fw.json", tmp_path / "misnamed.jsonl")  # parquet bytes read as JSON lines
    caplog.clear()
    assert main(["run", "--input", str(tmp_path / "misnamed.jsonl"), *common]) == 1
    assert "misnamed.jsonl: none of its" in caplog.text and "records is a valid document (invalid_json" in caplog.text
    assert not (out / "misnamed.jsonl").exists()  # nothing committed: a rerun with the right input redoes it
