"""Benchmark: the training stall of a checkpoint save, sync against ``--async-save``, side by side.

One process, one model (``Trainer`` on the random-token shard set of bench_train.py), rounds of three
blocks of ``--block`` train steps each, in rotating order: no save, a sync save after the block's
first step, an async save after it (megatron-core's AsyncCallsQueue, finalized as the training loop
does: a non-blocking check before each step, a blocking wait at the block's end). The stall of a save
is its block's wall time minus the median no-save block; the save call itself (what the step that
saves waits for) is timed too. On CPU the async writer competes with training for the same cores;
on a GPU it only shares host memory bandwidth.

    python benchmarks/bench_save.py                  # ~3 minutes on 2 cores
    python benchmarks/bench_save.py --hidden-size 1024 --num-layers 8   # bigger checkpoints
"""
from __future__ import annotations

import argparse
import os
import shutil
import time

import numpy as np
import torch
import torch.distributed as dist
from bench_train import VOCAB, add_shard_set_args, make_shard_set
from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue

from megatron_ixt.training.config import parse_args
from megatron_ixt.training.trainer import Trainer


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def measure(data_path: str, args) -> dict:
    save = os.path.join(args.output, "ckpt")
    shutil.rmtree(save, ignore_errors=True)
    steps = args.rounds * 3 * args.block + args.warmup
    cfg = parse_args(["--tokenizer-type", "NullTokenizer", "--vocab-size", str(VOCAB), "--data-path", data_path,
                      "--split", "100,0,0", "--data-cache-path", os.path.join(args.output, "cache"),
                      "--num-layers", str(args.num_layers), "--hidden-size", str(args.hidden_size),
                      "--num-attention-heads", "8", "--seq-length", str(args.seq_length),
                      "--micro-batch-size", "4", "--global-batch-size", "8", "--train-iters", str(steps),
                      "--lr", "1e-4", "--eval-iters", "0", "--save", save, "--ckpt-keep-last", "2"]
                     + (["--bf16"] if torch.cuda.is_available() else []),
                     cuda=torch.cuda.is_available())
    trainer = Trainer(cfg)
    stream = trainer._stream(trainer.train_ds, 0)
    queue = AsyncCallsQueue()

    def step():
        if queue.get_num_unfinalized_calls():
            queue.maybe_finalize_async_calls(blocking=False)
        trainer.train_step(stream)
        trainer.iteration += 1

    for _ in range(args.warmup):
        step()
    blocks = {"none": [], "sync": [], "async": []}
    calls = {"sync": [], "async": []}
    for r in range(args.rounds):
        order = list(blocks)[r % 3:] + list(blocks)[:r % 3]
        for mode in order:
            _sync()
            start = time.perf_counter()
            for i in range(args.block):
                step()
                if i == 0 and mode != "none":
                    trainer.async_saves = queue if mode == "async" else None
                    call = time.perf_counter()
                    trainer.save()
                    _sync()
                    calls[mode].append(time.perf_counter() - call)
            queue.maybe_finalize_async_calls(blocking=True)
            _sync()
            blocks[mode].append(time.perf_counter() - start)
    queue.close()
    return {"blocks": blocks, "calls": calls,
            "bytes": sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(save) for f in fs) / 2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default="bench_out/save", help="directory for the shard set, caches, checkpoints")
    parser.add_argument("--num-layers", type=int, default=4, help="transformer layers")
    parser.add_argument("--hidden-size", type=int, default=512, help="hidden size (8 heads)")
    parser.add_argument("--seq-length", type=int, default=256, help="sample length in tokens")
    parser.add_argument("--rounds", type=int, default=4, help="rounds of (no save, sync, async) blocks")
    parser.add_argument("--block", type=int, default=6, help="train steps per block")
    parser.add_argument("--warmup", type=int, default=3, help="train steps before timing")
    add_shard_set_args(parser, num_documents=2000)
    args = parser.parse_args()
    os.makedirs(args.output, exist_ok=True)
    result = measure(make_shard_set(os.path.join(args.output, "random"), args), args)
    blocks, calls = result["blocks"], result["calls"]
    base = float(np.median(blocks["none"]))
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"\n{device}: {args.rounds} rounds of {args.block}-step blocks, "
          f"checkpoint ~{result['bytes'] / 2**20:.0f} MiB, "
          f"median step {base / args.block * 1e3:.1f} ms (no-save blocks)")
    print(f"  {'':6s} {'save call (ms)':>15s} {'stall per save (ms)':>20s}")
    stall = {}
    for mode in ("sync", "async"):
        stall[mode] = float(np.median(blocks[mode])) - base
        print(f"  {mode:6s} {np.median(calls[mode]) * 1e3:15.1f} {stall[mode] * 1e3:20.1f}")
    print(f"  stall async / sync: {stall['async'] / stall['sync']:.2f}" if stall["sync"] > 0 else "")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
