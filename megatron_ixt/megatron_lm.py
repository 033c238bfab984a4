"""Megatron-LM's own training loop on IXT data: ``python -m megatron_ixt.megatron_lm`` (``ixt-pretrain-megatron-lm``).

``megatron.training.pretrain`` (in the megatron-core wheel since 0.17; this entry needs 0.19's API,
:func:`megatron_ixt.mcore_private.megatron_lm_unsupported`) with everything it has (FP8, context
parallelism, MoE, the distributed optimizer, async checkpointing, NaN checks, W&B, straggler
detection) and our pieces:

- flags: Megatron-LM's plus ours (:func:`megatron_ixt.data.provider.add_ixt_dataset_args`), parsed
  and validated by Megatron-LM (:func:`parse_args`); unsupported data modes are refused;
- data: :func:`megatron_ixt.data.provider.train_valid_test_datasets_provider` (Megatron-LM's
  ``BlendedMegatronDatasetBuilder`` on its ranks: first/last pipeline stage, tensor-parallel rank 0);
  :func:`check_shard_tokenizer` refuses a tokenizer whose ids differ from the shard sets' (the
  NullTokenizer ``--vocab-size`` rule);
- :func:`get_batch`: Megatron-LM's tensor-parallel broadcast and context-parallel split, plus ``prefix_mask``;
- :func:`loss_func`: the trainer's loss split (:func:`megatron_ixt.training.trainer.loss_func`), logged as
  ``lm loss`` (the objective), ``doc_loss`` and ``prefix_loss``, with Megatron-LM's NaN/Inf/spike checks;
- evaluation: Megatron-LM's validation (those three losses on its validation split) and, at each
  evaluation, :class:`ConditioningEval`: the trainer's held-out loop (``evaluation/heldout.py``) over
  the first ``--eval-iters`` global batches under each conditioning (``prefix``, ``none``, ``steering``),
  printed and logged as ``prefix/doc_loss``, ``none/doc_loss``, ``steering/doc_loss``, ``prefix/prefix_loss``.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence
from functools import partial

import torch

from megatron_ixt import mcore_private
from megatron_ixt.cli import EXIT_RESUMABLE
from megatron_ixt.data.dataset import NO_PREFIX
from megatron_ixt.data.provider import (
    add_ixt_dataset_args,
    conditioning_configs,
    config_paths,
    dataset_config_from_args,
    steering_prefix,
    train_valid_test_datasets_provider,
    valid_datasets,
)
from megatron_ixt.data.shards import metadata_path, read_metadata, shard_set_stem
from megatron_ixt.evaluation import heldout
from megatron_ixt.training import trainer

# Megatron-LM data modes whose batches this entry does not produce (flag -> Megatron-LM args attribute).
UNSUPPORTED = {"--sft": "sft", "--mock-data": "mock_data", "--fim-data": "fim_data",
               "--dataloader-inter-document-masking": "dataloader_inter_document_masking",
               "--hybrid-context-parallel": "hybrid_context_parallel", "--mtp-num-layers": "mtp_num_layers"}
SPIKY_LOSS_FACTOR = 10  # Megatron-LM's pretrain_gpt.py: a loss 10x the largest seen is a spike
unavailable = mcore_private.megatron_lm_unsupported  # why this entry cannot run here (None: it can)


def add_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``extra_args_provider``: our ``--ixt-*`` flags on Megatron-LM's parser (whose help texts are made
    printable: ``mcore_private.escape_help_percents``)."""
    mcore_private.escape_help_percents(parser)
    return add_ixt_dataset_args(parser)


def build_megatron_lm_parser() -> argparse.ArgumentParser:
    """Megatron-LM's own parser, as its ``parse_args`` builds it."""
    from megatron.training.arguments import add_megatron_arguments

    return add_megatron_arguments(argparse.ArgumentParser(description="Megatron-LM Arguments", allow_abbrev=False))


def build_parser() -> argparse.ArgumentParser:
    """The flags :func:`parse_args` parses: Megatron-LM's plus ours (for ``--help`` and tests)."""
    return add_args(build_megatron_lm_parser())


