"""Dataset blends from Megatron-LM-named data flags (torch-free until a blend is parsed).

``--data-path`` (``P1 P2 ...`` or ``W1 P1 W2 P2 ...``, split by ``--split``) or the per-split
``--train-data-path/--valid-data-path/--test-data-path``, read from parsed args or the trainer's
``cfg.data`` alike.
"""
from __future__ import annotations

DEFAULT_SPLIT = "969,30,1"
"""Megatron-LM's split when --data-path is given without --split (the one definition of it)."""

Blend = tuple[list[str], list[float] | None]


def blends_from_args(args) -> tuple[Blend | None, list[Blend | None] | None]:
    """``(blend, blend_per_split)`` from ``--data-path`` or the per-split ``--*-data-path`` lists."""
    from megatron.core.datasets.utils import get_blend_from_list

    data_path = getattr(args, "data_path", None)
    per_split = [getattr(args, f"{split}_data_path", None) for split in ("train", "valid", "test")]
    if data_path and any(per_split):
        raise ValueError("--data-path and --train-data-path/--valid-data-path/--test-data-path are exclusive")
    if data_path:
        return get_blend_from_list(data_path), None
    if any(per_split):
        return None, [get_blend_from_list(paths) if paths else None for paths in per_split]
    raise ValueError("no data: give --data-path or --train-data-path/--valid-data-path/--test-data-path")
