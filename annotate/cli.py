"""``python -m annotate {run,status,retry-failed,synth}``: see docs/annotate.md.

Exit codes: 0 done; 1 bad arguments or input; 3 all servers down (resume by rerunning);
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

from annotate.backends import REGISTRY, AllServersDown, JudgeContext, Sampling
from annotate.prompt import DEFAULT_TEMPLATE, ChatFormatter, PromptTemplate, TokenCounter
from annotate.runner import RetryJob, RunConfig, Runner, RunJob
from annotate.store import ShardPaths, holds_annotations, shard_stem, write_json_atomic
from megatron_ixt.data.inputs import expand_inputs, input_format

log = logging.getLogger("annotate")
RUN_CONFIG = "run_config.json"
# The shared judge options saved in run_config.json (argparse dests; each backend lists its own,
# see annotate.backends.base.BackendFactory). Result flags change the annotations, so a resumed
# `run` must use the same values; operational ones are only reused as `retry-failed` defaults.
RESULT_FLAGS = ("backend", "tokenizer", "chat_template_kwargs", "max_doc_tokens", "max_new_tokens", "temperature",
                "top_p", "max_parse_retries")
OPERATIONAL_FLAGS = ("prompt_template", "concurrency", "fsync_interval")


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


def check_resume(output: str, options: dict, result_flags) -> None:
    """Refuse a ``run`` into ``output`` when it holds annotations made with other values of a
    result flag (as saved in its run_config.json): continuing would mix results."""
    path = os.path.join(output, RUN_CONFIG)
    if not os.path.exists(path) or not holds_annotations(output):
        return
    with open(path, encoding="utf-8") as f:
        before = json.load(f).get("judge", {})
    changed = [f"--{name.replace('_', '-')} {before[name]!r} -> {options[name]!r}"
               for name in result_flags if name in before and before[name] != options[name]]
    if changed:
        raise ValueError(f"{path}: {output} holds annotations made with other settings ({'; '.join(changed)}); "
                         "use a new --output directory, or the same settings to continue")


def build_parser(retry_defaults: dict | None = None) -> argparse.ArgumentParser:
    """The CLI; ``retry_defaults`` (the judge options saved by ``run``) become the defaults of
    ``retry-failed``."""
    parser = argparse.ArgumentParser(prog="python -m annotate", description="Offline feedback annotation with a judge model.")
    parser.add_argument("--log-level", default="INFO", help="logging level: DEBUG, INFO, WARNING, ERROR")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="annotate input shards into an output directory",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    run.add_argument("--input", nargs="+", required=True,
                     help="input files or globs, one shard each: parquet (.parquet) or JSON lines (.jsonl, .jsonl.gz, "
                          ".jsonl.zst, .jsonl.zstd), by file name; any other name is refused")
    run.add_argument("--text-key", default="text",
                     help="the field (parquet: column) holding the document text; written as 'text'")
    run.add_argument("--id-key", default="id",
                     help="the field (column) holding the document id (e.g. FineWeb's id, DCLM's url), copied to "
                          "'id'; a record without one is identified by the hash of its text")
    run.add_argument("--output", required=True, help="output directory")
    run.add_argument("--num-shards", type=int, default=1, help="split the input files over this many tasks")
    run.add_argument("--shard-index", type=int, default=0, help="this task's index in 0..num-shards-1")
    add_judge_args(run)
    status = sub.add_parser("status", help="progress, failures and token counts of an output directory")
    status.add_argument("output", help="output directory of `run`")
    status.add_argument("--json", action="store_true", help="print the aggregate as JSON")
    retry = sub.add_parser("retry-failed", help="re-annotate failed records of committed shards in place",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    retry.add_argument("output", help="output directory of `run`; its run_config.json gives the judge defaults")
    retry.add_argument("--status", action="append", default=None,
                       help="only these failure statuses, e.g. failed:http (repeatable; default all)")
    add_judge_args(retry)
    if retry_defaults:
        retry.set_defaults(**retry_defaults)
    sub.add_parser("synth", help="write synthetic arithmetic documents (see annotate.synthetic)", add_help=False)
    return parser


def resolve_inputs(patterns: list[str]) -> list[str]:
    files = expand_inputs(patterns, error=SystemExit)
    stems = {}
    for path in files:
        input_format(path)  # refuses a file of unknown format by name
        other = stems.setdefault(shard_stem(path), path)
        if other != path:
            raise SystemExit(f"error: inputs {other!r} and {path!r} would both write {shard_stem(path)}.jsonl; rename one")
    return files


def _run_jobs(args, jobs) -> int:
    template = PromptTemplate.load(args.prompt_template)
    counter = TokenCounter(args.tokenizer)
    judge = JudgeContext(count=counter.count, format=ChatFormatter(counter.hf_tokenizer, args.chat_template_kwargs),
                         sampling=Sampling(args.max_new_tokens, args.temperature, args.top_p),
                         chat_template_kwargs=args.chat_template_kwargs)
    backend = backend_factory(args.backend).from_args(args, judge)
    cfg = RunConfig(output_dir=args.output, concurrency=args.concurrency, max_doc_tokens=args.max_doc_tokens,
                    max_parse_retries=args.max_parse_retries, fsync_interval=args.fsync_interval,
                    log_interval=args.log_interval)
    runner = Runner(cfg, backend, template, counter, jobs)
    try:
        summary = asyncio.run(runner.run())
    except AllServersDown as e:
        log.error("aborting: %s", e)
        return 3
    except asyncio.CancelledError:
        log.error("interrupted; completed work is saved, rerun the same command to resume")
        return 128 + (runner.stopped_by or signal.SIGTERM)
    except KeyboardInterrupt:
        log.error("interrupted; completed work is saved, rerun the same command to resume")
        return 130
    log.info("finished: %s", json.dumps(summary))
    return 0


def cmd_run(args) -> int:
    if not 0 <= args.shard_index < args.num_shards:
        raise SystemExit(f"error: --shard-index {args.shard_index} not in 0..{args.num_shards - 1}")
    files = resolve_inputs(args.input)
    mine = files[args.shard_index::args.num_shards]
    os.makedirs(args.output, exist_ok=True)
    options, result_flags = saved_options(args)
    check_resume(args.output, options, result_flags)
    write_json_atomic(os.path.join(args.output, RUN_CONFIG),
                      {"inputs": [os.path.abspath(f) for f in files], "judge": options})
    log.info("task %d/%d: %d of %d input shard(s)", args.shard_index, args.num_shards, len(mine), len(files))
    jobs = [RunJob(path, ShardPaths(args.output, shard_stem(path)), args.fsync_interval, args.text_key, args.id_key)
            for path in mine]
    return _run_jobs(args, jobs)


def cmd_retry(args) -> int:
    jobs = []
    statuses = set(args.status) if args.status else None
    for name in sorted(os.listdir(args.output)):
        if name.endswith(".jsonl") and not name.endswith(".rejected.jsonl"):
            jobs.append(RetryJob(ShardPaths(args.output, name[: -len(".jsonl")]), args.fsync_interval, statuses))
    pending = [n for n in os.listdir(args.output) if n.endswith(".jsonl.partial")]
    if pending:
        log.warning("%d shard(s) not finished (%s...): rerun `run` to finish them first", len(pending), pending[0])
    return _run_jobs(args, jobs)


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
          f"{sum(t['failed'].values())} failed, {sum(t['rejected'].values())} bad input lines, {t['truncated']} truncated")
    for k, v in sorted(t["failed"].items()):
        print(f"  {k}: {v}")
    for k, v in sorted(t["rejected"].items()):
        print(f"  rejected {k}: {v}")
    tok = t["tokens"]
    print(f"tokens: {tok['prompt']} in ({100 * tok['cached_share']:.1f}% cached), {tok['completion']} out")
    running = [st for st in report["shards"] if st["state"] == "running" and st.get("elapsed_s")]
    if running:
        print(f"speed: {sum(st['done'] / st['elapsed_s'] for st in running):.1f} docs/s over {len(running)} running shard(s)")
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


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "synth":
        from annotate.synthetic import main as synth_main

        synth_main(argv[1:])
        return 0
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        if args.command == "run":
            return cmd_run(args)
        if args.command == "status":
            return cmd_status(args)
        config_path = os.path.join(args.output, RUN_CONFIG)
        if os.path.exists(config_path):
            with open(config_path, encoding="utf-8") as f:
                saved = json.load(f)["judge"]
            args = build_parser(retry_defaults=saved).parse_args(argv)
        return cmd_retry(args)
    except (ValueError, RuntimeError, OSError) as e:  # bad configuration, input or output: a message, not a trace
        log.error("%s", e)
        return 1
