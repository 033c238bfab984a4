"""CLI: shards over tasks, compressed inputs, bad lines, status, retry-failed, the record contract."""
import gzip
import io
import json
import logging
import os

import pytest
import zstandard

from annotate.cli import collect_status, main
from annotate.runner import Progress
from megatron_ixt.data.record import SCORE_AXES, parse_line
from tests.helpers.annotate import read_jsonl, server_stats, write_jsonl


def test_shards_split_over_tasks_and_status(tmp_path, arith_docs, capsys):
    docs = arith_docs(90, flaw_share=0.3)
    paths = [write_jsonl(tmp_path / f"in{k}.jsonl", docs[k * 30:(k + 1) * 30]) for k in range(3)]
    out = tmp_path / "out"
    common = ["--output", str(out), "--backend", "verifier", "--num-shards", "2", "--log-interval", "60"]
    assert main(["run", "--input", str(tmp_path / "in*.jsonl"), "--shard-index", "0"] + common) == 0
    st = collect_status(str(out))["total"]
    assert st["states"] == {"committed": 2, "pending": 1} and st["done"] == 60
    assert main(["run", "--input", *paths, "--shard-index", "1"] + common) == 0
    assert sorted(os.listdir(out)) == sorted(
        ["run_config.json"] + [f"in{k}{s}" for k in range(3) for s in (".jsonl", ".stats.json", ".rejected.jsonl")])
    capsys.readouterr()
    assert main(["status", str(out)]) == 0
    text = capsys.readouterr().out
    assert "3 committed" in text and "90/90 annotated, 90 ok" in text
    assert main(["status", str(out), "--json"]) == 0
    total = json.loads(capsys.readouterr().out)["total"]
    assert total["ok"] == 90 and total["tokens"]["prompt"] > 0
    # rerunning a finished task does nothing
    assert main(["run", "--input", *paths, "--shard-index", "1"] + common) == 0
    assert len(read_jsonl(out / "in1.jsonl")) == 30


