"""Command line of ``python -m megatron_ixt.scaling``.

``fit SPEC``: the spec's arms (``ROOT/<arm>/*``), reference and downstream metrics; or, ad hoc,
``--arm NAME=GLOB[:METRIC]`` (repeatable; GLOB matches run directories holding a
``metrics.jsonl``) and ``--reference NAME``; ``--downstream TASK/METRIC`` (lm-eval scores, fitted
as error rates), ``--target-score``, optional annotation FLOPs (``--annotation-stats
NAME=GLOB --annotator-params N`` or ``--annotation-flops NAME=FLOPS``), ``--target-loss``,
``--reference-budget``, ``--shared-e``, ``--bootstrap``, ``--output DIR``.

``launch SPEC``: train (and, with an ``evaluate:`` section, score) every unfinished run of a sweep
spec (``--executor local|slurm``, ``--dry-run``); ``status SPEC``: the grid and its scores.
Exit status 0, 2 with a message naming the run, file or key on bad input; ``launch`` also 1
(some runs failed) and 75 (stopped; relaunch to resume).
"""
from __future__ import annotations

import argparse
import shlex
import sys

from megatron_ixt.cli import EXIT_USAGE, entry_point, failing_with
from megatron_ixt.scaling.fit import FitError
from megatron_ixt.scaling.points import PointError
from megatron_ixt.scaling.spec import SpecError


def _pair(text: str, flag: str):
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise argparse.ArgumentTypeError(f"{flag} expects NAME=VALUE, got {text!r}")
    return name, value


def _flops(text: str):
    name, value = _pair(text, "--annotation-flops")
    try:
        return name, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--annotation-flops {text!r}: FLOPS must be a number") from None


def _arm(text: str):
    name, spec = _pair(text, "--arm")
    pattern, sep, metric = spec.rpartition(":")
    return (name, pattern, metric) if sep and pattern else (name, spec, None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m megatron_ixt.scaling",
                                     description="Scaling-law sweeps and the IXT compute multiplier.")
    sub = parser.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit", help="fit L(C) per arm and the compute multiplier against a reference arm")
    fit.add_argument("spec", nargs="?", default=None,
                     help="sweep spec (YAML): its arms (runs under ROOT/<arm>/*), reference and the evaluate "
                          "section's downstream metrics; without it, give --arm for an ad-hoc fit")
    fit.add_argument("--root", default=None, help="with SPEC: the run root (default: the spec's 'root')")
    fit.add_argument("--arm", action="append", type=_arm, default=[], metavar="NAME=GLOB[:METRIC]",
                     help="an arm (ad-hoc fits, without SPEC): run directories matching GLOB; METRIC is a key of "
                          "the last eval record (default: none/doc_loss for --ixt-prefix-kind none, else "
                          "steering/doc_loss)")
    fit.add_argument("--reference", default=None,
                     help="the arm k is measured against (default with SPEC: its first arm trained with "
                          "--ixt-prefix-kind none)")
    fit.add_argument("--downstream", action="append", default=None, metavar="TASK/METRIC[,FILTER]",
                     help="also fit this lm-eval score (a rate in [0, 1], e.g. gsm8k/exact_match) read from each "
                          "run's RUN/lm_eval results (default with SPEC: the evaluate section's metrics)")
    fit.add_argument("--target-score", type=float, nargs="+", default=None,
                     help="downstream scores at which to report k (default: 5 spread over the observed range)")
    fit.add_argument("--annotation-stats", action="append", default=[], type=lambda t: _pair(t, "--annotation-stats"),
                     metavar="NAME=GLOB", help="annotate *.stats.json files of arm NAME's corpus; their "
                                               "prompt+completion tokens x 2 x --annotator-params are added to "
                                               "its compute")
    fit.add_argument("--annotator-params", type=float, default=None,
                     help="parameters of the annotating (reward) model, for --annotation-stats")
    fit.add_argument("--annotation-flops", action="append", default=[], type=_flops, metavar="NAME=FLOPS",
                     help="annotation FLOPs of arm NAME given directly")
    fit.add_argument("--target-loss", type=float, nargs="+", default=None,
                     help="losses at which to report k (default: 5 spread over the observed range)")
    fit.add_argument("--reference-budget", type=float, nargs="+", default=None,
                     help="reference-arm FLOPs at which to report k (default: smallest, middle, largest run)")
    fit.add_argument("--shared-e", action="store_true", help="fit one asymptote E shared by all arms")
    fit.add_argument("--frontier", action="store_true",
                     help="fit only each arm's compute-optimal envelope (runs no cheaper run beats), not every run")
    fit.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% CIs")
    fit.add_argument("--seed", type=int, default=0, help="random seed of the bootstrap")
    fit.add_argument("--output", required=True, help="directory for fits.json, multiplier.{md,csv} and the PNGs")
    for name, text in (("launch", "train every unfinished run of a sweep spec (idempotent)"),
                       ("status", "show the state of every run of a sweep spec")):
        p = sub.add_parser(name, help=text)
        p.add_argument("spec", help="sweep spec (YAML; docs/scaling.md)")
        p.add_argument("--root", default=None, help="run root (default: the spec's 'root')")
        if name == "launch":
            p.add_argument("--executor", choices=("local", "slurm"), default="local",
                           help="local: one run after another here; slurm: one job array through submitit")
            p.add_argument("--dry-run", action="store_true",
                           help="print every command (and, for slurm, the job script) without running anything")
            p.add_argument("--resubmit", action="store_true",
                           help="slurm: also submit runs recorded as submitted/running (their jobs are gone)")
        else:
            p.add_argument("--json", action="store_true", help="print the rows as JSON")
    return parser


