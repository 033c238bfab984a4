"""Misconfiguration stops the run (wrong API, model, key) without failing documents; too many
failures exit non-zero; failed records keep the judge's answer; aborted runs leave no empty files."""
import json
import logging
import os
import threading
import time

from annotate.cli import EXIT_MISCONFIGURED, EXIT_TOO_MANY_FAILED, main
from annotate.runner import bounded
from tests.helpers.annotate import read_jsonl, set_fault, write_jsonl

FAST = ["--backoff-base", "0.01", "--backoff-max", "0.05", "--log-interval", "60"]


def run(inp, out, url, *extra) -> int:
    return main(["run", "--input", str(inp), "--output", str(out), "--url", url, *FAST, *extra])


def docs(n, prefix="d"):
    return [{"id": f"{prefix}{i}", "text": f"document number {i} about birds"} for i in range(n)]


def errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def assert_stopped_cleanly(out, caplog, *expected):
    """One error message naming each of ``expected``; no output file but run_config.json."""
    messages = errors(caplog)
    assert len(messages) == 1, messages
    for text in expected:
        assert text in messages[0], (text, messages[0])
    assert "not recorded as failed" in messages[0]
    assert sorted(os.listdir(out)) == ["run_config.json"]


def test_wrong_api_404_stops_then_rerun_annotates(standin, tmp_path, caplog):
    server = standin(apis=("chat",))  # an OpenAI-only server, like `transformers serve`
    inp = write_jsonl(tmp_path / "d.jsonl", docs(30))
    out = tmp_path / "out"
    assert run(inp, out, server.url) == EXIT_MISCONFIGURED
    assert_stopped_cleanly(out, caplog, "HTTP 404", f"{server.url}/generate", "--api chat")
    caplog.clear()
    assert run(inp, out, server.url, "--api", "chat") == 0
    recs = read_jsonl(out / "d.jsonl")
    assert sorted(r["id"] for r in recs) == sorted(f"d{i}" for i in range(30))
    assert all(r["ixt"]["status"] == "ok" for r in recs)


def test_unknown_model_400_stops_naming_the_served_models(standin, tmp_path, caplog):
    server = standin(unknown_model_status=400)
    inp = write_jsonl(tmp_path / "d.jsonl", docs(30))
    out = tmp_path / "out"
    assert run(inp, out, server.url, "--api", "chat", "--model", "Qwen/Qwen3-8B") == EXIT_MISCONFIGURED
    assert_stopped_cleanly(out, caplog, "HTTP 400", "/v1/chat/completions", "The model `Qwen/Qwen3-8B` does not exist",
                           "--model", "standin/judge-7b")
    assert run(inp, out, server.url, "--api", "chat", "--model", "standin/judge-7b") == 0
    assert len(read_jsonl(out / "d.jsonl")) == 30


def test_missing_api_key_401_stops(standin, tmp_path, caplog, monkeypatch):
    server = standin(api_key="sekret")
    inp = write_jsonl(tmp_path / "d.jsonl", docs(5))  # fewer than the window: all refused, nothing else
    out = tmp_path / "out"
    assert run(inp, out, server.url, "--api", "chat") == EXIT_MISCONFIGURED
    assert_stopped_cleanly(out, caplog, "HTTP 401", "Unauthorized", "--api-key-env")
    monkeypatch.setenv("JUDGE_KEY", "sekret")
    assert run(inp, out, server.url, "--api", "chat", "--api-key-env", "JUDGE_KEY") == 0
    assert all(r["ixt"]["status"] == "ok" for r in read_jsonl(out / "d.jsonl"))


def test_refusals_midway_stop_in_a_sliding_window(standin, tmp_path, caplog):
    server = standin(latency=0.005)
    inp = write_jsonl(tmp_path / "d.jsonl", docs(200))
    out = tmp_path / "out"
    partial = out / "d.jsonl.partial"

    def break_server():  # e.g. a router lost its model after 20 documents
        while not partial.exists() or partial.read_bytes().count(b"\n") < 20:
            time.sleep(0.005)
        set_fault(server, "404", 10 ** 6)

    threading.Thread(target=break_server, daemon=True).start()
    assert run(inp, out, server.url, "--concurrency", "2", "--fail-fast-window", "8") == EXIT_MISCONFIGURED
    assert "8 document(s) in a row" in errors(caplog)[0] and "HTTP 404" in errors(caplog)[0]
    before = read_jsonl(partial)
    assert 20 <= len(before) < 200 and all(r["ixt"]["status"] == "ok" for r in before)
    set_fault(server, "404", 0)
    assert run(inp, out, server.url) == 0
    recs = read_jsonl(out / "d.jsonl")
    assert sorted(r["id"] for r in recs) == sorted(f"d{i}" for i in range(200))  # each exactly once
    assert all(r["ixt"]["status"] == "ok" for r in recs)


def test_too_many_failures_exit_after_commit_and_errors_are_counted(standin, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="annotate")
    server = standin()
    records = docs(20) + [{"id": f"long{i}", "text": f"too long {i} [[fault:400*inf]]"} for i in range(2)]
    inp = write_jsonl(tmp_path / "d.jsonl", records)
    assert run(inp, tmp_path / "out", server.url, "--concurrency", "1") == EXIT_TOO_MANY_FAILED
    assert json.load(open(tmp_path / "out" / "d.stats.json"))["failed"] == {"failed:http": 2}  # committed
    assert "2 of 22 documents failed ({'HTTP 400': 2})" in errors(caplog)[0]
    finished = [r.getMessage() for r in caplog.records if r.getMessage().startswith("finished:")]
    assert json.loads(finished[0].split(": ", 1)[1])["errors"] == {"HTTP 400": 2}
    assert run(inp, tmp_path / "out2", server.url, "--max-failed-fraction", "0.1") == 0


def test_failed_records_keep_the_answer_and_finish_reason(standin, tmp_path):
    server = standin()
    inp = write_jsonl(tmp_path / "d.jsonl", [{"id": "garbage", "text": "a [[fault:garbage*inf]]"},
                                             {"id": "cut", "text": "b [[fault:length*inf]]"}] + docs(3))
    assert run(inp, tmp_path / "out", server.url, "--max-parse-retries", "1", "--max-failed-fraction", "1") == 0
    ixt = {r["id"]: r["ixt"] for r in read_jsonl(tmp_path / "out" / "d.jsonl")}
    assert ixt["garbage"]["status"] == "failed:parse"
    assert ixt["garbage"]["answer"].endswith("I cannot rate this document.")
    assert ixt["garbage"]["finish_reason"] == "stop"
    assert ixt["cut"]["status"] == "failed:length" and ixt["cut"]["finish_reason"] == "length"
    assert "I keep thinking" in ixt["cut"]["answer"]
    assert all("answer" not in ixt[f"d{i}"] for i in range(3))


def test_bounded_keeps_head_and_tail():
    assert bounded("short", 10) == "short"
    cut = bounded("H" * 50 + "x" * 1000 + "T" * 50, 100)
    assert cut.startswith("H" * 50) and cut.endswith("T" * 50) and "[... 1000 characters cut ...]" in cut


def test_aborted_run_leaves_no_empty_partial(standin, tmp_path, caplog):
    server = standin(list_models=False)
    inp = write_jsonl(tmp_path / "d.jsonl", docs(3))
    out = tmp_path / "out"
    assert run(inp, out, server.url, "--api", "chat") == 1
    assert "pass --model" in caplog.text
    assert sorted(os.listdir(out)) == ["run_config.json"]