def test_compressed_inputs_and_bad_lines(tmp_path, arith_docs):
    docs = arith_docs(20)
    lines = [json.dumps(d) for d in docs[:10]] + ["{not json", '{"text": ""}', '{"id": [1], "text": "x"}',
                                                  '["a list"]', '{"id": 7}', json.dumps(docs[0])]
    lines += [json.dumps(d) for d in docs[10:]]
    raw = ("\n".join(lines) + "\n").encode()
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(raw))
    (tmp_path / "b.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(raw))
    (tmp_path / "c.json.gz").write_bytes(gzip.compress(raw))  # Dolma's naming: JSON lines, gzipped
    out = tmp_path / "out"
    inputs = [str(tmp_path / name) for name in ("a.jsonl.gz", "b.jsonl.zst", "c.json.gz")]
    assert main(["run", "--input", *inputs, "--output", str(out), "--backend", "verifier", "--log-interval", "60"]) == 0
    for stem, name in zip("abc", inputs):
        recs = read_jsonl(out / f"{stem}.jsonl")
        assert sorted(r["id"] for r in recs) == sorted(d["id"] for d in docs)
        rejected = read_jsonl(out / f"{stem}.rejected.jsonl")
        assert [(r["line"], r["reason"]) for r in rejected] == [
            (11, "invalid_json"), (12, "empty_text"), (13, "bad_id"), (14, "not_an_object"), (15, "missing_text"),
            (16, "duplicate_id")]
        assert rejected[0]["raw"] == "{not json"
        assert rejected[0]["file"] == name
        stats = json.load(open(out / f"{stem}.stats.json"))
        assert stats["input_lines"] == 26 and stats["documents"] == 20 and sum(stats["rejected"].values()) == 6


def test_output_validates_against_the_record_contract(tmp_path, arith_docs):
    docs = arith_docs(60, flaw_share=0.3, terse_share=0.2, verbose_share=0.2)
    docs.append({"id": "essay", "text": "An essay about birds, not a sum."})
    inp = write_jsonl(tmp_path / "d.jsonl", docs)
    assert main(["run", "--input", inp, "--output", str(tmp_path / "out"), "--backend", "verifier",
                 "--log-interval", "60"]) == 0
    with open(tmp_path / "out" / "d.jsonl", "rb") as f:
        parsed = [parse_line(line.rstrip(b"\n")) for line in f]
    assert len(parsed) == 61 and all(not p.problems for p in parsed)
    ok = [p for p in parsed if p.status == "ok"]
    assert len(ok) == 60 and all(p.annotation is not None and tuple(p.annotation.scores) == SCORE_AXES for p in ok)
    failed = [p for p in parsed if p.status != "ok"]
    assert [p.status for p in failed] == ["failed:unverifiable"] and failed[0].annotation is None


def _flaky_run(standin, tmp_path, flaky=3, good=5):
    """A run whose ``flaky`` documents failed (2 server errors each, 1 retry allowed): (server, out, docs)."""
    server = standin()
    docs = [{"id": f"f{i}", "text": f"flaky {i} [[fault:500*2]]"} for i in range(flaky)]
    docs += [{"id": f"g{i}", "text": f"good {i}"} for i in range(good)]
    inp = write_jsonl(tmp_path / "d.jsonl", docs)
    out = str(tmp_path / "out")
    assert main(["run", "--input", inp, "--output", out, "--url", server.url, "--max-retries", "1",
                 "--backoff-base", "0.01", "--log-interval", "60", "--max-failed-fraction", "1"]) == 0
    return server, out, docs


def test_retry_failed_reuses_saved_settings(standin, tmp_path):
    _, out, docs = _flaky_run(standin, tmp_path, flaky=4, good=6)
    before = {r["id"]: r for r in read_jsonl(os.path.join(out, "d.jsonl"))}
    assert {i for i, r in before.items() if r["ixt"]["status"] != "ok"} == {f"f{i}" for i in range(4)}
    assert json.load(open(os.path.join(out, "d.stats.json")))["failed"] == {"failed:http": 4}
    assert main(["retry-failed", out, "--log-interval", "60"]) == 0  # --url etc. come from run_config.json
    after = read_jsonl(os.path.join(out, "d.jsonl"))
    assert sorted(r["id"] for r in after) == sorted(d["id"] for d in docs)
    assert all(r["ixt"]["status"] == "ok" for r in after)
    for r in after:  # untouched records are byte-for-byte the same
        if r["id"].startswith("g"):
            assert r == before[r["id"]]
    stats = json.load(open(os.path.join(out, "d.stats.json")))
    assert stats["failed"] == {} and stats["ok"] == 10 and stats["retried"] == 4
    assert not os.path.exists(os.path.join(out, "d.jsonl.retry"))


def test_resume_refuses_a_different_prompt_version(tmp_path, arith_docs, caplog):
    docs = arith_docs(5)
    inp = write_jsonl(tmp_path / "d.jsonl", docs)
    out = tmp_path / "out"
    out.mkdir()
    rec = dict(docs[0], ixt={"status": "failed:http", "error": "x", "usage": {},
                             "annotator": {"backend": "verifier", "model": "arithmetic-verifier-v1",
                                           "prompt_version": "rubric_v0@00000000"}})
    write_jsonl(out / "d.jsonl.partial", [rec])
    assert main(["run", "--input", inp, "--output", str(out), "--backend", "verifier"]) == 1
    assert "prompt_version='rubric_v0@00000000'" in caplog.text and "new --output directory" in caplog.text
    assert not (out / "d.jsonl").exists()


def test_run_config_records_the_input_keys_and_a_rerun_keeps_them(tmp_path, arith_docs, caplog):
    docs = [{"url": f"https://example.org/{d['id']}", "content": d["text"]} for d in arith_docs(6)]
    inp = write_jsonl(tmp_path / "d.jsonl", docs)
    out = tmp_path / "out"
    run = ["run", "--input", inp, "--output", str(out), "--backend", "verifier", "--text-key", "content"]
    assert main([*run, "--id-key", "url"]) == 0
    assert json.load(open(out / "run_config.json"))["input_keys"] == {"text_key": "content", "id_key": "url"}
    records = read_jsonl(out / "d.jsonl")
    assert [r["id"] for r in records] == [d["url"] for d in docs] and records[0]["text"] == docs[0]["content"]
    # the same directory with another id field would identify the documents differently: refused, nothing lost
    caplog.clear()
    assert main([*run, "--id-key", "id"]) == 1
    assert "--id-key 'url' -> 'id'" in caplog.text and read_jsonl(out / "d.jsonl") == records
    assert main([*run, "--id-key", "url"]) == 0 and read_jsonl(out / "d.jsonl") == records


def test_configuration_errors_are_messages(tmp_path, caplog):
    inp = write_jsonl(tmp_path / "d.jsonl", [{"text": "x"}])
    assert main(["run", "--input", inp, "--output", str(tmp_path / "o"), "--backend", "http"]) == 1
    assert "needs at least one --url" in caplog.text
    try:
        import sglang  # noqa: F401
    except ImportError:
        assert main(["run", "--input", inp, "--output", str(tmp_path / "o"), "--backend", "sglang",
                     "--model-path", "m"]) == 1
        assert "needs the sglang package" in caplog.text
    with pytest.raises(SystemExit, match="matches no file"):
        main(["run", "--input", str(tmp_path / "nothing*.jsonl"), "--output", str(tmp_path / "o")])


def test_progress_line_without_tty():
    stream = io.StringIO()
    p = Progress(total=100, already=40, stream=stream)
    assert p.interval == 30.0 and not p.tty
    for _ in range(10):
        p.add({"status": "ok", "usage": {"prompt_tokens": 100, "completion_tokens": 50, "cached_tokens": 80}})
    p.show()
    line = stream.getvalue()
    assert line.endswith("\n") and "\r" not in line
    assert "50/100 docs (50.0%)" in line and "docs/s" in line and "tok/s" in line and "cached 80%" in line
    assert "ETA" in line and "ok 10 failed 0" in line


def test_retry_failed_interrupted_after_merge_is_idempotent(standin, tmp_path, monkeypatch):
    server = standin()
    docs = [{"id": f"f{i}", "text": f"flaky {i} [[fault:500*2]]"} for i in range(3)]
    docs += [{"id": "dead", "text": "dead [[fault:500*inf]]"}, {"id": "g", "text": "good"}]
    inp = write_jsonl(tmp_path / "d.jsonl", docs)
    out = str(tmp_path / "out")
    assert main(["run", "--input", inp, "--output", out, "--url", server.url, "--max-retries", "1",
                 "--backoff-base", "0.01", "--log-interval", "60", "--max-failed-fraction", "1"]) == 0

    def crash(path):  # the process dies between the atomic merge and removing the retry file
        raise OSError("simulated crash")

    monkeypatch.setattr("annotate.runner.os.remove", crash)
    assert main(["retry-failed", out, "--log-interval", "60"]) == 1
    assert os.path.exists(os.path.join(out, "d.jsonl.retry"))
    monkeypatch.undo()
    assert main(["retry-failed", out, "--log-interval", "60"]) == 0
    recs = read_jsonl(os.path.join(out, "d.jsonl"))
    assert sorted(r["id"] for r in recs) == sorted(d["id"] for d in docs)
    status = {r["id"]: r["ixt"]["status"] for r in recs}
    assert status == {"f0": "ok", "f1": "ok", "f2": "ok", "dead": "failed:http", "g": "ok"}
    assert not os.path.exists(os.path.join(out, "d.jsonl.retry"))


@pytest.mark.slow
def test_output_feeds_preprocess_ixt(tmp_path, arith_docs):
    """End to end with the consumer: verifier annotations -> tools/preprocess_ixt.py shard set."""
    import subprocess
    import sys

    from tests.helpers.annotate import REPO, subprocess_env

    docs = arith_docs(120, flaw_share=0.3) + [{"id": "essay", "text": "An essay about birds."}]
    inp = write_jsonl(tmp_path / "d.jsonl", docs)
    out = tmp_path / "out"
    assert main(["run", "--input", inp, "--output", str(out), "--backend", "verifier", "--log-interval", "60"]) == 0
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "preprocess_ixt.py"),
                           "--input", str(out / "d.jsonl"), "--output-prefix", str(tmp_path / "pp" / "corpus"),
                           "--tokenizer-type", "SentencePieceTokenizer",
                           "--tokenizer-model", os.path.join(REPO, "examples", "data", "tokenizer.model"),
                           "--append-eod"],
                          cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.load(open(tmp_path / "pp" / "corpus_ixt.json"))
    stats = json.load(open(out / "d.stats.json"))
    assert meta["counts"]["annotated"] == stats["ok"] == 120 and meta["counts"]["unannotated"] == 1
    assert ({k: v for k, v in meta["quality_histogram"].items() if v}
            == {k: v for k, v in stats["quality_histogram"].items() if v})
    assert sum(meta["skipped"].values()) == 0


