"""The demo's report: ``report.md`` plus PNGs, from the artefacts ``run_demo.py`` wrote.

Inputs (all under the demo's output directory): ``summary.json`` (``results``: conditioning ->
counts and rates), ``logs/metrics_<arm>.jsonl`` (the trainer's metrics, format in
``megatron_ixt/training/metrics.py``) and ``eval/<conditioning>.jsonl`` (generations).
Outputs: ``report.md`` (the conditioning table, the recipe table, example answers, the commands),
``loss.png`` (held-out document loss over training), ``answers.png`` (accuracy and flawed-answer
rate per conditioning with 95% Wilson intervals).
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence

# Eval-record keys plotted per arm: (arm, metrics key, label).
LOSS_CURVES = (("baseline", "none/doc_loss", "baseline"),
               ("ixt", "steering/doc_loss", "IXT steered to the top quality level"),
               ("ixt", "none/doc_loss", "IXT unconditioned"))


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a binomial rate (scipy's ``binomtest``)."""
    from scipy.stats import binomtest

    ci = binomtest(successes, trials).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def beats(results: dict[str, dict], steered: str, baseline: str) -> bool:
    """Whether ``steered``'s accuracy beats ``baseline``'s with non-overlapping 95% intervals."""
    return results[steered]["accuracy_ci"][0] > results[baseline]["accuracy_ci"][1]


def verdict(results: dict[str, dict], steered: str, baseline: str) -> str:
    """One line: does ``steered`` beat ``baseline`` in accuracy with non-overlapping 95% intervals?"""
    s, b = results[steered], results[baseline]
    won = beats(results, steered, baseline)
    return (f"verdict: {steered} {'beats' if won else 'does NOT beat'} the {baseline} "
            f"({s['accuracy']:.2f} [{s['accuracy_ci'][0]:.2f}, {s['accuracy_ci'][1]:.2f}] vs "
            f"{b['accuracy']:.2f} [{b['accuracy_ci'][0]:.2f}, {b['accuracy_ci'][1]:.2f}], "
            f"95% Wilson intervals {'not ' if won else ''}overlapping)")


def read_eval_records(metrics_path: str) -> list[dict]:
    """The ``eval`` records of a trainer metrics JSONL file, in order."""
    with open(metrics_path, encoding="utf-8") as f:
        return [r for r in map(json.loads, f) if r.get("kind") == "eval"]


def recipe_table_rows(results: dict[str, dict], metrics: dict[str, str], recipe_arms: dict[str, str],
                      guidance_scales: Sequence[float]) -> list[dict]:
    """One row per arm: the baseline, then each IXT recipe (``recipe_arms``: recipe -> arm). Each row
    holds its accuracies (``results`` entries: rate, counts, Wilson CI) steered, unconditioned and
    guided at each scale (None where the arm has no such conditioning), and the held-out document
    loss (nats/token) at the arm's last evaluation, under the steering prefix and without prefix."""
    rows = []
    for recipe, arm in {"-": "baseline", **recipe_arms}.items():
        last = read_eval_records(metrics[arm])[-1]
        rows.append({"arm": arm, "recipe": recipe,
                     "steered": results.get(f"{arm} steered to quality 5"),
                     "unconditioned": results.get(arm if arm == "baseline" else f"{arm} unconditioned"),
                     "guided": {f"{g:g}": results.get(f"{arm} guided G={g:g}") for g in guidance_scales},
                     "loss_steered": last.get("steering/doc_loss"), "loss_unprefixed": last.get("none/doc_loss")})
    return rows


def recipe_table(rows: list[dict]) -> list[str]:
    """Markdown lines of :func:`recipe_table_rows`' rows: accuracy [95% Wilson CI] per conditioning
    and held-out loss per conditioning; ``-`` where an arm has no such conditioning."""
    scales = list(rows[0]["guided"])

    def acc(r):
        return "-" if r is None else f"{r['accuracy']:.2f} [{r['accuracy_ci'][0]:.2f}, {r['accuracy_ci'][1]:.2f}]"

    def loss(x):
        return "-" if x is None else f"{x:.3f}"

    lines = ["| arm | recipe | steered | unconditioned | " + " | ".join(f"guided G={g}" for g in scales) +
             " | held-out loss, steered | held-out loss, unprefixed |",
             "|---|---|---|---|" + "---|" * len(scales) + "---|---|"]
    for row in rows:
        lines.append(f"| {row['arm']} | {row['recipe']} | {acc(row['steered'])} | {acc(row['unconditioned'])} | " +
                     " | ".join(acc(row["guided"][g]) for g in scales) +
                     f" | {loss(row['loss_steered'])} | {loss(row['loss_unprefixed'])} |")
    return lines


