"""The one place where megatron-ixt touches megatron-core's *private* API (pinned by
tests/dataset/test_mcore_private.py), so an upgrade has one file to check.

megatron-ixt supports megatron-core 0.16.1 (installed) through 0.19. What it relies on, and how
the versions differ (read from the ``core_v0.16.1`` .. ``core_v0.19.0`` tags of NVIDIA/Megatron-LM):

- ``gpt_dataset._build_document_index(documents, num_epochs, numpy_random_state,
  separate_final_epoch)`` and ``gpt_dataset._build_shuffle_index(num_samples, total_size,
  numpy_random_state)``: same signatures and RNG draws in 0.16-0.19. ``IXTGPTDataset`` calls them
  so that ``prefix_kind='none'`` reproduces ``GPTDataset`` sample for sample.
- ``GPTDataset._query_document_sample_shuffle_indices(idx)``: returns ``(tokens, document_ids)``
  in 0.16-0.18 and ``(tokens, document_ids, document_lengths)`` in 0.19 (which also adds
  ``inter_document_masking`` built on those lengths). :data:`QUERY_RETURNS_LENGTHS` follows the
  installed version by reading the return annotation's arity.
- ``IndexedDatasetBuilder`` internals (0.16-0.19 alike): ``data_file`` (the open ``.bin``),
  ``sequence_lengths`` and ``document_indices`` (Python lists; ``document_indices`` starts with 0
  and holds the end of each document in sequences). :func:`add_sequences` (and ``_from_file``) writes
  many one-sequence documents as one ``.bin`` write and extends those two lists as ``add_document``
  would;
  :func:`write_raw_tokens` and :func:`close_builder` use ``data_file``. :func:`finalize_builder` is
  ``IndexedDatasetBuilder.finalize`` (close ``data_file``, then ``_IndexWriter(idx_path, dtype)
  .write(sequence_lengths, sequence_modes, document_indices)``, the same in 0.16-0.19) through an
  ``_IndexWriter`` whose ``_sequence_pointers`` is one numpy cumsum, not a loop per sequence.
- ``dist_checkpointing.strategies.filesystem_async``'s results queue
  (:func:`start_checkpoint_writer_helper`): a ``multiprocessing`` Manager queue (spawn context) cached
  in the module global ``_results_queue`` by ``_get_write_results_queue()`` in 0.16 and
  ``get_write_results_queue(mp_mode="spawn")`` later; the getters create it only while it is None.
- Async saving (:func:`async_save_request`): ``dist_checkpointing.save(..., async_sharded_save=True)``
  returns an ``AsyncRequest`` (``strategies.async_utils``, a NamedTuple with ``async_fn`` and
  ``finalize_fns``; scheduled by ``AsyncCallsQueue``, whose default ``TemporalAsyncCaller`` forks one
  writer process per save). 0.19 adds ``async_strategy`` with default ``"nvrx"`` (needs
  nvidia-resiliency-ext): we pass megatron-core's own, ``"mcore"``.
- ``ChainedOptimizer.step()`` (what ``get_megatron_optimizer`` returns in 0.16-0.19) calls
  ``self.prepare_grads()``, then ``self.get_grad_norm()``, then clips and calls
  ``step_with_ready_grads()``: :func:`raise_on_nonfinite_grad_norm` checks the norm in between,
  before anything is clipped or updated.
- The null tokenizer (:func:`null_tokenizer_metadata`): 0.16 lists its library as ``"null"`` in
  ``megatron.core.tokenizers.megatron_tokenizer.TOKENIZER_LIBRARIES``; 0.17+ lists ``"null-text"`` in
  ``TEXT_LIBRARIES``. Up to 0.17 EOD is one past ``vocab_size``; 0.18+ counts EOD inside ``vocab_size``
  (so Megatron-LM 0.18+ reads our ``--vocab-size V`` shard sets with ``--vocab-size V+1``).
- ``torch.cuda.current_stream()``: 0.19 calls it in every gradient sync (``param_and_grad_buffer``,
  ``start_grad_sync``), 0.16-0.18 only on GPU-overlap paths; ``megatron_ixt.compat`` stands in for it on CPU.
- ``GPTDataset._pad_token_id`` (0.16-0.19 alike): the id padding a short sample (:func:`pad_token_id`).
- ``tensor_parallel.random._get_cuda_rng_state`` / ``_set_cuda_rng_state`` (0.16-0.19 alike, same
  signatures): :func:`route_cuda_rng_state` points them at the CPU generator for ``megatron_ixt.compat``.
- ``megatron.training`` (Megatron-LM's loop, in the wheel since 0.17) for ``megatron_ixt.megatron_lm``:
  0.16 has none; 0.17 has the old ``pretrain(provider, model_provider, model_type, forward_step,
  extra_args_provider=...)``; 0.18 parses first (``parse_and_validate_args``) and takes a config container,
  ``pretrain(config, provider, model_provider, model_type, forward_step)``; 0.19 takes the model as a
  ``GPTModelConfig`` inside the container (``argument_utils.gpt_config_from_args``),
  ``pretrain(config, provider, model_type, forward_step, ...)``, and moved ``get_batch_on_this_tp_rank``
  / ``get_batch_on_this_cp_rank`` to ``megatron.core.utils`` with explicit arguments (0.18:
  ``megatron.training.utils``, reading the data iterator). Only the 0.19 API is supported
  (:func:`megatron_lm_unsupported` says why not otherwise): :func:`megatron_lm_pretrain`,
  :func:`broadcast_batch_tp`, :func:`slice_batch_cp`.
- ``megatron.training.initialize_megatron`` runs ``megatron.core.datasets.utils.compile_helpers()``
  (``make`` in the installed ``megatron/core/datasets``) on rank 0 and exits the process when it fails.
  The 0.19.2 wheel (the one checked) ships the compiled ``helpers_cpp`` extension but no Makefile, so
  it fails there; :func:`use_prebuilt_dataset_helpers` skips the build when the extension imports.
- Megatron-LM 0.19.2's ``--moe-paged-stash-buffer-size-factor-cuda`` help says "10%)", which argparse
  cannot %-format: its ``--help`` raises ``ValueError``. :func:`escape_help_percents` fixes such texts.

``IXTGPTDataset`` also overrides GPTDataset's subclass hooks ``_key_config_attributes``,
``_build_document_sample_shuffle_indices`` and ``_query_document_sample_shuffle_indices``; their
names and call sites are the same in 0.16-0.19 (only the query's return differs, see above).
"""
from __future__ import annotations