def test_retry_failed_url_replaces_the_saved_servers(standin, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="annotate")
    old, out, docs = _flaky_run(standin, tmp_path)
    new = standin()
    sent_to_old = server_stats(old)["generate"]
    assert main(["retry-failed", out, "--url", new.url, "--max-retries", "3", "--log-interval", "60"]) == 0
    assert f"waiting for /health on 1 server(s): {new.url}" in caplog.text
    assert server_stats(old)["generate"] == sent_to_old  # the old server got nothing
    assert server_stats(new)["generate"] == 3 * 3  # each flaky document: two 500s, then the answer
    assert all(r["ixt"]["status"] == "ok" for r in read_jsonl(os.path.join(out, "d.jsonl")))
    assert json.load(open(os.path.join(out, "run_config.json")))["judge"]["url"] == [new.url]  # reused next time


def test_retry_failed_keeps_one_judge_unless_new_judge(standin, tmp_path, caplog):
    server, out, docs = _flaky_run(standin, tmp_path)
    before = open(os.path.join(out, "d.jsonl")).read()
    retry = ["retry-failed", out, "--max-retries", "3", "--log-interval", "60"]
    assert main(retry + ["--api", "chat"]) == 1
    assert "--api 'generate' -> 'chat'" in caplog.text and "--new-judge" in caplog.text
    assert open(os.path.join(out, "d.jsonl")).read() == before
    assert main(retry + ["--api", "chat", "--new-judge"]) == 0
    recs = {r["id"]: r["ixt"] for r in read_jsonl(os.path.join(out, "d.jsonl"))}
    assert all(ixt["status"] == "ok" for ixt in recs.values())
    for i in range(3):
        assert recs[f"f{i}"]["annotator"]["api"] == "chat" and recs[f"f{i}"]["annotator"]["settings"]["api"] == "chat"
    for i in range(5):
        assert recs[f"g{i}"]["annotator"]["api"] == "generate" and "settings" not in recs[f"g{i}"]["annotator"]
    judges = json.load(open(os.path.join(out, "d.stats.json")))["annotators"]
    assert sorted((j["annotator"]["api"], j["records"]) for j in judges) == [("chat", 3), ("generate", 5)]
    config = json.load(open(os.path.join(out, "run_config.json")))
    assert config["judge"]["api"] == "generate" and config["retries"][-1]["new_judge"] is True
    # the directory's own judge is still the run's: a run with it is accepted, another is refused
    assert main(["run", "--input", str(tmp_path / "d.jsonl"), "--output", out, "--url", server.url]) == 0
    assert main(["run", "--input", str(tmp_path / "d.jsonl"), "--output", out, "--url", server.url,
                 "--api", "chat"]) == 1


def test_progress_line_shows_recent_rates(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr("annotate.runner.time.monotonic", lambda: clock[0])
    stream = io.StringIO()
    p = Progress(total=1000, already=0, stream=stream, interval=30)
    usage = {"prompt_tokens": 100, "completion_tokens": 10, "cached_tokens": 0}
    for minute in range(10):  # 1 doc/s for 5 minutes, then 3 docs/s
        for _ in range(60 * (1 if minute < 5 else 3)):
            p.add({"status": "ok", "usage": usage})
        clock[0] += 60
        p.show()
    last = stream.getvalue().splitlines()[-1]
    assert "| 2.0 docs/s | in 200 tok/s, out 20 tok/s" in last  # over the run
    assert "last 5m00s: 3.0 docs/s, in 300 tok/s, out 30 tok/s" in last  # over the last minutes
