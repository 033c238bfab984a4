"""Does the demo's headline hold across seeds and thread counts? ``make demo-robustness``.

Runs ``run_demo.py`` (the default configuration, ``make demo``'s) once per ``--seeds`` x
``--threads`` into ``<output>/seed<S>_threads<T>`` (a rerun resumes or reuses each), then prints one
row per run: the steered IXT arm's and the baseline's answer accuracy with 95% Wilson intervals, the
gap (steered IXT minus baseline, on held-out questions that need a carry) and the verdict, and the
spread of the gap over all runs. The table also goes to ``<output>/robustness.md``.

Thread counts and CPUs can change the float summation order (on the 2-core machine of the README,
1 and 2 threads gave bit-identical losses); on a machine with fewer CPUs than 2 x threads the arms
train one after the other.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import run_demo  # this folder (a script's folder is on sys.path)
from demo_report import beats

STEERED, BASELINE = "ixt steered to quality 5", "baseline"


def gap_row(name: str, summary: dict) -> str:
    """A markdown row: run, steered IXT and baseline accuracy [95% CI], gap, verdict."""
    s, b = summary["results"][STEERED], summary["results"][BASELINE]
    cell = lambda r: f"{r['accuracy']:.2f} [{r['accuracy_ci'][0]:.2f}, {r['accuracy_ci'][1]:.2f}]"  # noqa: E731
    relation = "beats" if beats(summary["results"], STEERED, BASELINE) else "does NOT beat"
    return f"| {name} | {cell(s)} | {cell(b)} | {s['accuracy'] - b['accuracy']:+.2f} | {relation} |"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--output", default="demo_robustness", help="directory of the runs and robustness.md")
    p.add_argument("--seeds", type=int, nargs="+", default=[1234, 7, 3], help="training seeds (--seed of run_demo.py)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                   help="torch threads per training process (--threads of run_demo.py)")
    args, demo_args = p.parse_known_args(argv)
    gaps, rows = [], ["| run | IXT steered to quality 5 | baseline | gap | verdict |", "|---|---|---|---|---|"]
    for seed in args.seeds:
        for threads in args.threads:
            name = f"seed{seed}_threads{threads}"
            out = os.path.join(args.output, name)
            print(f"==== {name}", flush=True)
            run_demo.main(["--output", out, "--seed", str(seed), "--threads", str(threads), *demo_args])
            with open(os.path.join(out, "summary.json"), encoding="utf-8") as f:
                summary = json.load(f)
            gaps.append(summary["results"][STEERED]["accuracy"] - summary["results"][BASELINE]["accuracy"])
            rows.append(gap_row(name, summary))
    rows += ["", f"gap (steered IXT minus baseline accuracy) over {len(gaps)} runs: min {min(gaps):+.2f}, "
                 f"max {max(gaps):+.2f}, mean {sum(gaps) / len(gaps):+.2f}"]
    table = "\n".join(rows)
    print("\n" + table)
    with open(os.path.join(args.output, "robustness.md"), "w", encoding="utf-8") as f:
        f.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
