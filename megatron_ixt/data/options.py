"""The IXT options: the one home of every ``--ixt-*`` flag (torch-free).

:class:`IXTOptions` declares each option once, as a field ``name`` made with
:func:`megatron_ixt.flags.arg` (default, help, choices). Everything else derives from it:

- the flag ``--ixt-<name>`` (argparse dest ``ixt_<name>``) of every parser that calls
  :func:`add_ixt_dataset_args` (pretrain, Megatron-LM's entry, ``tools/inspect_samples.py``);
- :data:`IXTFlags`, the same fields named ``ixt_<name>``, which the trainer's ``DataConfig``
  inherits (so ``cfg.data.ixt_<name>`` is stored with every checkpoint's config);
- ``IXTGPTDatasetConfig``, which inherits :class:`IXTOptions`, and its index cache key;
- the checks (:meth:`IXTOptions.problems`), run by the dataset config and the trainer's ``validate``.

A new option is one field here plus the code that reads ``config.<name>``.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, fields

from megatron_ixt.data import prefix_kinds
from megatron_ixt.flags import add_flags, arg, field_choices, flag_name, renamed_fields

NO_PREFIX = "none"  # the prefix kind of the baseline arm: plain GPTDataset samples
PREFIX_LOSS_CHOICES = ("train", "mask")
FLAG_PREFIX = "ixt_"  # option `name` is the flag --ixt-<name>, argparse dest ixt_<name>


def prefix_kind_choices() -> tuple:
    """``none`` plus every registered prefix kind (``megatron_ixt.data.prefix_kinds``)."""
    return (NO_PREFIX,) + prefix_kinds.names()


@dataclass(kw_only=True)
class IXTOptions:
    """How documents are conditioned on their feedback during training (module docstring)."""

    prefix_kind: str = arg(
        "critique", "prefix before each document: a kind of megatron_ixt.data.prefix_kinds the shard sets hold "
        "(critique: the natural-language critique, quality: templated 5-level quality, scores: templated per-axis "
        "levels); 'none' is the plain GPTDataset baseline", choices=prefix_kind_choices)
    prefix_loss: str = arg("train", "'train': prefix tokens stay in the loss; 'mask': no loss on prefix tokens",
                           choices=PREFIX_LOSS_CHOICES)
    prefix_dropout: float = arg(
        0.0, "probability that a document is shown without its prefix, drawn per document and epoch from the seed")
    annotated_fraction: float = arg(
        1.0, "use the annotations of only this deterministic fraction of the annotated documents (the subset "
        "for a smaller fraction lies inside the one for a larger); the others train without prefix")
    prefix_cooldown_fraction: float = arg(
        0.0, "the last fraction of the training iterations sees the documents without prefixes (packed as with "
        "--ixt-prefix-kind none), the optimizer and learning-rate schedule continuing; 0: no cooldown")
    prefix_every_segment: bool = arg(
        False, "a document split across samples gets its prefix again at the start of each later segment "
        "(in the loss as --ixt-prefix-loss says)")

    def problems(self) -> list[str]:
        """What is wrong with these values: one message per problem, naming the flag and the field."""
        out = []
        for f in fields(IXTOptions):
            choices = field_choices(f)
            value = getattr(self, f.name)
            if choices and value not in choices:
                out.append(f"{option_flag(f.name)} {value!r}: expected one of {tuple(choices)} (field {f.name})")
        for name in ("prefix_dropout", "annotated_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                out.append(f"{option_flag(name)} must be in [0, 1] ({name} = {getattr(self, name)})")
        if not 0.0 <= self.prefix_cooldown_fraction < 1.0:
            out.append(f"{option_flag('prefix_cooldown_fraction')} must be in [0, 1) "
                       f"(prefix_cooldown_fraction = {self.prefix_cooldown_fraction})")
        return out

    @classmethod
    def values_from_flags(cls, source) -> dict:
        """``{name: value}`` of every option, read from the ``ixt_<name>`` attributes of ``source``
        (parsed flags, or the trainer's ``cfg.data``); a missing attribute is an AttributeError."""
        return {f.name: getattr(source, FLAG_PREFIX + f.name) for f in fields(cls)}


def option_flag(name: str) -> str:
    """The flag of option ``name``: ``prefix_loss`` -> ``--ixt-prefix-loss``."""
    return flag_name(FLAG_PREFIX + name)


IXTFlags = renamed_fields(IXTOptions, FLAG_PREFIX, "IXTFlags")
"""The options as fields ``ixt_<name>`` (same defaults and help): the base of the trainer's ``DataConfig``."""


def add_ixt_dataset_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``--ixt-*`` flags to ``parser`` and return it (also usable as Megatron-LM's
    ``extra_args_provider``); defaults, help and choices from :class:`IXTOptions`."""
    add_flags(parser.add_argument_group("IXT dataset"), IXTFlags)
    return parser
