"""The record schema (megatron_ixt.data.record), prefix kinds and steering levels
(megatron_ixt.data.prefix_kinds) and prefix templates (megatron_ixt.data.templates)."""
from __future__ import annotations

import hashlib
import json

import pytest

from megatron_ixt.data import prefix_kinds
from megatron_ixt.data.prefix_kinds import (
    QUALITY_LABELS,
    STEERING_CRITIQUE,
    STEERING_CRITIQUES,
    parse_level,
    parse_steer,
    steering_annotation,
)
from megatron_ixt.data.record import (
    ANNOTATION_REASONS,
    DOCUMENT_REASONS,
    SCORE_AXES,
    STATUS_MISSING,
    annotation_problems,
    parse_annotation,
    parse_line,
    parse_record,
)
from megatron_ixt.data.templates import builtin_templates, load_template, render_kinds, steering

SCORES = {"writing_style": 4, "expertise": 2, "educational_value": 5, "factual_accuracy": 3, "efficiency": 1}
OK = {"status": "ok", "quality": 4, "scores": SCORES, "critique": "  Clear but shallow. ", "reasoning": "r",
      "annotator": {"backend": "sglang", "model": "m", "prompt_version": "v1"}}


def test_valid_records():
    rec = parse_line(json.dumps({"id": "a", "text": "Body.", "source": "web", "ixt": OK}))
    assert rec.text == "Body." and rec.status == "ok" and rec.problems == ()
    assert rec.annotation.quality == 4 and rec.annotation.critique == "Clear but shallow."
    assert list(rec.annotation.scores) == list(SCORE_AXES)  # axis order, whatever the JSON order
    plain = parse_record({"text": "Body."})
    assert plain.annotation is None and plain.status == STATUS_MISSING and plain.problems == ()
    failed = parse_record({"text": "Body.", "ixt": {"status": "failed:http", "error": "503"}})
    assert failed.annotation is None and failed.status == "failed:http" and failed.problems == ()
    other_key = parse_record({"content": "Body."}, text_key="content")
    assert other_key.text == "Body."


@pytest.mark.parametrize("ixt, reason", [
    ([], "ixt_not_object"),
    ({**OK, "status": "OK"}, "ixt_bad_status"),
    ({**OK, "status": None}, "ixt_bad_status"),
    ({**OK, "quality": 0}, "ixt_bad_quality"),
    ({**OK, "quality": 4.0}, "ixt_bad_quality"),
    ({k: v for k, v in OK.items() if k != "quality"}, "ixt_bad_quality"),
    ({**OK, "scores": [4, 4, 4, 4, 4]}, "ixt_bad_scores"),
    ({**OK, "scores": {**SCORES, "humor": 3}}, "ixt_bad_scores"),
    ({**OK, "scores": {**SCORES, "expertise": "5"}}, "ixt_bad_scores"),
    ({**OK, "critique": "   "}, "ixt_bad_critique"),
    ({**OK, "critique": ["a"]}, "ixt_bad_critique"),
    ({**OK, "reasoning": {"steps": 1}}, "ixt_bad_reasoning"),
    ({**OK, "annotator": ["x"]}, "ixt_bad_annotator"),
])
def test_annotation_problems_keep_the_text(ixt, reason):
    rec = parse_record({"text": "Body.", "ixt": ixt})
    assert rec.text == "Body." and rec.annotation is None
    assert [p.reason for p in rec.problems] == [reason]
    assert reason in ANNOTATION_REASONS and "ixt" in rec.problems[0].message


def test_every_problem_is_reported():
    problems = annotation_problems({**OK, "quality": 9, "scores": {}, "critique": ""})
    assert [p.reason for p in problems] == ["ixt_bad_quality", "ixt_bad_scores", "ixt_bad_critique"]
    assert "missing axis 'efficiency'" in problems[1].message
    assert parse_annotation(OK)[1] == [] and parse_annotation({"status": "failed:parse"}) == (None, [])


@pytest.mark.parametrize("line, reason", [
    (b"{", "invalid_json"), (b"\xff", "invalid_json"), (b'"text"', "not_an_object"), (b"{}", "missing_text"),
    (b'{"text": null}', "text_not_string"), (b'{"text": ""}', "empty_text"), (b'{"text": "\\n\\t"}', "empty_text"),
])
def test_document_problems_drop_the_record(line, reason):
    rec = parse_line(line)
    assert rec.text is None and [p.reason for p in rec.problems][0] == reason and reason in DOCUMENT_REASONS


