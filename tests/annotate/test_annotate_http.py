"""The http backend and runner against the SGLang stand-in: both APIs, every fault kind,
load spreading, bounded concurrency, health waits, all-servers-down abort and resume."""
import collections
import json
import os
import threading
import time

import pytest

from annotate.cli import main
from annotate.prompt import PromptTemplate
from megatron_ixt.cli import EXIT_UNAVAILABLE
from tests.helpers.annotate import read_jsonl, server_stats, write_jsonl
from tests.helpers.sglang_standin import StandinConfig, StandinServer, verdict_for

FAST = ["--backoff-base", "0.02", "--backoff-max", "0.1", "--log-interval", "60"]


def run(inp, out, urls, *extra) -> int:
    args = ["run", "--input", str(inp), "--output", str(out)]
    for u in urls:
        args += ["--url", u]
    return main(args + FAST + list(extra))


def by_id(path):
    recs = read_jsonl(path)
    ids = collections.Counter(r["id"] for r in recs)
    assert all(n == 1 for n in ids.values()), [i for i, n in ids.items() if n > 1]
    return {r["id"]: r for r in recs}


@pytest.mark.parametrize("api, reasoning_parser", [("generate", True), ("chat", True), ("chat", False)])
def test_records_from_both_apis(api, reasoning_parser, standin, tmp_path, arith_docs):
    server = standin(reasoning_parser=reasoning_parser)  # without it, chat content carries <think>
    docs = arith_docs(40)
    inp = write_jsonl(tmp_path / "docs.jsonl", docs)
    assert run(inp, tmp_path / "out", [server.url], "--api", api, "--concurrency", "8") == 0
    recs = by_id(tmp_path / "out" / "docs.jsonl")
    template = PromptTemplate.load()
    assert set(recs) == {d["id"] for d in docs}
    for d in docs:
        r = recs[d["id"]]
        assert r["text"] == d["text"] and r["synthetic"] == d["synthetic"]  # original fields preserved
        ixt, expected = r["ixt"], verdict_for(template.render(d["text"]))
        assert ixt["status"] == "ok" and ixt["quality"] == expected["quality"]  # not the draft in the reasoning
        assert ixt["scores"] == {k: expected[k] for k in ixt["scores"]} and ixt["critique"] == expected["critique"]
        assert "first draft" in ixt["reasoning"] and "</think>" not in ixt["reasoning"]
        assert ixt["annotator"]["model"] == "standin/judge-7b" and ixt["annotator"]["api"] == api
    stats = json.load(open(tmp_path / "out" / "docs.stats.json"))
    assert stats["state"] == "committed" and stats["ok"] == 40
    assert stats["tokens"]["cached_share"] > 0.5  # the shared rubric prefix is reported as cached


def test_transient_faults_are_retried(standin, tmp_path):
    server = standin()
    kinds = ["500*2", "503*1", "429*2", "reset*1", "badjson*1", "hang*1", "garbage*1", "length*1"]
    docs = [{"id": f"d{i}", "text": f"Document {i} [[fault:{k}]] body."} for i, k in enumerate(kinds)]
    docs += [{"id": f"plain{i}", "text": f"Plain document {i}."} for i in range(10)]
    inp = write_jsonl(tmp_path / "docs.jsonl", docs)
    assert run(inp, tmp_path / "out", [server.url], "--request-timeout", "1", "--max-retries", "4") == 0
    recs = by_id(tmp_path / "out" / "docs.jsonl")
    assert len(recs) == len(docs) and all(r["ixt"]["status"] == "ok" for r in recs.values())
    faults = server_stats(server)["faults"]
    assert faults == {"500": 2, "503": 1, "429": 2, "reset": 1, "badjson": 1, "hang": 1, "garbage": 1, "length": 1}
    assert recs["d6"]["ixt"]["usage"]["requests"] == 2  # garbage answer: one re-ask
    assert recs["d7"]["ixt"]["usage"]["requests"] == 2  # finish_reason=length: one re-ask


def test_persistent_faults_fail_with_reason(standin, tmp_path):
    server = standin()
    docs = [{"id": "http", "text": "x [[fault:500*inf]]"}, {"id": "length", "text": "y [[fault:length*inf]]"},
            {"id": "range", "text": "z [[fault:range*inf]]"}, {"id": "toolong", "text": "w [[fault:400*1]]"},
            {"id": "fine", "text": "a fine document"}]
    inp = write_jsonl(tmp_path / "docs.jsonl", docs)
    assert run(inp, tmp_path / "out", [server.url], "--max-retries", "2", "--max-parse-retries", "1",
               "--max-failed-fraction", "1") == 0
    recs = by_id(tmp_path / "out" / "docs.jsonl")
    ixt = {k: r["ixt"] for k, r in recs.items()}
    assert ixt["http"]["status"] == "failed:http" and "HTTP 500" in ixt["http"]["error"]
    assert ixt["http"]["usage"]["requests"] == 3 and "quality" not in ixt["http"]
    assert ixt["length"]["status"] == "failed:length" and ixt["length"]["usage"]["requests"] == 2
    assert ixt["range"]["status"] == "failed:parse" and "outside 1..5" in ixt["range"]["error"]
    assert ixt["toolong"]["status"] == "failed:http" and "HTTP 400" in ixt["toolong"]["error"]
    assert ixt["toolong"]["usage"]["requests"] == 1  # a 4xx is not retried
    assert ixt["fine"]["status"] == "ok"
    stats = json.load(open(tmp_path / "out" / "docs.stats.json"))
    assert stats["failed"] == {"failed:http": 2, "failed:length": 1, "failed:parse": 1}


