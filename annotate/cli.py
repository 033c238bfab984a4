"""``python -m annotate {run,status,retry-failed,report,agreement}``: see docs/annotate.md.

Exit codes: 0 done; 1 bad arguments or input; 3 all servers down (resume by rerunning);
4 misconfigured: the server refused documents in a row alike (nothing recorded as failed; fix the
flags and rerun); 5 more than --max-failed-fraction of the run's documents failed (committed);
130/143 interrupted by SIGINT/SIGTERM (resume by rerunning).
"""
from __future__ import annotations

import argparse
import asyncio
import calendar
import json
import logging
import os
import signal
import sys
import time

from annotate.agreement import add_agreement_args, agreement_report, sample_documents
from annotate.backends import REGISTRY, AllServersDown, JudgeContext, Misconfigured, Sampling
from annotate.prompt import DEFAULT_TEMPLATE, ChatFormatter, PromptTemplate, TokenCounter
from annotate.report import add_report_args, write_report
from annotate.runner import RetryJob, RunConfig, RunJob, Runner
from annotate.store import ShardPaths, holds_annotations, shard_stem, write_json_atomic
from megatron_ixt.cli import (
    EXIT_BAD_INPUT,
    EXIT_MISCONFIGURED,
    EXIT_TOO_MANY_FAILED,
    EXIT_UNAVAILABLE,
    add_import_flag,
    entry_point,
    failing_with,
)
from megatron_ixt.data.inputs import INPUT_FORMATS, expand_inputs, input_format

log = logging.getLogger("annotate")
RUN_CONFIG = "run_config.json"
# The shared judge options saved in run_config.json (argparse dests; each backend lists its own,
# see annotate.backends.base.BackendFactory). Result flags change the annotations, so a resumed
# `run` must use the same values; operational ones are only reused as `retry-failed` defaults.
RESULT_FLAGS = ("backend", "tokenizer", "chat_template_kwargs", "max_doc_tokens", "max_new_tokens", "temperature",
                "top_p", "max_parse_retries")
OPERATIONAL_FLAGS = ("prompt_template", "concurrency", "fsync_interval", "fail_fast_window")


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def add_judge_args(p: argparse.ArgumentParser) -> None:
    """The shared judge options, then one group per registered backend with its own flags."""
    run, sampling = RunConfig(output_dir=""), Sampling()
    g = p.add_argument_group("judge")
    g.add_argument("--backend", choices=sorted(REGISTRY), default="http",
                   help="the judge; each backend's own flags are in its group below")
    g.add_argument("--prompt-template", default=DEFAULT_TEMPLATE,
                   help="rubric template file holding {{document}} once (its version is recorded in every record)")
    g.add_argument("--tokenizer", default=None,
                   help="Hugging Face tokenizer of the judge (name or local path): exact token budgets and, "
                        "for --api generate / --backend sglang, its chat template")
    g.add_argument("--chat-template-kwargs", type=_json_object, default=None,
                   help='JSON passed to the chat template, e.g. \'{"enable_thinking": true}\'')
    g.add_argument("--max-doc-tokens", type=int, default=run.max_doc_tokens,
                   help="document budget in judge tokens; longer documents keep head (2/3) and tail (1/3); 0: no cut")
    g.add_argument("--max-new-tokens", type=int, default=sampling.max_new_tokens,
                   help="most tokens the judge may write per answer, thinking included")
    g.add_argument("--temperature", type=float, default=sampling.temperature, help="the judge's sampling temperature")
    g.add_argument("--top-p", type=float, default=sampling.top_p, help="the judge's nucleus sampling threshold")
    g.add_argument("--max-parse-retries", type=int, default=run.max_parse_retries,
                   help="re-asks after an answer cut by --max-new-tokens or without a valid verdict")
    g.add_argument("--concurrency", type=int, default=run.concurrency, help="most requests in flight")
    g.add_argument("--fail-fast-window", type=int, default=run.fail_fast_window,
                   help="stop (exit 4) when this many documents in a row are refused alike by the server (an HTTP "
                        "4xx such as a wrong --api, --model or API key), recording none of them as failed; 0: record "
                        "every refusal as a failure")
    for name, factory in sorted(REGISTRY.items()):
        factory.add_args(p.add_argument_group(f"--backend {name}", factory.description))
    o = p.add_argument_group("output")
    o.add_argument("--fsync-interval", type=float, default=run.fsync_interval,
                   help="seconds between fsyncs of the output (a power loss redoes at most this much)")
    o.add_argument("--log-interval", type=float, default=None,
                   help="seconds between progress lines; default 1 on a terminal, 30 otherwise")


