"""Verifier backend: a programmatic judge for column-addition worked solutions (CPU only).

The demo's judge, a plugin outside the package: importing this module registers ``--backend
verifier`` (``python -m annotate --import ixt_demo.verifier run --backend verifier ...`` with
``examples/demo`` on ``PYTHONPATH``).

It reads documents in the format of :mod:`ixt_demo.synthetic` (``Q: a + b = ?``, one
``<Column>: x + y [+ c] = s. Write d[, carry k].`` line per column, ``Answer: n``; other
lines count as filler), recomputes every step, and answers like a thinking judge would: a
check log as reasoning and a JSON verdict (critique + five scores + quality) as text. The
runner parses that verdict with the same parser as for model output.

Scoring (all 1..5): factual_accuracy 5 when every step and the answer are right, 3 when the
answer is right despite a wrong step, 1 when the answer is wrong; educational_value 5 for
correct working, 4 when padded, 2 without working, 1 for wrong working; expertise grows with
the number of digits; writing_style and efficiency drop with filler lines; quality is 1 for a
wrong answer, 2 for a right answer from wrong working, else the rounded mean of the others.
Documents it cannot read fail with ``failed:unverifiable``.
"""
from __future__ import annotations

import json
import re

from annotate.backends import register
from annotate.backends.base import BackendError, Completion, JudgeContext, Request
from ixt_demo.synthetic import COLUMNS, digits

_QUESTION = re.compile(r"^Q:\s*(\d+)\s*\+\s*(\d+)\s*=\s*\?\s*$")
_ANSWER = re.compile(r"^Answer:\s*(-?\d+)\s*$")
_STEP = re.compile(r"^([A-Za-z-]+):\s*(\d+)\s*\+\s*(\d+)(?:\s*\+\s*(\d+))?\s*=\s*(-?\d+)\.\s*Write\s+(\d+)"
                   r"(?:,\s*carry\s+(\d+))?\.\s*$")


