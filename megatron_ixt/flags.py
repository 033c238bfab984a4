"""Dataclass fields that are also command-line flags (torch-free).

A flag is declared once, as a dataclass field made with :func:`arg` (default, help text, choices).
:func:`add_flags` turns every field ``foo_bar`` of a dataclass into the flag ``--foo-bar`` (argparse
dest ``foo_bar``); :func:`renamed_fields` gives the same fields under other names (the IXT options
``prefix_kind`` -> ``ixt_prefix_kind``, i.e. ``--ixt-prefix-kind``), so one declaration serves every
parser and config that carries it.
"""
from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import field, fields


def arg(default=None, help: str = "", *, choices: Sequence | Callable[[], Sequence] | None = None,
        factory=None):
    """A dataclass field that is also a flag: ``help`` (required) and ``choices`` (a sequence, or a
    function returning it when a parser is built, e.g. a registry's current names) feed argparse."""
    if not help:
        raise TypeError("every config field needs help text")
    metadata = {"help": help, "choices": choices}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def flag_name(name: str) -> str:
    """``foo_bar`` -> ``--foo-bar``."""
    return "--" + name.replace("_", "-")


def field_choices(f: dataclasses.Field):
    """The choices of an :func:`arg` field (None: any value)."""
    choices = f.metadata["choices"]
    return choices() if callable(choices) else choices


def add_flags(group, cls, skip: Sequence[str] = ()) -> None:
    """One flag per field of dataclass ``cls`` (except ``skip``) on ``group`` (a parser or argument
    group): ``--foo-bar`` for ``foo_bar``, its help, choices and default from the field; a boolean
    that defaults to on also gets ``--no-foo-bar``; a list takes one or more values."""
    defaults = cls()
    for f in fields(cls):
        if f.name in skip:
            continue
        default = getattr(defaults, f.name)
        kwargs = {"dest": f.name, "default": default, "help": f.metadata["help"]}
        choices = field_choices(f)
        if choices:
            kwargs["choices"] = choices
        if isinstance(default, bool):
            action = argparse.BooleanOptionalAction if default else "store_true"
            group.add_argument(flag_name(f.name), action=action, **kwargs)
        elif isinstance(default, list):
            group.add_argument(flag_name(f.name), nargs="+", **kwargs)
        else:
            group.add_argument(flag_name(f.name), type=_field_type(f, default), **kwargs)


def _field_type(f: dataclasses.Field, default):
    if default is not None:
        return type(default)
    text = str(f.type)
    if "float" in text:
        return float
    if "int" in text:
        return int
    return str


def renamed_fields(cls, prefix: str, name: str) -> type:
    """A keyword-only dataclass called ``name`` with the fields of ``cls`` renamed ``prefix + field``
    (same types, defaults, help and choices), for a config section that carries ``cls``'s flags."""
    return dataclasses.make_dataclass(
        name, [(prefix + f.name, f.type, field(default=f.default, metadata=f.metadata)) for f in fields(cls)],
        kw_only=True)
