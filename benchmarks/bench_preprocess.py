"""Preprocessing throughput: the full IXT path vs a text-only run of the same tool, per worker count.

Generates (once, cached under --output-dir) a JSONL corpus of ~40 MB / 20k English-like documents
(60% annotated, 10% failed annotations) and trains an 8k-piece SentencePiece BPE model on it, then
runs, for each --workers value and interleaved: the loop of Megatron-LM's tools/preprocess_data.py
(text only; Megatron-LM itself is not installed, so the loop is reproduced over the same megatron-core
tokenizer and IndexedDatasetBuilder), our tool with --text-only, and our full IXT path. Prints MB/s
and docs/s side by side with the ratios full / text-only and full / Megatron-LM loop, and the
Megatron-LM numbers quoted in issue 2 for an idle machine of this type.

    PYTHONPATH=.:examples/data python benchmarks/bench_preprocess.py [--docs 20000] [--workers 1 2] [--output-dir bench_out/preprocess]
"""
from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import resource
import time

import make_corpus  # examples/data/make_corpus.py (the Makefile sets PYTHONPATH)

from megatron_ixt.tokenizer import BatchEncoder, build_tokenizer
from tools.preprocess_ixt import get_args, preprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MEGATRON_LM_MB_S = {1: 5.5, 2: 8.7}  # issue 2: Megatron-LM preprocess_data.py, 40 MB / 20k docs, 8k BPE


def prepare(directory: str, docs: int, vocab: int) -> tuple[str, str]:
    """The corpus and tokenizer, generated once per (docs, vocab)."""
    os.makedirs(directory, exist_ok=True)
    corpus = os.path.join(directory, f"corpus_{docs}.jsonl")
    model_prefix = os.path.join(directory, f"bpe{vocab}_{docs}")
    if not os.path.exists(corpus):
        t = time.time()
        records = make_corpus.generate_records(docs, seed=2026, words=(190, 300))
        make_corpus.write_jsonl(corpus + ".tmp", records)
        os.replace(corpus + ".tmp", corpus)
        print(f"generated {corpus}: {os.path.getsize(corpus) / 1e6:.1f} MB, {docs} documents "
              f"({time.time() - t:.1f} s)", flush=True)
    if not os.path.exists(model_prefix + ".model"):
        t = time.time()
        with open(corpus, encoding="utf-8") as f:
            records = [json.loads(line) for line in f]
        make_corpus.train_sentencepiece(make_corpus.tokenizer_training_texts(records), model_prefix, vocab)
        print(f"trained {model_prefix}.model ({vocab} BPE pieces, {time.time() - t:.1f} s)", flush=True)
    return corpus, model_prefix + ".model"


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the pool workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(fn, *args) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of ``fn(*args)``."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    fn(*args)
    return time.perf_counter() - wall, cpu_seconds() - cpu


def run_once(corpus: str, model: str, output_prefix: str, workers: int, text_only: bool) -> None:
    """One in-process run of tools/preprocess_ixt.py (imports already warm)."""
    argv = ["--input", corpus, "--output-prefix", output_prefix, "--tokenizer-type", "SentencePieceTokenizer",
            "--tokenizer-model", model, "--append-eod", "--workers", str(workers), "--log-interval", "1000000000"]
    preprocess(get_args(argv + (["--text-only"] if text_only else [])), log=io.StringIO())


_PEER_TOKENIZER = None


def _vocab_size(model: str) -> int:
    return build_tokenizer(tokenizer_type="SentencePieceTokenizer", tokenizer_model=model).vocab_size


def _peer_init(model: str) -> None:
    global _PEER_TOKENIZER
    _PEER_TOKENIZER = build_tokenizer(tokenizer_type="SentencePieceTokenizer", tokenizer_model=model)


def _peer_encode(line: str):
    ids = _PEER_TOKENIZER.tokenize(json.loads(line)["text"])
    ids.append(_PEER_TOKENIZER.eod)
    return ids


def run_peer(corpus: str, model: str, output_prefix: str, workers: int) -> None:
    """The loop of Megatron-LM's preprocess_data.py (text only, no sentence splitting):
    a pool maps json.loads + tokenize over lines (imap, 32 lines a task), the main process appends
    each document to an IndexedDatasetBuilder. Measured here, under the same load as our runs."""
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    with multiprocessing.Pool(workers, initializer=_peer_init, initargs=(model,)) as pool, \
            open(corpus, encoding="utf-8") as f:
        builder = IndexedDatasetBuilder(output_prefix + ".bin", dtype=DType.optimal_dtype(_vocab_size(model)))
        for ids in pool.imap(_peer_encode, f, 32):
            builder.add_document(ids, [len(ids)])
        builder.finalize(output_prefix + ".idx")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=20000)
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=1, help="runs per configuration; the best is shown")
    parser.add_argument("--output-dir", default=os.path.join(REPO, "bench_out", "preprocess"))
    args = parser.parse_args()
    corpus, model = prepare(args.output_dir, args.docs, args.vocab_size)
    tokenizer = build_tokenizer(tokenizer_type="SentencePieceTokenizer", tokenizer_model=model)  # imports, untimed
    mb = os.path.getsize(corpus) / 1e6
    print(f"corpus: {mb:.1f} MB, {args.docs} docs; cpus: {os.cpu_count()}; load average: "
          f"{os.getloadavg()[0]:.1f}; our encoder mode: {BatchEncoder(tokenizer).mode}", flush=True)
    print("MB/s wall clock (MB per CPU-second in parentheses: robust to other load on the machine)")
    print(f"{'workers':>7} | {'Megatron-LM loop':>16} | {'ours text-only':>16} | {'ours full IXT':>16} "
          f"{'docs/s':>7} | {'full/text-only':>14} | {'full/Megatron-LM':>16}", flush=True)
    out = lambda name: os.path.join(args.output_dir, name)  # noqa: E731
    runs = {"peer": lambda w: run_peer(corpus, model, out("peer_text_document"), w),
            "text": lambda w: run_once(corpus, model, out("text_only"), w, True),
            "full": lambda w: run_once(corpus, model, out("ixt"), w, False)}
    for workers in args.workers:
        wall, cpu = dict.fromkeys(runs, float("inf")), dict.fromkeys(runs, float("inf"))
        for _ in range(args.repeat):  # interleaved, so that load changes hit all three alike
            for name, run in runs.items():
                w, c = timed(run, workers)
                wall[name], cpu[name] = min(wall[name], w), min(cpu[name], c)
        rate = {k: f"{mb / wall[k]:.2f} ({mb / cpu[k]:.1f})" for k in runs}
        print(f"{workers:>7} | {rate['peer']:>16} | {rate['text']:>16} | {rate['full']:>16} "
              f"{args.docs / wall['full']:>7.0f} | {wall['text'] / wall['full']:>6.2f} ({cpu['text'] / cpu['full']:.2f}) | "
              f"{wall['peer'] / wall['full']:>8.2f} ({cpu['peer'] / cpu['full']:.2f})", flush=True)
    same = all(open(out(f"{name}.bin"), "rb").read() == open(out("peer_text_document.bin"), "rb").read()
               for name in ("text_only_text_document", "ixt_text_document"))
    print(f"text stores identical to the Megatron-LM loop's (same tokens): {'yes' if same else 'NO'}")
    print("quoted in issue 2 for Megatron-LM preprocess_data.py on an idle machine of this type: "
          + ", ".join(f"{w} worker(s) {v} MB/s" for w, v in MEGATRON_LM_MB_S.items()))


if __name__ == "__main__":
    main()