class _ArgsFiles(argparse.ArgumentParser):
    """Reads ``@FILE`` arguments as ``python -m megatron_ixt.pretrain`` does (whitespace-separated, ``#`` comments)."""

    def convert_arg_line_to_args(self, arg_line: str) -> list[str]:
        return arg_line.split("#", 1)[0].split()


def expand_args_files(argv: Sequence[str]) -> list[str]:
    """``argv`` with each ``@FILE`` replaced by FILE's flags (Megatron-LM's parser has no ``@FILE``)."""
    return _ArgsFiles(fromfile_prefix_chars="@")._read_args_from_files(list(argv))


def parse_args(argv: Sequence[str] | None = None):
    """Megatron-LM's flags plus ``--ixt-*`` parsed and validated by the installed megatron.training
    (``argv`` None: ``sys.argv[1:]``; ``@FILE`` reads flags from FILE); sets its global args and
    tokenizer. Raises ``SystemExit(2)`` on an unsupported data mode and ``RuntimeError`` on a
    megatron-core without 0.19's API. Also lets ``initialize_megatron`` use the wheel's prebuilt
    dataset helpers (``mcore_private.use_prebuilt_dataset_helpers``)."""
    reason = unavailable()
    if reason:
        raise RuntimeError(reason)
    from megatron.training.arguments import parse_and_validate_args

    with _argv(expand_args_files(sys.argv[1:] if argv is None else argv)):
        args = parse_and_validate_args(extra_args_provider=add_args)
    mcore_private.use_prebuilt_dataset_helpers()
    given = [flag for flag, name in UNSUPPORTED.items() if getattr(args, name, None)]
    if given:
        print(f"megatron_ixt.megatron_lm: {' '.join(given)} not supported with IXT data",  # noqa: T201 - CLI error
              file=sys.stderr)
        raise SystemExit(2)
    return args


@contextlib.contextmanager
def _argv(argv: Sequence[str]):
    """``sys.argv`` holding ``argv`` for the duration (Megatron-LM's parser reads ``sys.argv``)."""
    saved = sys.argv
    sys.argv = [saved[0] if saved else "megatron_lm", *argv]
    try:
        yield
    finally:
        sys.argv = saved


def check_shard_tokenizer(paths: Sequence[str], tokenizer) -> None:
    """Raise ``ValueError`` unless every IXT shard set among ``paths`` was written with ``tokenizer``'s
    vocabulary size and EOD id. Megatron-LM 0.18+ counts NullTokenizer's EOD inside ``--vocab-size``
    (``mcore_private.null_tokenizer_metadata``): a set written by our tools with ``--vocab-size V`` is
    read with Megatron-LM's ``--vocab-size V+1``; the message names the flag value to use."""
    have = {"vocab_size": int(tokenizer.vocab_size), "eod": int(tokenizer.eod)}
    for path in paths:
        stem = shard_set_stem(path)
        if stem is None:
            continue
        try:
            written = read_metadata(stem)["tokenizer"]
        except FileNotFoundError:
            continue
        want = {key: written.get(key) for key in have}
        if want == have:
            continue
        hint = ""
        if written.get("type") == "NullTokenizer":
            _, counts_eod = mcore_private.null_tokenizer_metadata()
            hint = (f"; it was written by a NullTokenizer with ids 0..{want['eod'] - 1} and EOD {want['eod']}: "
                    f"pass --vocab-size {want['eod'] + int(counts_eod)} (this megatron-core "
                    f"{'counts' if counts_eod else 'does not count'} EOD inside --vocab-size)")
        raise ValueError(f"{metadata_path(stem)}: the shard set's tokenizer has vocab_size {want['vocab_size']} and "
                         f"EOD {want['eod']}, this run's has {have['vocab_size']} and {have['eod']}{hint}")