import functools
import inspect
import math
import os
import typing

import numpy as np
from megatron.core.datasets import indexed_dataset
from megatron.core.datasets.gpt_dataset import GPTDataset
from megatron.core.datasets.gpt_dataset import _build_document_index as build_document_index  # noqa: F401
from megatron.core.datasets.gpt_dataset import _build_shuffle_index as build_shuffle_index  # noqa: F401

__all__ = ["QUERY_RETURNS_LENGTHS", "add_sequences", "add_sequences_from_file", "build_document_index",
           "async_save_request", "broadcast_batch_tp", "build_shuffle_index", "close_builder", "escape_help_percents",
           "finalize_builder", "megatron_lm_pretrain", "megatron_lm_unsupported", "null_tokenizer_metadata",
           "pad_token_id", "raise_on_nonfinite_grad_norm", "route_cuda_rng_state", "slice_batch_cp",
           "start_checkpoint_writer_helper", "use_prebuilt_dataset_helpers", "write_raw_tokens"]

QUERY_RETURNS_LENGTHS: bool = len(typing.get_args(
    inspect.signature(GPTDataset._query_document_sample_shuffle_indices).return_annotation)) == 3
"""Whether ``_query_document_sample_shuffle_indices`` must also return each document part's length."""


def add_sequences(builder, tokens: np.ndarray, lengths: list) -> None:
    """Append ``len(lengths)`` documents of one sequence each (``tokens`` concatenated, 1-D) to an
    ``IndexedDatasetBuilder``: one ``.bin`` write, index identical to one ``add_document`` per document."""
    if len(lengths) == 0:
        return
    if not _index_is_lists(builder):  # a builder that keeps its index differently: one call per document
        for doc in np.split(tokens, np.cumsum(lengths)[:-1]):
            builder.add_document(doc, [len(doc)])
        return
    # add_document's bookkeeping for n documents at once, and one write without its two copies of
    # the tokens (numpy.array, then tobytes)
    builder.data_file.write(np.ascontiguousarray(tokens, dtype=builder.dtype))
    _index_sequences(builder, lengths)


