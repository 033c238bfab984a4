"""``python -m annotate report DIR``: can these annotations be trusted, and what would the corpus cost?

Reads DIR's committed and in-progress records and writes ``report.md`` with PNGs (matplotlib,
Agg) into ``DIR/report`` (or ``--report-dir``): the quality distribution and each rubric axis's
histogram, the axes' Spearman correlations, critique and reasoning lengths in tokens, failures
by reason, tokens in and out per document, throughput over time (documents/s and output
tokens/s, from each record's ``completed_at``; pauses longer than ``GAP_S`` between runs are cut
out), and the projected cost of the whole corpus: GPU-hours at the measured throughput per
replica, next to IXT's annotation FLOPs ``2 N_ann D_ann``; and the judge's self-consistency when
``annotate agreement`` has written ``DIR/agreement/agreement.md``.
"""
from __future__ import annotations

import collections
import json
import os
import re

import numpy as np

from annotate.prompt import TokenCounter
from megatron_ixt.data.record import SCORE_AXES, STATUS_OK

GAP_S = 60.0  # a pause longer than this between two completions is not counted as annotation time
AXES = (*SCORE_AXES, "quality")


def add_report_args(p) -> None:
    p.add_argument("output", help="an annotated directory written by `run`")
    p.add_argument("--report-dir", default=None, help="where report.md and the PNGs go; default DIR/report")
    p.add_argument("--corpus-docs", type=float, default=None,
                   help="documents in the whole corpus, for the projected cost; default: the documents of DIR")
    p.add_argument("--replicas", type=int, default=None,
                   help="judge replicas that served the measured run; default: the number of --url saved in "
                        "run_config.json (1 for an sglang-router or another backend: pass the router's count)")
    p.add_argument("--gpus-per-replica", type=int, default=1, help="GPUs per judge replica (its tensor-parallel size)")
    p.add_argument("--judge-params", type=float, default=None,
                   help="the judge's parameter count N_ann (e.g. 8e9) for IXT's annotation FLOPs 2 N_ann D_ann")
    p.add_argument("--annotate-share", type=float, default=0.15,
                   help="also project annotating only this share of the corpus (IXT reports ~15%% matched all)")
    p.add_argument("--tokenizer", default=None,
                   help="Hugging Face tokenizer to count critique and reasoning tokens; default: run_config.json's "
                        "--tokenizer, else an estimate of 4 characters per token")


def iter_records(output: str, committed_only: bool = False):
    """The annotated records of ``output``: committed shards, then (unless ``committed_only``)
    in-progress ones; in file-name order."""
    suffixes = (".jsonl",) if committed_only else (".jsonl", ".jsonl.partial")
    for name in sorted(os.listdir(output)):
        if name.endswith(suffixes) and not name.endswith(".rejected.jsonl"):
            with open(os.path.join(output, name), "rb") as f:
                for raw in f:
                    if raw.endswith(b"\n"):  # a torn last line of a killed run is not a record yet
                        yield json.loads(raw)


def _error_kind(ixt: dict) -> str:
    """A short kind for a failure: its status and the first words of its error, numbers kept."""
    error = re.sub(r"https?://\S+", "URL", (ixt.get("error") or "").split("\n")[0])
    return f"{ixt['status']}: {error[:70]}"


def collect(output: str, counter: TokenCounter) -> dict:
    """The per-document numbers the report plots."""
    d = collections.defaultdict(list)
    failures, errors = collections.Counter(), collections.Counter()
    for rec in iter_records(output):
        ixt = rec["ixt"]
        usage = ixt.get("usage") or {}
        d["prompt"].append(usage.get("prompt_tokens", 0))
        d["completion"].append(usage.get("completion_tokens", 0))
        d["cached"].append(usage.get("cached_tokens", 0))
        if ixt.get("completed_at"):
            d["times"].append((ixt["completed_at"], usage.get("completion_tokens", 0)))
        if ixt["status"] == STATUS_OK:
            d["scores"].append([*(ixt["scores"][a] for a in SCORE_AXES), ixt["quality"]])
            d["critique"].append(counter.count(ixt["critique"]))
            d["reasoning"].append(counter.count(ixt.get("reasoning") or ""))
        else:
            failures[ixt["status"]] += 1
            errors[_error_kind(ixt)] += 1
    out = {k: np.array(v) for k, v in d.items()}
    out["scores"] = np.array(d["scores"], dtype=int).reshape(-1, len(AXES))
    out["failures"], out["errors"] = failures, errors
    return out


def active_timeline(times: np.ndarray) -> tuple[np.ndarray, float]:
    """Each completion's time on a clock that skips pauses longer than GAP_S; the total active time."""
    if len(times) == 0:
        return times, 0.0
    steps = np.diff(np.sort(times), prepend=np.min(times))
    steps[steps > GAP_S] = 0.0
    clock = np.cumsum(steps)
    return clock, float(clock[-1])


