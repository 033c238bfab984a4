"""Dataset blends from Megatron-LM-named data flags (torch-free until a blend is parsed).

``--data-path`` (``P1 P2 ...`` or ``W1 P1 W2 P2 ...``, split by ``--split``) or the per-split
``--train-data-path/--valid-data-path/--test-data-path``, read from parsed args or the trainer's
``cfg.data`` alike.
"""
from __future__ import annotations

DEFAULT_SPLIT = "969,30,1"
"""Megatron-LM's split when --data-path is given without --split (the one definition of it)."""

Blend = tuple[list[str], list[float] | None]
BLEND_FLAGS = ("data_path", "train_data_path", "valid_data_path", "test_data_path")  # argparse dests


def flag_blend(source, name: str) -> Blend | None:
    """The blend of data flag ``name`` (one of :data:`BLEND_FLAGS`) in ``source``: parsed args, the
    trainer's ``cfg.data``, or its dict form (a stored checkpoint config); None when it is empty."""
    from megatron.core.datasets.utils import get_blend_from_list

    paths = source.get(name) if isinstance(source, dict) else getattr(source, name, None)
    return get_blend_from_list(paths or None)


def flag_paths(source, names: tuple[str, ...] = BLEND_FLAGS) -> list[str]:
    """The dataset paths (weights dropped) of the data flags ``names`` in ``source``, in order."""
    return [path for name in names for path in (flag_blend(source, name) or ([], None))[0]]


def blends_from_args(args) -> tuple[Blend | None, list[Blend | None] | None]:
    """``(blend, blend_per_split)`` from ``--data-path`` or the per-split ``--*-data-path`` lists."""
    blend = flag_blend(args, "data_path")
    per_split = [flag_blend(args, name) for name in BLEND_FLAGS[1:]]
    if blend and any(per_split):
        raise ValueError("--data-path and --train-data-path/--valid-data-path/--test-data-path are exclusive")
    if blend:
        return blend, None
    if any(per_split):
        return None, per_split
    raise ValueError("no data: give --data-path or --train-data-path/--valid-data-path/--test-data-path")