def add_sequences_from_file(builder, source: int, offset: int, nbytes: int, lengths: list) -> None:
    """:func:`add_sequences` with the tokens read from the open file descriptor ``source``: its
    ``nbytes`` bytes from ``offset``, in the builder's dtype. They are copied file to file in the
    kernel (``copy_file_range``; a reflink on filesystems that share extents), not through Python."""
    if len(lengths) == 0:
        return
    if not _index_is_lists(builder):
        add_sequences(builder, np.frombuffer(os.pread(source, nbytes, offset), builder.dtype), lengths)
        return
    target = builder.data_file
    target.flush()
    _copy_file_range(source, target.fileno(), offset, nbytes)
    target.seek(0, os.SEEK_END)  # the buffered file learns the new position
    _index_sequences(builder, lengths)


def _copy_file_range(source: int, target: int, offset: int, nbytes: int) -> None:
    """Append ``nbytes`` bytes of file descriptor ``source`` from ``offset`` at ``target``'s
    position, in the kernel where the OS can (read and write otherwise)."""
    end = offset + nbytes
    while offset < end:
        try:
            copied = os.copy_file_range(source, target, end - offset, offset)
        except (AttributeError, OSError):  # not Linux, or not between these filesystems
            copied = os.write(target, os.pread(source, min(end - offset, 1 << 24), offset))
        if copied == 0:
            raise OSError(f"file descriptor {source} ends before byte {end}")
        offset += copied


def _index_is_lists(builder) -> bool:
    """Whether the builder keeps its index in Python lists (single-modality; 0.16-0.19 alike)."""
    return isinstance(builder.document_indices, list) and not builder.multimodal


def _index_sequences(builder, lengths: list) -> None:
    """Index the last ``len(lengths)`` sequences written as one-sequence documents."""
    builder.sequence_lengths.extend(lengths)
    end = len(builder.sequence_lengths)
    builder.document_indices.extend(range(end - len(lengths) + 1, end + 1))


def write_raw_tokens(builder, tokens: np.ndarray) -> None:
    """Write tokens to the builder's ``.bin`` that no sequence references (e.g. padding)."""
    builder.data_file.write(np.asarray(tokens, dtype=builder.dtype).tobytes())


class _IndexWriter(indexed_dataset._IndexWriter):
    """megatron-core's ``.idx`` writer with the byte offset of each sequence computed at once
    (megatron-core's loop takes ~3 us a sequence: a tenth of a fast preprocessing run)."""

    def _sequence_pointers(self, sequence_lengths) -> np.ndarray:
        lengths = np.asarray(sequence_lengths, dtype=np.int64)
        pointers = np.zeros(len(lengths), dtype=np.int64)
        np.cumsum(lengths[:-1] * indexed_dataset.DType.size(self.dtype), out=pointers[1:])
        return pointers


def finalize_builder(builder, idx_path: str) -> None:
    """``builder.finalize(idx_path)``, the same bytes, faster for millions of sequences."""
    builder.data_file.close()
    with _IndexWriter(idx_path, builder.dtype) as writer:
        writer.write(builder.sequence_lengths, builder.sequence_modes, builder.document_indices)


def close_builder(builder) -> None:
    """Close the builder's ``.bin`` without writing an index (abort)."""
    builder.data_file.close()


def start_checkpoint_writer_helper() -> None:
    """Start now the helper process that ``dist_checkpointing.save`` would start at its first save,
    set to die with this process (``megatron_ixt.distributed.exit_with_parent``: a trainer killed
    with ``kill -9`` leaves no helper behind).

    megatron-core's ``torch_dist`` writer (``FileSystemWriterAsync``) collects results through a
    ``multiprocessing`` Manager queue (spawn context) cached in the module
    (``filesystem_async._results_queue``) for every save; megatron's getter would start the Manager
    lazily and with no initializer, so this starts it (once) and fills the cache. A process spawned
    now also inherits the caller's ignored signals (see
    :class:`megatron_ixt.training.checkpoint.ExitSignalHandler`).
    """
    import multiprocessing.managers

    from megatron.core.dist_checkpointing.strategies import filesystem_async

    from megatron_ixt.distributed import exit_with_parent

    if filesystem_async._results_queue is None:
        manager = multiprocessing.managers.SyncManager(ctx=multiprocessing.get_context("spawn"))
        manager.start(initializer=exit_with_parent)
        filesystem_async._results_queue = manager.Queue()  # the queue's proxy keeps the manager alive


