"""Prefix templates: how an annotation becomes the text placed before its document.

A template is a text file in Python ``str.format`` syntax; it is rendered verbatim (including
its trailing newline) and may use these fields::

    {quality}        overall quality, 1..5
    {quality_label}  QUALITY_LABELS[quality], e.g. "excellent"
    {critique}       the natural-language critique
    {writing_style} {expertise} {educational_value} {factual_accuracy} {efficiency}   axis scores

Built-in templates live in ``megatron_ixt/data/templates/<name>.txt`` (``critique_v1``,
``quality_v1``); a new wording gets a new name, never an edit. A template is identified by its
name and the sha256 of its text, both recorded in ``P_ixt.json``.

The *steering* prefix of a kind is its template rendered for :func:`steering_annotation`
(all scores 5 and, by default, ``STEERING_CRITIQUE``): what evaluation and generation condition on.
"""
from __future__ import annotations

import hashlib
import os
import string
from dataclasses import dataclass

from megatron_ixt.data.record import SCORE_AXES, SCORE_MAX, Annotation

TEMPLATE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
DEFAULT_TEMPLATES = {"critique": "critique_v1", "quality": "quality_v1"}
QUALITY_LABELS = {1: "very poor", 2: "poor", 3: "average", 4: "good", 5: "excellent"}
FIELDS = ("quality", "quality_label", "critique") + SCORE_AXES
STEERING_CRITIQUE = (
    "An excellent document: clear and well organized, written with real expertise, highly "
    "educational, factually accurate and dense, with no wasted words."
)


@dataclass(frozen=True)
class PrefixTemplate:
    """A loaded, validated template. ``name`` is a built-in name or the file path given."""

    kind: str
    name: str
    text: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    def render(self, annotation: Annotation) -> str:
        return self.text.format(quality=annotation.quality,
                                quality_label=QUALITY_LABELS[annotation.quality],
                                critique=annotation.critique, **annotation.scores)

    def identity(self) -> dict:
        """The ``templates.<kind>`` entry of ``P_ixt.json``."""
        return {"name": self.name, "text": self.text, "sha256": self.sha256}


def builtin_templates() -> list[str]:
    """Names of the bundled templates."""
    return sorted(f[:-4] for f in os.listdir(TEMPLATE_DIR) if f.endswith(".txt"))


def _check_fields(text: str, where: str) -> None:
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise ValueError(f"{where}: not a valid template ({exc}); write literal braces as {{{{ }}}}") from None
    for _, field_name, _, _ in parsed:
        if field_name is not None and field_name not in FIELDS:
            raise ValueError(f"{where}: unknown template field {{{field_name}}}; allowed: "
                             + ", ".join("{" + f + "}" for f in FIELDS))


def load_template(kind: str, spec: str | None = None) -> PrefixTemplate:
    """Load the ``kind`` ("critique" or "quality") template.

    ``spec`` is None or "default" (the built-in default of ``kind``), a built-in name
    (see :func:`builtin_templates`), or the path of a user template file.
    """
    if kind not in DEFAULT_TEMPLATES:
        raise ValueError(f"unknown prefix kind {kind!r}; expected one of {tuple(DEFAULT_TEMPLATES)}")
    name = DEFAULT_TEMPLATES[kind] if spec in (None, "default") else spec
    path = os.path.join(TEMPLATE_DIR, name + ".txt") if name in builtin_templates() else name
    if not os.path.isfile(path):
        raise ValueError(f"--{kind}-template {spec!r}: no such file and no built-in template of that "
                         f"name (built-ins: {', '.join(builtin_templates())})")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if not text.strip():
        raise ValueError(f"{path}: template is empty")
    _check_fields(text, path)
    return PrefixTemplate(kind, name, text)


def steering_annotation(critique: str = STEERING_CRITIQUE) -> Annotation:
    """The top quality level: every score 5 and ``critique`` (default: the built-in excellent one)."""
    return Annotation(SCORE_MAX, {axis: SCORE_MAX for axis in SCORE_AXES}, critique)
