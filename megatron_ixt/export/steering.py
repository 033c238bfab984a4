"""``ixt_steering.json``: the steering prefixes of an exported model, for tools outside megatron-ixt.

Format (written by :func:`write_steering`, read by :func:`steering_tokens`)::

    {"format": "megatron-ixt-steering", "version": 1,
     "shard_sets": ["P", ...],                       # the P_ixt.json files it came from
     "kinds": {"critique": {"5": {"text": str, "tokens": [int, ...]}},
               "quality":  {"5": {"text": str, "tokens": [int, ...]}}}}

Levels are quality levels (1..5; today the shard sets record the top level, 5). A steering prefix
goes before the document exactly as in training: its token ids, then the document's tokens. A
spec is ``KIND`` (top level), ``KIND:LEVEL`` or ``none``.
"""
from __future__ import annotations

import json
import os
from typing import List, Sequence

from megatron_ixt.data.record import SCORE_MAX

STEERING_FILE = "ixt_steering.json"
FORMAT, VERSION = "megatron-ixt-steering", 1


def steering_table(paths: Sequence[str]) -> dict:
    """``kind -> level -> {text, tokens}`` from the IXT shard sets among ``paths`` (text-store paths);
    ``{}`` when none of them is an IXT shard set (a baseline model)."""
    from megatron_ixt.data.provider import steering_prefix
    from megatron_ixt.data.shards import PREFIX_KINDS, read_metadata, shard_set_prefix

    shard_sets = [s for s in map(shard_set_prefix, paths) if s is not None]
    metadata = []
    for shard_set in shard_sets:
        try:
            metadata.append(read_metadata(shard_set))
        except FileNotFoundError:
            continue
    if not metadata:
        return {}
    table = {}
    for kind in PREFIX_KINDS:
        tokens = [int(t) for t in steering_prefix(paths, kind)]  # also checks the shard sets agree
        table[kind] = {str(SCORE_MAX): {"text": metadata[0]["steering"][kind]["text"], "tokens": tokens}}
    return table


def write_steering(directory: str, paths: Sequence[str]) -> dict:
    """Write ``directory/ixt_steering.json`` for the shard sets among ``paths``; returns its content."""
    from megatron_ixt.data.shards import shard_set_prefix

    content = {"format": FORMAT, "version": VERSION,
               "shard_sets": [s for s in map(shard_set_prefix, paths) if s is not None],
               "kinds": steering_table(paths)}
    with open(os.path.join(directory, STEERING_FILE), "w", encoding="utf-8") as f:
        json.dump(content, f, indent=1)
    return content


def steering_tokens(directory: str, spec: str) -> List[int]:
    """The prefix token ids of ``spec`` (``KIND``, ``KIND:LEVEL`` or ``none``) from an export's
    ``ixt_steering.json``; ValueError naming the file and the kinds/levels it has otherwise."""
    if spec in ("", "none"):
        return []
    kind, _, level = spec.partition(":")
    level = level or str(SCORE_MAX)
    path = os.path.join(directory, STEERING_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            content = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"steer={spec!r}: {path} does not exist (not a megatron-ixt export?)") from None
    if content.get("format") != FORMAT or content.get("version") != VERSION:
        raise ValueError(f"{path}: not a {FORMAT} version {VERSION} file")
    kinds = content["kinds"]
    if kind not in kinds or level not in kinds[kind]:
        have = [f"{k}:{lv}" for k in kinds for lv in kinds[k]] or ["none (a model trained without prefixes)"]
        raise ValueError(f"steer={spec!r}: {path} has no such prefix; it has {', '.join(have)}")
    return [int(t) for t in kinds[kind][level]["tokens"]]
