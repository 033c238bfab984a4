"""Preprocessing throughput, side by side in one run: Megatron-LM's loop, our full IXT path and the
tokenizer libraries alone, for a SentencePiece and a HuggingFace BPE tokenizer.

Generates (once, cached under --output-dir) a JSONL corpus of ~42 MB / 20k English-like documents
(60% annotated, 10% failed annotations), and trains on it an 8k-piece SentencePiece BPE model (no
byte fallback, like the bundled example: gigatoken cannot load it, our word-cache engine encodes it)
and an 8k HuggingFace byte-level BPE (``tokenizers``, the kind Llama 3 / Qwen / OLMo use: gigatoken
encodes it). Then, per tokenizer, in interleaved rounds:

- Megatron-LM: the loop of its tools/preprocess_data.py (text only; Megatron-LM itself is not
  installed, so the loop is reproduced over the same megatron-core tokenizer and IndexedDatasetBuilder),
- ours: megatron_ixt.preprocess (behind tools/preprocess_ixt.py), the full IXT path (text + prefix stores,
  metadata), in-process, for each --workers value,
- ours on the first 40 documents only: the fixed cost of a run (start-up, verification, worker start, finalize),
- ours on a long input (~210 MB, 100k other documents of the same generator: the size of one file of a
  cluster job's input), where that fixed cost no longer counts: the worker scaling of a real run,
- the machine's own ceiling for that scaling: N independent 1-worker runs at once, in processes
  that share nothing, each on 1/N of the long input's lines (on a virtual machine two such
  processes may not get twice one's throughput: shared caches, memory bandwidth, the host),
- the tokenizer library alone, single-threaded, on the texts already in memory: HF ``tokenizers``
  ``encode_batch`` (or SentencePiece's batch ``encode``), gigatoken ``encode_batch``, and gigatoken
  ``encode_files`` reading the JSONL itself (the ceiling).

Every rate is MB of JSONL input per second: wall clock, and MB per CPU-second (this process and its
workers) in parentheses, which other load on a shared machine distorts much less. Ratios against the
issue-11 targets follow, and a check that every text store equals the Megatron-LM loop's.

    PYTHONPATH=.:examples/data python benchmarks/bench_preprocess.py [--docs 20000] [--long-docs 100000]
        [--workers 1 2] [--repeat 1]
"""
from __future__ import annotations

import argparse
import glob
import io
import json
import multiprocessing
import os
import resource
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # HF encode_batch on one thread: a per-core rate

import awkward  # noqa: E402,F401  gigatoken returns awkward arrays: imported here, untimed, like torch and transformers
import make_corpus  # noqa: E402  examples/data/make_corpus.py (the Makefile sets PYTHONPATH)

from megatron_ixt.preprocess import PreprocessConfig, preprocess  # noqa: E402
from megatron_ixt.tokenizer import build_tokenizer, gigatoken_tokenizer, tokenizer_config  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TOKENIZERS = {"SentencePiece BPE": "SentencePieceTokenizer", "HF BPE": "HuggingFaceTokenizer"}


def long_run(workers: int) -> str:
    """The name of our full-path run on the long input."""
    return f"ours, full IXT, {workers} worker(s), long input"


def split_in_parts(path: str, parts: int) -> list[str]:
    """``path`` cut into ``parts`` files of whole lines, near-equal in lines (made once)."""
    stem = path[:-len(".jsonl")]
    paths = [f"{stem}.part{i}of{parts}.jsonl" for i in range(parts)]
    if not all(os.path.exists(p) for p in paths):
        with open(path, "rb") as f:
            lines = f.readlines()
        size, extra = divmod(len(lines), parts)
        start = 0
        for i, p in enumerate(paths):
            end = start + size + (i < extra)
            with open(p + ".tmp", "wb") as f:
                f.writelines(lines[start:end])
            os.replace(p + ".tmp", p)
            start = end
    return paths


def run_independent(parts: list[str], tokenizer_type: str, model: str, output_prefix: str) -> None:
    """One 1-worker run per part, all at once in separate processes that share nothing: what
    ``len(parts)`` workers could reach on this machine with no coordination at all."""
    processes = [multiprocessing.Process(target=run_ours, args=(p, tokenizer_type, model, f"{output_prefix}{i}", 1))
                 for i, p in enumerate(parts)]
    for p in processes:
        p.start()
    for p in processes:
        p.join()
        if p.exitcode != 0:
            raise RuntimeError(f"an independent run failed (exit code {p.exitcode})")


