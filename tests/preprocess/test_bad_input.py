"""Bad input: every reason counted and logged as file:line, nothing lost, --strict, atomic output."""
from __future__ import annotations

import glob
import gzip
import json
import os
import re
import signal
import subprocess
import sys

import pytest

from megatron_ixt.data import shards
from megatron_ixt.data.record import ANNOTATION_REASONS, DOCUMENT_REASONS, SCORE_AXES
from megatron_ixt.preprocess import chunks
from megatron_ixt.preprocess.encoder import ChunkEncoder
from megatron_ixt.preprocess.run import EXAMPLES_PER_REASON
from tools.preprocess_ixt import main

OK = {"status": "ok", "quality": 3, "scores": dict.fromkeys(SCORE_AXES, 3), "critique": "Plain but fine.",
      "reasoning": None, "annotator": {"backend": "test"}}
# (raw line, reason or None, whether the text survives)
CASES = [
    (json.dumps({"text": "A good document.", "ixt": OK}), None, True),
    (b'{"text": "truncated', "invalid_json", False),
    (b'{"text": "bad utf8 \xff\xfe"}', "invalid_json", False),
    (b"[1, 2, 3]", "not_an_object", False),
    (json.dumps({"id": "no-text", "ixt": OK}), "missing_text", False),
    (json.dumps({"text": 42}), "text_not_string", False),
    (json.dumps({"text": "  \n "}), "empty_text", False),
    (json.dumps({"text": "Kept one.", "ixt": "excellent"}), "ixt_not_object", True),
    (json.dumps({"text": "Kept two.", "ixt": {**OK, "status": "done"}}), "ixt_bad_status", True),
    (json.dumps({"text": "Kept three.", "ixt": {**OK, "quality": 6}}), "ixt_bad_quality", True),
    (json.dumps({"text": "Kept four.", "ixt": {**OK, "quality": True}}), "ixt_bad_quality", True),
    (json.dumps({"text": "Kept five.", "ixt": {**OK, "scores": {"expertise": 3}}}), "ixt_bad_scores", True),
    (json.dumps({"text": "Kept six.", "ixt": {**OK, "scores": {**OK["scores"], "efficiency": 0}}}),
     "ixt_bad_scores", True),
    (json.dumps({"text": "Kept seven.", "ixt": {k: v for k, v in OK.items() if k != "critique"}}),
     "ixt_bad_critique", True),
    (json.dumps({"text": "Kept eight.", "ixt": {**OK, "reasoning": 5}}), "ixt_bad_reasoning", True),
    (json.dumps({"text": "Kept nine.", "ixt": {**OK, "annotator": "me"}}), "ixt_bad_annotator", True),
    (json.dumps({"text": "Failed annotation.", "ixt": {"status": "failed:parse"}}), None, True),
    (b"   ", None, False),  # blank line: counted, not a problem
    (json.dumps({"text": "Last good one.", "ixt": OK}), None, True),
]


def write_cases(path):
    with open(path, "wb") as f:
        for line, _, _ in CASES:
            f.write((line.encode() if isinstance(line, str) else line) + b"\n")


def run(path, prefix, model, *extra):
    return main(["--input", str(path), "--output-prefix", str(prefix), "--tokenizer-type",
                 "SentencePieceTokenizer", "--tokenizer-model", model, "--append-eod", *map(str, extra)])


