"""The registry of prefix kinds: the one place a new kind of feedback prefix goes.

A *prefix kind* is a way of turning a document's annotation into the text placed before it. Each
kind has a built-in default template (``megatron_ixt/data/templates/<name>.txt``) and a function
giving the template fields of an annotation. Everything else follows from :data:`KINDS`: the
stores a shard set holds (``P_<kind>_prefix``), the ``--<kind>-template`` flags and token counts of
tools/preprocess_ixt.py, tools/inspect_ixt.py, the ``--ixt-prefix-kind`` choices, the
``--steer`` choices of ``megatron_ixt.generate`` and the docs table (docs/dataset.md).

Steering levels (:func:`steering_annotation`, ``--steer KIND[:LEVEL]``): ``LEVEL`` is an int
1..5 (quality and every axis at that level, the built-in critique of that level) or
``axis=score[,axis=score...]`` (only those axes; the others, the quality and the critique are
left out: "as they come"). A template that needs a field the level leaves out cannot steer on it.
"""
from __future__ import annotations

import argparse
import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from megatron_ixt.data.record import SCORE_AXES, SCORE_MAX, SCORE_MIN, Annotation

QUALITY_LABELS = {1: "very poor", 2: "poor", 3: "average", 4: "good", 5: "excellent"}
AXIS_LABELS = {axis: axis.replace("_", " ") for axis in SCORE_AXES}  # "educational value"
# The critique of each steering level (quality and every axis at that level).
STEERING_CRITIQUES = {
    1: "A very poor document: confusing and badly organized, written without expertise, of no "
       "educational value, inaccurate, and padded with wasted words.",
    2: "A poor document: hard to follow, shallow, of little educational value, with errors and "
       "much padding.",
    3: "An average document: readable but unremarkable, with some expertise, some educational "
       "value, mostly accurate, somewhat wordy.",
    4: "A good document: clear and organized, knowledgeable, educational, accurate, and mostly "
       "concise.",
    5: "An excellent document: clear and well organized, written with real expertise, highly "
       "educational, factually accurate and dense, with no wasted words.",
}
STEERING_CRITIQUE = STEERING_CRITIQUES[SCORE_MAX]

Level = int | dict[str, int]
"""A steering level: an int 1..5, or a mapping of some of ``SCORE_AXES`` to 1..5."""


@functools.lru_cache(maxsize=1 << 14)  # a corpus has at most 5**5 score combinations
def axes_text(scores: tuple[tuple[str, int], ...]) -> str:
    """The ``{axes}`` field: ``((axis, score), ...)`` as "writing style 4/5, expertise 3/5, ..."."""
    return ", ".join(f"{AXIS_LABELS[a]} {s}/{SCORE_MAX}" for a, s in scores)


def common_fields(annotation: Annotation) -> dict:
    """Template fields of an annotation; a steering annotation may leave fields out (None / axes missing).

    ``{quality}`` 1..5, ``{quality_label}`` (``QUALITY_LABELS``), ``{critique}``, one field per axis of
    ``SCORE_AXES`` (its score) and ``{axes}``: the axes present, as "writing style 4/5, expertise 3/5, ...".
    """
    values = dict(annotation.scores)
    values["axes"] = axes_text(tuple(annotation.scores.items()))
    if annotation.quality is not None:
        values.update(quality=annotation.quality, quality_label=QUALITY_LABELS[annotation.quality])
    if annotation.critique is not None:
        values["critique"] = annotation.critique
    return values


COMMON_FIELDS = ("quality", "quality_label", "critique", "axes") + SCORE_AXES


@dataclass(frozen=True)
class PrefixKind:
    """One kind of feedback prefix.

    ``name``: a lower-case identifier (the store ``P_<name>_prefix``, the flag ``--<name>-template``);
    ``default_template``: a built-in template name or a template file path; ``description``: one
    line for help texts and the docs; ``fields``: annotation -> template fields (``str.format``
    keywords), with ``field_names`` the fields a template of this kind may use.
    """

    name: str
    default_template: str
    description: str
    fields: Callable[[Annotation], dict] = common_fields
    field_names: tuple[str, ...] = COMMON_FIELDS

    @property
    def flag(self) -> str:
        """The preprocess flag choosing this kind's template."""
        return f"--{self.name.replace('_', '-')}-template"


