"""Annotation client benchmark (``make bench-annotate``).

Runs the real client (``python -m annotate run --backend http``: input reading, prompt rendering,
HTTP, parsing, fsync'ed output) in this process against the SGLang stand-in server
(tests/helpers/sglang_standin.py, run as ``python -m tests.helpers.sglang_standin``) in a separate
process, which answers after a fixed latency with fixed token counts. Reports:

1. zero latency: client requests/s at increasing concurrency, and requests per client
   CPU-second (the client is one asyncio thread: that is its one-core rate); goal >= 2,000/s;
2. 2 s latency, concurrency 512, a bounded run: client overhead = (wall - ideal) / wall, where
   ideal = rounds x latency; goal < 5%;
3. an H100-hours estimate for a corpus from token counts: prompt tokens measured by rendering
   the rubric around the corpus documents; completion tokens and cached share measured from an
   annotated output directory (``--from-output``) or assumed (flags); GPU throughputs assumed.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time

import psutil
from ixt_demo.synthetic import SynthConfig, generate  # examples/demo (on PYTHONPATH in make bench-annotate)

from annotate.backends.httpconn import HttpPool
from annotate.cli import collect_status
from annotate.cli import main as annotate_main
from annotate.prompt import PromptTemplate, TokenCounter

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

STANDIN = "tests.helpers.sglang_standin"  # a module of this repository (REPO on the server's PYTHONPATH)


def start_server(latency: float, prompt_tokens: int, completion_tokens: int):
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.Popen([sys.executable, "-m", STANDIN, "--latency", str(latency),
                             "--prompt-tokens", str(prompt_tokens), "--completion-tokens", str(completion_tokens)],
                            stdout=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline()
    if not line.startswith("READY "):
        proc.kill()
        raise RuntimeError(f"stand-in server failed to start: {line!r}")
    return proc, line.split()[1]


def write_corpus(path: str, n: int, doc_chars: int) -> None:
    filler = ("This paragraph discusses the topic at length with facts, figures and a worked example. "
              * 64)[:doc_chars]
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"b{i}", "text": f"Document {i}. {filler}"}) + "\n")


def client_run(url: str, corpus: str, out: str, concurrency: int, server=None) -> tuple[float, float, float]:
    """(wall seconds, client CPU seconds, server CPU seconds) of one complete annotate run."""
    shutil.rmtree(out, ignore_errors=True)
    srv = psutil.Process(server.pid) if server is not None else None
    srv0 = sum(srv.cpu_times()[:2]) if srv else 0.0
    wall0, cpu0 = time.perf_counter(), time.process_time()
    rc = annotate_main(["--log-level", "WARNING", "run", "--input", corpus, "--output", out, "--url", url,
                        "--concurrency", str(concurrency), "--log-interval", "3600", "--model", "bench"])
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    srv_cpu = sum(srv.cpu_times()[:2]) - srv0 if srv else 0.0
    if rc != 0:
        raise RuntimeError(f"annotate run failed with exit code {rc}")
    return wall, cpu, srv_cpu


def bare_run(url: str, n: int, concurrency: int, doc_chars: int) -> tuple[float, float]:
    """(wall, client CPU) of a bare request loop (same HTTP client, no annotate pipeline): the
    floor that the stand-in server and this machine allow."""
    body = json.dumps({"text": "x" * doc_chars, "sampling_params": {"max_new_tokens": 4096}}).encode()

    async def go():
        pool = HttpPool(url)
        left = [n]

        async def loop():
            while left[0] > 0:
                left[0] -= 1
                status, _, raw = await pool.request("POST", "/generate", body, timeout=600)
                json.loads(raw)

        await asyncio.gather(*(loop() for _ in range(concurrency)))
        pool.close()

    wall0, cpu0 = time.perf_counter(), time.process_time()
    asyncio.run(go())
    return time.perf_counter() - wall0, time.process_time() - cpu0


def h100_hours(args, measured: dict) -> None:
    print("\n== H100-hours estimate ==")
    template = PromptTemplate.load()
    counter = TokenCounter(args.tokenizer)
    docs = list(generate(SynthConfig(num_docs=200))) if not args.corpus else [
        json.loads(line) for line in open(args.corpus, encoding="utf-8") if line.strip()][:2000]
    prompt = [counter.count(template.render(counter.truncate(d["text"], args.max_doc_tokens)[0])) for d in docs]
    doc_tokens = [counter.count(d["text"]) for d in docs]
    rubric = counter.count(template.prefix)
    mean_prompt, mean_doc = sum(prompt) / len(prompt), sum(doc_tokens) / len(doc_tokens)
    unit = counter.unit
    completion = measured.get("completion_per_doc") or args.completion_tokens
    cached_share = measured.get("cached_share")
    if cached_share is None:
        cached_share = rubric / mean_prompt  # the rubric prefix is served from the radix cache
    corpus_docs = args.corpus_tokens * args.annotate_share / mean_doc
    prefill_tokens = corpus_docs * mean_prompt * (1 - cached_share)
    decode_tokens = corpus_docs * completion
    gpu_s = prefill_tokens / args.prefill_tok_s + decode_tokens / args.decode_tok_s
    print(f"measured: {len(docs)} documents of {args.corpus or 'the synthetic arithmetic corpus'}: "
          f"{mean_doc:.0f} {unit}/doc, prompt {mean_prompt:.0f} {unit}/doc (rubric {rubric})")
    print(f"completion {completion:.0f} tokens/doc "
          f"({'measured' if measured.get('completion_per_doc') else 'assumed'}), "
          f"cached share {cached_share:.2f} "
          f"({'measured' if measured.get('cached_share') is not None else 'rubric/prompt'})")
    print(f"assumed H100 throughput for the judge: prefill {args.prefill_tok_s:,.0f} tok/s, "
          f"decode {args.decode_tok_s:,.0f} tok/s "
          "(assumptions: measure yours with sglang.bench_serving and pass --prefill-tok-s/--decode-tok-s)")
    print(f"corpus {args.corpus_tokens:.3g} tokens, annotating {100 * args.annotate_share:.0f}% -> "
          f"{corpus_docs:.3g} documents: "
          f"{prefill_tokens:.3g} prefill + {decode_tokens:.3g} decode tokens")
    print(f"=> {gpu_s / 3600:,.0f} H100-hours ({gpu_s / 3600 / 24 / 8:,.1f} days on one 8-GPU node)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--docs", type=int, default=8000, help="documents per zero-latency run")
    p.add_argument("--concurrency", type=int, nargs="+", default=[16, 64, 256, 1024],
                   help="in-flight requests per zero-latency run (one run per value)")
    p.add_argument("--latency", type=float, default=2.0,
                   help="stand-in server's seconds per request in the latency run")
    p.add_argument("--latency-concurrency", type=int, default=512, help="in-flight requests in the latency run")
    p.add_argument("--latency-rounds", type=int, default=10, help="rounds of the 2 s run (steady state, not the ramp)")
    p.add_argument("--doc-chars", type=int, default=2000, help="characters per synthetic document")
    p.add_argument("--prompt-tokens", type=int, default=1500, help="stand-in's fixed prompt token count")
    p.add_argument("--completion-tokens", type=int, default=1000, help="stand-in's fixed / assumed completion tokens")
    p.add_argument("--skip-client", action="store_true", help="only the H100-hours estimate")
    p.add_argument("--from-output", default=None, help="annotated output dir whose stats give measured token counts")
    p.add_argument("--corpus", default=None, help="JSONL corpus to measure prompt tokens on (default: synthetic)")
    p.add_argument("--tokenizer", default=None, help="judge tokenizer for exact counts (default: estimate)")
    p.add_argument("--max-doc-tokens", type=int, default=16384,
                   help="document token cap of the H100-hours estimate (as annotate's --max-doc-tokens)")
    p.add_argument("--corpus-tokens", type=float, default=1e12,
                   help="pretraining corpus size in tokens for the H100-hours estimate")
    p.add_argument("--annotate-share", type=float, default=0.15,
                   help="share of the corpus annotated in the H100-hours estimate")
    p.add_argument("--prefill-tok-s", type=float, default=40000.0, help="assumed uncached prefill tokens/s per H100")
    p.add_argument("--decode-tok-s", type=float, default=10000.0, help="assumed output tokens/s per H100 at full batch")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)

    measured = {}
    if args.from_output:
        total = collect_status(args.from_output)["total"]
        if total["done"]:
            measured = {"completion_per_doc": total["tokens"]["completion"] / total["done"],
                        "cached_share": total["tokens"]["cached_share"] or None}

    if not args.skip_client:
        tmp = tempfile.mkdtemp(prefix="bench_annotate_")
        try:
            corpus = os.path.join(tmp, "corpus.jsonl")
            write_corpus(corpus, args.docs, args.doc_chars)
            proc, url = start_server(0.0, args.prompt_tokens, args.completion_tokens)
            try:
                print("== zero-latency client throughput (goal >= 2,000 requests/s on one core) ==")
                print("req/CPU-s = requests per second of client CPU time: the one-core rate of the (single-threaded)")
                print("client; wall req/s is capped by the stand-in server when its process is the busier one.")
                rows = []
                for c in args.concurrency:
                    wall, cpu, srv = client_run(url, corpus, os.path.join(tmp, f"out{c}"), c, proc)
                    rows.append((c, wall, cpu, srv))
                print(f"{'concurrency':>11} {'docs':>6} {'wall s':>7} {'wall req/s':>10} {'client CPU s':>12} "
                      f"{'req/CPU-s':>10} {'server CPU s':>12}")
                for c, wall, cpu, srv in rows:
                    print(f"{c:>11} {args.docs:>6} {wall:>7.2f} {args.docs / wall:>10.0f} {cpu:>12.2f} "
                          f"{args.docs / cpu:>10.0f} {srv:>12.2f}")
                c = args.concurrency[-1]
                bwall, bcpu = bare_run(url, args.docs, c, args.doc_chars)
                print(f"{'bare loop':>11} {args.docs:>6} {bwall:>7.2f} {args.docs / bwall:>10.0f} {bcpu:>12.2f} "
                      f"{args.docs / bcpu:>10.0f} {'':>12}  (same HTTP client, no pipeline, concurrency {c})")
            finally:
                proc.kill()
                proc.wait()
            n = args.latency_concurrency * args.latency_rounds
            small = os.path.join(tmp, "latency.jsonl")
            write_corpus(small, n, args.doc_chars)
            proc, url = start_server(args.latency, args.prompt_tokens, args.completion_tokens)
            try:
                wall, cpu, _ = client_run(url, small, os.path.join(tmp, "outlat"), args.latency_concurrency)
                bwall, bcpu = bare_run(url, n, args.latency_concurrency, args.doc_chars)
            finally:
                proc.kill()
                proc.wait()
            ideal = math.ceil(n / args.latency_concurrency) * args.latency
            print(f"\n== {args.latency:g} s latency, concurrency {args.latency_concurrency}, {n} docs "
                  "(goal: overhead < 5%) ==")
            print(f"{'':>10} {'wall s':>7} {'ideal s':>7} {'overhead':>9} {'client CPU busy':>15}")
            print(f"{'annotate':>10} {wall:>7.2f} {ideal:>7.2f} {100 * (wall - ideal) / wall:>8.1f}% "
                  f"{100 * cpu / wall:>14.1f}%")
            print(f"{'bare loop':>10} {bwall:>7.2f} {ideal:>7.2f} {100 * (bwall - ideal) / bwall:>8.1f}% "
                  f"{100 * bcpu / bwall:>14.1f}%")
            print(f"annotate pipeline vs bare loop: +{100 * (wall - bwall) / wall:.1f}% of wall time "
                  f"(the bare loop's overhead is the stand-in server and this machine; load average "
                  f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
            if not measured:
                measured = {"completion_per_doc": None, "cached_share": None}
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    h100_hours(args, measured)


if __name__ == "__main__":
    main()
