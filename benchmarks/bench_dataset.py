"""Benchmark: IXTGPTDataset (critique prefixes) vs megatron-core GPTDataset on the same text store.

Generates (once, reused on later runs) a shard set of ``--num-documents`` random-token documents
(NullTokenizer-style ids; text lengths ~ ``--mean-text-tokens``, ``--annotated`` of them with a
critique prefix of ~ ``--mean-prefix-tokens``), then reports, side by side in one run:
- index build time (document/sample/shuffle indices, one epoch, saved to a fresh cache), and
- ``__getitem__`` samples/s over the same random sample ids.
Both are measured in rounds that alternate between the datasets, best round reported, and in
process CPU time (this machine is shared; wall time would mostly measure the neighbours).
Targets (issue 3): build time within 2x of GPTDataset, samples/s at least 0.8x.

    python benchmarks/bench_dataset.py            # ~1-3 minutes on 2 cores
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time

import numpy as np
from bench_train import add_shard_set_args  # this folder: the random shard set's flags
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
from megatron.core.datasets.indexed_dataset import DType, IndexedDataset
from megatron.core.datasets.utils import Split

from megatron_ixt.data.dataset import IXTGPTDataset, IXTGPTDatasetConfig
from megatron_ixt.data.shards import text_store_path
from megatron_ixt.tokenizer import build_tokenizer
from tests.helpers.token_shards import write_token_shard_set


def make_shard_set(prefix: str, args, tokenizer) -> None:
    params = {k: getattr(args, k) for k in ("num_documents", "mean_text_tokens", "mean_prefix_tokens", "annotated")}
    stamp = prefix + "_bench.json"
    if os.path.exists(stamp) and json.load(open(stamp)) == params:
        print(f"reusing shard set {prefix} ({args.num_documents} documents)")
        return
    t0 = time.time()
    rng = np.random.default_rng(0)
    dtype = DType.optimal_dtype(tokenizer.vocab_size)
    n = args.num_documents
    text_lengths = rng.integers(args.mean_text_tokens // 4, args.mean_text_tokens * 7 // 4, n) + 1
    text = rng.integers(0, tokenizer.vocab_size - 1, int(text_lengths.sum()), dtype=dtype)
    text[np.cumsum(text_lengths) - 1] = tokenizer.eod
    tokens, lengths = {"text": text}, {"text": text_lengths}
    annotated = rng.random(n) < args.annotated
    for kind, mean in (("critique", args.mean_prefix_tokens), ("quality", 8)):
        lengths[kind] = np.where(annotated, rng.integers(mean // 2, mean * 3 // 2, n) + 1, 0)
        tokens[kind] = rng.integers(0, tokenizer.vocab_size - 1, int(lengths[kind].sum()), dtype=dtype)
    first = np.argmax(annotated)  # steering prefixes: those of the first annotated document
    steering = {kind: tokens[kind][:lengths[kind][first]] for kind in ("critique", "quality")}
    write_token_shard_set(prefix, tokens, lengths=lengths, vocab_size=tokenizer.eod, steering=steering)
    json.dump(params, open(stamp, "w"))
    print(f"wrote shard set {prefix}: {n} documents, {len(text) / 1e6:.1f}M text tokens, "
          f"{annotated.mean():.0%} annotated, in {time.time() - t0:.1f} s")


def build_seconds(cls, config, path, cache):
    """CPU seconds to build ``cls``'s indices for one epoch of the store into an empty cache."""
    shutil.rmtree(cache, ignore_errors=True)
    text = IndexedDataset(path)
    indices = np.arange(len(text), dtype=np.int32)
    t0 = time.process_time()
    cls(text, path, indices, None, Split.train, config)
    return time.process_time() - t0


def samples_per_second(dataset, ids) -> float:
    """``__getitem__`` calls per CPU second over ``ids``."""
    t0 = time.process_time()
    for i in ids:
        dataset[int(i)]
    return len(ids) / (time.process_time() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="bench_out/dataset",
                        help="directory for the generated shard set and index caches")
    add_shard_set_args(parser, num_documents=1_000_000, mean_text_tokens=300, annotated=0.7)
    parser.add_argument("--seq-length", type=int, default=2048, help="sample length in tokens")
    parser.add_argument("--samples", type=int, default=2000, help="__getitem__ calls per dataset and round")
    parser.add_argument("--repeats", type=int, default=5, help="timing rounds (best is reported)")
    args = parser.parse_args()
    logging.getLogger("megatron").setLevel(logging.WARNING)

    os.makedirs(args.workdir, exist_ok=True)
    tokenizer = build_tokenizer(tokenizer_type="NullTokenizer", vocab_size=32000)
    prefix = os.path.join(args.workdir, "bench")
    make_shard_set(prefix, args, tokenizer)
    path = text_store_path(prefix)

    common = dict(random_seed=1234, sequence_length=args.seq_length, tokenizer=tokenizer, split="100,0,0",
                  reset_position_ids=False, reset_attention_mask=False, eod_mask_loss=False,
                  create_attention_mask=False)
    arms = {
        "GPTDataset": (GPTDataset, GPTDatasetConfig),
        "IXT critique": (IXTGPTDataset, lambda **kw: IXTGPTDatasetConfig(prefix_kind="critique", **kw)),
        "IXT critique+dropout": (IXTGPTDataset, lambda **kw: IXTGPTDatasetConfig(
            prefix_kind="critique", prefix_dropout=0.1, prefix_loss="mask", **kw)),
    }
    configs = {name: make_config(path_to_cache=os.path.join(args.workdir, "cache", str(i)), **common)
               for i, (name, (_, make_config)) in enumerate(arms.items())}
    build_s = {name: [] for name in arms}
    rate = {name: [] for name in arms}
    for _ in range(args.repeats):
        for name, (cls, _) in arms.items():
            build_s[name].append(build_seconds(cls, configs[name], path, configs[name].path_to_cache))
    datasets = {name: cls(IndexedDataset(path), path, np.arange(args.num_documents, dtype=np.int32), None,
                          Split.train, configs[name]) for name, (cls, _) in arms.items()}  # cache hits
    for _ in range(args.repeats):
        for name, dataset in datasets.items():
            ids = np.random.default_rng(len(rate[name])).integers(0, len(dataset), args.samples)
            rate[name].append(samples_per_second(dataset, ids))
    results = {name: (min(build_s[name]), max(rate[name]), len(datasets[name])) for name in arms}

    base_build, base_rate, _ = results["GPTDataset"]
    print(f"\n{args.num_documents} documents, seq_length {args.seq_length}, {args.samples} random samples per "
          f"round; best of {args.repeats} rounds; CPU time")
    print(f"{'dataset':<22}{'samples':>10}{'build s':>10}{'build x':>10}{'samples/s':>12}{'rate x':>9}")
    for name, (seconds, per_second, n) in results.items():
        print(f"{name:<22}{n:>10}{seconds:>10.2f}{seconds / base_build:>10.2f}{per_second:>12.0f}"
              f"{per_second / base_rate:>9.2f}")
    print("targets: build x <= 2.0, rate x >= 0.8 (vs GPTDataset)")


if __name__ == "__main__":
    main()
