"""The verdict parser: reasoning separation, last-match anchoring, range checks, no made-up scores."""
import json

import pytest

from annotate.parse import ParseError, parse_output, split_reasoning
from megatron_ixt.data.record import SCORE_AXES

VERDICT = {"critique": "Clear steps; the final sum is right.", "writing_style": 4, "expertise": 2,
           "educational_value": 5, "factual_accuracy": 5, "efficiency": 3, "quality": 4}


def test_think_block_and_last_json_wins():
    draft = dict(VERDICT, quality=1, critique="draft")
    text = f"<think>\nFirst idea: {json.dumps(draft)}\nHmm.\n</think>\n\nMy verdict: {json.dumps(VERDICT)}"
    j = parse_output(text)
    assert j.quality == 4 and j.scores == {a: VERDICT[a] for a in SCORE_AXES}
    assert list(j.scores) == list(SCORE_AXES)
    assert j.critique == VERDICT["critique"]
    assert "First idea" in j.reasoning and "</think>" not in j.reasoning


def test_reasoning_content_and_missing_open_tag():
    j = parse_output(json.dumps(VERDICT), reasoning_content="server-side reasoning")
    assert j.reasoning == "server-side reasoning"
    # chat templates often put <think> in the prompt: only the closing tag is generated
    reasoning, answer = split_reasoning("thinking without open tag</think>" + json.dumps(VERDICT))
    assert reasoning == "thinking without open tag" and answer.startswith("{")


def test_unfinished_thinking_is_an_error_not_a_score():
    with pytest.raises(ParseError, match="no answer"):
        parse_output("<think>I think the quality is 5 " + json.dumps(VERDICT))


def test_fenced_nested_and_string_scores():
    nested = {"critique": "ok text", "scores": {a: "3" for a in SCORE_AXES}, "overall_quality": 3.0}
    j = parse_output("```json\n" + json.dumps(nested) + "\n```")
    assert j.quality == 3 and set(j.scores.values()) == {3}
    assert all(isinstance(v, int) for v in j.scores.values())


@pytest.mark.parametrize("bad, match", [
    (dict(VERDICT, efficiency=7), "outside 1..5"),
    (dict(VERDICT, quality=0), "outside 1..5"),
    (dict(VERDICT, expertise=3.5), "not an integer"),
    (dict(VERDICT, expertise=True), "boolean"),
    ({k: v for k, v in VERDICT.items() if k != "writing_style"}, "lacks score"),
    (dict(VERDICT, critique="  "), "critique"),
])
def test_invalid_verdicts_raise(bad, match):
    with pytest.raises(ParseError, match=match):
        parse_output(json.dumps(bad))


def test_last_verdict_is_anchored_even_if_invalid():
    # the final verdict is out of range: an earlier valid draft must NOT be used instead
    text = json.dumps(VERDICT) + "\nWait, revised: " + json.dumps(dict(VERDICT, quality=9))
    with pytest.raises(ParseError, match="outside"):
        parse_output(text)


def test_tagged_fallback_uses_last_occurrence():
    text = ("Quality: 2\n<critique>first</critique>\nFinal answer:\n<critique>Verbose but correct.</critique>\n"
            "writing_style: 3\nexpertise: 2\neducational value: 4\nfactual_accuracy: 5/5\nefficiency: 2\nquality: 4\n")
    j = parse_output(text)
    assert j.quality == 4 and j.critique == "Verbose but correct."
    assert j.scores == {"writing_style": 3, "expertise": 2, "educational_value": 4, "factual_accuracy": 5,
                        "efficiency": 2}


def test_no_verdict_at_all():
    with pytest.raises(ParseError):
        parse_output("I would rather not rate this document.")