def judge(document: str) -> tuple[dict, str]:
    """``(verdict, check_log)`` for one document; raises ValueError if it is not checkable."""
    lines = [ln.strip() for ln in document.strip().splitlines() if ln.strip()]
    if not lines or not _QUESTION.match(lines[0]):
        raise ValueError("no 'Q: a + b = ?' first line")
    q = _QUESTION.match(lines[0])
    a, b = int(q.group(1)), int(q.group(2))
    answers = [m for m in map(_ANSWER.match, lines) if m]
    if not answers:
        raise ValueError("no 'Answer: n' line")
    stated, truth = int(answers[-1].group(1)), a + b
    steps = [m for m in map(_STEP.match, lines[1:]) if m]
    filler = len(lines) - 2 - len(steps)
    log = [f"Question: {a} + {b}; the true sum is {truth}."]
    errors = []  # (column name, description), in column order
    da, db = digits(a), digits(b)
    ncols = max(len(da), len(db))
    if steps and len(steps) != ncols:
        errors.append(("", f"the working has {len(steps)} column steps for {ncols} columns"))
    carry_noted = 0
    for k, m in enumerate(steps[:ncols]):
        name, x, y = m.group(1), int(m.group(2)), int(m.group(3))
        c, s, write = int(m.group(4) or 0), int(m.group(5)), int(m.group(6))
        carry = int(m.group(7) or 0)
        ex, ey = (da[k] if k < len(da) else 0), (db[k] if k < len(db) else 0)
        expected = ex + ey + carry_noted
        last = k == ncols - 1
        problem = None
        if name != COLUMNS[k]:
            problem = f"is labelled {name} but is the {COLUMNS[k]} column"
        elif (x, y) != (ex, ey):
            problem = f"adds the digits {x} and {y}, but the {COLUMNS[k]} digits are {ex} and {ey}"
        elif c != carry_noted and carry_noted:
            problem = (f"drops the carry of {carry_noted} from the {COLUMNS[k - 1]} column "
                       f"({x} + {y} should be {x} + {y} + {carry_noted} = {expected})")
        elif c != carry_noted:
            problem = f"adds a carry of {c} although the previous column carries nothing"
        elif x + y + c != s:
            problem = f"miscalculates {x} + {y}" + (f" + {c}" if c else "") + f" as {s} (it is {x + y + c})"
        elif write != (s if last else s % 10) or carry != (0 if last else s // 10):
            problem = f"writes {write}" + (f" carry {carry}" if carry else "") + f" for the sum {s}"
        log.append(f"{COLUMNS[k]}: expected {ex} + {ey}" + (f" + {carry_noted}" if carry_noted else "")
                   + f" = {expected}; document: {m.group(0)} " + (f"-> WRONG: {problem}" if problem else "-> ok"))
        if problem:
            errors.append((name, problem))
        carry_noted = carry
    right = stated == truth
    log.append(f"Stated answer {stated}: " + ("correct." if right else f"wrong, should be {truth}."))

    n_digits = max(len(da), len(db))
    scores = {
        "writing_style": 5 if filler == 0 and (not steps or len(steps) == ncols) else (4 if filler <= ncols else 3),
        "expertise": max(1, min(5, n_digits - 1)),
        "educational_value": 1 if errors else (2 if not steps else (4 if filler else 5)),
        "factual_accuracy": 1 if not right else (3 if errors else 5),
        "efficiency": 5 if filler == 0 else max(1, 5 - round(4 * filler / len(lines))),
    }
    if not right:
        quality = 1
    elif errors:
        quality = 2
    else:
        quality = round(sum(scores[a] for a in ("writing_style", "educational_value", "factual_accuracy",
                                                "efficiency")) / 4)
    verdict = {"critique": _critique(a, b, stated, truth, steps, errors, filler), **scores, "quality": quality}
    return verdict, "\n".join(log)


def _critique(a, b, stated, truth, steps, errors, filler) -> str:
    parts = []
    if stated != truth:
        parts.append(f"The answer {stated} is wrong: {a} + {b} = {truth}.")
    if errors:
        name, problem = errors[0]
        parts.append((f"The {name} step {problem}" if name else f"The solution is malformed: {problem}") + ".")
        same = sum(1 for _, p in errors[1:] if p.split(" (")[0].startswith("drops the carry"))
        if same and problem.startswith("drops the carry"):
            parts.append(f"The same carry slip repeats in {same} later column{'s' if same > 1 else ''}.")
        elif len(errors) > 1:
            parts.append(f"{len(errors) - 1} further step{'s are' if len(errors) > 2 else ' is'} wrong.")
    elif stated == truth:
        if steps:
            parts.append(f"A correct column-by-column addition of {a} and {b}: every carry is handled and the answer "
                         f"{truth} is right.")
        else:
            parts.append(f"States the correct sum {truth} of {a} and {b} but shows no working, so a reader learns "
                         "little from it.")
    if filler:
        parts.append(f"{filler} filler line{'s add' if filler > 1 else ' adds'} nothing to the working.")
    elif steps and not errors and stated == truth:
        parts.append("Clear and concise.")
    return " ".join(parts)


@register
class VerifierBackend:
    """:class:`annotate.backends.base.BackendFactory` and ``Backend`` over :func:`judge`;
    ``count`` measures tokens for the usage counts. It has no flags and ignores sampling."""

    name = "verifier"
    description = "programmatic judge of column-addition worked solutions (ixt_demo.synthetic), CPU only"
    model = "arithmetic-verifier-v1"
    result_flags = ()
    operational_flags = ()

    @staticmethod
    def add_args(group) -> None:
        pass

    @classmethod
    def from_args(cls, args, judge: JudgeContext) -> VerifierBackend:
        return cls(judge.count)

    def __init__(self, count=lambda s: len(s.split())):
        self.count = count
        self.errors: dict[str, int] = {}  # no transport, so never any

    def info(self) -> dict:
        return {"backend": self.name, "model": self.model}

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def complete(self, request: Request) -> Completion:
        try:
            verdict, log = judge(request.document)
        except ValueError as e:
            raise BackendError(f"not a checkable worked addition: {e}", "unverifiable") from None
        text = json.dumps(verdict)
        return Completion(text=text, reasoning=log, finish_reason="stop", prompt_tokens=self.count(request.prompt),
                          completion_tokens=self.count(text) + self.count(log))