def test_builtin_templates_render_and_hash():
    assert prefix_kinds.names() == ("critique", "quality", "scores")
    assert {k.default_template for k in prefix_kinds.KINDS.values()} <= set(builtin_templates())
    annotation = parse_annotation(OK)[0]
    critique, quality = load_template("critique"), load_template("quality", "default")
    assert critique.name == "critique_v1" and load_template("critique", "critique_v1") == critique
    text = critique.render(annotation)
    assert text.startswith("Feedback: quality 4/5 (writing style 4/5, expertise 2/5, educational value 5/5, "
                           "factual accuracy 3/5, efficiency 1/5). Clear but shallow.") and text.endswith("\n")
    assert quality.render(annotation) == f"Quality: {QUALITY_LABELS[4]}.\n"
    assert critique.sha256 == hashlib.sha256(critique.text.encode()).hexdigest() != quality.sha256
    assert critique.identity() == {"name": "critique_v1", "text": critique.text, "sha256": critique.sha256}
    top = steering_annotation()
    assert top.quality == 5 and set(top.scores.values()) == {5} and top.critique == STEERING_CRITIQUE
    assert quality.render(top) == "Quality: excellent.\n"
    braces = parse_annotation({**OK, "critique": "Uses {x} and {{y}} literally."})[0]
    assert "Uses {x} and {{y}} literally." in critique.render(braces)
    scores = load_template("scores")
    assert scores.name == "scores_v1"
    assert scores.render(annotation) == ("Scores: writing style 4/5, expertise 2/5, educational value 5/5, "
                                         "factual accuracy 3/5, efficiency 1/5.\n")


def test_render_kinds_renders_each_template_like_render():
    annotations = [parse_annotation({**OK, "quality": q, "critique": f"Critique {q}."})[0] for q in (1, 3, 5)]
    templates = {kind: load_template(kind) for kind in prefix_kinds.names()}
    rendered = render_kinds(templates, annotations)
    assert rendered == {kind: [t.render(a) for a in annotations] for kind, t in templates.items()}
    assert rendered["quality"][0] != rendered["quality"][2] and "Critique 3." in rendered["critique"][1]


def test_steering_levels():
    assert steering("quality", 1) == "Quality: very poor.\n" and steering("quality") == "Quality: excellent.\n"
    assert steering("quality", 5) == steering("quality")
    assert steering("scores", 2) == ("Scores: writing style 2/5, expertise 2/5, educational value 2/5, "
                                     "factual accuracy 2/5, efficiency 2/5.\n")
    assert steering("scores", {"educational_value": 5}) == "Scores: educational value 5/5.\n"
    both = steering("scores", {"efficiency": 4, "educational_value": 5})
    assert both == "Scores: educational value 5/5, efficiency 4/5.\n"  # SCORE_AXES order, whatever the given order
    low = steering("critique", 1)
    assert low.startswith("Feedback: quality 1/5 (writing style 1/5,") and STEERING_CRITIQUES[1] in low
    assert steering("critique", 3, critique="Fine.").endswith("efficiency 3/5). Fine.\n")
    with pytest.raises(ValueError, match=r"uses \{quality_label\}, which this steering level leaves out"):
        steering("quality", {"expertise": 5})
    assert parse_steer("quality") == ("quality", None) and parse_steer("quality:1") == ("quality", 1)
    assert parse_steer("scores:educational_value=5,expertise=3") == ("scores", {"educational_value": 5, "expertise": 3})
    assert parse_level("") is None
    for bad, match in (("quality:0", "not a level 1..5"), ("quality:x", "not a level"),
                       ("scores:humor=3", "unknown axis 'humor'"), ("scores:expertise=9", "not a level"),
                       ("style", "unknown prefix kind 'style'")):
        with pytest.raises(ValueError, match=match):
            parse_steer(bad)
    top = steering_annotation()
    assert (top.quality, top.critique) == (5, STEERING_CRITIQUE)
    with pytest.raises(ValueError, match="already registered"):
        prefix_kinds.register(prefix_kinds.PrefixKind("quality", "quality_v1", "again"))
    with pytest.raises(ValueError, match="lower-case identifier"):
        prefix_kinds.register(prefix_kinds.PrefixKind("none", "quality_v1", "reserved"))


def test_user_templates(tmp_path):
    (tmp_path / "t.txt").write_text("[{quality_label} | {expertise}] {critique}\n")
    template = load_template("critique", str(tmp_path / "t.txt"))
    assert template.name == str(tmp_path / "t.txt")
    assert template.render(parse_annotation(OK)[0]) == "[good | 2] Clear but shallow.\n"
    (tmp_path / "bad.txt").write_text("{quality} {humor}\n")
    with pytest.raises(ValueError, match=r"unknown template field \{humor\}"):
        load_template("quality", str(tmp_path / "bad.txt"))
    (tmp_path / "brace.txt").write_text("{quality\n")
    with pytest.raises(ValueError, match="not a valid template"):
        load_template("quality", str(tmp_path / "brace.txt"))
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        load_template("quality", str(tmp_path / "empty.txt"))
    with pytest.raises(ValueError, match="unknown prefix kind"):
        load_template("style")


def test_docs_table_lists_every_registered_kind():
    """docs/dataset.md's prefix-kind table is the registry (name, default template, description)."""
    import os

    path = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "dataset.md")
    section = open(path, encoding="utf-8").read().split("## Prefix kinds")[1].split("\n\n")
    table = next(block for block in section if block.startswith("| kind |"))
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert rows == [f"| `{k.name}` | `{k.default_template}` | {k.description} |" for k in prefix_kinds.KINDS.values()]