KINDS: dict[str, PrefixKind] = {}
"""name -> PrefixKind, in registration order (the order of stores, flags and tables)."""

_RESERVED = {"none", "text"}  # "none" is the baseline prefix kind, "text" the text store


def register(kind: PrefixKind) -> PrefixKind:
    """Add ``kind`` to :data:`KINDS` and return it; refuses a taken or malformed name."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", kind.name) or kind.name in _RESERVED:
        raise ValueError(f"prefix kind name {kind.name!r}: expected a lower-case identifier other than "
                         f"{sorted(_RESERVED)}")
    if kind.name in KINDS:
        raise ValueError(f"prefix kind {kind.name!r} is already registered")
    KINDS[kind.name] = kind
    return kind


def get(name: str) -> PrefixKind:
    """The registered kind ``name``; ValueError listing the registered kinds otherwise."""
    if name not in KINDS:
        raise ValueError(f"unknown prefix kind {name!r}; expected one of {names()}")
    return KINDS[name]


def names() -> tuple[str, ...]:
    """The registered kind names, in registration order."""
    return tuple(KINDS)


register(PrefixKind("critique", "critique_v1", "the judge's natural-language critique, after quality and axis scores"))
register(PrefixKind("quality", "quality_v1", "the overall quality as one of 5 templated levels"))
register(PrefixKind("scores", "scores_v1", "the five rubric axes, each with its templated level 1..5"))


# --------------------------------------------------------------------------------------------- steering


def _score(text: str, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not SCORE_MIN <= value <= SCORE_MAX:
        raise ValueError(f"{what}: {text!r} is not a level {SCORE_MIN}..{SCORE_MAX}")
    return value


def parse_level(text: str) -> Level | None:
    """``""`` -> None (the top level); ``"3"`` -> 3; ``"educational_value=5,expertise=4"`` -> a dict."""
    if not text:
        return None
    if "=" not in text:
        return _score(text, "steering level")
    level = {}
    for part in text.split(","):
        axis, _, value = part.partition("=")
        if axis not in SCORE_AXES:
            raise ValueError(f"steering level {text!r}: unknown axis {axis!r}; axes: {', '.join(SCORE_AXES)}")
        level[axis] = _score(value, f"steering level {axis}")
    return level


NO_STEERING = "none"
"""The steering spec of no prefix: unconditioned."""


def parse_steer(spec: str, kinds: Sequence[str] | None = None) -> tuple[str, Level | None] | None:
    """The one parser of steering specs: ``"none"`` -> None (no prefix); ``KIND[:LEVEL]`` -> ``(kind, level)``
    (see :func:`parse_level`). ``kinds``: the kind names allowed (default: the registered ones)."""
    if spec == NO_STEERING:
        return None
    name, _, level = spec.partition(":")
    if kinds is None:
        get(name)
    elif name not in kinds:
        raise ValueError(f"unknown prefix kind {name!r}; expected one of {tuple(kinds)} or {NO_STEERING!r}")
    return name, parse_level(level)


def steer_argument(spec: str) -> tuple[str, Level | None] | None:
    """:func:`parse_steer` as an argparse ``type`` (its message shown as the flag's error)."""
    try:
        return parse_steer(spec)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def steering_annotation(level: Level | None = None, critique: str | None = None) -> Annotation:
    """The annotation a steering prefix is rendered from.

    ``level`` None or an int: quality and every axis at that level (default the top, 5), critique
    ``critique`` or the built-in one of that level (``STEERING_CRITIQUES``). A mapping: only those
    axes (in ``SCORE_AXES`` order), no quality, critique only when given.
    """
    if level is None:
        level = SCORE_MAX
    if isinstance(level, int):
        _score(str(level), "steering level")
        return Annotation(level, {axis: level for axis in SCORE_AXES},
                          STEERING_CRITIQUES[level] if critique is None else critique)
    for axis, value in level.items():
        if axis not in SCORE_AXES:
            raise ValueError(f"steering level: unknown axis {axis!r}; axes: {', '.join(SCORE_AXES)}")
        _score(str(value), f"steering level {axis}")
    return Annotation(None, {axis: level[axis] for axis in SCORE_AXES if axis in level}, critique)


STEER_HELP = ("KIND[:LEVEL]: LEVEL is 1..5 (default 5, the top), or AXIS=N[,AXIS=N...] for single rubric axes "
              f"({', '.join(SCORE_AXES)}), the others left out")