def cmd_launch(args) -> int:
    from megatron_ixt.scaling.launch import launch_local, launch_slurm
    from megatron_ixt.scaling.spec import load_spec

    spec = load_spec(args.spec, args.root)
    if args.executor == "slurm":
        return launch_slurm(spec, dry_run=args.dry_run, resubmit=args.resubmit)
    return launch_local(spec, dry_run=args.dry_run)


def cmd_status(args) -> int:
    from megatron_ixt.scaling.launch import print_status
    from megatron_ixt.scaling.spec import load_spec

    return print_status(load_spec(args.spec, args.root), as_json=args.json)


def spec_fit_inputs(path: str, root: str | None):
    """A spec's arms as ``(name, ROOT/<arm>/*, None)``, its default reference (the first arm trained
    with ``--ixt-prefix-kind none``) and its evaluate section's downstream metrics."""
    import glob
    import os

    from megatron_ixt.scaling.downstream import default_steer
    from megatron_ixt.scaling.spec import load_spec

    spec = load_spec(path, root)
    arms = [(arm, os.path.join(glob.escape(spec.root), glob.escape(arm), "*"), None) for arm in spec.arm_flags]
    plain = [arm for arm, flags in spec.arm_flags.items() if default_steer(flags) == "none"]
    return arms, (plain[0] if plain else None), (spec.evaluate.metrics if spec.evaluate else [])


def cmd_fit(args) -> int:
    from megatron_ixt.scaling.analysis import analyze, analyze_downstream
    from megatron_ixt.scaling.points import add_annotation, annotation_tokens, frontier, read_arm
    from megatron_ixt.scaling.report import write_outputs

    if args.spec:
        if args.arm:
            raise PointError("give either a SPEC or --arm (ad-hoc fits), not both")
        arm_specs, reference, downstream = spec_fit_inputs(args.spec, args.root)
    elif not args.arm:
        raise PointError("fit needs a SPEC or at least two --arm NAME=GLOB[:METRIC]")
    else:
        arm_specs, reference, downstream = args.arm, None, []
    reference = args.reference or reference
    if reference is None:
        raise PointError("--reference is required (the arm k is measured against)")
    downstream = downstream if args.downstream is None else args.downstream
    arms = {}
    for name, pattern, metric in arm_specs:
        if name in arms:
            raise PointError(f"--arm {name!r} given twice")
        arms[name] = read_arm(name, pattern, metric)
    for name, pattern in args.annotation_stats:
        if name not in arms:
            raise PointError(f"--annotation-stats {name}=...: no such arm ({sorted(arms)})")
        if not args.annotator_params:
            raise PointError("--annotation-stats needs --annotator-params")
        add_annotation(arms[name], args.annotator_params, annotation_tokens(pattern))
    for name, value in args.annotation_flops:
        if name not in arms:
            raise PointError(f"--annotation-flops {name}=...: no such arm ({sorted(arms)})")
        for p in arms[name]:
            p.annotation_flops = value
    if args.frontier:
        arms = {name: frontier(points) for name, points in arms.items()}
    analysis = analyze(arms, reference, targets=args.target_loss, budgets=args.reference_budget,
                       shared_e=args.shared_e, resamples=args.bootstrap, seed=args.seed)
    scores = [analyze_downstream(arms, metric, reference, scores=args.target_score, budgets=args.reference_budget,
                                 shared_e=args.shared_e, resamples=args.bootstrap, seed=args.seed)
              for metric in downstream]
    command = "python -m megatron_ixt.scaling " + " ".join(shlex.quote(a) for a in args.argv)
    for path in write_outputs(analysis, args.output, command, downstream=scores):
        print(path)
    for warning in analysis.result["warnings"] + [w for d in scores for w in d.result["warnings"]]:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


@entry_point
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = argv
    with failing_with(EXIT_USAGE, PointError, FitError, SpecError):
        return {"fit": cmd_fit, "launch": cmd_launch, "status": cmd_status}[args.command](args)
