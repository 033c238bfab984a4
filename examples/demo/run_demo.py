"""The whole IXT pipeline on CPU, end to end, in a few minutes: ``make demo``.

Data: synthetic column-addition worked solutions (``annotate synth``); a share of them carries a
SYSTEMATIC flaw (the carry is noted but never added), so the flawed answer is a deterministic
function of the question. Steps, each through the project's real command-line entry points:

1. ``python -m annotate synth``            raw JSONL
2. ``python -m annotate run --backend verifier``   annotated JSONL (critique + scores per document)
3. a SentencePiece BPE tokenizer (digits split) trained on the raw text
4. ``tools/preprocess_ixt.py``             IXT shard set (text store + aligned prefix stores)
5. ``python -m megatron_ixt.pretrain`` twice: the baseline arm (``--ixt-prefix-kind none``) and
   the IXT arm (``--ixt-prefix-kind quality``) on the same tokens, model and seed
6. ``python -m megatron_ixt.generate``     greedy answers to held-out questions, the IXT model
   steered to the top quality level, left unconditioned and steered to the lowest level

It prints a table (answer accuracy and the share of answers that reproduce the systematic flaw
per arm and conditioning) and writes everything to ``--output`` (``summary.json`` at the end).
A tiny model trained for a few CPU-minutes will not reach the accuracy of a real run; what the
demo shows is the mechanism: the steering prefix moves the IXT model between the two modes.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from annotate.synthetic import SynthConfig, make_document  # noqa: E402

MODEL_ARGS = [  # small Llama-style model: trains at a few thousand tokens/s on 2 CPU cores
    "--num-layers", "4", "--hidden-size", "128", "--ffn-hidden-size", "384",
    "--num-attention-heads", "4", "--seq-length", "256", "--max-position-embeddings", "256",
    "--normalization", "RMSNorm", "--swiglu", "--position-embedding-type", "rope",
    "--untie-embeddings-and-output-weights",
]


def run(cmd: list, log_path: str) -> None:
    """Run one pipeline step, teeing its output to ``log_path``; a failure stops the demo."""
    print(f"$ {' '.join(cmd)}", flush=True)
    start = time.time()
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                                env={**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")})
        for line in proc.stdout:
            log.write(line)
            log.flush()
            if line.startswith(("[train]", "[eval]", "error")):
                print("  " + line.rstrip()[:160], flush=True)
    if proc.wait() != 0:
        sys.exit(f"step failed (exit {proc.returncode}); see {log_path}")
    print(f"  done in {time.time() - start:.0f} s (log: {log_path})", flush=True)


def train_tokenizer(annotated_jsonl: str, model_prefix: str, vocab_size: int) -> str:
    """SentencePiece BPE over the documents, their critiques and the prefix templates' wording
    (so prefixes tokenize without unknown pieces); digits are split so numbers are digit sequences."""
    import glob
    import io

    import sentencepiece

    from megatron_ixt.data.prefix_kinds import QUALITY_LABELS, STEERING_CRITIQUE
    from megatron_ixt.data.templates import TEMPLATE_DIR

    lines = [STEERING_CRITIQUE, *QUALITY_LABELS.values()]
    for path in glob.glob(os.path.join(TEMPLATE_DIR, "*.txt")):
        with open(path, encoding="utf-8") as f:
            lines += f.read().splitlines()
    with open(annotated_jsonl, encoding="utf-8") as f:
        for rec in map(json.loads, f):
            lines += rec["text"].split("\n") + [rec.get("ixt", {}).get("critique") or ""]
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(line for line in lines if line), model_writer=model, vocab_size=vocab_size,
        model_type="bpe", split_digits=True, character_coverage=1.0, hard_vocab_limit=False,
        num_threads=1, minloglevel=2)
    with open(model_prefix + ".model", "wb") as f:
        f.write(model.getvalue())
    return model_prefix + ".model"


def held_out_questions(n: int, cfg: SynthConfig, seed: int) -> list:
    """``n`` fresh questions whose correct sum needs a carry (where the flawed mode differs)."""
    rng, out = random.Random(seed), []
    while len(out) < n:
        doc = make_document(len(out), SynthConfig(**{**cfg.__dict__, "flaw_share": 1.0, "noise_share": 0.0}), rng)
        syn = doc["synthetic"]
        out.append({"a": syn["a"], "b": syn["b"], "correct": syn["a"] + syn["b"], "flawed": syn["stated"]})
    return out


STEP = re.compile(r"[A-Z][\w-]*: (\d+) \+ (\d+)(?: \+ (\d+))? = (\d+)\. Write (\d+)(?:, carry (\d+))?\.")


def score_answers(generations: list, questions: list) -> dict:
    """Per conditioning: the share of correct answers, of answers equal to the systematic-flaw
    answer, and of written carries that the next column then adds (the mode the model follows,
    whatever its digit-copying errors)."""
    correct = flawed = carries = carries_added = 0
    for gen, q in zip(generations, questions):
        found = re.findall(r"Answer:\s*(\d+)", gen["text"])
        answer = int(found[0]) if found else None
        correct += answer == q["correct"]
        flawed += answer == q["flawed"]
        steps = STEP.findall(gen["text"])
        for prev, step in zip(steps, steps[1:]):
            if prev[5]:  # the previous column wrote "carry N"
                carries += 1
                carries_added += step[2] == prev[5]
    return {"accuracy": correct / len(questions), "flawed_answers": flawed / len(questions),
            "carries_added": carries_added / carries if carries else None}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--output", default="demo_out", help="directory for every artefact")
    p.add_argument("--num-docs", type=int, default=6000)
    p.add_argument("--flaw-share", type=float, default=0.4, help="share of documents with the systematic carry slip")
    p.add_argument("--train-iters", type=int, default=600)
    p.add_argument("--eval-questions", type=int, default=60)
    p.add_argument("--nproc", type=int, default=1, help="torchrun processes per training run (data parallel)")
    args = p.parse_args(argv)

    out = os.path.abspath(args.output)
    for sub in ("raw", "annotated", "tokenizer", "shards", "ckpt", "logs", "eval"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    py = sys.executable
    synth = SynthConfig(num_docs=args.num_docs, min_digits=2, max_digits=2, flaw_share=args.flaw_share,
                        noise_share=0.03, terse_share=0.05, verbose_share=0.1, seed=1234)
    log = lambda name: os.path.join(out, "logs", name + ".log")  # noqa: E731

    print("== 1. synthetic corpus", flush=True)
    raw = os.path.join(out, "raw", "arith.jsonl")
    run([py, "-m", "annotate", "synth", "--output", raw] +
        [f"--{k.replace('_', '-')}={v}" for k, v in synth.__dict__.items()], log("synth"))

    print("== 2. annotate with the verifier judge", flush=True)
    run([py, "-m", "annotate", "run", "--backend", "verifier", "--input", raw,
         "--output", os.path.join(out, "annotated")], log("annotate"))
    run([py, "-m", "annotate", "status", os.path.join(out, "annotated")], log("annotate_status"))

    print("== 3. tokenizer", flush=True)
    annotated = os.path.join(out, "annotated", "arith.jsonl")
    tokenizer = train_tokenizer(annotated, os.path.join(out, "tokenizer", "arith"), vocab_size=512)

    print("== 4. preprocess into an IXT shard set", flush=True)
    shards = os.path.join(out, "shards", "arith")
    run([py, "tools/preprocess_ixt.py", "--input", annotated,
         "--output-prefix", shards, "--tokenizer-type", "SentencePieceTokenizer",
         "--tokenizer-model", tokenizer, "--append-eod", "--workers", "2"], log("preprocess"))
    run([py, "tools/inspect_ixt.py", shards, "--tokenizer-model", tokenizer, "--document", "0", "1"], log("inspect"))

    print("== 5. train the baseline and the IXT arm (same tokens, model, seed)", flush=True)
    arms = {"baseline": ["--ixt-prefix-kind", "none"], "ixt": ["--ixt-prefix-kind", "quality"]}
    for arm, arm_args in arms.items():
        launcher = ([py, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}"]
                    if args.nproc > 1 else [py])
        run(launcher + ["-m", "megatron_ixt.pretrain", *MODEL_ARGS, *arm_args,
                        "--data-path", shards + "_text_document", "--split", "98,2,0",
                        "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", tokenizer,
                        "--micro-batch-size", "16", "--global-batch-size", str(16 * args.nproc),
                        "--train-iters", str(args.train_iters), "--lr", "3e-3", "--min-lr", "3e-4",
                        "--lr-warmup-iters", str(max(1, min(50, args.train_iters // 10))),
                        "--lr-decay-style", "cosine", "--weight-decay", "0.01",
                        "--clip-grad", "1.0", "--log-interval", "50", "--eval-interval", str(args.train_iters),
                        "--eval-iters", "5", "--save", os.path.join(out, "ckpt", arm), "--seed", "1234"],
            log("train_" + arm))

    print("== 6. steered answers on held-out questions", flush=True)
    questions = held_out_questions(args.eval_questions, synth, seed=99)
    prompts = os.path.join(out, "eval", "prompts.jsonl")
    with open(prompts, "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"prompt": f"Q: {q['a']} + {q['b']} = ?\n"}) + "\n" for q in questions)
    conditions = {"baseline": ("baseline", ["--steer", "none"]),
                  "ixt steered to quality 5": ("ixt", ["--steer", "quality"]),
                  "ixt unconditioned": ("ixt", ["--steer", "none"]),
                  "ixt steered to quality 1": ("ixt", ["--steer", "quality:1"])}
    results = {}
    for name, (arm, steer_args) in conditions.items():
        gen_path = os.path.join(out, "eval", re.sub(r"\W+", "_", name) + ".jsonl")
        run([py, "-m", "megatron_ixt.generate", "--load", os.path.join(out, "ckpt", arm), "--shard-set", shards,
             "--prompt-file", prompts, "--output", gen_path, "--max-new-tokens", "48", *steer_args],
            log("generate_" + re.sub(r"\W+", "_", name)))
        with open(gen_path, encoding="utf-8") as f:
            results[name] = score_answers([json.loads(line) for line in f], questions)

    with open(os.path.join(out, "summary.json"), "w", encoding="utf-8") as f:
        json.dump({"args": vars(args), "results": results}, f, indent=2)
    print(f"\n{'arm / conditioning':<28} {'accuracy':>9} {'flawed answers':>15} {'carries added':>14}")
    for name, r in results.items():
        added = "-" if r["carries_added"] is None else f"{r['carries_added']:.2f}"
        print(f"{name:<28} {r['accuracy']:>9.2f} {r['flawed_answers']:>15.2f} {added:>14}")
    print(f"\nartefacts and logs in {out}; summary in {os.path.join(out, 'summary.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