def async_save_request(state: dict, path: str):
    """``dist_checkpointing.save(state, path)`` up to the point where the tensors are staged, returning
    the ``AsyncRequest`` that writes them (to schedule on an ``AsyncCallsQueue``); its forked writer
    dies with this process (``megatron_ixt.distributed.exit_with_parent``)."""
    from megatron.core import dist_checkpointing

    kwargs = {"async_sharded_save": True}
    if "async_strategy" in inspect.signature(dist_checkpointing.save).parameters:
        kwargs["async_strategy"] = "mcore"
    request = dist_checkpointing.save(state, path, **kwargs)
    if request.async_fn is None:
        return request
    return request._replace(async_fn=functools.partial(_die_with_parent_then, request.async_fn))


def _die_with_parent_then(fn, *args, **kwargs):
    from megatron_ixt.distributed import exit_with_parent

    exit_with_parent()
    return fn(*args, **kwargs)


class NonFiniteGradNorm(FloatingPointError):
    """The gradient norm of a step was NaN or Inf; ``args[0]`` is the norm. Nothing was updated."""


def raise_on_nonfinite_grad_norm(optimizer) -> None:
    """Make ``optimizer.step()`` raise :class:`NonFiniteGradNorm` right after it computed the global
    gradient norm (a collective: every rank gets the same value and raises together), before any
    clipping or parameter/optimizer-state update; the norm costs nothing extra."""
    from megatron.core.optimizer import ChainedOptimizer

    if not isinstance(optimizer, ChainedOptimizer):
        raise TypeError(f"expected megatron-core's ChainedOptimizer, got {type(optimizer).__name__}: "
                        f"megatron_ixt.mcore_private needs updating")
    compute = optimizer.get_grad_norm

    def get_grad_norm():
        norm = compute()
        if not math.isfinite(norm):
            raise NonFiniteGradNorm(norm)
        return norm

    optimizer.get_grad_norm = get_grad_norm


def pad_token_id(dataset: GPTDataset) -> int:
    """The token id a ``GPTDataset`` pads short samples with."""
    return dataset._pad_token_id


def route_cuda_rng_state(get_state, set_state) -> None:
    """Make megatron-core's CUDA RNG tracker read and write its state through ``get_state()`` /
    ``set_state(new_state)`` (megatron_ixt.compat: the CPU generator when there is no GPU)."""
    from megatron.core.tensor_parallel import random as mcore_random

    mcore_random._get_cuda_rng_state = get_state
    mcore_random._set_cuda_rng_state = set_state


def null_tokenizer_metadata() -> tuple:
    """``(library, vocab_size_counts_eod)`` of the installed megatron-core's null tokenizer:
    ``("null", False)`` in 0.16, ``("null-text", False)`` in 0.17, ``("null-text", True)`` in 0.18 and
    later (read from the tokenizer itself: whether a vocabulary of 2 puts EOD at id 1)."""
    from megatron.core.tokenizers import MegatronTokenizer, megatron_tokenizer

    if "null-text" in getattr(megatron_tokenizer, "TEXT_LIBRARIES", ()):
        library = "null-text"
    elif "null" in getattr(megatron_tokenizer, "TOKENIZER_LIBRARIES", ()):
        library = "null"
    else:
        raise RuntimeError("this megatron-core lists no null tokenizer library (neither TEXT_LIBRARIES' 'null-text' "
                           "nor TOKENIZER_LIBRARIES' 'null'): megatron_ixt.mcore_private needs updating")
    probe = MegatronTokenizer.from_pretrained(metadata_path={"library": library}, vocab_size=2)
    return library, probe.eod == 1