def test_every_reason_counted_and_logged(tmp_path, sp_model, sp_tokenizer, capsys):
    write_cases(tmp_path / "bad.jsonl")
    assert run(tmp_path / "bad.jsonl", tmp_path / "o", sp_model, "--workers", 2) == 0
    err = capsys.readouterr().err
    meta = shards.read_metadata(str(tmp_path / "o"))
    expected = {}
    for line_number, (_, reason, _) in enumerate(CASES, 1):
        if reason:
            expected[reason] = expected.get(reason, 0) + 1
            assert f"{tmp_path / 'bad.jsonl'}:{line_number}: {reason}: " in err
    assert set(expected) == set(DOCUMENT_REASONS) | set(ANNOTATION_REASONS)  # the cases cover every reason
    assert {r: n for r, n in meta["skipped"].items() if n} == expected
    kept = [(i + 1, line) for i, (line, _, survives) in enumerate(CASES) if survives]
    reader = shards.ShardSet(str(tmp_path / "o"))
    assert len(reader) == len(kept)
    for i, (line_number, line) in enumerate(kept):
        text = json.loads(line)["text"]
        assert reader[i]["text"].tolist() == sp_tokenizer.tokenize(text) + [sp_tokenizer.eod]
        assert int(reader.docs["line"][i]) == line_number
    annotated = [i for i in range(len(reader)) if len(reader[i]["critique"])]
    assert annotated == [0, len(kept) - 1]  # degraded and failed annotations have no prefix
    counts = meta["counts"]
    assert counts["records"] == len(CASES) - 1 and counts["blank_lines"] == 1
    assert counts["dropped"] == 6 and counts["degraded"] == 9 and counts["annotated"] == 2
    assert meta["annotation_status"]["failed:parse"] == 1 and meta["annotation_status"]["malformed"] == 1


@pytest.mark.parametrize("compressed", [False, True])
def test_line_numbers_across_chunks_files_and_workers(tmp_path, sp_model, capsys, monkeypatch, compressed):
    """A chunk counts its lines from 1; the lines of the chunks before it are added back in input
    order, per file: plain files (byte ranges the workers read) and compressed ones alike."""
    monkeypatch.setattr(chunks, "CHUNK_BYTES", 200)  # a new chunk every few lines
    cases = CASES * 4
    data = b"\n".join(line.encode() if isinstance(line, str) else line for line, _, _ in cases) + b"\n"
    paths = [tmp_path / (name + (".jsonl.gz" if compressed else ".jsonl")) for name in ("a", "b")]
    for path in paths:
        path.write_bytes(gzip.compress(data) if compressed else data)
    kept = [(f, i) for f in range(2) for i, (_, _, survives) in enumerate(cases, 1) if survives]
    for workers in (1, 2):
        assert main(["--input", *map(str, paths), "--output-prefix", str(tmp_path / f"o{workers}"),
                     "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", sp_model,
                     "--workers", str(workers)]) == 0
        err = capsys.readouterr().err
        docs = shards.ShardSet(str(tmp_path / f"o{workers}")).docs
        assert list(zip(docs["file"].tolist(), docs["line"].tolist())) == kept
        for reason in DOCUMENT_REASONS.keys() | ANNOTATION_REASONS.keys():
            where = [f"{path}:{i}" for path in paths for i, (_, r, _) in enumerate(cases, 1) if r == reason]
            logged = re.findall(rf"^(\S+): {reason}: ", err, re.MULTILINE)
            assert logged == where[:EXAMPLES_PER_REASON], reason


def test_first_examples_only(tmp_path, sp_model, capsys):
    (tmp_path / "in.jsonl").write_text("not json\n" * 12 + '{"text": "ok"}\n')
    assert run(tmp_path / "in.jsonl", tmp_path / "o", sp_model) == 0
    err = capsys.readouterr().err
    assert err.count(": invalid_json: ") == 5
    assert "invalid_json: 12" in err  # the summary counts all of them
    assert shards.read_metadata(str(tmp_path / "o"))["skipped"]["invalid_json"] == 12


@pytest.mark.parametrize("index", [i for i, c in enumerate(CASES) if c[1]])
def test_strict_fails_on_any_reason(tmp_path, sp_model, capsys, index):
    with open(tmp_path / "in.jsonl", "wb") as f:
        good, bad = CASES[0][0].encode(), CASES[index][0]
        f.write(good + b"\n" + (bad.encode() if isinstance(bad, str) else bad) + b"\n" + good + b"\n")
    assert run(tmp_path / "in.jsonl", tmp_path / "o", sp_model, "--strict") == 1
    assert f"in.jsonl:2: {CASES[index][1]}: " in capsys.readouterr().err
    assert os.listdir(tmp_path) == ["in.jsonl"]  # nothing written, no temporaries left
    assert run(tmp_path / "in.jsonl", tmp_path / "o", sp_model) == 0  # without --strict it goes through


