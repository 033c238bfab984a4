"""Parsing a thinking judge's output into critique + scores, or a failure reason.

Contract: :func:`parse_output` returns a :class:`Judgement` whose scores are ints in 1..5 for
every axis of ``SCORE_AXES`` plus ``quality``, and a non-empty critique; otherwise it raises
:class:`ParseError`. It never fills in a missing or out-of-range score.

Reasoning is separated first: the server's ``reasoning_content`` (OpenAI API with
``--reasoning-parser``) and/or ``<think>...</think>`` blocks in the text (a missing opening tag
is fine: chat templates often put ``<think>`` in the prompt). The answer is the text after the
last ``</think>``; in it, the *last* JSON object carrying a ``quality`` key is the verdict
(earlier objects are drafts or echoes of the format), with ``key: value`` / ``<critique>``
tagged fields as a fallback, again anchored on their last occurrence.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

from megatron_ixt.data.record import SCORE_AXES, SCORE_MAX, SCORE_MIN

QUALITY_KEYS = ("quality", "overall_quality", "overall")
_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"
_DECODER = json.JSONDecoder()
_SCORE_STR = re.compile(r"^\s*(\d+)\s*(?:/\s*5)?\s*$")
_CRITIQUE_TAG = re.compile(r"<critique>(.*?)</critique>", re.S | re.I)
_CRITIQUE_LINE = re.compile(r"^[\W_]*critique[\W_]*[:=]\s*(.+)$", re.I | re.M)


class ParseError(ValueError):
    """The output holds no valid verdict. ``reason`` is the failure status suffix."""

    def __init__(self, message: str, reason: str = "parse"):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Judgement:
    quality: int
    scores: dict  # axis -> int, in SCORE_AXES order
    critique: str
    reasoning: str | None


def split_reasoning(text: str, reasoning_content: str | None = None) -> tuple[str | None, str]:
    """``(reasoning or None, answer)`` of a completion. Unfinished thinking yields answer ''."""
    parts = [reasoning_content.strip()] if reasoning_content and reasoning_content.strip() else []
    close = text.rfind(_THINK_CLOSE)
    if close >= 0:
        thought, answer = text[:close], text[close + len(_THINK_CLOSE):]
    elif _THINK_OPEN in text:
        thought, answer = text, ""
    else:
        thought, answer = "", text
    thought = thought.replace(_THINK_OPEN, "").replace(_THINK_CLOSE, "").strip()
    if thought:
        parts.append(thought)
    return ("\n\n".join(parts) if parts else None), answer.strip()


def _score(name: str, value) -> int:
    if isinstance(value, bool):
        raise ParseError(f"score {name!r} is a boolean")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    elif isinstance(value, str) and _SCORE_STR.match(value):
        value = int(_SCORE_STR.match(value).group(1))
    if not isinstance(value, int):
        raise ParseError(f"score {name!r} is {value!r}, not an integer")
    if not SCORE_MIN <= value <= SCORE_MAX:
        raise ParseError(f"score {name!r}={value} outside {SCORE_MIN}..{SCORE_MAX}")
    return value


def _last_verdict_object(answer: str) -> dict | None:
    """The last JSON object in ``answer`` that has a quality key (nested ``scores`` allowed)."""
    pos = answer.rfind("{")
    while pos >= 0:
        try:
            obj, _ = _DECODER.raw_decode(answer, pos)
        except ValueError:
            obj = None
        if isinstance(obj, dict) and any(k in obj for k in QUALITY_KEYS):
            return obj
        pos = answer.rfind("{", 0, pos)
    return None


def _from_object(obj: dict) -> tuple[int, dict, object]:
    flat = dict(obj.get("scores") or {}) if isinstance(obj.get("scores"), dict) else {}
    flat.update({k: v for k, v in obj.items() if k != "scores"})
    missing = [a for a in SCORE_AXES if a not in flat]
    if missing:
        raise ParseError(f"verdict lacks score(s) {', '.join(missing)}")
    quality_key = next(k for k in QUALITY_KEYS if k in flat)
    scores = {a: _score(a, flat[a]) for a in SCORE_AXES}
    return _score("quality", flat[quality_key]), scores, flat.get("critique")


def _from_tags(answer: str) -> tuple[int, dict, object]:
    def last_value(names):
        found = None
        for name in names:
            pattern = re.compile(r"^[\W_]*" + name.replace("_", r"[_ ]") + r"[\W_]*[:=]\s*\"?(\d+(?:\s*/\s*5)?)",
                                 re.I | re.M)
            for m in pattern.finditer(answer):
                if found is None or m.start() > found[0]:
                    found = (m.start(), m.group(1))
        return found[1] if found else None

    values = {a: last_value([a]) for a in SCORE_AXES}
    quality = last_value(QUALITY_KEYS)
    missing = [a for a, v in values.items() if v is None] + (["quality"] if quality is None else [])
    if missing:
        raise ParseError(f"no JSON verdict and no tagged score(s) for {', '.join(missing)}")
    tags = _CRITIQUE_TAG.findall(answer) or _CRITIQUE_LINE.findall(answer)
    return _score("quality", quality), {a: _score(a, v) for a, v in values.items()}, (tags[-1] if tags else None)


def parse_output(text: str, reasoning_content: str | None = None) -> Judgement:
    """Parse one completion (see module doc). Raises :class:`ParseError`."""
    reasoning, answer = split_reasoning(text, reasoning_content)
    if not answer:
        raise ParseError("no answer after the reasoning (unfinished <think> block or empty output)")
    obj = _last_verdict_object(answer)
    quality, scores, critique = _from_object(obj) if obj is not None else _from_tags(answer)
    if not isinstance(critique, str) or not critique.strip():
        raise ParseError("verdict has no non-empty critique")
    return Judgement(quality=quality, scores=scores, critique=" ".join(critique.split()), reasoning=reasoning)
