"""`annotate report` and `annotate agreement` on a demo-like annotated directory (synth + verifier)."""
import json

import numpy as np
import pytest
from ixt_demo import synthetic  # examples/demo: the demo's corpus generator (its verifier judge: conftest)

from annotate.agreement import AXES, kappa_quadratic, metrics, spearman
from annotate.cli import main
from tests.helpers.annotate import write_jsonl

PNGS = ("scores.png", "correlations.png", "lengths.png", "failures.png", "tokens.png", "throughput.png")


@pytest.fixture
def annotated(tmp_path):
    """A verifier-annotated directory of 150 synthetic documents and one it cannot verify."""
    raw = tmp_path / "arith.jsonl"
    synthetic.main(["--output", str(raw), "--num-docs", "150", "--flaw-share", "0.3",
                    "--terse-share", "0.2", "--verbose-share", "0.2"])
    essay = write_jsonl(tmp_path / "essay.jsonl", [{"id": "essay", "text": "An essay about birds, not a sum."}])
    out = tmp_path / "out"
    assert main(["run", "--input", str(raw), essay, "--output", str(out), "--backend", "verifier",
                 "--log-interval", "60", "--max-failed-fraction", "1"]) == 0
    return out


def test_report_writes_markdown_and_pngs(annotated, capsys):
    assert main(["report", str(annotated), "--judge-params", "8e9", "--corpus-docs", "2e9",
                 "--gpus-per-replica", "2"]) == 0
    assert "wrote" in capsys.readouterr().out
    report = annotated / "report"
    for name in PNGS:
        assert (report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    md = (report / "report.md").read_text()
    assert "151 documents annotated: 150 ok, 1 failed" in md
    stats = json.load(open(annotated / "arith.stats.json"))
    row = next(line for line in md.splitlines() if line.startswith("| quality |"))
    assert [c.strip() for c in row.strip("|").split("|")][2:] == [str(stats["quality_histogram"][str(q)])
                                                                  for q in range(1, 6)]
    assert "| 1 | failed:unverifiable:" in md
    assert "| 100% | 2B |" in md and "| 15% | 300M |" in md  # the corpus and IXT's 15% share
    flops = [line for line in md.splitlines() if line.startswith("| 100% |")][0].split(" | ")[-1].rstrip(" |")
    tokens_per_doc = float(md.split(" tokens read and written per document")[0].rsplit(" ", 1)[1])
    assert float(flops) == pytest.approx(2 * 8e9 * 2e9 * tokens_per_doc, rel=0.01)


def test_agreement_of_the_verifier_is_exactly_one(annotated, capsys):
    committed = (annotated / "arith.jsonl").read_bytes()
    assert main(["agreement", str(annotated), "--sample", "60", "--bootstrap", "200"]) == 0
    assert "| quality | 1.000 [1.000, 1.000]" in capsys.readouterr().out
    result = json.load(open(annotated / "agreement" / "agreement.json"))
    assert result["pairs"] == 60 and result["reannotation_failed"] == 0
    for axis in AXES:
        got = result["axes"][axis]
        assert got["exact"]["value"] == 1.0 and got["within_1"]["value"] == 1.0
        assert got["exact"]["ci95"] == [1.0, 1.0]
        for m in ("spearman", "kappa_quadratic"):  # None only where the sample has one value on that axis
            assert got[m]["value"] in (1.0, None)
    assert result["axes"]["quality"]["kappa_quadratic"]["value"] == 1.0
    assert (annotated / "arith.jsonl").read_bytes() == committed  # the committed shards are untouched
    config = json.load(open(annotated / "agreement" / "run_config.json"))
    assert config["judge"] == json.load(open(annotated / "run_config.json"))["judge"]
    # the same settings only
    assert main(["agreement", str(annotated), "--sample", "60", "--temperature", "0"]) == 1
    assert main(["report", str(annotated)]) == 0
    md = (annotated / "report" / "report.md").read_text()
    assert "## Judge self-consistency" in md and "| quality | 1.000 [1.000, 1.000]" in md


def test_agreement_metrics_on_known_values():
    a, b = np.array([1, 2, 3, 4, 5]), np.array([1, 2, 3, 5, 4])
    got = metrics(a, b)
    assert got["exact"] == 0.6 and got["within_1"] == 1.0
    assert spearman(a, b) == pytest.approx(0.9)  # 1 - 6 * 2 / (5 * 24)
    assert kappa_quadratic(a, b) == pytest.approx(0.9)  # 1 - (2/16) / (0.2 * 100/16)
    assert kappa_quadratic(np.array([1, 5, 1, 5]), np.array([5, 1, 5, 1])) == pytest.approx(-1.0)
    assert np.isnan(spearman(np.array([3, 3, 3]), np.array([1, 2, 3])))
