"""Benchmark: training throughput of the IXT arm vs the baseline arm, same model, CPU.

Writes (once, reused) a random-token IXT shard set: ``--num-documents`` documents of ~``--mean-text-tokens``
tokens, ``--annotated`` of them with a critique prefix of ~``--mean-prefix-tokens``. Then trains the same
model on it with ``--ixt-prefix-kind critique`` (IXT) and ``--ixt-prefix-kind none`` (baseline, plain
GPTDataset samples). One process, one model: train steps alternate between the IXT and the baseline
micro-batch stream (order swapped every step), so both arms see the same machine load; the first
``--warmup`` steps are dropped. Tokens/s counts all sequence tokens (prefix included: both arms
process the same tensor shapes), in wall time and in process CPU time (this machine is shared).
The data path should cost no measurable throughput (target ratio >= 0.97).

    python benchmarks/bench_train.py        # ~2 minutes on 2 cores
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import numpy as np
import torch.distributed as dist

from megatron_ixt.data.shards import text_store_path
from megatron_ixt.training.config import parse_args
from megatron_ixt.training.data import build_datasets
from megatron_ixt.training.trainer import Trainer
from tests.helpers.token_shards import write_token_shard_set

VOCAB = 4095  # NullTokenizer ids 0..4094, EOD 4095


def add_shard_set_args(parser, *, num_documents: int, mean_text_tokens: int = 400, annotated: float = 0.5) -> None:
    """The flags of :func:`make_shard_set`'s random-token shard set (``bench_dataset`` makes its own
    set from the same flags)."""
    parser.add_argument("--num-documents", type=int, default=num_documents,
                        help="documents in the random-token shard set")
    parser.add_argument("--mean-text-tokens", type=int, default=mean_text_tokens, help="mean document length in tokens")
    parser.add_argument("--mean-prefix-tokens", type=int, default=60, help="mean critique-prefix length in tokens")
    parser.add_argument("--annotated", type=float, default=annotated, help="share of documents that have prefixes")


def make_shard_set(prefix: str, args, vocab: int = VOCAB) -> str:
    """Random-token IXT shard set ``prefix`` (NullTokenizer ids ``1..vocab-1``, EOD ``vocab``), written
    once and reused while ``args`` (num_documents, mean_*_tokens, annotated) stay the same."""
    params = {k: getattr(args, k) for k in ("num_documents", "mean_text_tokens", "mean_prefix_tokens", "annotated")}
    params["vocab"] = vocab
    stamp = prefix + "_bench.json"
    if os.path.exists(stamp) and json.load(open(stamp)) == params:
        return text_store_path(prefix)
    rng = np.random.default_rng(0)
    steering = list(rng.integers(1, vocab, args.mean_prefix_tokens))
    documents = {"text": [], "critique": [], "quality": []}
    for _ in range(args.num_documents):
        text = np.append(rng.integers(1, vocab, max(1, int(rng.exponential(args.mean_text_tokens)))), vocab)
        annotated = rng.random() < args.annotated
        documents["text"].append(text)
        documents["critique"].append(rng.integers(1, vocab, int(rng.integers(1, 2 * args.mean_prefix_tokens)))
                                     if annotated else [])
        documents["quality"].append(rng.integers(1, vocab, 3) if annotated else [])
    write_token_shard_set(prefix, documents, vocab_size=vocab, steering={"critique": steering, "quality": [1, 2, 3]})
    json.dump(params, open(stamp, "w"))
    return text_store_path(prefix)


def measure(data_path: str, args) -> dict:
    """Interleaved train steps of one model on the IXT and the baseline stream; seconds per step."""
    cfg = parse_args(["--tokenizer-type", "NullTokenizer", "--vocab-size", str(VOCAB), "--data-path", data_path,
                      "--split", "100,0,0", "--data-cache-path", os.path.join(args.output, "cache"),
                      "--ixt-prefix-kind", "critique", "--num-layers", "2", "--hidden-size", "128",
                      "--num-attention-heads", "4", "--num-query-groups", "2", "--seq-length", str(args.seq_length),
                      "--micro-batch-size", "4", "--global-batch-size", "8", "--train-iters", str(args.iters),
                      "--lr", "1e-3", "--eval-iters", "0"])
    trainer = Trainer(cfg)
    baseline_cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, ixt_prefix_kind="none"))
    streams = {"IXT": trainer._stream(trainer.train_ds, 0),
               "baseline": trainer._stream(build_datasets(baseline_cfg, trainer.tokenizer)[0], 0)}
    times = {arm: {"wall": [], "cpu": []} for arm in streams}
    for step in range(args.iters):
        for arm in (("IXT", "baseline") if step % 2 else ("baseline", "IXT")):
            wall, cpu = time.perf_counter(), time.process_time()
            trainer.train_step(streams[arm])
            if step >= args.warmup:
                times[arm]["wall"].append(time.perf_counter() - wall)
                times[arm]["cpu"].append(time.process_time() - cpu)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default="bench_out/train", help="directory for the generated shard set and caches")
    add_shard_set_args(parser, num_documents=4000)
    parser.add_argument("--seq-length", type=int, default=256, help="sample length in tokens")
    parser.add_argument("--iters", type=int, default=24, help="train steps per arm (interleaved)")
    parser.add_argument("--warmup", type=int, default=2, help="first steps per arm left out of the timing")
    args = parser.parse_args()
    os.makedirs(args.output, exist_ok=True)
    data_path = make_shard_set(os.path.join(args.output, "random"), args)
    times = measure(data_path, args)
    tokens = 8 * args.seq_length
    print(f"\nsame model, {args.iters - args.warmup} interleaved steps per arm, {tokens} tokens per step "
          f"(median step time):")
    rate = {}
    for arm, t in times.items():
        rate[arm] = {k: tokens / float(np.median(v)) for k, v in t.items()}
        print(f"  {arm:9s} {rate[arm]['wall']:9.0f} tokens/s wall   {rate[arm]['cpu']:9.0f} tokens per CPU-s")
    print(f"  ratio IXT / baseline: {rate['IXT']['wall'] / rate['baseline']['wall']:.3f} wall, "
          f"{rate['IXT']['cpu'] / rate['baseline']['cpu']:.3f} CPU   (target >= 0.97)")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
