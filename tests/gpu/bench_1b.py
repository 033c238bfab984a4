"""Lent-GPU check: a ~1.1B Llama-style model, bf16, seq 4096, trained by our trainer and by Megatron-LM's.

Model: 16 layers, hidden 2048, 16 heads (head dim 128), 8 query groups (GQA), SwiGLU FFN 8192,
RMSNorm, RoPE, untied embeddings, vocab 32000 (NullTokenizer ids over random-token IXT shards with
critique prefixes: the IXT arm's data path). Two runs on one GPU, on the same shard set with the same
seed and schedule (micro-batch 2, global batch 16 = 131k tokens per iteration, ``--iters`` iterations):

- ``ixt``: ``python -m megatron_ixt.pretrain``, local spec (SDPA attention);
- ``megatron-lm``: ``python -m megatron_ixt.megatron_lm`` (``megatron.training.pretrain``), the TE spec when
  transformer_engine imports (else its local spec, said in the result), the distributed optimizer;
  NullTokenizer ``--vocab-size 32000``: Megatron-LM counts EOD inside it (docs/dataset.md).

For each it prints the median tokens/s, model TFLOP/s (each trainer's own count: the same Megatron-LM
formula) and MFU (peak from our GPU table) of the iterations after the first ``--warmup``, and the final
``loss`` / ``doc_loss`` / ``prefix_loss``; all go to ``$OUT/gpu_result.json`` (our trainer's numbers at the
top level, Megatron-LM's under ``megatron_lm``), the logs to ``$OUT/gpu_metrics.jsonl`` and
``$OUT/megatron_lm.log``.

    bash tests/gpu/run.sh          # installs the megatron-core wheel from .whl/, then runs this
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))
sys.path.insert(0, REPO)

from bench_train import make_shard_set  # noqa: E402

VOCAB = 31999  # + EOD = 32000 ids
SEQ = 4096
SEED = 1234
# one Megatron-LM log line: " iteration 12/ 30 | ... | elapsed time per iteration (ms): 812.3 |
# throughput per GPU (TFLOP/s/GPU): 402.1 | ... | lm loss: 1.0E+01 | doc_loss: ... | prefix_loss: ... |"
MEGATRON_LM_LOG = re.compile(r"iteration\s+(\d+)/\s*\d+ \|.*?elapsed time per iteration \(ms\): ([\d.]+) \|"
                             r"(?:.*?throughput per GPU \(TFLOP/s/GPU\): ([\d.]+) \|)?.*?lm loss: ([\d.E+-]+) \|"
                             r".*?doc_loss: ([\d.E+-]+) \|.*?prefix_loss: ([\d.E+-]+) \|")


def model_flags(args) -> list:
    """The model and schedule, in the flag names both trainers share."""
    return ["--num-layers", str(args.num_layers), "--hidden-size", "2048", "--ffn-hidden-size", "8192",
            "--num-attention-heads", "16", "--num-query-groups", "8", "--seq-length", str(SEQ), "--bf16",
            "--micro-batch-size", str(args.micro_batch_size), "--global-batch-size", str(args.global_batch_size),
            "--train-iters", str(args.iters), "--lr", "3e-4", "--min-lr", "3e-5", "--lr-warmup-iters", "5",
            "--seed", str(SEED), "--log-interval", "1", "--eval-iters", "0"]


def run_ixt(args, data_path: str, work: str, env: dict) -> dict:
    """Our trainer; its metrics JSONL -> the result."""
    metrics = os.path.join(args.output, "gpu_metrics.jsonl")
    if os.path.exists(metrics):
        os.remove(metrics)
    cmd = [sys.executable, "-m", "megatron_ixt.pretrain",
           "--tokenizer-type", "NullTokenizer", "--vocab-size", str(VOCAB),
           "--data-path", data_path, "--split", "100,0,0", "--data-cache-path", os.path.join(work, "cache"),
           "--ixt-prefix-kind", "critique", "--transformer-impl", "local", *model_flags(args),
           "--metrics-file", metrics, *args.extra]
    proc = subprocess.run(cmd, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"megatron_ixt.pretrain exited {proc.returncode}")
    records = [json.loads(line) for line in open(metrics)]
    train = [r for r in records if r["kind"] == "train" and r["iteration"] > args.warmup]
    header = next(r for r in records if r["kind"] == "header")
    return {
        "params_note": "16 x (12.6M attention + 50.3M SwiGLU MLP) + 2 x 65.5M embeddings = 1.14B",
        "iterations_measured": len(train),
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in train),
        "tflops_per_device": statistics.median(r["tflops_per_device"] for r in train),
        "mfu": statistics.median(r["mfu"] for r in train) if train[0]["mfu"] is not None else None,
        "final_loss": train[-1]["loss"], "final_doc_loss": train[-1]["doc_loss"],
        "final_prefix_loss": train[-1]["prefix_loss"],
        "config": header["config"]["model"],
    }


def megatron_lm_flags(args, data_path: str, work: str, impl: str) -> list:
    """``megatron_ixt.megatron_lm``'s flags for the same model, data, seed and schedule as :func:`run_ixt`."""
    # without TE (or apex) Megatron-LM's fused kernels are unavailable: its unfused local paths
    unfused = [] if impl == "transformer_engine" else [
        "--no-gradient-accumulation-fusion", "--no-persist-layer-norm", "--no-masked-softmax-fusion",
        "--no-rope-fusion"]
    return ["--tokenizer-type", "NullTokenizer", "--vocab-size", str(VOCAB + 1),
            "--data-path", data_path, "--split", "100,0,0", "--data-cache-path", os.path.join(work, "cache"),
            "--ixt-prefix-kind", "critique", *model_flags(args),
            "--group-query-attention", "--max-position-embeddings", str(SEQ), "--normalization", "RMSNorm",
            "--swiglu", "--position-embedding-type", "rope", "--untie-embeddings-and-output-weights",
            "--disable-bias-linear", "--attention-dropout", "0", "--hidden-dropout", "0",
            "--init-method-std", "0.02", "--weight-decay", "0.1", "--adam-beta1", "0.9", "--adam-beta2", "0.95",
            "--clip-grad", "1.0", "--lr-decay-style", "cosine", "--calculate-per-token-loss",
            "--transformer-impl", impl, *unfused, "--use-distributed-optimizer", "--log-throughput",
            "--eval-interval", str(args.iters), *args.extra]