def megatron_lm_unsupported() -> str | None:
    """Why ``megatron_ixt.megatron_lm`` cannot run on the installed megatron-core (None: it can).
    It needs 0.19's ``megatron.training`` (the model config inside ``pretrain``'s config container)."""
    try:
        from megatron.training import argument_utils
    except ImportError as e:
        return f"megatron-core {_mcore_version()} has no megatron.training ({e}); it ships in 0.17+, and " \
               "megatron_ixt.megatron_lm needs 0.19's"
    if not hasattr(argument_utils, "gpt_config_from_args"):
        return f"megatron-core {_mcore_version()}'s megatron.training predates 0.19's pretrain(config, provider, " \
               "model_type, forward_step) with a GPTModelConfig; megatron_ixt.megatron_lm needs 0.19"
    return None


def _mcore_version() -> str:
    from megatron.core.package_info import __version__

    return __version__


def megatron_lm_pretrain(args, datasets_provider, forward_step, **kwargs) -> None:
    """``megatron.training.pretrain`` of a GPT model described by the parsed ``args``
    (``parse_and_validate_args``' result) with this dataset provider and forward step; ``kwargs``
    go to ``pretrain`` (e.g. ``non_loss_data_func``)."""
    from megatron.core.enums import ModelType
    from megatron.training import pretrain
    from megatron.training.argument_utils import gpt_config_from_args, pretrain_cfg_container_from_args

    config = pretrain_cfg_container_from_args(args, gpt_config_from_args(args))
    pretrain(config, datasets_provider, ModelType.encoder_or_decoder, forward_step, **kwargs)


def broadcast_batch_tp(batch: dict, args) -> dict:
    """Megatron-LM's broadcast of a batch from tensor-parallel rank 0 to its group (``batch`` is
    read there and ignored elsewhere): ``tokens labels loss_mask position_ids`` (and
    ``attention_mask`` with ``--create-attention-mask-in-dataloader``) on the stages that use them."""
    from megatron.core import parallel_state
    from megatron.core.utils import get_batch_on_this_tp_rank

    return get_batch_on_this_tp_rank(
        batch, has_cu_seqlens=False, is_hybrid_cp=False,
        create_attention_mask_in_dataloader=args.create_attention_mask_in_dataloader,
        broadcast_src_rank=parallel_state.get_tensor_model_parallel_src_rank(),
        broadcast_group=parallel_state.get_tensor_model_parallel_group(),
        cp_size=args.context_parallel_size, tp_rank=parallel_state.get_tensor_model_parallel_rank(),
        micro_batch_size=args.micro_batch_size, seq_length=args.seq_length, mtp_on_this_rank=False,
        pipeline_model_parallel_size=args.pipeline_model_parallel_size,
        is_pipeline_first_stage=parallel_state.is_pipeline_first_stage(),
        is_pipeline_last_stage=parallel_state.is_pipeline_last_stage())


def slice_batch_cp(batch: dict) -> dict:
    """This context-parallel rank's part of every sequence tensor of ``batch`` (Megatron-LM's
    load-balanced split; the batch unchanged without context parallelism)."""
    from megatron.core import parallel_state
    from megatron.core.utils import get_batch_on_this_cp_rank

    return get_batch_on_this_cp_rank(batch, is_hybrid_cp=False, cp_group=parallel_state.get_context_parallel_group())


def use_prebuilt_dataset_helpers() -> None:
    """Make ``compile_helpers()`` a no-op when megatron-core's compiled ``helpers_cpp`` imports (a wheel
    without the Makefile ``initialize_megatron``'s ``make`` needs); with no extension it is left to build."""
    from megatron.core.datasets import utils

    try:
        from megatron.core.datasets import helpers_cpp  # noqa: F401
    except ImportError:
        return
    utils.compile_helpers = lambda: None


def escape_help_percents(parser) -> None:
    """Double the ``%`` of every help text of ``parser`` that argparse cannot %-format (so ``--help`` prints)."""
    for action in parser._actions:
        if isinstance(action.help, str):
            try:
                action.help % dict(vars(action), prog=parser.prog)
            except (ValueError, TypeError, KeyError):
                action.help = action.help.replace("%", "%%")