def backend_factory(name: str):
    """The registered factory of ``--backend name`` (a saved run_config.json may name one that is not)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown backend {name!r}; registered: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def saved_options(args) -> tuple[dict, tuple[str, ...]]:
    """``(options, result_flags)``: the judge options of ``args`` that ``run`` saves in
    run_config.json (JSON values), and the names of those a resumed ``run`` must not change."""
    factory = backend_factory(args.backend)
    result = (*RESULT_FLAGS, *factory.result_flags)
    names = (*result, *OPERATIONAL_FLAGS, *factory.operational_flags)
    missing = [name for name in names if not hasattr(args, name)]
    if missing:
        raise ValueError(f"backend {args.backend!r} saves options its add_args does not declare: {missing}")
    return {name: json.loads(json.dumps(getattr(args, name))) for name in names}, result


def load_run_config(output: str) -> dict | None:
    """``output``'s run_config.json, or None when there is none."""
    path = os.path.join(output, RUN_CONFIG)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def changed_result_flags(output: str, options: dict, result_flags, input_keys: dict | None = None) -> list[str]:
    """The result flags whose value in ``options`` differs from the one saved in ``output``'s
    run_config.json (``judge``), and with ``input_keys`` the ``--text-key``/``--id-key`` values that
    differ from its ``input_keys``, as ``--flag old -> new``; empty when ``output`` holds no
    annotation yet."""
    config = load_run_config(output)
    if config is None or not holds_annotations(output):
        return []
    compared = [("judge", options, result_flags)] + ([("input_keys", input_keys, input_keys)] if input_keys else [])
    changed = []
    for section, values, names in compared:
        before = config.get(section, {})
        changed += [f"--{name.replace('_', '-')} {before[name]!r} -> {values[name]!r}"
                    for name in names if name in before and before[name] != values[name]]
    return changed


def check_resume(output: str, options: dict, result_flags, input_keys: dict) -> None:
    """Refuse a ``run`` into ``output`` when it holds annotations made with other values of a
    result flag or of ``--text-key``/``--id-key`` (``input_keys``, as saved in its
    run_config.json): continuing would mix results."""
    changed = changed_result_flags(output, options, result_flags, input_keys)
    if changed:
        raise ValueError(f"{os.path.join(output, RUN_CONFIG)}: {output} holds annotations made with other settings "
                         f"({'; '.join(changed)}); use a new --output directory, or the same settings to continue")


