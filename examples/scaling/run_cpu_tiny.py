"""The CPU scaling sweep end to end: data, ``launch examples/scaling/cpu_tiny.yaml``, ``fit``.

One command from the repository root (sized for under 45 minutes on 2 idle cores; rerunning it
resumes, finished runs are skipped)::

    python examples/scaling/run_cpu_tiny.py

1. Data (skipped when present), through the project's own CLIs as in examples/demo/run_demo.py:
   ``python -m ixt_demo.synthetic`` (examples/demo) writes column-addition worked solutions of which ``--flaw-share``
   carry a SYSTEMATIC flaw (the carry is noted but never added); ``python -m annotate run
   --backend verifier`` (with ``--import ixt_demo.verifier``) annotates them; a SentencePiece tokenizer is trained on them; and
   ``tools/preprocess_ixt.py`` writes the training shard set. The held-out set is a second synthetic
   corpus of CORRECT documents only (``--flaw-share 0 --noise-share 0``, another seed), annotated and
   preprocessed the same way: every arm is judged on the same correct tokens.
2. ``python -m megatron_ixt.scaling launch examples/scaling/cpu_tiny.yaml``: 3 sizes x 3 token
   budgets x 2 arms (baseline ``--ixt-prefix-kind none``, ixt-quality ``--ixt-prefix-kind quality``).
3. ``python -m megatron_ixt.scaling fit``: baseline judged without a prefix (``none/doc_loss``),
   ixt-quality under its steering prefix (``steering/doc_loss``); table, fits and PNGs into
   ``--results`` (default ``examples/scaling/results``). The verifier judge is a program, not a
   model, so there are no annotation FLOPs to add here.
"""
from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path[:0] = [REPO, os.path.join(REPO, "examples", "demo")]

from run_demo import run, train_tokenizer  # noqa: E402  (examples/demo/run_demo.py)

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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--results", default=os.path.join(HERE, "results"), help="directory for the fitted table and PNGs")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of the fit")
    args = p.parse_args(argv)
    py = sys.executable
    os.chdir(REPO)  # the spec's paths are relative to the repository root
    print("== 1. data", flush=True)
    prepare_data(py)
    print("== 2. sweep", flush=True)
    run([py, "-m", "megatron_ixt.scaling", "launch", SPEC], os.path.join(DATA, "logs", "launch.log"))
    run([py, "-m", "megatron_ixt.scaling", "status", SPEC], os.path.join(DATA, "logs", "status.log"))
    print("== 3. fit", flush=True)
    root = os.path.join("scaling_out", "cpu_tiny", "runs")
    run([py, "-m", "megatron_ixt.scaling", "fit", "--arm", f"baseline={root}/baseline/*",
         "--arm", f"ixt-quality={root}/ixt-quality/*", "--reference", "baseline",
         "--bootstrap", str(args.bootstrap), "--output", os.path.relpath(args.results)], os.path.join(DATA, "logs", "fit.log"))
    print(open(os.path.join(args.results, "multiplier.md"), encoding="utf-8").read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
