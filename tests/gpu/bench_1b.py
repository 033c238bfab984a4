"""Lent-GPU throughput check: a ~1.1B Llama-style model, bf16, seq 4096, local spec (no TE).

Model: 16 layers, hidden 2048, 16 heads (head dim 128), 8 query groups (GQA), SwiGLU FFN 8192,
RMSNorm, RoPE, untied embeddings, vocab 32000 (NullTokenizer ids over random-token IXT shards with
critique prefixes: the IXT arm's data path). Runs ``python -m megatron_ixt.pretrain`` on one GPU for
``--iters`` iterations (micro-batch 2, global batch 16 = 131k tokens per iteration), then prints the
median tokens/s, model TFLOP/s and MFU (Megatron's FLOPs formula, peak from the GPU table) of the
logged iterations after the first ``--warmup``, and writes them to ``$OUT/gpu_result.json``.

    bash tests/gpu/run.sh          # installs the megatron-core wheel from .whl/, then runs this
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

from bench_train import make_shard_set  # noqa: E402

VOCAB = 31999  # + EOD = 32000 ids


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default=os.environ.get("OUT", "gpu_out"))
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--micro-batch-size", type=int, default=2)
    parser.add_argument("--global-batch-size", type=int, default=16)
    parser.add_argument("--num-layers", type=int, default=16)
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more pretrain flags")
    args = parser.parse_args()
    work = os.environ.get("GPU_WORK", "/tmp/ixt_gpu")
    os.makedirs(work, exist_ok=True)
    os.makedirs(args.output, exist_ok=True)

    t0 = time.time()
    tokens_needed = args.iters * args.global_batch_size * 4096
    data = argparse.Namespace(num_documents=max(2000, tokens_needed // 800 * 2), mean_text_tokens=1000,
                              mean_prefix_tokens=80, annotated=0.5)
    data_path = make_shard_set(os.path.join(work, "random"), data, vocab=VOCAB)
    print(f"data ready in {time.time() - t0:.0f} s: {data_path}", flush=True)

    metrics = os.path.join(args.output, "gpu_metrics.jsonl")
    if os.path.exists(metrics):
        os.remove(metrics)
    cmd = [sys.executable, "-m", "megatron_ixt.pretrain",
           "--tokenizer-type", "NullTokenizer", "--vocab-size", str(VOCAB),
           "--data-path", data_path, "--split", "100,0,0", "--data-cache-path", os.path.join(work, "cache"),
           "--ixt-prefix-kind", "critique",
           "--num-layers", str(args.num_layers), "--hidden-size", "2048", "--ffn-hidden-size", "8192",
           "--num-attention-heads", "16", "--num-query-groups", "8", "--seq-length", "4096",
           "--transformer-impl", "local", "--bf16",
           "--micro-batch-size", str(args.micro_batch_size), "--global-batch-size", str(args.global_batch_size),
           "--train-iters", str(args.iters), "--lr", "3e-4", "--min-lr", "3e-5", "--lr-warmup-iters", "5",
           "--log-interval", "1", "--eval-iters", "0", "--metrics-file", metrics, *args.extra]
    env = dict(os.environ, CUDA_DEVICE_MAX_CONNECTIONS="1", PYTHONUNBUFFERED="1",
               PYTORCH_CUDA_ALLOC_CONF="expandable_segments:True")
    proc = subprocess.run(cmd, env=env)
    if proc.returncode != 0:
        print(f"pretrain exited {proc.returncode}", file=sys.stderr)
        return proc.returncode

    records = [json.loads(line) for line in open(metrics)]
    train = [r for r in records if r["kind"] == "train" and r["iteration"] > args.warmup]
    header = next(r for r in records if r["kind"] == "header")
    import torch

    result = {
        "device": torch.cuda.get_device_name(),
        "params_note": "16 x (12.6M attention + 50.3M SwiGLU MLP) + 2 x 65.5M embeddings = 1.14B",
        "iterations_measured": len(train),
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in train),
        "tflops_per_device": statistics.median(r["tflops_per_device"] for r in train),
        "mfu": statistics.median(r["mfu"] for r in train) if train[0]["mfu"] is not None else None,
        "final_loss": train[-1]["loss"],
        "config": header["config"]["model"],
    }
    with open(os.path.join(args.output, "gpu_result.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({k: v for k, v in result.items() if k != "config"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
