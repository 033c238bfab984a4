"""Benchmark: batched KV-cache generation (``megatron_ixt.generate``) against the old no-cache loop, CPU.

One process, one randomly initialised model of the demo's shape (examples/demo/run_demo.py
``MODEL_ARGS``: 4 layers, hidden 128, seq 256; NullTokenizer with 512 ids): ``--prompts`` prompts of
16-64 random tokens, ``--new-tokens`` greedy tokens each. The old loop (``greedy``: one prompt at a
time, the whole sequence re-run per token, on the megatron model) and the new path (``generate``:
the in-memory Hugging Face export through transformers, ``--batch-size`` prompts at a time, KV
cache) decode the same prompts; both stop at EOD, and their outputs are compared. Tokens/s counts
generated tokens, in wall time and in process CPU time (this machine is shared). Target: >= 10x.

    make bench-generate        # ~3 minutes on 2 cores
"""
from __future__ import annotations

import argparse
import time

import torch
from run_demo import MODEL_ARGS  # examples/demo (on the Makefile's PYTHONPATH)

from megatron_ixt.distributed import init_distributed, set_seed
from megatron_ixt.export.hf import to_hf_model
from megatron_ixt.generate import generate, greedy
from megatron_ixt.model import model_from_config, padded_vocab_size, transformer_config
from megatron_ixt.tokenizer import build_tokenizer
from megatron_ixt.training.config import parse_args

VOCAB = 511  # NullTokenizer ids 0..510, EOD 511


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=256, help="number of prompts")
    parser.add_argument("--new-tokens", type=int, default=48, help="greedy tokens per prompt")
    parser.add_argument("--batch-size", type=int, default=64, help="prompts per batch of the new path")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's; on a shared machine 1 avoids "
                             "threads spinning against other processes)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = parse_args(["--tokenizer-type", "NullTokenizer", "--vocab-size", str(VOCAB), "--train-iters", "1",
                      "--data-path", "unused", *MODEL_ARGS])
    cfg.train.use_cpu_initialization = True
    init_distributed(backend="gloo")
    set_seed(cfg.train.seed)
    tokenizer = build_tokenizer(cfg.tokenizer)
    model = model_from_config(cfg, transformer_config(cfg),
                              padded_vocab_size(tokenizer.vocab_size, cfg.model.make_vocab_size_divisible_by, 1)).eval()
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, VOCAB, (int(torch.randint(16, 65, (1,), generator=g)),), generator=g).tolist()
               for _ in range(args.prompts)]
    eod, limit = tokenizer.eod, cfg.model.max_position_embeddings
    print(f"model: {cfg.model.num_layers} layers, hidden {cfg.model.hidden_size}, {len(prompts)} prompts x "
          f"{args.new_tokens} new tokens, torch threads {torch.get_num_threads()}", flush=True)

    hf = to_hf_model(model, cfg, transformer_config(cfg), tokenizer.vocab_size, eod)
    new, new_wall, new_cpu = timed(lambda: generate(hf, prompts, args.new_tokens, eod, batch_size=args.batch_size))
    old, old_wall, old_cpu = timed(lambda: [greedy(model, p, args.new_tokens, eod, limit, torch.device("cpu"),
                                                   tokenizer.vocab_size) for p in prompts])
    tokens = sum(len(o) for o in old)
    same = sum(a == b for a, b in zip(old, new))
    print(f"\n{'loop':<34} {'tokens':>7} {'wall s':>8} {'tok/s':>9} {'cpu s':>8} {'tok/cpu-s':>10}")
    for name, out, wall, cpu in (("old: no cache, one prompt", old, old_wall, old_cpu),
                                 (f"new: KV cache, batch {args.batch_size}", new, new_wall, new_cpu)):
        n = sum(len(o) for o in out)
        print(f"{name:<34} {n:>7} {wall:>8.2f} {n / wall:>9.1f} {cpu:>8.2f} {n / cpu:>10.1f}")
    print(f"\nspeed-up (wall): {old_wall / new_wall:.1f}x   (cpu): {old_cpu / new_cpu:.1f}x   target >= 10x")
    print(f"identical outputs: {same}/{len(prompts)} prompts ({tokens} tokens from the old loop)")


if __name__ == "__main__":
    main()
