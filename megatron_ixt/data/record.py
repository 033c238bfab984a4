"""The annotated record: schema and validation (docs/CONTRACTS.md section 1).

One JSON object per line::

    {"id": str, "text": str, <other fields, preserved>,
     "ixt": {"status": "ok", "quality": 1..5,
             "scores": {<each of SCORE_AXES>: 1..5},
             "critique": str, "reasoning": str | null,
             "annotator": {"backend": str, "model": str, "prompt_version": str, ...}}}

A record without ``ixt`` or with a ``failed:*`` status is an *unannotated* document (trained
on with no prefix). Problems are reported as :class:`Problem` (a stable ``reason`` code plus a
human-readable message). Problems with the document itself (``DOCUMENT_REASONS``) drop the record;
problems with the ``ixt`` block (``ANNOTATION_REASONS``) degrade it to unannotated, keeping
its text. ``TOKENIZE_REASONS`` are the preprocessing tool's equivalents found while tokenizing.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

try:  # fast JSON decoding; optional (json decodes the same values)
    import orjson
except ImportError:
    orjson = None

SCORE_AXES = ("writing_style", "expertise", "educational_value", "factual_accuracy", "efficiency")
SCORE_MIN, SCORE_MAX = 1, 5
QUALITY_LEVELS = tuple(range(SCORE_MIN, SCORE_MAX + 1))
_AXES = frozenset(SCORE_AXES)
STATUS_OK = "ok"
FAILED_PREFIX = "failed:"
STATUS_MISSING = "missing"  # pseudo-status for records without an ``ixt`` block

# Stable reason codes; the counts in P_ixt.json are keyed by them.
DOCUMENT_REASONS = {
    "invalid_json": "line is not valid JSON (or not UTF-8)",
    "not_an_object": "line is JSON but not an object",
    "missing_text": "the text field is missing",
    "text_not_string": "the text field is not a string",
    "empty_text": "the text field is empty or whitespace only",
}
ANNOTATION_REASONS = {
    "ixt_not_object": "'ixt' is not an object",
    "ixt_bad_status": "'ixt.status' is neither 'ok' nor 'failed:<why>'",
    "ixt_bad_quality": "'ixt.quality' is missing, not an int, or outside 1..5",
    "ixt_bad_scores": "'ixt.scores' is missing an axis, has an unknown axis, or a score is not an int in 1..5",
    "ixt_bad_critique": "'ixt.critique' is missing, not a string, or empty",
    "ixt_bad_reasoning": "'ixt.reasoning' is neither a string nor null",
    "ixt_bad_annotator": "'ixt.annotator' is present but not an object",
}
# Found while tokenizing (tools/preprocess_ixt.py), not by schema validation.
TOKENIZE_REASONS = {
    "text_untokenizable": "the tokenizer failed on the text, gave no tokens, or gave ids outside its vocabulary",
    "prefix_untokenizable": "the tokenizer failed on a rendered prefix (annotation dropped, text kept)",
}
REASONS = {**DOCUMENT_REASONS, **ANNOTATION_REASONS, **TOKENIZE_REASONS}


@dataclass(frozen=True)
class Problem:
    """One problem with one record: ``reason`` is a key of ``REASONS``; ``message`` names the field."""

    reason: str
    message: str

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


@dataclass(slots=True)  # not frozen: a frozen dataclass takes ~1 us longer to build, per record
class Annotation:
    """A valid ``ixt`` block (read-only by convention). ``scores`` holds every axis of
    ``SCORE_AXES``, in that order."""

    quality: int
    scores: dict
    critique: str
    reasoning: str | None = None
    annotator: dict = field(default_factory=dict)


@dataclass(slots=True)
class Record:
    """A parsed line (read-only by convention). ``text`` is None when the record was dropped (see
    ``problems``).

    ``status`` is the ``ixt.status`` string, ``STATUS_MISSING`` without an ``ixt`` block.
    ``annotation`` is set only for a valid ``ok`` block.
    """

    text: str | None
    annotation: Annotation | None
    status: str
    problems: tuple = ()


def _is_score(value) -> bool:
    """An int (not a bool: JSON decoders give no other int subclass) in SCORE_MIN..SCORE_MAX."""
    return type(value) is int and SCORE_MIN <= value <= SCORE_MAX


def annotation_problems(ixt) -> list[Problem]:
    """All problems of an ``ixt`` block (empty list: valid). Failure statuses are valid."""
    if not isinstance(ixt, dict):
        return [Problem("ixt_not_object", f"'ixt' is {type(ixt).__name__}, expected an object")]
    status = ixt.get("status")
    if not isinstance(status, str) or not (status == STATUS_OK or status.startswith(FAILED_PREFIX)):
        return [Problem("ixt_bad_status", f"'ixt.status' is {status!r}, expected 'ok' or 'failed:<why>'")]
    if status != STATUS_OK:
        return []
    problems = []
    quality = ixt.get("quality")
    if not _is_score(quality):
        problems.append(Problem("ixt_bad_quality", f"'ixt.quality' is {quality!r}, expected an int in 1..5"))
    scores = ixt.get("scores")
    if not isinstance(scores, dict):
        problems.append(Problem("ixt_bad_scores", f"'ixt.scores' is {type(scores).__name__}, expected an object"))
    elif scores.keys() != _AXES or not all(map(_is_score, scores.values())):  # else: valid
        missing = [a for a in SCORE_AXES if a not in scores]
        unknown = sorted(a for a in scores if a not in SCORE_AXES)
        bad = [a for a in SCORE_AXES if a in scores and not _is_score(scores[a])]
        details = [f"'ixt.scores' is missing axis {a!r}" for a in missing]
        details += [f"'ixt.scores' has unknown axis {a!r}" for a in unknown]
        details += [f"'ixt.scores.{a}' is {scores[a]!r}, expected an int in 1..5" for a in bad]
        if details:
            problems.append(Problem("ixt_bad_scores", "; ".join(details)))
    critique = ixt.get("critique")
    if not isinstance(critique, str) or not critique.strip():
        problems.append(Problem("ixt_bad_critique", f"'ixt.critique' is {critique!r:.60}, expected a non-empty string"))
    reasoning = ixt.get("reasoning")
    if reasoning is not None and not isinstance(reasoning, str):
        problems.append(Problem("ixt_bad_reasoning",
                                f"'ixt.reasoning' is {type(reasoning).__name__}, expected a string or null"))
    annotator = ixt.get("annotator", {})
    if not isinstance(annotator, dict):
        problems.append(Problem("ixt_bad_annotator",
                                f"'ixt.annotator' is {type(annotator).__name__}, expected an object"))
    return problems


def parse_annotation(ixt) -> tuple[Annotation | None, list[Problem]]:
    """Validate an ``ixt`` block: ``(Annotation, [])`` for a valid ``ok`` block, else ``(None, problems)``."""
    problems = annotation_problems(ixt)
    if problems or ixt.get("status") != STATUS_OK:
        return None, problems
    scores = ixt["scores"]
    if tuple(scores) != SCORE_AXES:  # the axes in SCORE_AXES order (annotate writes them so)
        scores = {axis: scores[axis] for axis in SCORE_AXES}
    return Annotation(ixt["quality"], scores, ixt["critique"].strip(), ixt.get("reasoning"),
                      ixt.get("annotator", {})), []


def parse_record(obj, text_key: str = "text") -> Record:
    """Validate a decoded JSON value (one line of an annotated corpus)."""
    if not isinstance(obj, dict):
        return Record(None, None, STATUS_MISSING, (Problem("not_an_object", f"line is a JSON {type(obj).__name__}"),))
    status = STATUS_MISSING
    annotation, problems = None, []
    if "ixt" in obj:
        ixt = obj["ixt"]
        status = ixt.get("status") if isinstance(ixt, dict) and isinstance(ixt.get("status"), str) else "malformed"
        annotation, problems = parse_annotation(ixt)
    if text_key not in obj:
        problems.insert(0, Problem("missing_text", f"no {text_key!r} field"))
        return Record(None, None, status, tuple(problems))
    text = obj[text_key]
    if not isinstance(text, str):
        problems.insert(0, Problem("text_not_string", f"{text_key!r} is {type(text).__name__}, expected a string"))
        return Record(None, None, status, tuple(problems))
    if not text.strip():
        problems.insert(0, Problem("empty_text", f"{text_key!r} is empty"))
        return Record(None, None, status, tuple(problems))
    return Record(text, annotation, status, tuple(problems))


def _decode(line: bytes | str):
    """``json.loads``, through orjson when it takes the line: json decides (and words the error)
    for what orjson refuses but json reads (NaN, ints beyond 64 bits, lone surrogates)."""
    if orjson is not None:
        try:
            return orjson.loads(line)
        except orjson.JSONDecodeError:
            pass
    return json.loads(line)


def parse_line(line: bytes | str, text_key: str = "text") -> Record:
    """Decode and validate one JSONL line (without its newline)."""
    try:
        obj = _decode(line)
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        return Record(None, None, STATUS_MISSING, (Problem("invalid_json", f"invalid JSON: {exc}"),))
    return parse_record(obj, text_key)

