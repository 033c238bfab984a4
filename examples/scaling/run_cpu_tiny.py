"""The CPU scaling sweeps end to end: data, ``launch SPEC``, ``fit SPEC``.

One command from the repository root (each sized for under 45 minutes on 2 idle cores; rerunning it
resumes, finished runs and scored runs are skipped)::

    python examples/scaling/run_cpu_tiny.py          # cpu_tiny.yaml: held-out loss (make scaling-cpu)
    python examples/scaling/run_cpu_tiny.py --spec examples/scaling/cpu_downstream.yaml \
        --results examples/scaling/results_downstream   # + the carry task's accuracy (make scaling-downstream)

1. Data (skipped when present), through the project's own CLIs as in examples/demo/run_demo.py:
   ``python -m ixt_demo.synthetic`` (examples/demo) writes column-addition worked solutions of which ``--flaw-share``
   carry a SYSTEMATIC flaw (the carry is noted but never added); ``python -m annotate run
   --backend verifier`` (with ``--import ixt_demo.verifier``) annotates them; a SentencePiece tokenizer is
   trained on them; and
   ``tools/preprocess_ixt.py`` writes the training shard set. The held-out set is a second synthetic
   corpus of CORRECT documents only (``--flaw-share 0 --noise-share 0``, another seed), annotated and
   preprocessed the same way: every arm is judged on the same correct tokens.
   ``carry_add.jsonl``: the carry questions of the local lm-eval task examples/scaling/tasks/carry_add.yaml.
2. ``python -m megatron_ixt.scaling launch SPEC``: 3 sizes x 3 token budgets x 2 arms (baseline
   ``--ixt-prefix-kind none``, ixt-quality ``--ixt-prefix-kind quality``, in cpu_downstream.yaml with
   the demo's cooldown recipe); with cpu_downstream.yaml each finished run is also exported and
   scored on the carry task.
3. ``python -m megatron_ixt.scaling fit SPEC``: baseline judged without a prefix (``none/doc_loss``),
   ixt-quality under its steering prefix (``steering/doc_loss``), and the spec's downstream metrics;
   table, fits and PNGs into ``--results``. The verifier judge is a program, not a model, so there
   are no annotation FLOPs to add here.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path[:0] = [REPO, os.path.join(REPO, "examples", "demo")]

from ixt_demo.synthetic import SynthConfig  # noqa: E402  (examples/demo)
from run_demo import held_out_questions, run, train_tokenizer  # noqa: E402  (examples/demo/run_demo.py)

SPEC = os.path.join(HERE, "cpu_tiny.yaml")
DATA = os.path.join(REPO, "scaling_out", "cpu_tiny", "data")  # the paths cpu_tiny.yaml names
CORPORA = {  # name -> ixt_demo.synthetic flags
    "train": {"num_docs": 12000, "min_digits": 2, "max_digits": 3, "flaw_share": 0.4, "noise_share": 0.03,
              "terse_share": 0.05, "verbose_share": 0.1, "seed": 1234},
    "heldout": {"num_docs": 1500, "min_digits": 2, "max_digits": 3, "flaw_share": 0.0, "noise_share": 0.0,
                "terse_share": 0.05, "verbose_share": 0.1, "seed": 99},
}


def prepare_data(py: str, data: str = DATA, corpora: dict = CORPORA) -> None:
    """Write ``data/{train,heldout}_*`` shard sets and ``data/tokenizer.model`` (steps already done
    are skipped); ``corpora``: name -> ``ixt_demo.synthetic`` flags."""
    annotated = lambda name: os.path.join(data, "annotated", name, name + ".jsonl")  # noqa: E731
    logs = os.path.join(data, "logs")
    os.makedirs(logs, exist_ok=True)
    log = lambda name: os.path.join(logs, name + ".log")  # noqa: E731
    for name, flags in corpora.items():
        raw = os.path.join(data, "raw", name + ".jsonl")
        if not os.path.exists(raw):
            os.makedirs(os.path.dirname(raw), exist_ok=True)
            run([py, "-m", "ixt_demo.synthetic", "--output", raw] +
                [f"--{k.replace('_', '-')}={v}" for k, v in flags.items()], log("synth_" + name))
        if not os.path.exists(annotated(name)):
            run([py, "-m", "annotate", "--import", "ixt_demo.verifier", "run", "--backend", "verifier", "--input", raw,
                 "--output", os.path.dirname(annotated(name))], log("annotate_" + name))
    tokenizer = os.path.join(data, "tokenizer.model")
    if not os.path.exists(tokenizer):
        train_tokenizer(annotated("train"), os.path.join(data, "tokenizer"), vocab_size=512)
    for name in corpora:
        if not os.path.exists(os.path.join(data, name + "_text_document.idx")):
            run([py, "tools/preprocess_ixt.py", "--input", annotated(name),
                 "--output-prefix", os.path.join(data, name), "--tokenizer-type", "SentencePieceTokenizer",
                 "--tokenizer-model", tokenizer, "--append-eod", "--workers", "2"], log("preprocess_" + name))


QUESTIONS = {"n": 200, "seed": 7}  # the carry task: held-out questions, each needing a carry


def write_questions(data: str = DATA, n: int = QUESTIONS["n"], seed: int = QUESTIONS["seed"]) -> str:
    """``data/carry_add.jsonl`` (skipped when present): ``n`` questions ``{a, b, correct, flawed}``
    drawn like the training corpus' (2-3 digit addends), each needing a carry."""
    path = os.path.join(data, "carry_add.jsonl")
    if not os.path.exists(path):
        flags = CORPORA["train"]
        synth = SynthConfig(min_digits=flags["min_digits"], max_digits=flags["max_digits"])
        os.makedirs(data, exist_ok=True)
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(q) + "\n" for q in held_out_questions(n, synth, seed))
        os.replace(path + ".tmp", path)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--spec", default=SPEC, help="the sweep spec (cpu_tiny.yaml or cpu_downstream.yaml)")
    p.add_argument("--results", default=os.path.join(HERE, "results"), help="directory for the fitted table and PNGs")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of the fit")
    args = p.parse_args(argv)
    py = sys.executable
    os.chdir(REPO)  # the spec's paths are relative to the repository root
    print("== 1. data", flush=True)
    prepare_data(py)
    write_questions()
    spec = os.path.relpath(args.spec)
    name = os.path.splitext(os.path.basename(spec))[0]
    print("== 2. sweep", flush=True)
    run([py, "-m", "megatron_ixt.scaling", "launch", spec], os.path.join(DATA, "logs", f"launch_{name}.log"))
    run([py, "-m", "megatron_ixt.scaling", "status", spec], os.path.join(DATA, "logs", f"status_{name}.log"))
    print("== 3. fit", flush=True)
    run([py, "-m", "megatron_ixt.scaling", "fit", spec, "--bootstrap", str(args.bootstrap),
         "--output", os.path.relpath(args.results)], os.path.join(DATA, "logs", f"fit_{name}.log"))
    print(open(os.path.join(args.results, "multiplier.md"), encoding="utf-8").read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
