"""Prefix templates: how an annotation becomes the text placed before its document.

A template is a text file in Python ``str.format`` syntax; it is rendered verbatim (including
its trailing newline). The fields it may use are those of its prefix kind
(``megatron_ixt.data.prefix_kinds``); for the built-in kinds::

    {quality}        overall quality, 1..5
    {quality_label}  QUALITY_LABELS[quality], e.g. "excellent"
    {critique}       the natural-language critique
    {writing_style} {expertise} {educational_value} {factual_accuracy} {efficiency}   axis scores
    {axes}           the axes as "writing style 4/5, expertise 3/5, ..." (only those present)

Built-in templates live in ``megatron_ixt/data/templates/<name>.txt`` (``critique_v1``,
``quality_v1``, ``scores_v1``); a new wording gets a new name, never an edit. A template is
identified by its name and the sha256 of its text, both recorded in ``P_ixt.json``.

A *steering* prefix is a template rendered for :func:`~megatron_ixt.data.prefix_kinds.steering_annotation`
of a level (:func:`steering`): what evaluation and generation condition on.
"""
from __future__ import annotations

import hashlib
import os
import string
from dataclasses import dataclass

from megatron_ixt.data import prefix_kinds
from megatron_ixt.data.prefix_kinds import Level, steering_annotation
from megatron_ixt.data.record import Annotation

TEMPLATE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")


@dataclass(frozen=True)
class PrefixTemplate:
    """A loaded, validated template of prefix kind ``kind``. ``name`` is a built-in name or the file path given."""

    kind: str
    name: str
    text: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    def render(self, annotation: Annotation) -> str:
        """The prefix text of ``annotation``; ValueError when the annotation (a steering level) lacks a field."""
        try:
            return self.text.format_map(prefix_kinds.get(self.kind).fields(annotation))
        except KeyError as exc:
            raise ValueError(f"{self.kind} template {self.name!r} uses {{{exc.args[0]}}}, which this steering "
                             "level leaves out; give a level that sets it (e.g. a number 1..5)") from None

    def identity(self) -> dict:
        """The ``templates.<kind>`` entry of ``P_ixt.json``."""
        return {"name": self.name, "text": self.text, "sha256": self.sha256}


def builtin_templates() -> list[str]:
    """Names of the bundled templates."""
    return sorted(f[:-4] for f in os.listdir(TEMPLATE_DIR) if f.endswith(".txt"))


def check_fields(kind: str, text: str, where: str) -> None:
    """Raise ValueError (naming ``where``) unless ``text`` is a valid template of ``kind``."""
    allowed = prefix_kinds.get(kind).field_names
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise ValueError(f"{where}: not a valid template ({exc}); write literal braces as {{{{ }}}}") from None
    for _, field_name, _, _ in parsed:
        if field_name is not None and field_name not in allowed:
            raise ValueError(f"{where}: unknown template field {{{field_name}}}; allowed: "
                             + ", ".join("{" + f + "}" for f in allowed))


def load_template(kind: str, spec: str | None = None) -> PrefixTemplate:
    """Load the template of the registered prefix kind ``kind``.

    ``spec`` is None or "default" (the kind's default template), a built-in name
    (see :func:`builtin_templates`), or the path of a user template file.
    """
    registered = prefix_kinds.get(kind)
    name = registered.default_template if spec in (None, "default") else spec
    path = os.path.join(TEMPLATE_DIR, name + ".txt") if name in builtin_templates() else name
    if not os.path.isfile(path):
        raise ValueError(f"{registered.flag} {spec!r}: no such file and no built-in template of that "
                         f"name (built-ins: {', '.join(builtin_templates())})")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if not text.strip():
        raise ValueError(f"{path}: template is empty")
    check_fields(kind, text, path)
    return PrefixTemplate(kind, name, text)


def recorded_template(metadata: dict, kind: str) -> PrefixTemplate:
    """The ``kind`` template recorded in a shard set's ``P_ixt.json`` (``metadata``)."""
    entry = metadata["templates"][kind]
    if not entry.get("text"):
        raise ValueError(f"the shard set records no {kind} template text (template {entry.get('name')!r}); "
                         "only its stored top-level steering prefix can be used")
    return PrefixTemplate(kind, entry.get("name", kind), entry["text"])


def steering(kind: str, level: Level | None = None, *, critique: str | None = None,
             template: PrefixTemplate | None = None) -> str:
    """The steering prefix text of ``kind`` at ``level`` (None: the top), rendered with ``template``
    (default: the kind's default template); ``critique`` replaces the level's built-in critique."""
    template = template or load_template(kind)
    return template.render(steering_annotation(level, critique))


def render_kinds(templates: dict, annotations: list) -> dict:
    """``{kind: [template.render(a) for a in annotations]}`` for ``templates`` (kind ->
    PrefixTemplate) and complete annotations (a corpus's, not steering levels), faster: kinds that
    share a ``fields`` function (the built-in ones) compute each annotation's fields once."""
    fields_of: dict = {}
    rendered = {}
    for kind, template in templates.items():
        fields = prefix_kinds.get(kind).fields
        if fields not in fields_of:
            fields_of[fields] = [fields(a) for a in annotations]
        render = template.text.format_map  # format(**values) would copy each dict
        rendered[kind] = list(map(render, fields_of[fields]))
    return rendered