def independent_run(workers: int) -> str:
    """The name of the run of ``workers`` independent 1-worker processes on parts of the long input."""
    return f"{workers} independent 1-worker runs, long input"


def generate_corpus(directory: str, docs: int, seed: int) -> str:
    """A JSONL corpus of ``docs`` documents (~2.1 KB each), generated once per (docs, seed)."""
    corpus = os.path.join(directory, f"corpus_{docs}_seed{seed}.jsonl")
    if not os.path.exists(corpus):
        t = time.time()
        records = make_corpus.generate_records(docs, seed=seed, words=(190, 300))
        make_corpus.write_jsonl(corpus + ".tmp", records)
        os.replace(corpus + ".tmp", corpus)
        print(f"generated {corpus}: {os.path.getsize(corpus) / 1e6:.1f} MB, {docs} documents "
              f"({time.time() - t:.1f} s)", flush=True)
    return corpus


def prepare(directory: str, docs: int, vocab: int) -> tuple[str, dict]:
    """The corpus and the two tokenizers trained on it (name -> model path), made once per (docs, vocab)."""
    os.makedirs(directory, exist_ok=True)
    corpus = generate_corpus(directory, docs, seed=2026)
    models = {"SentencePiece BPE": os.path.join(directory, f"bpe{vocab}_{docs}.model"),
              "HF BPE": os.path.join(directory, f"hf_bpe{vocab}_{docs}")}
    if not all(os.path.exists(m) for m in models.values()):
        t = time.time()
        with open(corpus, encoding="utf-8") as f:
            texts = make_corpus.tokenizer_training_texts([json.loads(line) for line in f])
        if not os.path.exists(models["SentencePiece BPE"]):
            make_corpus.train_sentencepiece(texts, models["SentencePiece BPE"][:-len(".model")], vocab)
        if not os.path.exists(models["HF BPE"]):
            make_corpus.train_hf_bpe(texts, models["HF BPE"] + ".tmp", vocab)
            os.replace(models["HF BPE"] + ".tmp", models["HF BPE"])
        print(f"trained the SentencePiece and HF BPE tokenizers ({vocab} pieces, {time.time() - t:.1f} s)", flush=True)
    return corpus, models