def _spearman_matrix(scores: np.ndarray) -> np.ndarray:
    from annotate.agreement import spearman

    k = scores.shape[1]
    return np.array([[spearman(scores[:, i], scores[:, j]) for j in range(k)] for i in range(k)])


def _fmt(x: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def _percentiles(x: np.ndarray) -> str:
    if len(x) == 0:
        return "| - | - | - | - |"
    p50, p90, p99 = np.percentile(x, [50, 90, 99])
    return f"| {p50:.0f} | {p90:.0f} | {p99:.0f} | {x.max():.0f} |"


def write_report(args) -> str:
    """Write the report of ``args.output``; a one-line summary of what was written."""
    try:
        import matplotlib as mpl
    except ImportError:
        raise ValueError("`annotate report` draws with matplotlib: pip install matplotlib") from None
    mpl.use("Agg")
    import matplotlib.pyplot as plt

    config = {}
    if os.path.exists(os.path.join(args.output, "run_config.json")):
        with open(os.path.join(args.output, "run_config.json"), encoding="utf-8") as f:
            config = json.load(f)
    judge = config.get("judge", {})
    counter = TokenCounter(args.tokenizer or judge.get("tokenizer"))
    data = collect(args.output, counter)
    n_docs = len(data["prompt"])
    if n_docs == 0:
        raise ValueError(f"{args.output}: no annotated record to report on")
    out = args.report_dir or os.path.join(args.output, "report")
    os.makedirs(out, exist_ok=True)
    scores, ok = data["scores"], len(data["scores"])
    md = [f"# Annotation report: {args.output}", "",
          f"{n_docs} documents annotated: {ok} ok, {n_docs - ok} failed. Judge: "
          + (", ".join(f"`{k}={v}`" for k, v in judge.items() if k in ("backend", "model", "api", "tokenizer",
                                                                         "temperature", "max_new_tokens")) or "?"), ""]

    def save(fig, name, title, text):
        fig.tight_layout()
        fig.savefig(os.path.join(out, name), dpi=100)
        plt.close(fig)
        md.extend([f"## {title}", "", f"![{title}]({name})", "", *text, ""])

    # scores
    fig, axes = plt.subplots(2, 3, figsize=(12, 6.5))
    rows = ["| axis | mean | " + " | ".join(str(s) for s in range(1, 6)) + " |", "|---|---|" + "---|" * 5]
    for ax, name in zip(axes.flat, ("quality", *SCORE_AXES)):
        col = AXES.index(name)
        counts = np.bincount(scores[:, col], minlength=6)[1:6] if ok else np.zeros(5, int)
        ax.bar(range(1, 6), counts, color="tab:blue" if name != "quality" else "tab:green")
        ax.set_title(name)
        ax.set_xticks(range(1, 6))
        ax.set_xlabel("score")
        ax.set_ylabel("documents")
        mean = f"{scores[:, col].mean():.2f}" if ok else "-"
        rows.append(f"| {name} | {mean} | " + " | ".join(str(c) for c in counts) + " |")
    save(fig, "scores.png", "Quality and rubric scores", rows)

    # correlations
    corr = _spearman_matrix(scores) if ok > 1 else np.full((len(AXES), len(AXES)), np.nan)
    fig, ax = plt.subplots(figsize=(7, 6))
    im = ax.imshow(np.nan_to_num(corr), vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(len(AXES)), AXES, rotation=45, ha="right")
    ax.set_yticks(range(len(AXES)), AXES)
    for i in range(len(AXES)):
        for j in range(len(AXES)):
            ax.text(j, i, "n/a" if np.isnan(corr[i, j]) else f"{corr[i, j]:.2f}", ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax, label="Spearman rho")
    ax.set_title("Correlation of the axes (ok documents)")
    save(fig, "correlations.png", "Correlations between axes",
         ["Spearman's rho; n/a where an axis has one value only. Axes that move together measure one thing."])

    # lengths
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, title in zip(axes, ("critique", "reasoning"), ("critique", "reasoning")):
        ax.hist(data[key], bins=30, color="tab:purple")
        ax.set_title(f"{title} length ({counter.unit})")
        ax.set_xlabel(counter.unit)
        ax.set_ylabel("documents")
    save(fig, "lengths.png", "Critique and reasoning length",
         [f"In {counter.unit} of the ok documents.", "", "| | p50 | p90 | p99 | max |", "|---|---|---|---|---|",
          "| critique " + _percentiles(data["critique"]), "| reasoning " + _percentiles(data["reasoning"])])

    # failures
    fig, ax = plt.subplots(figsize=(9, 3.5))
    if data["failures"]:
        names, counts = zip(*data["failures"].most_common())
        ax.barh(names, counts, color="tab:red")
        ax.invert_yaxis()
        ax.set_xlabel("documents")
    else:
        ax.text(0.5, 0.5, "no failed document", ha="center", va="center")
        ax.set_axis_off()
    ax.set_title(f"Failures by reason ({n_docs - ok} of {n_docs})")
    rows = ["| count | status: error |", "|---|---|"] + [
        f"| {n} | {kind.replace('|', '/')} |" for kind, n in data["errors"].most_common(15)]
    save(fig, "failures.png", "Failures by reason", rows if data["errors"] else ["None."])

    # tokens per document
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, title in zip(axes, ("prompt", "completion"), ("in (prompt)", "out (completion)")):
        ax.hist(data[key], bins=30, color="tab:orange")
        ax.set_title(f"tokens {title} per document")
        ax.set_xlabel("tokens (as reported by the judge)")
        ax.set_ylabel("documents")
    cached = data["cached"].sum() / max(data["prompt"].sum(), 1)
    save(fig, "tokens.png", "Tokens in and out per document",
         ["| | p50 | p90 | p99 | max |", "|---|---|---|---|---|", "| in " + _percentiles(data["prompt"]),
          "| out " + _percentiles(data["completion"]), "",
          f"Mean {data['prompt'].mean():.0f} in ({100 * cached:.0f}% of them cached), "
          f"{data['completion'].mean():.0f} out per document."])

    # throughput
    times = data.get("times", np.zeros((0, 2)))
    clock, active = active_timeline(times[:, 0] if len(times) else np.zeros(0))
    fig, axes = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    if active > 0:
        order = np.argsort(times[:, 0], kind="stable")
        width = active / 40
        bins = np.minimum((clock / width).astype(int), 39)
        docs = np.bincount(bins, minlength=40) / width
        tokens = np.bincount(bins, weights=times[order, 1], minlength=40) / width
        x = (np.arange(40) + 0.5) * width
        axes[0].plot(x, docs, marker=".")
        axes[1].plot(x, tokens, marker=".", color="tab:orange")
    axes[0].set_ylabel("documents/s")
    axes[1].set_ylabel("output tokens/s")
    axes[1].set_xlabel(f"annotation time, s (pauses over {GAP_S:.0f} s cut out)")
    axes[0].set_title("Throughput over time")
    docs_s = len(times) / active if active > 0 else 0.0
    out_s = times[:, 1].sum() / active if active > 0 else 0.0
    save(fig, "throughput.png", "Throughput over time",
         [f"{len(times)} documents in {active:.3g} s of annotation: {docs_s:.2f} documents/s, {out_s:.0f} output "
          "tokens/s." if active > 0 else "No timed records (written before `completed_at` was recorded)."])

    # projected cost
    replicas = args.replicas or max(len(judge.get("url") or []), 1)
    corpus = args.corpus_docs or n_docs
    tokens_per_doc = float(data["prompt"].mean() + data["completion"].mean())
    rows = ["| share annotated | documents | GPU-hours | D_ann tokens | annotation FLOPs 2 N_ann D_ann |",
            "|---|---|---|---|---|"]
    for share in sorted({1.0, args.annotate_share}, reverse=True):
        n = corpus * share
        gpu_h = n / (docs_s / replicas) / 3600 * args.gpus_per_replica if docs_s > 0 else float("nan")
        d_ann = n * tokens_per_doc
        flops = f"{2 * args.judge_params * d_ann:.3g}" if args.judge_params else "pass --judge-params"
        hours = f"{gpu_h:,.0f}" if gpu_h >= 100 else f"{gpu_h:.3g}"
        rows.append(f"| {100 * share:.0f}% | {_fmt(n)} | {hours} | {_fmt(d_ann)} | {flops} |")
    md.extend(["## Projected cost of the corpus", "",
               f"At the measured {docs_s / replicas:.3f} documents/s per replica ({replicas} replica(s), "
               f"{args.gpus_per_replica} GPU(s) each) and {tokens_per_doc:.0f} tokens read and written per document; "
               f"corpus: {_fmt(corpus)} documents{'' if args.corpus_docs else ' (this directory; pass --corpus-docs)'}."
               " D_ann counts cached prompt tokens too (IXT's accounting); a replica's throughput is only "
               "representative if the run kept it saturated.", "", *rows, ""])
    agreement = os.path.join(args.output, "agreement", "agreement.md")
    if os.path.exists(agreement):  # written by `annotate agreement DIR`
        with open(agreement, encoding="utf-8") as f:
            md.extend(["## Judge self-consistency (`annotate agreement`)", "", *f.read().splitlines()[2:]])
    with open(os.path.join(out, "report.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(md))
    return f"wrote {os.path.join(out, 'report.md')} and 6 PNGs ({n_docs} documents, {ok} ok)"
