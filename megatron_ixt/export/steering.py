"""``ixt_steering.json``: the steering prefixes of an exported model, for tools outside megatron-ixt.

Format (written by :func:`write_steering`, read by :func:`steering_tokens`)::

    {"format": "megatron-ixt-steering", "version": 1,
     "shard_sets": ["P", ...],                       # the shard sets (P_ixt.json) it came from
     "kinds": {"<kind>": {"1": {"text": str, "tokens": [int, ...]}, ..., "5": {...}}, ...}}

One entry per prefix kind of the shard set and steering level 1..5 (quality and every axis at that
level, ``megatron_ixt.data.prefix_kinds.steering_annotation``): level 5 is the stored
``steering.<kind>`` of ``P_ixt.json``, levels 1..4 are rendered from the kind's recorded template
(``megatron_ixt.data.templates.steering``; a shard set without template text has level 5 only).
A steering prefix goes before the document exactly as in training: its token ids, then the
document's tokens. A spec is ``KIND`` (level 5), ``KIND:LEVEL`` or ``none``; single-axis levels
(``scores:expertise=5``) are not tabulated (use ``megatron_ixt.generate --steer`` for those).
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence

from megatron_ixt.data.prefix_kinds import NO_STEERING, parse_steer
from megatron_ixt.data.record import SCORE_MAX, SCORE_MIN

STEERING_FILE = "ixt_steering.json"
FORMAT, VERSION = "megatron-ixt-steering", 1


def _shard_sets(paths: Sequence[str]) -> list[str]:
    """The stems of the IXT shard sets (with a ``P_ixt.json``) among text-store ``paths``."""
    from megatron_ixt.data.shards import metadata_path, shard_set_stem

    stems = [s for s in map(shard_set_stem, paths) if s is not None]
    return [s for s in stems if os.path.exists(metadata_path(s))]


def steering_table(paths: Sequence[str], tokenizer) -> dict:
    """``kind -> level -> {text, tokens}`` for the IXT shard sets among ``paths`` (text-store paths;
    ``tokenizer`` tokenizes the rendered levels); ``{}`` when none is an IXT shard set (plain data)."""
    from megatron_ixt.data.provider import steering_prefix
    from megatron_ixt.data.shards import read_metadata
    from megatron_ixt.data.templates import recorded_template, steering

    stems = _shard_sets(paths)
    if not stems:
        return {}
    metadata = read_metadata(stems[0])
    table = {}
    for kind in metadata["kinds"]:
        # steering_prefix also checks that every shard set agrees
        levels = {str(SCORE_MAX): {"text": metadata["steering"][kind]["text"],
                                   "tokens": [int(t) for t in steering_prefix(paths, kind)]}}
        try:
            template = recorded_template(metadata, kind)
        except ValueError:
            template = None  # no template text recorded: the stored top level only
        for level in range(SCORE_MIN, SCORE_MAX) if template is not None else ():
            levels[str(level)] = {"text": steering(kind, level, template=template),
                                  "tokens": [int(t) for t in steering_prefix(paths, kind, level, tokenizer=tokenizer)]}
        table[kind] = dict(sorted(levels.items()))
    return table


def write_steering(directory: str, paths: Sequence[str], table: dict) -> dict:
    """Write ``directory/ixt_steering.json``: ``table`` (:func:`steering_table` of ``paths``) and the
    shard sets among ``paths``; returns its content."""
    content = {"format": FORMAT, "version": VERSION, "shard_sets": _shard_sets(paths), "kinds": table}
    with open(os.path.join(directory, STEERING_FILE), "w", encoding="utf-8") as f:
        json.dump(content, f, indent=1)
    return content


def steering_tokens(directory: str, spec: str) -> list[int]:
    """The prefix token ids of ``spec`` (``KIND``, ``KIND:LEVEL`` or ``none``) from an export's
    ``ixt_steering.json`` (:func:`table_tokens`); ValueError naming the file otherwise."""
    if spec in ("", NO_STEERING):
        return []
    path = os.path.join(directory, STEERING_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            content = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"steer={spec!r}: {path} does not exist (not a megatron-ixt export?)") from None
    if content.get("format") != FORMAT or content.get("version") != VERSION:
        raise ValueError(f"{path}: not a {FORMAT} version {VERSION} file")
    return table_tokens(content["kinds"], spec, path)


def table_tokens(table: dict, spec: str, where: str) -> list[int]:
    """The prefix token ids of ``spec`` (``KIND``, ``KIND:LEVEL`` or ``none``, parsed by
    ``prefix_kinds.parse_steer`` against the kinds of ``table``, a :func:`steering_table`); ValueError
    naming ``where`` and the kinds/levels it has otherwise."""
    if spec in ("", NO_STEERING):
        return []
    have = [f"{k}:{lv}" for k in table for lv in table[k]] or ["none (a model trained without prefixes)"]
    try:
        kind, level = parse_steer(spec, kinds=list(table))
    except ValueError as e:
        raise ValueError(f"steer={spec!r}: {e}; {where} has {', '.join(have)}") from None
    if isinstance(level, dict):
        raise ValueError(f"steer={spec!r}: single-axis levels are not in {STEERING_FILE}; give KIND or KIND:1..5")
    level = str(SCORE_MAX if level is None else level)
    if level not in table[kind]:
        raise ValueError(f"steer={spec!r}: {where} has no such prefix; it has {', '.join(have)}")
    return [int(t) for t in table[kind][level]["tokens"]]