def test_load_spread_and_bounded_concurrency(standin, tmp_path):
    servers = [standin(latency=0.03) for _ in range(3)]
    inp = write_jsonl(tmp_path / "docs.jsonl", [{"text": f"document number {i}"} for i in range(90)])
    assert run(inp, tmp_path / "out", [s.url for s in servers], "--concurrency", "6") == 0
    stats = [server_stats(s) for s in servers]
    assert sum(s["generate"] for s in stats) == 90
    assert all(s["generate"] >= 20 for s in stats), stats
    assert all(s["max_inflight"] <= 6 for s in stats)
    single = standin(latency=0.03)
    assert run(inp, tmp_path / "out1", [single.url], "--concurrency", "5") == 0
    assert server_stats(single)["max_inflight"] == 5  # saturated, never more than the bound
    ids = by_id(tmp_path / "out1" / "docs.jsonl")
    assert all(i.startswith("sha256:") for i in ids)  # no id field: content-hash ids, stable across runs
    assert set(ids) == set(by_id(tmp_path / "out" / "docs.jsonl"))


def test_waits_for_health_and_skips_dead_url(standin, tmp_path):
    server = standin(startup_delay=1.0)
    inp = write_jsonl(tmp_path / "docs.jsonl", [{"text": f"doc {i}"} for i in range(10)])
    dead = "http://127.0.0.1:9"  # nothing listens on the discard port
    assert run(inp, tmp_path / "out", [dead, server.url]) == 0
    assert server_stats(server)["health"] >= 2  # answered 503 at least once, then 200
    assert all(r["ixt"]["status"] == "ok" for r in by_id(tmp_path / "out" / "docs.jsonl").values())


def test_no_server_at_all_aborts(tmp_path):
    inp = write_jsonl(tmp_path / "docs.jsonl", [{"text": "doc"}])
    assert run(inp, tmp_path / "out", ["http://127.0.0.1:9"], "--health-timeout", "0.5") == EXIT_UNAVAILABLE
    assert not os.path.exists(tmp_path / "out" / "docs.jsonl")


def test_all_down_aborts_then_resume_completes(standin, tmp_path):
    server = standin(latency=0.02)
    port = server.port
    docs = [{"id": f"d{i}", "text": f"document {i}"} for i in range(200)]
    inp = write_jsonl(tmp_path / "docs.jsonl", docs)
    partial = tmp_path / "out" / "docs.jsonl.partial"

    def stop_after_some_records():  # not on a timer: a loaded machine may not be up by then
        while not partial.exists() or partial.read_bytes().count(b"\n") < 20:
            time.sleep(0.01)
        server.stop()

    threading.Thread(target=stop_after_some_records, daemon=True).start()
    rc = run(inp, tmp_path / "out", [server.url], "--concurrency", "2", "--all-down-timeout", "1.0")
    assert rc == EXIT_UNAVAILABLE
    done_before = by_id(partial)
    assert 0 < len(done_before) < 200
    assert all(r["ixt"]["status"] == "ok" for r in done_before.values())  # the outage failed no document
    assert json.load(open(tmp_path / "out" / "docs.stats.json"))["state"] == "interrupted"
    revived = StandinServer(StandinConfig(), port=port)
    revived.start()
    try:
        assert run(inp, tmp_path / "out", [revived.url], "--concurrency", "8") == 0
        assert server_stats(revived)["generate"] == 200 - len(done_before)  # completed work not redone
    finally:
        revived.stop()
    recs = by_id(tmp_path / "out" / "docs.jsonl")
    assert set(recs) == {d["id"] for d in docs} and not partial.exists()


def test_outage_shorter_than_window_loses_nothing(standin, tmp_path):
    server = standin(latency=0.02)
    port = server.port
    holder = {}

    def bounce():
        server.stop()
        threading.Timer(0.8, lambda: holder.setdefault("s", StandinServer(StandinConfig(), port=port)).start()).start()

    threading.Timer(0.4, bounce).start()
    inp = write_jsonl(tmp_path / "docs.jsonl", [{"id": f"d{i}", "text": f"document {i}"} for i in range(150)])
    try:
        assert run(inp, tmp_path / "out", [server.url], "--concurrency", "4", "--all-down-timeout", "20") == 0
        assert server_stats(holder["s"])["generate"] > 0  # the run really went through the outage
    finally:
        if "s" in holder:
            holder["s"].stop()
    recs = by_id(tmp_path / "out" / "docs.jsonl")
    assert len(recs) == 150 and all(r["ixt"]["status"] == "ok" for r in recs.values())


def test_long_documents_are_cut_head_and_tail(standin, tmp_path):
    server = standin()
    long_text = "HEAD " + "middle words " * 5000 + " TAIL"
    inp = write_jsonl(tmp_path / "d.jsonl", [{"id": "long", "text": long_text}, {"id": "short", "text": "short doc"}])
    assert run(inp, tmp_path / "out", [server.url], "--max-doc-tokens", "300") == 0
    recs = by_id(tmp_path / "out" / "d.jsonl")
    cut = recs["long"]["ixt"]["truncation"]
    assert cut["original"] == -(-len(long_text) // 4) and cut["kept_head"] + cut["kept_tail"] <= 300
    assert cut["unit"].startswith("est_tokens") and recs["short"]["ixt"]["truncation"] is None
    assert recs["long"]["text"] == long_text  # the record keeps the full document
    template = PromptTemplate.load()
    sent_words = int(recs["long"]["ixt"]["reasoning"].split("The document has ")[1].split()[0])
    assert sent_words < len(template.render(long_text).split()) // 10  # the judge saw the cut version
    stats = json.load(open(tmp_path / "out" / "d.stats.json"))
    assert stats["truncated"] == 1