def run_megatron_lm(args, data_path: str, work: str, env: dict, peak) -> dict:
    """Megatron-LM's loop through our entry point; its stdout log -> the result."""
    from megatron_ixt.distributed import free_port

    impl = "transformer_engine" if importlib.util.find_spec("transformer_engine") else "local"
    cmd = [sys.executable, "-m", "megatron_ixt.megatron_lm", *megatron_lm_flags(args, data_path, work, impl)]
    log_path = os.path.join(args.output, "megatron_lm.log")
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, env=dict(env, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()),
                                            RANK="0", WORLD_SIZE="1", LOCAL_RANK="0"),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        log.write(proc.stdout)
    print(proc.stdout[-3000:], flush=True)
    if proc.returncode != 0:
        raise RuntimeError(f"megatron_ixt.megatron_lm exited {proc.returncode} (log: {log_path})")
    rows = [m.groups() for m in MEGATRON_LM_LOG.finditer(proc.stdout)]
    measured = [r for r in rows if int(r[0]) > args.warmup]
    if not measured:
        raise RuntimeError(f"no Megatron-LM iteration lines after the warmup in {log_path}")
    tokens = args.global_batch_size * SEQ
    tflops = statistics.median(float(r[2]) for r in measured) if measured[0][2] else None
    return {
        "transformer_impl": impl, "iterations_measured": len(measured),
        "tokens_per_s": statistics.median(tokens / (float(r[1]) / 1000) for r in measured),
        "tflops_per_device": tflops, "mfu": tflops / peak if tflops is not None and peak else None,
        "final_loss": float(rows[-1][3]), "final_doc_loss": float(rows[-1][4]),
        "final_prefix_loss": float(rows[-1][5]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default=os.environ.get("OUT", "gpu_out"))
    parser.add_argument("--trainer", choices=("both", "ixt", "megatron-lm"), default="both",
                        help="which trainer(s) to run")
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--micro-batch-size", type=int, default=2)
    parser.add_argument("--global-batch-size", type=int, default=16)
    parser.add_argument("--num-layers", type=int, default=16)
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more flags for both trainers")
    args = parser.parse_args()
    work = os.environ.get("GPU_WORK", "/tmp/ixt_gpu")
    os.makedirs(work, exist_ok=True)
    os.makedirs(args.output, exist_ok=True)

    t0 = time.time()
    tokens_needed = args.iters * args.global_batch_size * SEQ
    data = argparse.Namespace(num_documents=max(2000, tokens_needed // 800 * 2), mean_text_tokens=1000,
                              mean_prefix_tokens=80, annotated=0.5)
    data_path = make_shard_set(os.path.join(work, "random"), data, vocab=VOCAB)
    print(f"data ready in {time.time() - t0:.0f} s: {data_path}", flush=True)

    import torch

    from megatron_ixt.training.flops import peak_tflops

    env = dict(os.environ, CUDA_DEVICE_MAX_CONNECTIONS="1", PYTHONUNBUFFERED="1",
               PYTORCH_CUDA_ALLOC_CONF="expandable_segments:True")
    result = {"device": torch.cuda.get_device_name()}
    status = 0
    for name, run in (("ixt", lambda: result.update(run_ixt(args, data_path, work, env))),
                      ("megatron-lm", lambda: result.update(megatron_lm=run_megatron_lm(
                          args, data_path, work, env, peak_tflops(result["device"]))))):
        if args.trainer in ("both", name):
            try:
                run()
            except RuntimeError as e:  # the other trainer's numbers still count
                print(e, file=sys.stderr)
                result[f"{name}_error"] = str(e)
                status = 1
    with open(os.path.join(args.output, "gpu_result.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({k: v for k, v in result.items() if k != "config"}, indent=1))
    return status


if __name__ == "__main__":
    sys.exit(main())