def plot_losses(metrics: dict[str, str], path: str) -> None:
    import matplotlib as mpl
    mpl.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for arm, key, label in LOSS_CURVES:
        records = [r for r in read_eval_records(metrics[arm]) if r.get(key) is not None]
        ax.plot([r["consumed_tokens"] for r in records], [r[key] for r in records], marker="o", label=label)
    ax.set_xlabel("training tokens")
    ax.set_ylabel("document loss on held-out correct documents")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_answers(results: dict[str, dict], path: str) -> None:
    import matplotlib as mpl
    mpl.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, ax = plt.subplots(figsize=(max(7.5, 0.6 * len(names)), 4.5))
    width = 0.38
    for offset, metric, label in ((-width / 2, "accuracy", "accuracy"),
                                  (width / 2, "flawed_answers", "flawed answers")):
        values = [results[n][metric] for n in names]
        low = [results[n][metric] - results[n][metric + "_ci"][0] for n in names]
        high = [results[n][metric + "_ci"][1] - results[n][metric] for n in names]
        ax.bar([i + offset for i in range(len(names))], values, width, yerr=[low, high], capsize=4, label=label)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, fontsize=7, rotation=35, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("share of held-out questions (95% Wilson CI)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def examples_table(generations: dict[str, list[dict]], questions: Sequence[dict], count: int) -> list[str]:
    """Markdown rows: the first ``count`` questions, each conditioning's answer side by side."""
    names = list(generations)
    rows = ["| question | correct | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for i, q in enumerate(questions[:count]):
        answers = [generations[n][i]["answer"] for n in names]
        cells = ["-" if a is None else str(a) for a in answers]
        rows.append(f"| {q['a']} + {q['b']} | {q['correct']} | " + " | ".join(cells) + " |")
    return rows


def write_report(out_dir: str, summary: dict, generations: dict[str, list[dict]], questions: Sequence[dict],
                 metrics: dict[str, str]) -> str:
    """Writes ``report.md``, ``loss.png`` and ``answers.png`` into ``out_dir``; returns the report path."""
    results = summary["results"]
    # example answers: the baseline's and the default recipe's arm (`ixt`), not the ablations'
    ablations = tuple(row["arm"] + " " for row in summary["recipes"] if row["arm"] not in ("baseline", "ixt"))
    shown = {name: g for name, g in generations.items() if not name.startswith(ablations)}
    plot_losses(metrics, os.path.join(out_dir, "loss.png"))
    plot_answers(results, os.path.join(out_dir, "answers.png"))
    lines = ["# megatron-ixt demo report", "", summary["verdict"], "",
             f"Machine: {summary['machine']}. Wall time of this invocation (a rerun resumes finished steps): "
             f"{summary['wall_time_s'] / 60:.1f} min.", "",
             f"{len(questions)} held-out questions, each needing a carry; rates with 95% Wilson intervals.", "",
             "| arm / conditioning | accuracy | flawed answers | carries added |", "|---|---|---|---|"]
    for name, r in results.items():
        added = "-" if r["carries_added"] is None else f"{r['carries_added']:.2f}"
        lines.append(f"| {name} | {r['accuracy']:.2f} [{r['accuracy_ci'][0]:.2f}, {r['accuracy_ci'][1]:.2f}] | "
                     f"{r['flawed_answers']:.2f} [{r['flawed_answers_ci'][0]:.2f}, "
                     f"{r['flawed_answers_ci'][1]:.2f}] | {added} |")
    lines += ["", "## Recipes", "",
              "Answer accuracy [95% Wilson interval] per IXT recipe and conditioning (guided: "
              "uncond + G (cond - uncond), the negative pass unprefixed), and the held-out document loss "
              "(nats/token) at the last evaluation.", "", *recipe_table(summary["recipes"]),
              "", "![held-out loss](loss.png)", "", "![answers](answers.png)", "",
              "## Example answers", "", *examples_table(shown, questions, 8), "",
              "## Commands", "", "```", *summary["commands"], "```", ""]
    path = os.path.join(out_dir, "report.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    return path