def build_parser(saved_judge: dict | None = None) -> argparse.ArgumentParser:
    """The CLI; ``saved_judge`` (the judge options saved by ``run``) become the defaults of
    ``retry-failed`` and ``agreement``."""
    parser = argparse.ArgumentParser(prog="python -m annotate",
                                     description="Offline feedback annotation with a judge model.")
    parser.add_argument("--log-level", default="INFO", help="logging level: DEBUG, INFO, WARNING, ERROR")
    add_import_flag(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="annotate input shards into an output directory",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    run.add_argument("--input", nargs="+", required=True,
                     help=f"input files or globs, one shard each: {INPUT_FORMATS}, by file name; any other name is "
                          "refused")
    run.add_argument("--text-key", default="text",
                     help="the field (parquet: column) holding the document text; written as 'text'")
    run.add_argument("--id-key", default="id",
                     help="the field (column) holding the document id (e.g. FineWeb's id, DCLM's url), copied to "
                          "'id'; a record without one is identified by the hash of its text")
    run.add_argument("--output", required=True, help="output directory")
    run.add_argument("--num-shards", type=int, default=1, help="split the input files over this many tasks")
    run.add_argument("--shard-index", type=int, default=0, help="this task's index in 0..num-shards-1")
    run.add_argument("--max-failed-fraction", type=float, default=0.05,
                     help="exit 5 (after committing) when more than this share of the run's documents failed")
    add_judge_args(run)
    status = sub.add_parser("status", help="progress, failures and token counts of an output directory")
    status.add_argument("output", help="output directory of `run`")
    status.add_argument("--json", action="store_true", help="print the aggregate as JSON")
    retry = sub.add_parser("retry-failed", help="re-annotate failed records of committed shards in place",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    retry.add_argument("output", help="output directory of `run`; its run_config.json gives the judge defaults")
    retry.add_argument("--status", action="append", default=None,
                       help="only these failure statuses, e.g. failed:http (repeatable; default all)")
    retry.add_argument("--new-judge", action="store_true",
                       help="allow result flags (--api, --model, sampling...) other than run_config.json's: the "
                            "directory then mixes judges, recorded in each retried record's ixt.annotator.settings "
                            "and in the shard stats' annotators")
    add_judge_args(retry)
    report = sub.add_parser("report", help="Markdown and PNG report: score distributions, lengths, failures, "
                                           "throughput and projected cost",
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_report_args(report)
    agree = sub.add_parser("agreement", help="re-annotate a random sample with the same judge settings and report "
                                             "agreement per axis",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_agreement_args(agree)
    add_judge_args(agree)
    if saved_judge:
        retry.set_defaults(**saved_judge)
        agree.set_defaults(**saved_judge)
    return parser


def resolve_inputs(patterns: list[str]) -> list[str]:
    files = expand_inputs(patterns, error=SystemExit)
    stems = {}
    for path in files:
        input_format(path)  # refuses a file of unknown format by name
        other = stems.setdefault(shard_stem(path), path)
        if other != path:
            raise SystemExit(f"error: inputs {other!r} and {path!r} would both write {shard_stem(path)}.jsonl; "
                             "rename one")
    return files


def _run_jobs(args, jobs, judge_settings: dict | None = None) -> int | dict:
    """Run ``jobs`` with the judge of ``args``: the summary dict, or an exit code when the run stopped."""
    template = PromptTemplate.load(args.prompt_template)
    counter = TokenCounter(args.tokenizer)
    judge = JudgeContext(count=counter.count, format=ChatFormatter(counter.hf_tokenizer, args.chat_template_kwargs),
                         sampling=Sampling(args.max_new_tokens, args.temperature, args.top_p),
                         chat_template_kwargs=args.chat_template_kwargs)
    backend = backend_factory(args.backend).from_args(args, judge)
    cfg = RunConfig(output_dir=args.output, concurrency=args.concurrency, max_doc_tokens=args.max_doc_tokens,
                    max_parse_retries=args.max_parse_retries, fsync_interval=args.fsync_interval,
                    log_interval=args.log_interval, fail_fast_window=args.fail_fast_window,
                    judge_settings=judge_settings)
    runner = Runner(cfg, backend, template, counter, jobs)
    try:
        summary = asyncio.run(runner.run())
    except AllServersDown as e:
        log.error("aborting: %s", e)
        return EXIT_UNAVAILABLE
    except Misconfigured as e:
        log.error("%s", e)
        return EXIT_MISCONFIGURED
    except asyncio.CancelledError:
        log.error("interrupted; completed work is saved, rerun the same command to resume")
        return 128 + (runner.stopped_by or signal.SIGTERM)
    except KeyboardInterrupt:
        log.error("interrupted; completed work is saved, rerun the same command to resume")
        return 130
    log.info("finished: %s", json.dumps(summary))
    return summary


def cmd_run(args) -> int:
    if not 0 <= args.shard_index < args.num_shards:
        raise SystemExit(f"error: --shard-index {args.shard_index} not in 0..{args.num_shards - 1}")
    files = resolve_inputs(args.input)
    mine = files[args.shard_index::args.num_shards]
    os.makedirs(args.output, exist_ok=True)
    options, result_flags = saved_options(args)
    input_keys = {"text_key": args.text_key, "id_key": args.id_key}
    check_resume(args.output, options, result_flags, input_keys)
    write_json_atomic(os.path.join(args.output, RUN_CONFIG),
                      {"inputs": [os.path.abspath(f) for f in files], "input_keys": input_keys, "judge": options})
    log.info("task %d/%d: %d of %d input shard(s)", args.shard_index, args.num_shards, len(mine), len(files))
    jobs = [RunJob(path, ShardPaths(args.output, shard_stem(path)), args.fsync_interval, args.text_key, args.id_key)
            for path in mine]
    summary = _run_jobs(args, jobs)
    if isinstance(summary, int):
        return summary
    if summary["failed"] > args.max_failed_fraction * summary["documents"]:
        log.error("%d of %d documents failed (%s), more than --max-failed-fraction %g; they are committed as failed: "
                  "see `python -m annotate status %s`, fix the cause, then `python -m annotate retry-failed %s`",
                  summary["failed"], summary["documents"], summary["errors"] or "no server errors",
                  args.max_failed_fraction, args.output, args.output)
        return EXIT_TOO_MANY_FAILED
    return 0


def cmd_retry(args, config: dict | None) -> int:
    """Re-annotate failed records under the judge-settings rule (``--new-judge`` to change a result flag)."""
    options, result_flags = saved_options(args)
    changed = changed_result_flags(args.output, options, result_flags)
    if changed and not args.new_judge:
        raise ValueError(f"{args.output} was annotated with other settings ({'; '.join(changed)}); retrying with them "
                         "would mix judges in one directory: drop those flags, or pass --new-judge to mix them "
                         "knowingly (each retried record then names its settings)")
    jobs = []
    statuses = set(args.status) if args.status else None
    for name in sorted(os.listdir(args.output)):
        if name.endswith(".jsonl") and not name.endswith(".rejected.jsonl"):
            jobs.append(RetryJob(ShardPaths(args.output, name[: -len(".jsonl")]), args.fsync_interval, statuses))
    pending = [n for n in os.listdir(args.output) if n.endswith(".jsonl.partial")]
    if pending:
        log.warning("%d shard(s) not finished (%s...): rerun `run` to finish them first", len(pending), pending[0])
    summary = _run_jobs(args, jobs, judge_settings={k: options[k] for k in result_flags} if changed else None)
    if isinstance(summary, int):
        return summary
    if config is not None:
        if options["backend"] == config["judge"].get("backend"):  # new servers, timeouts...: reused next time
            config["judge"].update({k: v for k, v in options.items() if k not in result_flags})
        config.setdefault("retries", []).append({"judge": options, "new_judge": bool(changed),
                                                 "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        write_json_atomic(os.path.join(args.output, RUN_CONFIG), config)
    return 0


def cmd_agreement(args, config: dict | None) -> int:
    """Re-annotate a sample of ``args.output`` into its own directory, then compare."""
    if config is None:
        raise ValueError(f"{args.output}: no {RUN_CONFIG}; `agreement` needs a directory written by `run`")
    options, result_flags = saved_options(args)
    changed = changed_result_flags(args.output, options, result_flags)
    if changed:
        raise ValueError(f"agreement re-annotates with the settings of {args.output}; "
                         f"these differ: {'; '.join(changed)}")
    out = args.agreement_dir or os.path.join(args.output, "agreement")
    sample = sample_documents(args.output, out, args.sample, args.seed)
    os.makedirs(out, exist_ok=True)
    write_json_atomic(os.path.join(out, RUN_CONFIG), {"inputs": [os.path.abspath(sample)], "judge": options})
    paths = ShardPaths(out, shard_stem(sample))
    summary = _run_jobs(args, [RunJob(sample, paths, args.fsync_interval)])
    if isinstance(summary, int):
        return summary
    print(agreement_report(args.output, paths.final, args.bootstrap, args.seed))
    return 0


def collect_status(output: str) -> dict:
    """Aggregate the ``*.stats.json`` files of an output directory."""
    inputs = []
    config_path = os.path.join(output, RUN_CONFIG)
    if os.path.exists(config_path):
        with open(config_path, encoding="utf-8") as f:
            inputs = json.load(f).get("inputs", [])
    shards = {}
    for path in inputs:
        shards[shard_stem(path)] = {"shard": shard_stem(path), "state": "pending"}
    for name in sorted(os.listdir(output)):
        if name.endswith(".stats.json"):
            with open(os.path.join(output, name), encoding="utf-8") as f:
                st = json.load(f)
            paths = ShardPaths(output, st["shard"])
            if os.path.exists(paths.final):
                st["state"] = "committed"
            shards[st["shard"]] = st
    total = {"shards": len(shards), "states": {}, "documents": 0, "done": 0, "ok": 0, "failed": {}, "rejected": {},
             "tokens": {"prompt": 0, "completion": 0, "cached": 0}, "truncated": 0, "elapsed_s": 0.0}
    for st in shards.values():
        total["states"][st["state"]] = total["states"].get(st["state"], 0) + 1
        total["documents"] += st.get("documents") or 0
        for key in ("done", "ok", "truncated"):
            total[key] += st.get(key, 0)
        total["elapsed_s"] += st.get("elapsed_s", 0.0)
        for group in ("failed", "rejected"):
            for k, v in (st.get(group) or {}).items():
                total[group][k] = total[group].get(k, 0) + v
        for k in total["tokens"]:
            total["tokens"][k] += (st.get("tokens") or {}).get(k, 0)
    prompt = total["tokens"]["prompt"]
    total["tokens"]["cached_share"] = round(total["tokens"]["cached"] / prompt, 4) if prompt else 0.0
    total["docs_per_shard_s"] = round(total["done"] / total["elapsed_s"], 3) if total["elapsed_s"] else None
    return {"total": total, "shards": list(shards.values())}


def cmd_status(args) -> int:
    if not os.path.isdir(args.output):
        raise SystemExit(f"error: {args.output}: no such directory")
    report = collect_status(args.output)
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    t = report["total"]
    print(f"{args.output}: {t['shards']} shard(s) " + ", ".join(f"{n} {s}" for s, n in sorted(t["states"].items())))
    print(f"documents: {t['done']}/{t['documents']} annotated, {t['ok']} ok, "
          f"{sum(t['failed'].values())} failed, {sum(t['rejected'].values())} bad input lines, "
          f"{t['truncated']} truncated")
    for k, v in sorted(t["failed"].items()):
        print(f"  {k}: {v}")
    for k, v in sorted(t["rejected"].items()):
        print(f"  rejected {k}: {v}")
    tok = t["tokens"]
    print(f"tokens: {tok['prompt']} in ({100 * tok['cached_share']:.1f}% cached), {tok['completion']} out")
    running = [st for st in report["shards"] if st["state"] == "running" and st.get("elapsed_s")]
    if running:
        print(f"speed: {sum(st['done'] / st['elapsed_s'] for st in running):.1f} docs/s over "
              f"{len(running)} running shard(s)")
    if t["docs_per_shard_s"]:
        print(f"average: {t['docs_per_shard_s']} docs/s per shard ({t['elapsed_s']:.0f} shard-seconds)")
    for st in report["shards"]:
        line = f"  {st['shard']}: {st['state']}"
        if st["state"] == "running" and st.get("updated"):
            age = time.time() - calendar.timegm(time.strptime(st["updated"], "%Y-%m-%dT%H:%M:%SZ"))
            line += f" (last update {age:.0f}s ago)"
        if "done" in st:
            line += f", {st['done']}/{st.get('documents')} done"
            if st.get("elapsed_s"):
                line += f", {st['done'] / st['elapsed_s']:.1f} docs/s"
        print(line)
    return 0


@entry_point(plugins=True, report=log.error)
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    with failing_with(EXIT_BAD_INPUT, ValueError, RuntimeError, OSError):  # bad configuration, input or output
        if args.command == "run":
            return cmd_run(args)
        if args.command == "status":
            return cmd_status(args)
        if args.command == "report":
            print(write_report(args))
            return 0
        config = load_run_config(args.output)
        if config is not None:
            given = args
            args = build_parser(saved_judge=config["judge"]).parse_args(argv)
            for name, value in config["judge"].items():  # a repeatable flag given anew replaces the saved list
                if isinstance(value, list) and getattr(given, name, None):
                    setattr(args, name, getattr(given, name))
        if args.command == "agreement":
            return cmd_agreement(args, config)
        return cmd_retry(args, config)
