"""Print built IXT training samples: prefix and document tokens told apart, loss mask shown.

    python tools/inspect_samples.py --data-path P_text_document --tokenizer-type NullTokenizer \
        --vocab-size 32000 --seq-length 256 --ixt-prefix-kind critique --samples 0 1 2

Each sample is shown as its first input token followed by its labels (the predicted tokens),
cut into runs of equal kind. With colour (a terminal, unless ``--no-color``): prefix tokens
yellow, document tokens plain, EOD cyan, tokens outside the loss mask dimmed. Without colour:
``[P| ... ]`` prefix, ``[D| ... ]`` document, ``<EOD>``, and a trailing ``~`` on a run
(``[P~| ... ]``) marks tokens outside the loss mask.
"""
from __future__ import annotations

import argparse
import sys

import torch

from megatron_ixt.cli import EXIT_USAGE, CommandError, entry_point

ANSI = {"prefix": "\033[33m", "eod": "\033[36m", "dim": "\033[2m", "reset": "\033[0m"}
SPLITS = ("train", "valid", "test")


def runs(kinds: list) -> list:
    """``[(kind, start, stop)]`` for maximal runs of equal consecutive kinds."""
    out, start = [], 0
    for i in range(1, len(kinds) + 1):
        if i == len(kinds) or kinds[i] != kinds[start]:
            out.append((kinds[start], start, i))
            start = i
    return out


def render(sample: dict, tokenizer, color: bool) -> str:
    """The sample's first token and labels, one run of (prefix/document/eod, in loss) at a time."""
    targets = sample["labels"].tolist()
    prefix = sample.get("prefix_mask", torch.zeros(len(targets))).tolist()
    in_loss = sample["loss_mask"].tolist()
    kinds = [("eod" if t == tokenizer.eod else "prefix" if p > 0 else "document", m > 0)
             for t, p, m in zip(targets, prefix, in_loss)]
    pieces = [f"{tokenizer.detokenize(sample['tokens'][:1].tolist())!r} ->"]
    for (kind, loss), start, stop in runs(kinds):
        if kind == "eod":
            text = "<EOD>" * (stop - start)
        else:
            text = tokenizer.detokenize(targets[start:stop])
        if color:
            style = ANSI.get(kind, "") + ("" if loss else ANSI["dim"])
            pieces.append(f"{style}{text}{ANSI['reset']}")
        elif kind == "eod":
            pieces.append(text + ("" if loss else "~"))
        else:
            pieces.append(f"[{kind[0].upper()}{'' if loss else '~'}| {text} ]")
    return " ".join(pieces)


def summary(sample: dict, tokenizer) -> str:
    labels = sample["labels"]
    prefix = sample.get("prefix_mask", torch.zeros(len(labels))) > 0
    loss = sample["loss_mask"] > 0
    eod = labels == tokenizer.eod
    return (f"{int(prefix.sum())} prefix / {int((~prefix & ~eod).sum())} document / {int(eod.sum())} EOD "
            f"labels; {int(loss.sum())} in the loss ({int((loss & prefix).sum())} of them prefix)")


def build_parser() -> argparse.ArgumentParser:
    from megatron_ixt.data.options import add_ixt_dataset_args
    from megatron_ixt.tokenizer import add_tokenizer_args

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-path", nargs="+", required=True, help="[weight] path ... as in Megatron-LM")
    parser.add_argument("--split", default="100,0,0", help="train,valid,test weights, as in Megatron-LM")
    parser.add_argument("--seq-length", type=int, default=256, help="sample length in tokens")
    parser.add_argument("--seed", type=int, default=1234, help="dataset shuffling seed")
    parser.add_argument("--data-cache-path", default=None, help="directory for megatron-core's index cache")
    parser.add_argument("--reset-position-ids", action="store_true",
                        help="restart position ids after each end-of-document token")
    parser.add_argument("--reset-attention-mask", action="store_true",
                        help="no attention across end-of-document tokens")
    parser.add_argument("--eod-mask-loss", action="store_true", help="no loss on end-of-document tokens")
    parser.add_argument("--steering", nargs="?", const="", default=None, metavar="LEVEL",
                        help="condition every document on the shard set's steering prefix of --ixt-prefix-kind "
                             "(P_ixt.json); LEVEL as in generate's --steer KIND:LEVEL (default: the top level)")
    parser.add_argument("--split-name", choices=SPLITS, default="train", help="the split to sample from")
    parser.add_argument("--samples", type=int, nargs="+", default=[0, 1], help="sample indices to print")
    parser.add_argument("--no-color", action="store_true", help="no ANSI colours (also off when not a terminal)")
    add_tokenizer_args(parser)
    add_ixt_dataset_args(parser)
    return parser


@entry_point
def main(argv=None) -> None:
    from megatron_ixt.data.options import IXTOptions
    from megatron_ixt.data.prefix_kinds import parse_level
    from megatron_ixt.data.provider import (
        build_train_valid_test_datasets,
        config_paths,
        dataset_config_from_args,
        steering_prefix,
    )
    from megatron_ixt.tokenizer import build_tokenizer

    args = build_parser().parse_args(argv)

    tokenizer = build_tokenizer(args)
    config = dataset_config_from_args(args, tokenizer, create_attention_mask=False)
    if args.steering is not None:
        tokens = steering_prefix(config_paths(config), config.prefix_kind, parse_level(args.steering),
                                 tokenizer=tokenizer)
        config = dataset_config_from_args(args, tokenizer, create_attention_mask=False, steering_prefix=tokens,
                                          prefix_dropout=0.0, annotated_fraction=1.0)
    if args.data_cache_path and len(config_paths(config)) > 1 and not torch.distributed.is_initialized():
        # megatron-core's BlendedDataset asks torch.distributed for the rank when it caches
        torch.distributed.init_process_group("gloo", init_method="tcp://127.0.0.1:0", rank=0, world_size=1)

    size = max(args.samples) + 1
    dataset = build_train_valid_test_datasets(config, [size] * 3)[SPLITS.index(args.split_name)]
    if dataset is None:
        raise CommandError(f"the {args.split_name} split is empty with --split {args.split}", EXIT_USAGE)
    color = sys.stdout.isatty() and not args.no_color
    options = " ".join(f"{name}={getattr(config, name)}" for name in IXTOptions.__dataclass_fields__)
    print(f"{type(dataset).__name__}: {len(dataset)} {args.split_name} samples of {args.seq_length} tokens, "
          f"{options}" + (f" steering={list(config.steering_prefix)}" if config.steering_prefix else ""))
    for i in args.samples:
        if i >= len(dataset):
            raise CommandError(f"--samples {i}: out of range, the dataset has {len(dataset)} samples", EXIT_USAGE)
        sample = dataset[i]
        print(f"\n=== sample {i}: {summary(sample, tokenizer)}")
        print(render(sample, tokenizer, color))


if __name__ == "__main__":
    sys.exit(main())
