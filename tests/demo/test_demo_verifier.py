"""The verifier judge against synthetic arithmetic documents with known ground truth."""
import asyncio
import json

import pytest
from ixt_demo.synthetic import SynthConfig, digits, generate, solution_lines
from ixt_demo.verifier import VerifierBackend, judge

from annotate.backends import BackendError, Request
from annotate.parse import parse_output


def carry_free_sum(a: int, b: int) -> int:
    """What the systematic carry slip produces: columns added without carries."""
    da, db = digits(a), digits(b)
    n = max(len(da), len(db))
    cols = [(da[k] if k < len(da) else 0) + (db[k] if k < len(db) else 0) for k in range(n)]
    return int(str(cols[-1]) + "".join(str(c % 10) for c in reversed(cols[:-1])))


def test_generator_is_deterministic_and_flaw_is_systematic():
    cfg = SynthConfig(num_docs=400, flaw_share=0.3, noise_share=0.05, seed=7)
    docs = list(generate(cfg))
    assert docs == list(generate(cfg))
    flawed = [d for d in docs if d["synthetic"]["flaw"] == "carry_slip"]
    assert 0.2 < len(flawed) / len(docs) < 0.4
    for d in flawed:
        s = d["synthetic"]
        assert s["stated"] == carry_free_sum(s["a"], s["b"]) != s["correct"]
    for d in docs:
        if d["synthetic"]["flaw"] is None:
            assert d["synthetic"]["stated"] == d["synthetic"]["correct"]


def test_verifier_scores_match_ground_truth():
    docs = list(generate(SynthConfig(num_docs=300, flaw_share=0.3, noise_share=0.1, terse_share=0.15,
                                      verbose_share=0.15, seed=11)))
    seen_quality = set()
    for d in docs:
        verdict, log = judge(d["text"])
        j = parse_output(json.dumps(verdict), log)  # the verdict is a valid judge answer
        s = d["synthetic"]
        seen_quality.add(j.quality)
        if s["flaw"] is None:
            assert j.scores["factual_accuracy"] == 5 and j.quality >= 4, d["text"]
            assert "wrong" not in j.critique
        else:
            assert j.scores["factual_accuracy"] <= 3 and j.quality <= 2, d["text"]
        if s["flaw"] == "carry_slip" and s["style"] != "terse":
            assert "drops the carry" in j.critique and str(s["correct"]) in j.critique
        if s["style"] == "terse" and s["flaw"] is None:
            assert j.scores["educational_value"] == 2 and "no working" in j.critique
        if s["style"] == "verbose":
            assert j.scores["efficiency"] < 5 and "filler" in j.critique
    assert {1, 4, 5} <= seen_quality


def test_carry_slip_critique_names_the_column():
    lines, stated = solution_lines(3748, 2659, "carry_slip", None)
    doc = "\n".join(["Q: 3748 + 2659 = ?", *lines, f"Answer: {stated}"])
    verdict, log = judge(doc)
    assert verdict["quality"] == 1 and verdict["factual_accuracy"] == 1
    assert verdict["critique"].startswith(f"The answer {stated} is wrong: 3748 + 2659 = 6407.")
    assert "The Tens step drops the carry of 1 from the Ones column" in verdict["critique"]
    assert verdict["critique"].endswith("The same carry slip repeats in 1 later column.")  # Thousands: 3 + 2 = 5
    assert "WRONG" in log


def test_unverifiable_document_fails_cleanly():
    backend = VerifierBackend()
    with pytest.raises(BackendError) as e:
        asyncio.run(backend.complete(Request("x", "prompt", "An essay about birds.")))
    assert e.value.reason == "unverifiable"
