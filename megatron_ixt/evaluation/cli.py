"""Held-out loss of a checkpoint under each conditioning: ``python -m megatron_ixt.evaluation.cli``.

    python -m megatron_ixt.evaluation.cli --load ckpt/ixt [--data-path HELDOUT_text_document ...] \\
        [--steer-text "Quality: excellent.\\n"] [--steer-file prefixes.txt] [--output eval.json]
    torchrun --nproc-per-node 8 -m megatron_ixt.evaluation.cli --load ... --tensor-model-parallel-size 2

(``ixt-evaluate`` when installed; ``python -m megatron_ixt.evaluate`` still runs it.) The model is
built from the checkpoint's stored config and its weights loaded under any TP/PP layout
(``megatron_ixt.inference.load_for_inference``). The loss is over document tokens only, on the validation split of the
checkpoint's data, or on ALL of the ``--data-path`` shard sets (e.g. the high-quality documents, so
that every arm is judged on the same tokens). Conditionings: ``prefix`` (each document under its
own prefix), ``none`` (no prefix), ``steering`` (the shard set's stored top-level steering prefix
of the checkpoint's prefix kind), ``<kind>_1`` .. ``<kind>_5`` (that kind's recorded template at
each steering level, e.g. ``quality_1``; not for a synthetic shard set without template text),
``steer_<KIND[:LEVEL]>`` for each ``--steer`` (e.g. ``scores:educational_value=5``) and
``steer_text_<i>`` for each ``--steer-text``, then each line of ``--steer-file``. A baseline
checkpoint gets ``none`` and the ``--steer*`` ones.
The same loop (megatron_ixt/evaluation/heldout.py) runs the trainer's periodic eval.

Output (stdout, or ``--output``): ``{"checkpoint", "iteration", "data", "eval_samples",
"conditionings": {NAME: {"loss", "tokens", "stderr", "sequences", "prefix_loss"}}}``; losses in
mean nats per token, ``stderr`` the standard error of ``loss`` (sequences as units).
Exit status (``megatron_ixt.cli``): 0, 2 bad flags or data, 3 unusable checkpoint. ``--import MODULE``
imports a module registering prefix kinds first.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from functools import partial

import torch

from megatron_ixt.cli import EXIT_USAGE, CommandError, add_import_flag, entry_point, failing_with
from megatron_ixt.data.prefix_kinds import STEER_HELP


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m megatron_ixt.evaluation.cli", description=__doc__.split("\n")[0])
    add_import_flag(parser)
    parser.add_argument("--load", required=True, help="checkpoint directory (as given to --save)")
    parser.add_argument("--data-path", nargs="+", default=None,
                        help="held-out shard set(s) (text-store paths, e.g. P_text_document), used whole; "
                             "default: the validation split of the checkpoint's data")
    parser.add_argument("--eval-samples", type=int, default=None,
                        help="sequences per conditioning, rounded up to a multiple of micro-batch x data-parallel "
                             "size (default: the checkpoint's --eval-iters x --global-batch-size)")
    parser.add_argument("--micro-batch-size", type=int, default=None,
                        help="sequences per forward pass (default: the checkpoint's)")
    parser.add_argument("--tensor-model-parallel-size", type=int, default=1, help="TP degree of this evaluation")
    parser.add_argument("--pipeline-model-parallel-size", type=int, default=1, help="PP degree of this evaluation")
    parser.add_argument("--steer-text", action="append", default=[],
                        help="a steering prefix of your own (repeatable): every document under it")
    parser.add_argument("--steer-file", default=None, help="a file of steering prefixes, one per line")
    parser.add_argument("--steer", action="append", default=[], metavar="KIND[:LEVEL]",
                        help="a steering prefix rendered from the shard set's recorded KIND template (repeatable), "
                             f"e.g. quality:1 or scores:educational_value=5 ({STEER_HELP}); "
                             "conditioning steer_KIND[:LEVEL]")
    parser.add_argument("--no-levels", action="store_true",
                        help="skip the <kind>_1 .. <kind>_5 conditionings (the checkpoint's kind at each level)")
    parser.add_argument("--output", default=None, help="write the JSON here (default: stdout)")
    return parser


def steering_texts(args) -> list[str]:
    texts = list(args.steer_text)
    if args.steer_file:
        with open(args.steer_file, encoding="utf-8") as f:
            texts += [line.rstrip("\n").replace("\\n", "\n") for line in f if line.strip()]
    return texts


def conditionings(args, tokenizer, config) -> dict[str, object]:
    """``{name: dataset config}`` of every conditioning this evaluation runs (module docstring)."""
    from megatron_ixt.data import prefix_kinds
    from megatron_ixt.data.options import NO_PREFIX
    from megatron_ixt.data.provider import conditioning_configs, config_paths, steering_prefix

    paths, kind = config_paths(config), config.prefix_kind
    steer = None
    if kind != NO_PREFIX:
        try:
            steer = steering_prefix(paths, kind)
        except ValueError:
            steer = None  # plain stores: no steering prefix
    variants = conditioning_configs(config, steer)
    extra = {}
    if kind != NO_PREFIX and steer is not None and not args.no_levels:
        try:
            extra = {f"{kind}_{q}": steering_prefix(paths, kind, q, tokenizer=tokenizer) for q in range(1, 6)}
        except ValueError:
            extra = {}  # the shard set records no template text: only its stored top-level prefix
    for spec in args.steer:
        with failing_with(EXIT_USAGE, ValueError):
            steer = prefix_kinds.parse_steer(spec)
        if steer is None:
            raise CommandError("--steer none: the 'none' conditioning is always evaluated", EXIT_USAGE)
        steer_kind, level = steer
        extra[f"steer_{spec}"] = steering_prefix(paths, steer_kind, level, tokenizer=tokenizer)
    for i, text in enumerate(steering_texts(args)):
        extra[f"steer_text_{i}"] = tuple(tokenizer.tokenize(text))
    # a steering prefix replaces the prefix store, so any registered kind carries it
    carrier = kind if kind != NO_PREFIX else prefix_kinds.names()[0]
    for name, tokens in extra.items():
        variants[name] = dataclasses.replace(config, prefix_kind=carrier, prefix_dropout=0.0, annotated_fraction=1.0,
                                             steering_prefix=tuple(tokens))
    return variants


@entry_point(plugins=True)
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megatron_ixt.data.provider import valid_datasets
    from megatron_ixt.evaluation.heldout import eval_loss_func, evaluate
    from megatron_ixt.inference import inference_config, load_for_inference
    from megatron_ixt.training.checkpoint import read_latest_iteration
    from megatron_ixt.training.config import ConfigError, validate
    from megatron_ixt.training.data import dataset_config
    from megatron_ixt.training.trainer import MicroBatches, forward_step

    iteration = read_latest_iteration(args.load)
    cfg = inference_config(args.load, iteration, tensor_model_parallel_size=args.tensor_model_parallel_size,
                           pipeline_model_parallel_size=args.pipeline_model_parallel_size, training_precision=True)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if args.data_path:
        cfg.data.data_path, cfg.data.train_data_path, cfg.data.valid_data_path = [], list(args.data_path), \
            list(args.data_path)
    trainer_eval_samples = cfg.eval.eval_iters * cfg.train.global_batch_size  # what its periodic eval read
    mbs = args.micro_batch_size or cfg.train.micro_batch_size
    cfg.train.micro_batch_size = mbs
    tp, pp = cfg.parallel.tensor_model_parallel_size, cfg.parallel.pipeline_model_parallel_size
    dp = world // (tp * pp) if world % (tp * pp) == 0 else 0
    cfg.train.global_batch_size = mbs * max(dp, 1)
    if dp < 1:
        raise ConfigError(f"world size {world} is not a multiple of TP {tp} x PP {pp}")
    validate(cfg, world_size=world, cuda=torch.cuda.is_available())
    per_batch = cfg.train.global_batch_size  # micro-batch x data-parallel size
    samples = math.ceil((args.eval_samples or trainer_eval_samples) / per_batch) * per_batch
    loaded = load_for_inference(args.load, iteration, cfg=cfg)
    tokenizer, device = loaded.tokenizer, loaded.device
    with failing_with(EXIT_USAGE, ValueError, OSError):
        data_config = dataset_config(cfg.data, seed=cfg.train.seed, sequence_length=cfg.model.seq_length,
                                     tokenizer=tokenizer)
        datasets = valid_datasets(conditionings(args, tokenizer, data_config), samples)
    dp_rank, dp_size = parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size()
    streams = {name: MicroBatches(ds, 0, mbs, dp_rank, dp_size, device) for name, ds in datasets.items()}
    results = evaluate(loaded.model, get_forward_backward_func(), partial(forward_step, loss=eval_loss_func), streams,
                       iters=samples // per_batch, num_microbatches=1, micro_batch_size=mbs,
                       seq_length=cfg.model.seq_length, device=device)
    out = {"checkpoint": os.path.abspath(args.load), "iteration": iteration,
           "data": cfg.data.valid_data_path or cfg.data.data_path, "eval_samples": samples,
           "conditionings": {name: {**r["doc"].to_dict(), "prefix_loss": r["prefix"].loss}
                             for name, r in results.items()}}
    if torch.distributed.get_rank() == 0:
        text = json.dumps(out, indent=1)
        if args.output:
            with open(args.output, "w", encoding="utf-8") as f:
                f.write(text + "\n")
        else:
            print(text)
    torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