@pytest.mark.parametrize("workers", [1, 2])
def test_exception_mid_run_leaves_nothing(tmp_path, sp_model, write_annotated_jsonl, monkeypatch, workers):
    """No temporary store, and with workers no token file or scratch directory of theirs, is left."""
    monkeypatch.setattr(chunks, "CHUNK_BYTES", 8192)  # several chunks
    write_annotated_jsonl(tmp_path / "in.jsonl", n_docs=600, seed=1, words=(10, 30))
    calls = []

    def failing(original):  # the second append of documents, from this process's arrays or a worker's file
        def add(self, *args):
            calls.append(1)
            if len(calls) == 2:  # after the first chunk of documents was written
                raise OSError("disk full")
            return original(self, *args)
        return add

    for method in ("add_documents", "add_documents_from_file"):
        monkeypatch.setattr(shards.ShardSetWriter, method, failing(getattr(shards.ShardSetWriter, method)))
    with pytest.raises(OSError, match="disk full"):
        run(tmp_path / "in.jsonl", tmp_path / "o", sp_model, "--workers", workers)
    assert os.listdir(tmp_path) == ["in.jsonl"]


@pytest.mark.parametrize("how", ["raises", "dies"])
def test_worker_failure_stops_the_run_and_leaves_nothing(tmp_path, sp_model, write_annotated_jsonl, monkeypatch, how):
    """A worker's exception is raised in the main process; a worker that dies is reported, not waited for."""
    monkeypatch.setattr(chunks, "CHUNK_BYTES", 8192)  # several chunks per worker
    write_annotated_jsonl(tmp_path / "in.jsonl", n_docs=600, seed=1, words=(10, 30))
    original = ChunkEncoder.__call__
    main_process = os.getpid()  # which encodes chunks too

    def failing_call(self, chunk):
        if os.getpid() != main_process and chunk.offset > 3 * 8192:  # in the worker, after some chunks were written
            if how == "dies":
                os._exit(3)
            raise KeyError("broken encoder")
        return original(self, chunk)

    monkeypatch.setattr(ChunkEncoder, "__call__", failing_call)
    expected = (RuntimeError, r"worker \d died \(exit code 3\)") if how == "dies" else (KeyError, "broken encoder")
    with pytest.raises(expected[0], match=expected[1]):
        run(tmp_path / "in.jsonl", tmp_path / "o", sp_model, "--workers", 2)
    assert os.listdir(tmp_path) == ["in.jsonl"]


@pytest.mark.slow
def test_killed_mid_run_leaves_no_complete_looking_shard(tmp_path, sp_model, write_annotated_jsonl):
    """SIGKILL while writing: no file under a final name; an earlier shard set survives intact."""
    write_annotated_jsonl(tmp_path / "small.jsonl", n_docs=20, seed=2)
    assert run(tmp_path / "small.jsonl", tmp_path / "o", sp_model) == 0
    before = {f: open(f, "rb").read() for f in glob.glob(str(tmp_path / "o_*"))}
    write_annotated_jsonl(tmp_path / "big.jsonl", n_docs=20000, seed=3, words=(20, 60))
    proc = subprocess.Popen(
        [sys.executable, "-m", "tools.preprocess_ixt", "--input", str(tmp_path / "big.jsonl"), "--output-prefix",
         str(tmp_path / "o"), "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", sp_model,
         "--log-interval", "512", "--workers", "1"], stderr=subprocess.PIPE, text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), start_new_session=True)
    try:
        for line in proc.stderr:  # wait until it is writing
            if line.startswith("Processed"):
                break
        temporaries = glob.glob(str(tmp_path / "o_*.tmp*"))
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert temporaries, "the run should have been writing temporaries"
    assert proc.returncode == -signal.SIGKILL
    after = {f: open(f, "rb").read() for f in glob.glob(str(tmp_path / "o_*")) if ".tmp" not in f}
    assert after == before
    assert len(shards.ShardSet(str(tmp_path / "o"))) == 20