def remover(prefix: str):
    """A run's untimed setup: remove the files an earlier round wrote under ``prefix``, so that each
    run writes new files, as a real run does (replacing files costs ext4 a flush at the rename)."""
    def remove() -> None:
        for path in glob.glob(glob.escape(prefix) + "*"):
            os.remove(path)
    return remove


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of ``fn()``."""
    multiprocessing.active_children()  # reap earlier runs' workers now, so their CPU time is not counted here
    wall, cpu = time.perf_counter(), cpu_seconds()
    fn()
    return time.perf_counter() - wall, cpu_seconds() - cpu


def run_ours(corpus: str, tokenizer_type: str, model: str, output_prefix: str, workers: int) -> None:
    """One in-process run of megatron_ixt.preprocess (tools/preprocess_ixt.py's library), the full IXT path
    (imports already warm)."""
    tokenizer = tokenizer_config(tokenizer_type=tokenizer_type, tokenizer_model=model)
    config = PreprocessConfig([corpus], output_prefix, tokenizer, append_eod=True, workers=workers,
                              log_interval=10 ** 9)
    preprocess(config, log=io.StringIO())


_PEER_TOKENIZER = None


def _peer_init(tokenizer_type: str, model: str) -> None:
    global _PEER_TOKENIZER
    _PEER_TOKENIZER = build_tokenizer(tokenizer_type=tokenizer_type, tokenizer_model=model)


def _peer_encode(line: str):
    ids = _PEER_TOKENIZER.tokenize(json.loads(line)["text"])
    ids.append(_PEER_TOKENIZER.eod)
    return ids


def run_peer(corpus: str, tokenizer_type: str, model: str, output_prefix: str, workers: int) -> None:
    """The loop of Megatron-LM's preprocess_data.py (text only, no sentence splitting): a pool maps
    json.loads + tokenize over lines (imap, 32 lines a task), the main process appends each document
    to an IndexedDatasetBuilder."""
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    vocab_size = build_tokenizer(tokenizer_type=tokenizer_type, tokenizer_model=model).vocab_size
    with multiprocessing.Pool(workers, initializer=_peer_init, initargs=(tokenizer_type, model)) as pool, \
            open(corpus, encoding="utf-8") as f:
        builder = IndexedDatasetBuilder(output_prefix + ".bin", dtype=DType.optimal_dtype(vocab_size))
        for ids in pool.imap(_peer_encode, f, 32):
            builder.add_document(ids, [len(ids)])
        builder.finalize(output_prefix + ".idx")


def library_runs(corpus: str, tokenizer_type: str, model: str, texts: list[str]) -> dict:
    """name -> (setup, run): the tokenizer libraries alone, each on one thread, a fresh tokenizer per
    round (built by ``setup``, untimed)."""
    import gigatoken

    cfg = tokenizer_config(tokenizer_type=tokenizer_type, tokenizer_model=model)
    runs = {}
    if tokenizer_type == "HuggingFaceTokenizer":
        import tokenizers

        runs["HF encode_batch"] = (lambda: tokenizers.Tokenizer.from_file(os.path.join(model, "tokenizer.json")),
                                   lambda tok: tok.encode_batch(texts, add_special_tokens=False))
    else:
        import sentencepiece

        runs["SentencePiece encode"] = (lambda: sentencepiece.SentencePieceProcessor(model_file=model),
                                        lambda sp: sp.encode(texts, num_threads=1))
    try:
        gigatoken_tokenizer(cfg)
    except ValueError as exc:
        print(f"{tokenizer_type}: no gigatoken rows ({exc})")
        return runs
    source = gigatoken.JsonlFileSource([corpus], field="text")
    runs["gigatoken encode_batch"] = (lambda: gigatoken_tokenizer(cfg), lambda g: g.encode_batch(texts, parallel=False))
    runs["gigatoken encode_files"] = (lambda: gigatoken_tokenizer(cfg),
                                      lambda g: g.encode_files(source, parallel=False))
    return runs


def best_of(repeat: int, runs: dict) -> dict:
    """name -> (best wall, best CPU) over ``repeat`` interleaved rounds of ``runs`` (name -> (setup,
    run): ``run(setup())`` is timed, ``setup()`` is not)."""
    best = {name: (float("inf"), float("inf")) for name in runs}
    for _ in range(repeat):
        for name, (setup, run) in runs.items():
            obj = setup()
            wall, cpu = timed(lambda: run(obj))
            best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=20000, help="documents in the generated corpus (~2.1 KB each)")
    parser.add_argument("--vocab-size", type=int, default=8000, help="pieces of both trained tokenizers")
    parser.add_argument("--long-docs", type=int, default=100000,
                        help="documents of the long input (0: none), on which our full path runs too")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="--workers values of the runs")
    parser.add_argument("--repeat", type=int, default=1, help="rounds per configuration; the best is shown")
    parser.add_argument("--output-dir", default=os.path.join(REPO, "bench_out", "preprocess"),
                        help="where the corpus and tokenizers are cached and the runs write")
    args = parser.parse_args()
    corpus, models = prepare(args.output_dir, args.docs, args.vocab_size)
    long_corpus = generate_corpus(args.output_dir, args.long_docs, seed=2027) if args.long_docs else None
    mb = os.path.getsize(corpus) / 1e6
    long_mb = os.path.getsize(long_corpus) / 1e6 if long_corpus else None
    with open(corpus, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    print(f"corpus: {mb:.1f} MB, {args.docs} docs" + (f"; long input: {long_mb:.1f} MB, {args.long_docs} docs"
          if long_corpus else "") + f"; cpus: {os.cpu_count()}; load average before: {os.getloadavg()[0]:.1f}",
          flush=True)
    print("MB of JSONL per second, wall clock (MB per CPU-second in parentheses)\n")
    print(f"| {'tokenizer':<17} | {'path':<40} | {'MB/s':>16} |\n|---|---|---|")
    out = lambda name: os.path.join(args.output_dir, name)  # noqa: E731
    rates, same, fixed = {}, {}, {}
    size = {}  # run name -> MB of its input, where it is not the corpus
    head = out("head.jsonl")  # the first 40 documents: a run's fixed cost (start-up, verification, finalize)
    with open(corpus, "rb") as f, open(head, "wb") as h:
        h.writelines(line for _, line in zip(range(40), f))
    for label, tokenizer_type in TOKENIZERS.items():
        model = models[label]
        build_tokenizer(tokenizer_type=tokenizer_type, tokenizer_model=model)  # imports, untimed
        tag = tokenizer_type.lower()
        runs = {}
        for w in args.workers:
            runs[f"Megatron-LM loop, {w} worker(s)"] = (
                remover(out(f"{tag}_peer")),
                lambda _, w=w: run_peer(corpus, tokenizer_type, model, out(f"{tag}_peer_text_document"), w))
            runs[f"ours, full IXT, {w} worker(s)"] = (
                remover(out(f"{tag}_ixt_w{w}")),
                lambda _, w=w: run_ours(corpus, tokenizer_type, model, out(f"{tag}_ixt_w{w}"), w))
            runs[f"fixed cost, {w} worker(s)"] = (
                remover(out(f"{tag}_head_w{w}")),
                lambda _, w=w: run_ours(head, tokenizer_type, model, out(f"{tag}_head_w{w}"), w))
            if long_corpus:
                size[long_run(w)] = long_mb
                runs[long_run(w)] = (remover(out(f"{tag}_long_w{w}")), lambda _, w=w: run_ours(
                    long_corpus, tokenizer_type, model, out(f"{tag}_long_w{w}"), w))
            if long_corpus and w > 1:
                size[independent_run(w)] = long_mb
                runs[independent_run(w)] = (remover(out(f"{tag}_part")), lambda _, w=w: run_independent(
                    split_in_parts(long_corpus, w), tokenizer_type, model, out(f"{tag}_part")))
        best = best_of(args.repeat, runs)
        best.update(best_of(args.repeat, library_runs(corpus, tokenizer_type, model, texts)))
        for name, (wall, cpu) in best.items():
            if name.startswith("fixed cost"):
                fixed[label, name[len("fixed cost, "):]] = (wall, cpu)
                continue
            run_mb = size.get(name, mb)
            rates[label, name] = (run_mb / wall, run_mb / cpu)
            print(f"| {label:<17} | {name:<40} | {run_mb / wall:>7.1f} ({run_mb / cpu:>6.1f}) |", flush=True)
        peer = open(out(f"{tag}_peer_text_document.bin"), "rb").read()
        same[label] = all(open(out(f"{tag}_ixt_w{w}_text_document.bin"), "rb").read() == peer for w in args.workers)

    def ratio(label, a, b, target):
        (wa, ca), (wb, cb) = rates[label, a], rates[label, b]
        return f"| {label} | {a} / {b} | {wa / wb:.2f} ({ca / cb:.2f}) | {target} |"

    one, two = min(args.workers), max(args.workers)
    full = lambda w: f"ours, full IXT, {w} worker(s)"  # noqa: E731
    print("\n| tokenizer | ratio | wall (CPU) | target |\n|---|---|---|---|")
    for label in TOKENIZERS:
        print(ratio(label, full(one), f"Megatron-LM loop, {one} worker(s)", ">= 10 (HF BPE)"))
        if (label, "HF encode_batch") in rates:
            print(ratio(label, full(one), "HF encode_batch", ">= 10"))
        if two != one:
            print(ratio(label, full(two), full(one), ">= 1.7"))
            if long_corpus:
                print(ratio(label, long_run(two), long_run(one), ">= 1.7"))
                print(ratio(label, independent_run(two), long_run(one), "the machine's ceiling for the line above"))
                print(ratio(label, long_run(two), independent_run(two), "our parallel efficiency"))
        if (label, "gigatoken encode_files") in rates:
            print(ratio(label, full(one), "gigatoken encode_files", ">= 0.25"))
    print(f"\nfull IXT path with HF BPE, {one} worker: {rates['HF BPE', full(one)][1]:.1f} MB per CPU-second "
          + (f"({rates['HF BPE', long_run(one)][1]:.1f} on the long input) " if long_corpus else "")
          + "(target >= 50 per core)")
    print("\nfixed cost per run (in-process, imports warm: tokenizer loading, verification, worker start, index "
          "finalize), measured on a 40-document input, and the rates without it (what a long run approaches):")
    for (label, workers), (wall, cpu) in fixed.items():
        (w_rate, c_rate) = rates[label, f"ours, full IXT, {workers}"]
        print(f"  {label}, {workers}: {wall:.2f} s wall ({cpu:.2f} CPU-s); without it "
              f"{mb / (mb / w_rate - wall):.1f} MB/s ({mb / (mb / c_rate - cpu):.1f} MB/CPU-s)")
    print("text stores identical to the Megatron-LM loop's (same tokens): "
          + ", ".join(f"{label} {'yes' if ok else 'NO'}" for label, ok in same.items()))
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