def get_batch(data_iterator: Iterator | None, vp_stage: int | None = None) -> dict[str, torch.Tensor | None]:
    """This rank's micro-batch: read on tensor-parallel rank 0 (``data_iterator`` is used only there),
    broadcast to the group as Megatron-LM does, ``prefix_mask`` with ``labels`` and ``loss_mask``
    (stages holding the loss), then split for context parallelism. Stages without embedding or
    loss get ``{}`` (their ``forward_step`` reads nothing)."""
    from megatron.core import parallel_state
    from megatron.training import get_args
    from megatron.training.utils import is_first_or_last_pipeline_stage

    if not is_first_or_last_pipeline_stage(vp_stage):
        return {}
    args = get_args()
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    batch = {}
    if tp_rank == 0:
        batch = {key: value.cuda(non_blocking=True) for key, value in next(data_iterator).items()}
    prefix_mask = batch.get("prefix_mask")
    batch = mcore_private.broadcast_batch_tp(batch, args)
    if batch.get("loss_mask") is not None:  # the stage computing the loss: prefix_mask goes with it
        if tp_rank != 0:
            prefix_mask = torch.empty_like(batch["loss_mask"])
        torch.distributed.broadcast(prefix_mask, parallel_state.get_tensor_model_parallel_src_rank(),
                                    group=parallel_state.get_tensor_model_parallel_group())
        batch["prefix_mask"] = prefix_mask
    else:
        batch["prefix_mask"] = None
    return mcore_private.slice_batch_cp(batch)


def loss_func(loss_mask: torch.Tensor, prefix_mask: torch.Tensor | None, output_tensor: torch.Tensor):
    """Megatron-LM's per-token loss contract ``(loss sum, token count, report)``: the trainer's
    split (:func:`megatron_ixt.training.trainer.loss_func`) reported as ``lm loss`` (the objective over
    ``loss_mask``), ``doc_loss`` and ``prefix_loss``; Megatron-LM's NaN/Inf (``--check-for-nan-in-loss-and-grad``)
    and spike (``--check-for-spiky-loss``) checks run on the loss."""
    from megatron.core.rerun_state_machine import get_rerun_state_machine
    from megatron.training import get_args

    loss, num_tokens, report = trainer.loss_func(loss_mask, prefix_mask, output_tensor)
    args = get_args()
    rerun = get_rerun_state_machine()
    if args.check_for_nan_in_loss_and_grad:
        for reject, what in ((torch.isnan, "NaN"), (torch.isinf, "Inf")):
            rerun.validate_result(result=loss, rejection_func=reject, tolerance=0.0, fatal=True,
                                  message=f"found {what} in local forward loss calculation")
    if args.check_for_spiky_loss:
        rerun.validate_result(result=loss, message="Spiky loss", tolerance=0.0, fatal=False,
                              rejection_func=partial(rerun.is_unexpectedly_large, threshold=SPIKY_LOSS_FACTOR,
                                                     context="loss"))
    return loss, num_tokens, {"lm loss": report["loss"], "doc_loss": report["doc"], "prefix_loss": report["prefix"]}


def forward_step(data_iterator: Iterator | None, model, loss: Callable = loss_func):
    """Megatron-LM ``forward_step_func``: :func:`get_batch` through this stage of ``model``; ``loss``
    (:func:`loss_func`, or ``heldout.eval_loss_func``) gets ``loss_mask``, ``prefix_mask`` and the output."""
    from megatron.core.utils import get_attr_wrapped_model
    from megatron.training import get_timers

    timers = get_timers()
    timers("batch-generator", log_level=2).start()
    batch = get_batch(data_iterator, get_attr_wrapped_model(model, "vp_stage"))
    timers("batch-generator").stop()
    output = model(batch.get("tokens"), batch.get("position_ids"), batch.get("attention_mask"),
                   labels=batch.get("labels"), loss_mask=batch.get("loss_mask"))
    return output, partial(loss, batch.get("loss_mask"), batch.get("prefix_mask"))


def conditioning_datasets(args, tokenizer, num_samples: int) -> dict[str, object]:
    """``{conditioning: validation-split dataset}`` as the trainer evaluates: ``prefix``, ``none`` and,
    when the shard sets carry a steering prefix of ``--ixt-prefix-kind``, ``steering``
    (``conditioning_configs``); built on every rank (collective)."""
    config = dataset_config_from_args(args, tokenizer)
    steer = None
    if config.prefix_kind != NO_PREFIX:
        with contextlib.suppress(ValueError):  # plain stores only: no steering conditioning
            steer = steering_prefix(config_paths(config), config.prefix_kind)
    return valid_datasets(conditioning_configs(config, steer), num_samples)


