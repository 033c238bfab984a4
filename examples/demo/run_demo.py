"""The whole IXT pipeline on CPU, end to end, in a few minutes: ``make demo``.

Data: synthetic column-addition worked solutions (``ixt_demo.synthetic``, this folder); a share of them carries a
SYSTEMATIC flaw (the carry is noted but never added), so the flawed answer is a deterministic
function of the question. Steps, each through the project's real command-line entry points:

1. ``python -m ixt_demo.synthetic``        raw JSONL (training corpus; held-out correct documents)
2. ``python -m annotate --import ixt_demo.verifier run --backend verifier``
                                           annotated JSONL (critique + scores per document)
3. a SentencePiece BPE tokenizer (digits split) trained on the raw text
4. ``tools/preprocess_ixt.py``             IXT shard set (text store + aligned prefix stores)
5. ``python -m megatron_ixt.pretrain`` twice, side by side: the baseline arm (``--ixt-prefix-kind
   none``) and the IXT arm (``--ixt-prefix-kind quality`` with the last 10% of the steps without
   prefixes, ``--ixt-prefix-cooldown-fraction 0.1``: the recipe ``cooldown 0.1``) on the same
   tokens, model and seed, each evaluating its document loss on the held-out correct documents
   during training. ``--ablations`` (``make demo-ablations``) also trains the other IXT recipes of
   :data:`RECIPES` on the same tokens.
6. ``python -m megatron_ixt.generate``     greedy answers to held-out questions from each IXT arm:
   steered to the top quality level (``--steer quality``), unconditioned, with guided steering
   (``--guidance-scale G --negative-steer none``, G in :data:`GUIDANCE_SCALES`) and steered to the
   lowest level (``--steer quality:1``, rendered from the shard set's recorded template)

It prints a table (answer accuracy and the share of answers that reproduce the systematic flaw
per arm and conditioning, with 95% Wilson intervals), the recipe table (per IXT recipe: steered,
unconditioned and guided accuracy, held-out loss per conditioning) and a one-line verdict, and writes
everything to ``--output``: ``summary.json`` (``results``: conditioning -> rates and counts;
``recipes``: the recipe table's rows), ``report.md`` with ``loss.png`` and ``answers.png``.
Rerunning into the same ``--output`` reuses the tokenizer and continues each arm from its checkpoint
(a finished arm is not retrained): ``make demo-ablations`` after ``make demo`` trains only the
other recipes.
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

HERE = os.path.dirname(os.path.abspath(__file__))  # ixt_demo: the demo's corpus generator and judge
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, REPO)

from demo_report import (  # noqa: E402  (this folder)
    recipe_table,
    recipe_table_rows,
    verdict,
    wilson_interval,
    write_report,
)
from ixt_demo.synthetic import SynthConfig, make_document  # noqa: E402  (this folder)

COMMANDS: list[str] = []  # every command the demo ran, in order (for the report)


def model_args(num_layers: int, seq_length: int) -> list[str]:
    """The demo's small Llama-style model (pretrain flags). At its defaults (4 layers, 256-token
    sequences) it trains at a few thousand tokens/s on 2 CPU cores."""
    return ["--num-layers", str(num_layers), "--hidden-size", "128", "--ffn-hidden-size", "384",
            "--num-attention-heads", "4", "--seq-length", str(seq_length),
            "--max-position-embeddings", str(seq_length), "--normalization", "RMSNorm", "--swiglu",
            "--position-embedding-type", "rope", "--untie-embeddings-and-output-weights"]


# Sequences per optimizer step and process. Small batches, many steps: at 16 sequences (and 1,200
# steps) learning to copy the question's digits came late and only on some machines; at 8 (and
# 2,000 steps: 1.7x the updates for 0.83x the tokens) it came a few hundred steps before the end
# on every seed tried (README, "What varies").
MICRO_BATCH_SIZE = 8

# IXT training recipes: name -> the IXT arm's pretrain flags beyond ``--ixt-prefix-kind quality``.
RECIPES = {
    "cooldown 0.1": ["--ixt-prefix-cooldown-fraction", "0.1"],  # MeCo: the last 10% of steps without prefixes
    "no cooldown": [],  # every document prefixed, every step
    "dropout 0.1": ["--ixt-prefix-dropout", "0.1"],  # Fan et al.: 10% of documents without prefix
}
DEFAULT_RECIPE = "cooldown 0.1"  # the IXT arm of `make demo` (README, "What the recipes do")
GUIDANCE_SCALES = (1.5, 3.0)  # guided steering: logits = uncond + G (cond - uncond)


def recipe_arm(recipe: str) -> str:
    """The arm (and conditioning-name stem) of an IXT recipe: ``ixt`` for :data:`DEFAULT_RECIPE`,
    ``ixt <recipe>`` for the others."""
    return "ixt" if recipe == DEFAULT_RECIPE else f"ixt {recipe}"


def slug(name: str) -> str:
    """A file name for an arm or conditioning: ``ixt no cooldown`` -> ``ixt_no_cooldown``."""
    return re.sub(r"\W+", "_", name)


def ixt_conditions(arm: str) -> dict[str, list[str]]:
    """Conditioning name -> ``megatron_ixt.generate`` steering flags, for one IXT arm."""
    return {f"{arm} steered to quality 5": ["--steer", "quality"],
            f"{arm} unconditioned": ["--steer", "none"],
            **{f"{arm} guided G={g:g}": ["--steer", "quality", "--guidance-scale", str(g), "--negative-steer", "none"]
               for g in GUIDANCE_SCALES},
            f"{arm} steered to quality 1": ["--steer", "quality:1"]}


def _start(cmd: list, log_path: str, env: dict) -> subprocess.Popen:
    print(f"$ {' '.join(cmd)}", flush=True)
    COMMANDS.append(" ".join(cmd))
    log = open(log_path, "w", encoding="utf-8")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                            env={**os.environ, **env,
                                 "PYTHONPATH": os.pathsep.join([REPO, HERE, os.environ.get("PYTHONPATH", "")])})
    proc.log_path, proc.log = log_path, log
    return proc


def _finish(proc: subprocess.Popen) -> None:
    proc.wait()
    proc.log.close()
    with open(proc.log_path, encoding="utf-8") as f:
        for line in f:
            if line.startswith(("[train]", "[eval]", "error")):
                print("  " + line.rstrip()[:160], flush=True)
    if proc.returncode != 0:
        sys.exit(f"step failed (exit {proc.returncode}); see {proc.log_path}")


def run_steps(steps: list, env: dict | None = None, at_once: int | None = None) -> None:
    """Run ``[(cmd, log_path), ...]``, ``at_once`` at a time side by side (default: all); a failure
    stops the demo. Each step's output goes to its log; its [train]/[eval]/error lines are echoed
    when it ends."""
    at_once = at_once or len(steps)
    for first in range(0, len(steps), at_once):
        start = time.time()
        procs = [_start(cmd, log_path, env or {}) for cmd, log_path in steps[first:first + at_once]]
        for proc in procs:
            _finish(proc)
        print(f"  done in {time.time() - start:.0f} s (logs: {', '.join(p.log_path for p in procs)})", flush=True)


def run(cmd: list, log_path: str) -> None:
    """Run one pipeline step, its output in ``log_path``; a failure stops the demo."""
    run_steps([(cmd, log_path)])


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


def parse_answer(text: str) -> int | None:
    """The first ``Answer: N`` of a generation, or None."""
    found = re.findall(r"Answer:\s*(\d+)", text)
    return int(found[0]) if found else None


def score_answers(generations: list, questions: list) -> dict:
    """Per conditioning: counts and shares (95% Wilson intervals) of correct answers and of answers
    equal to the systematic-flaw answer, and the share of written carries that the next column then
    adds (the mode the model follows, whatever its digit-copying errors)."""
    correct = flawed = carries = carries_added = 0
    for gen, q in zip(generations, questions):
        gen["answer"] = parse_answer(gen["text"])
        correct += gen["answer"] == q["correct"]
        flawed += gen["answer"] == q["flawed"]
        steps = STEP.findall(gen["text"])
        for prev, step in zip(steps, steps[1:]):
            if prev[5]:  # the previous column wrote "carry N"
                carries += 1
                carries_added += step[2] == prev[5]
    n = len(questions)
    return {"questions": n, "correct": correct, "flawed": flawed,
            "accuracy": correct / n, "accuracy_ci": wilson_interval(correct, n),
            "flawed_answers": flawed / n, "flawed_answers_ci": wilson_interval(flawed, n),
            "carries_added": carries_added / carries if carries else None}


def resume_args(checkpoint_dir: str) -> list[str]:
    """``--load`` when ``checkpoint_dir`` holds a checkpoint: a rerun of the demo into the same
    ``--output`` continues an interrupted arm (or skips a finished one) instead of starting over."""
    tracker = os.path.join(checkpoint_dir, "latest_checkpointed_iteration.txt")
    return ["--load", checkpoint_dir] if os.path.exists(tracker) else []


def machine_description(threads: int) -> str:
    import platform

    import torch

    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
            f"{threads} torch thread(s) per training process, Python {platform.python_version()}, "
            f"torch {torch.__version__}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--output", default="demo_out", help="directory for every artefact")
    p.add_argument("--num-docs", type=int, default=6000, help="training documents in the synthetic corpus")
    p.add_argument("--heldout-docs", type=int, default=300,
                   help="held-out correct documents on which the document loss is evaluated during training")
    p.add_argument("--flaw-share", type=float, default=0.4, help="share of documents with the systematic carry slip")
    p.add_argument("--train-iters", type=int, default=2000,
                   help=f"optimizer steps per arm, of {MICRO_BATCH_SIZE} sequences of --seq-length tokens per process")
    p.add_argument("--num-layers", type=int, default=4,
                   help="transformer layers of the model (pretrain's --num-layers)")
    p.add_argument("--seq-length", type=int, default=256,
                   help="tokens per training sequence (pretrain's --seq-length); a document is about 60 tokens")
    p.add_argument("--eval-points", type=int, default=6, help="held-out loss evaluations over training")
    p.add_argument("--eval-questions", type=int, default=240, help="held-out questions, each needing a carry")
    p.add_argument("--seed", type=int, default=1234, help="training seed of both arms")
    p.add_argument("--nproc", type=int, default=1, help="torchrun processes per training run (data parallel)")
    p.add_argument("--ablations", action="store_true",
                   help=f"also train the other IXT recipes ({', '.join(r for r in RECIPES if r != DEFAULT_RECIPE)}) "
                        "on the same tokens; the recipe table then has a row per recipe")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per training process (default: the CPUs split between the two arms, "
                        "which train side by side; arms that would need more CPUs side by side train one "
                        "after the other)")
    args = p.parse_args(argv)
    start_time = time.time()

    out = os.path.abspath(args.output)
    for sub in ("raw", "annotated", "tokenizer", "shards", "ckpt", "logs", "eval"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    py = sys.executable
    synth = SynthConfig(num_docs=args.num_docs, min_digits=2, max_digits=2, flaw_share=args.flaw_share,
                        noise_share=0.03, terse_share=0.05, verbose_share=0.1, seed=1234)
    heldout = SynthConfig(**{**synth.__dict__, "num_docs": args.heldout_docs, "flaw_share": 0.0,
                             "noise_share": 0.0, "seed": 4321})
    log = lambda name: os.path.join(out, "logs", name + ".log")  # noqa: E731

    print("== 1. synthetic corpus (training) and held-out correct documents", flush=True)
    raw = {name: os.path.join(out, "raw", name + ".jsonl") for name in ("arith", "heldout")}
    run_steps([([py, "-m", "ixt_demo.synthetic", "--output", raw[name]] +
                [f"--{k.replace('_', '-')}={v}" for k, v in cfg.__dict__.items()], log("synth_" + name))
               for name, cfg in (("arith", synth), ("heldout", heldout))])

    print("== 2. annotate with the verifier judge", flush=True)
    run([py, "-m", "annotate", "--import", "ixt_demo.verifier", "run", "--backend", "verifier",
         "--input", raw["arith"], raw["heldout"],
         "--output", os.path.join(out, "annotated")], log("annotate"))
    run([py, "-m", "annotate", "status", os.path.join(out, "annotated")], log("annotate_status"))

    print("== 3. tokenizer", flush=True)
    annotated = {name: os.path.join(out, "annotated", name + ".jsonl") for name in raw}
    tokenizer = os.path.join(out, "tokenizer", "arith.model")
    if os.path.exists(tokenizer):  # a rerun keeps the tokenizer its checkpoints were trained with
        print(f"  reusing {tokenizer}", flush=True)
    else:
        train_tokenizer(annotated["arith"], tokenizer[:-len(".model")], vocab_size=512)

    print("== 4. preprocess into IXT shard sets", flush=True)
    shards = {name: os.path.join(out, "shards", name) for name in raw}
    run_steps([([py, "tools/preprocess_ixt.py", "--input", annotated[name], "--output-prefix", shards[name],
                 "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", tokenizer, "--append-eod",
                 "--workers", "1"], log("preprocess_" + name)) for name in raw])
    run([py, "tools/inspect_ixt.py", shards["arith"], "--tokenizer-model", tokenizer, "--document", "0", "1"],
        log("inspect"))

    print("== 5. train the baseline and the IXT arm(s) side by side (same tokens, model, seed)", flush=True)
    cpus = os.cpu_count() or 2
    threads = args.threads or max(1, cpus // (2 * args.nproc))
    recipes = list(RECIPES) if args.ablations else [DEFAULT_RECIPE]
    recipes.sort(key=lambda r: r != DEFAULT_RECIPE)
    arms = {"baseline": ["--ixt-prefix-kind", "none"],
            **{recipe_arm(r): ["--ixt-prefix-kind", "quality", *RECIPES[r]] for r in recipes}}
    ckpt = {arm: os.path.join(out, "ckpt", slug(arm)) for arm in arms}
    launcher = ([py, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}"]
                if args.nproc > 1 else [py])
    eval_interval = max(1, args.train_iters // max(1, args.eval_points))
    run_steps([(launcher + ["-m", "megatron_ixt.pretrain", *model_args(args.num_layers, args.seq_length), *arm_args,
                            "--train-data-path", shards["arith"] + "_text_document",
                            "--valid-data-path", shards["heldout"] + "_text_document",
                            "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", tokenizer,
                            "--micro-batch-size", str(MICRO_BATCH_SIZE),
                            "--global-batch-size", str(MICRO_BATCH_SIZE * args.nproc),
                            "--train-iters", str(args.train_iters), "--lr", "3e-3", "--min-lr", "3e-4",
                            "--lr-warmup-iters", str(max(1, min(100, args.train_iters // 10))),
                            "--lr-decay-style", "cosine", "--weight-decay", "0.01",
                            "--clip-grad", "1.0", "--log-interval", "50", "--eval-interval", str(eval_interval),
                            "--eval-iters", "8", "--save", ckpt[arm],
                            "--seed", str(args.seed), *resume_args(ckpt[arm])],
                 log("train_" + slug(arm))) for arm, arm_args in arms.items()],
              env={"OMP_NUM_THREADS": str(threads)}, at_once=2 if 2 * threads * args.nproc <= cpus else 1)

    print("== 6. steered answers on held-out questions", flush=True)
    questions = held_out_questions(args.eval_questions, synth, seed=99)
    prompts = os.path.join(out, "eval", "prompts.jsonl")
    with open(prompts, "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"prompt": f"Q: {q['a']} + {q['b']} = ?\n"}) + "\n" for q in questions)
    conditions = {"baseline": ("baseline", ["--steer", "none"]),
                  **{name: (recipe_arm(r), steer_args) for r in recipes
                     for name, steer_args in ixt_conditions(recipe_arm(r)).items()}}
    gen_paths = {name: os.path.join(out, "eval", slug(name) + ".jsonl") for name in conditions}
    run_steps([([py, "-m", "megatron_ixt.generate", "--load", ckpt[arm],
                 "--shard-set", shards["arith"], "--prompt-file", prompts, "--output", gen_paths[name],
                 "--max-new-tokens", "48", *steer_args], log("generate_" + slug(name)))
               for name, (arm, steer_args) in conditions.items()],
              env={"OMP_NUM_THREADS": "1"}, at_once=cpus)  # one thread each, one per CPU
    results, generations = {}, {}
    for name, gen_path in gen_paths.items():
        with open(gen_path, encoding="utf-8") as f:
            generations[name] = [json.loads(line) for line in f]
        results[name] = score_answers(generations[name], questions)

    metrics = {arm: os.path.join(ckpt[arm], "metrics.jsonl") for arm in arms}
    recipe_rows = recipe_table_rows(results, metrics, {r: recipe_arm(r) for r in recipes}, GUIDANCE_SCALES)
    summary = {"args": vars(args), "results": results, "recipes": recipe_rows,
               "verdict": verdict(results, "ixt steered to quality 5", "baseline"),
               "machine": machine_description(threads), "wall_time_s": time.time() - start_time,
               "commands": COMMANDS}
    with open(os.path.join(out, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    report = write_report(out, summary, generations, questions, metrics)
    print(f"\n{'arm / conditioning':<40} {'accuracy (95% CI)':>20} {'flawed answers':>15} {'carries added':>14}")
    for name, r in results.items():
        added = "-" if r["carries_added"] is None else f"{r['carries_added']:.2f}"
        acc = f"{r['accuracy']:.2f} [{r['accuracy_ci'][0]:.2f},{r['accuracy_ci'][1]:.2f}]"
        print(f"{name:<40} {acc:>20} {r['flawed_answers']:>15.2f} {added:>14}")
    print("\n" + "\n".join(recipe_table(recipe_rows)))
    print(f"\n{summary['verdict']}")
    print(f"\nreport: {report}; artefacts and logs in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