class ConditioningEval:
    """``non_loss_data_func`` for ``pretrain``: at each Megatron-LM evaluation, the trainer's held-out
    loop (``heldout.evaluate``, forward-only schedule over :func:`forward_step`) on the first
    ``--eval-iters`` global batches of each conditioning's validation split (datasets built at the
    first call). Returns ``{"prefix/doc_loss": ..., ...}`` (``heldout.summary``) and prints it."""

    def __init__(self):
        self.datasets: dict[str, object] | None = None

    def __call__(self, model: list[torch.nn.Module]) -> dict[str, float]:
        from megatron.core import parallel_state
        from megatron.core.num_microbatches_calculator import get_num_microbatches
        from megatron.core.pipeline_parallel import get_forward_backward_func
        from megatron.training import get_args, get_tokenizer
        from megatron.training.utils import print_rank_last

        args = get_args()
        if self.datasets is None:
            self.datasets = conditioning_datasets(args, get_tokenizer(), args.eval_iters * args.global_batch_size)
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() \
            else torch.device("cpu")
        dp_rank, dp_size = parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size()
        streams = {name: trainer.MicroBatches(dataset, 0, args.micro_batch_size, dp_rank, dp_size, device)
                   for name, dataset in self.datasets.items()}
        stats = heldout.evaluate(model, get_forward_backward_func(), partial(forward_step, loss=heldout.eval_loss_func),
                                 streams, iters=args.eval_iters, num_microbatches=get_num_microbatches(),
                                 micro_batch_size=args.micro_batch_size, seq_length=args.seq_length, device=device)
        result = heldout.summary(stats)
        print_rank_last(" IXT conditionings | " + " | ".join(
            f"{key}: {value:.6E}" for key, value in result.items() if value is not None))
        return result


def log_conditionings(result: dict[str, float], iteration: int, writer) -> None:
    """``process_non_loss_data_func`` for ``pretrain``: :class:`ConditioningEval`'s losses to
    TensorBoard (and W&B when enabled), on the last rank."""
    from megatron.training import get_wandb_writer

    values = {f"{key} validation": value for key, value in result.items() if value is not None}
    for key, value in values.items():
        writer.add_scalar(key, value, iteration)
    wandb = get_wandb_writer()
    if wandb:
        wandb.log(values, iteration)


def stop_status(args) -> int:
    """Our exit status for Megatron-LM's early stop (it saves, then ``sys.exit(0)``): 75
    (``EXIT_RESUMABLE``: run again with ``--load``, examples/slurm requeues) after SIGTERM with
    ``--exit-signal-handler`` or with ``--exit-duration-in-mins`` set; 0 otherwise (``--exit-interval``,
    a planned stop). With both ``--exit-duration-in-mins`` and ``--exit-interval`` an interval stop says 75."""
    from megatron.training import get_signal_handler

    if args.exit_signal_handler and any(get_signal_handler().signals_received()):
        return EXIT_RESUMABLE
    return EXIT_RESUMABLE if args.exit_duration_in_mins else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, check the shard sets' tokenizer, and run ``megatron.training.pretrain``. Exit status: 0 when
    done or at ``--exit-interval``, 75 stopped early with a checkpoint (:func:`stop_status`), 2 bad flags,
    Megatron-LM's own otherwise."""
    from megatron.training import get_args, get_tokenizer

    args = parse_args(argv)
    try:
        check_shard_tokenizer(config_paths(dataset_config_from_args(args, get_tokenizer())), get_tokenizer())
    except ValueError as e:
        print(f"megatron_ixt.megatron_lm: {e}", file=sys.stderr)  # noqa: T201 - the entry point's error line
        return 2
    try:
        mcore_private.megatron_lm_pretrain(args, train_valid_test_datasets_provider, forward_step,
                                           non_loss_data_func=ConditioningEval(),
                                           process_non_loss_data_func=log_conditionings)
    except SystemExit as stop:
        if stop.code not in (0, None):
            raise
        return stop_status(get_args())
    return 0


if __name__ == "__main__":
    sys.exit(main())
