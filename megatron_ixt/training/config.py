"""Training configuration: dataclasses plus a thin argparse layer with Megatron-LM flag names.

Every dataclass field ``foo_bar`` is the CLI flag ``--foo-bar`` (Megatron-LM's name where the
concept exists), declared once with :func:`~megatron_ixt.flags.arg` (default, help text, choices):
the field is the only place a flag's default and ``--help`` text are written. The IXT options
(``megatron_ixt.data.options.IXTOptions``, fields ``ixt_*`` of :class:`DataConfig`) and the
tokenizer flags (``megatron_ixt.tokenizer.add_tokenizer_args``) are shared with other entry points
and declared there. :func:`parse_args` returns a validated :class:`Config`; :func:`validate` raises
:class:`ConfigError` naming the flag to change before any process group or file is touched.
This module imports neither torch nor megatron-core (a blend is parsed only when validated).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
from dataclasses import dataclass, field, fields

from megatron_ixt.cli import EXIT_USAGE, add_import_flag
from megatron_ixt.data.blends import BLEND_FLAGS, DEFAULT_SPLIT, blends_from_args, flag_paths
from megatron_ixt.data.options import IXTFlags, IXTOptions, add_ixt_dataset_args
from megatron_ixt.flags import add_flags, arg, flag_name
from megatron_ixt.tokenizer import TokenizerConfig, add_tokenizer_args


class ConfigError(ValueError):
    """A bad flag or flag combination; the message says what to change."""

    exit_code = EXIT_USAGE  # megatron_ixt.cli's exit-status table


@dataclass
class ModelConfig:
    num_layers: int = arg(2, "number of transformer layers")
    hidden_size: int = arg(128, "transformer hidden size")
    ffn_hidden_size: int | None = arg(
        None, "MLP hidden size (default: 4 x hidden size, or 8/3 x hidden size rounded up to 64 with SwiGLU)")
    num_attention_heads: int = arg(4, "number of attention heads")
    num_query_groups: int | None = arg(
        None, "key/value head groups for grouped-query attention (default: one per head, multi-head attention)")
    kv_channels: int | None = arg(None, "head dimension (default: hidden size / attention heads)")
    seq_length: int = arg(256, "sequence length of a training sample, in tokens")
    max_position_embeddings: int | None = arg(
        None, "maximum sequence length the position embeddings cover (default: --seq-length)")
    normalization: str = arg("RMSNorm", "normalization layer", choices=("RMSNorm", "LayerNorm"))
    swiglu: bool = arg(True, "SwiGLU MLP (--no-swiglu: GeLU)")
    position_embedding_type: str = arg("rope", "position embedding", choices=("rope", "learned_absolute"))
    rotary_base: int = arg(10000, "RoPE base period")
    untie_embeddings_and_output_weights: bool = arg(
        True, "separate input embedding and output layer weights (--no-...: tied)")
    init_method_std: float = arg(0.02, "standard deviation of the normal weight initialisation")
    attention_dropout: float = arg(0.0, "dropout probability on attention probabilities")
    hidden_dropout: float = arg(0.0, "dropout probability on the transformer's hidden states")
    transformer_impl: str = arg(
        "local", "layer implementation: megatron-core's local spec with torch SDPA attention, or its "
        "Transformer Engine spec (needs CUDA and transformer-engine)", choices=("local", "transformer_engine"))
    make_vocab_size_divisible_by: int = arg(
        128, "pad the vocabulary to a multiple of this value times the tensor-parallel size")
    qk_layernorm: bool = arg(False, "normalize queries and keys before attention")


@dataclass
class ParallelConfig:
    tensor_model_parallel_size: int = arg(1, "tensor-parallel size (TP)")
    pipeline_model_parallel_size: int = arg(1, "pipeline-parallel size (PP); data-parallel size = world / (TP x PP)")
    sequence_parallel: bool = arg(False, "sequence parallelism across the TP group (needs the TE spec)")
    use_distributed_optimizer: bool = arg(False, "shard optimizer state across data-parallel ranks (CUDA only)")
    overlap_grad_reduce: bool = arg(False, "overlap the gradient all-reduce with the backward pass (CUDA only)")
    distributed_backend: str | None = arg(
        None, "torch.distributed backend (default: nccl with CUDA, gloo without)", choices=("nccl", "gloo"))
    distributed_timeout_minutes: int = arg(
        10, "timeout of every collective: a rank that waits this long on a dead or hung peer fails with "
        "the process group's error instead of hanging")


@dataclass
class OptimConfig:
    optimizer: str = arg("adam", "optimizer (adam is AdamW: decoupled weight decay)", choices=("adam", "sgd"))
    lr: float = arg(3e-4, "peak learning rate")
    min_lr: float = arg(0.0, "learning rate at the end of the decay")
    lr_warmup_iters: int = arg(0, "iterations of linear warmup from 0 to --lr")
    lr_decay_iters: int | None = arg(None, "iterations of the decay to --min-lr (default: --train-iters)")
    lr_decay_style: str = arg("cosine", "learning-rate decay after warmup",
                              choices=("constant", "linear", "cosine", "inverse-square-root", "WSD"))
    lr_wsd_decay_iters: int | None = arg(None, "WSD: iterations of the final decay phase")
    lr_wsd_decay_style: str = arg("linear", "WSD: shape of the final decay phase",
                                  choices=("linear", "cosine", "exponential", "minus_sqrt"))
    weight_decay: float = arg(0.1, "weight decay coefficient")
    clip_grad: float = arg(1.0, "clip the global gradient norm to this value (0: no clipping)")
    adam_beta1: float = arg(0.9, "Adam beta1")
    adam_beta2: float = arg(0.95, "Adam beta2")
    adam_eps: float = arg(1e-8, "Adam epsilon")


@dataclass
class DataConfig(IXTFlags):
    """Data flags, plus the IXT options as ``ixt_*`` fields (inherited from ``IXTFlags``)."""

    data_path: list[str] = arg(help="dataset blend 'P1 P2 ...' or 'W1 P1 W2 P2 ...' of text-store paths "
                                    "(P_text_document), split by --split", factory=list)
    split: str = arg(DEFAULT_SPLIT, "train,valid,test weights splitting the documents of --data-path")
    train_data_path: list[str] = arg(help="training blend (instead of --data-path)", factory=list)
    valid_data_path: list[str] = arg(help="validation blend (instead of --data-path)", factory=list)
    test_data_path: list[str] = arg(help="test blend (instead of --data-path)", factory=list)
    data_cache_path: str | None = arg(None, "directory for megatron-core's dataset index cache")
    reset_position_ids: bool = arg(False, "restart position ids after each end-of-document token")
    reset_attention_mask: bool = arg(False, "no attention across end-of-document tokens (explicit mask)")
    eod_mask_loss: bool = arg(False, "no loss on end-of-document tokens")


@dataclass
class TrainConfig:
    micro_batch_size: int = arg(1, "samples per micro-batch per data-parallel rank")
    global_batch_size: int | None = arg(
        None, "samples per optimizer step (default: --micro-batch-size x data-parallel size)")
    train_iters: int | None = arg(None, "optimizer steps to train for (or give --train-tokens)")
    train_tokens: int | None = arg(
        None, "tokens to train on: --train-iters = ceil(tokens / (global batch x seq length))")
    seed: int = arg(1234, "random seed (model init, dropout, dataset shuffling)")
    bf16: bool = arg(False, "bf16 parameters and compute (fp32 gradient reduction and optimizer state)")
    use_cpu_initialization: bool = arg(False, "initialise weights on the CPU (always on without CUDA)")
    check_for_nan_in_loss_and_grad: bool = arg(
        True, "stop every rank (exit 65, no checkpoint of the bad iteration) when the loss or the gradient "
        "norm of an iteration is NaN or Inf")
    skip_nonfinite_iters: int = arg(
        0, "with the NaN/Inf check: skip up to this many non-finite iterations of a launch (no update, "
        "learning-rate schedule not advanced, batch consumed) before stopping")


@dataclass
class LoggingConfig:
    log_interval: int = arg(10, "iterations between train log records")
    tensorboard_dir: str | None = arg(None, "also write the metrics as TensorBoard scalars here")
    metrics_file: str | None = arg(None, "metrics JSONL file (default: <save>/metrics.jsonl)")
    peak_tflops_per_device: float | None = arg(
        None, "dense bf16 peak TFLOP/s of one device, for MFU (default: looked up by GPU name)")
    wandb_project: str | None = arg(
        None, "also log the metric records to this W&B project (needs the wandb package; rank 0 only; a W&B "
        "error prints a warning and never stops training)")
    wandb_exp_name: str | None = arg(None, "W&B run name (default: W&B's)")
    wandb_save_dir: str | None = arg(None, "W&B's local run directory (default: <save>/wandb, else ./wandb)")


@dataclass
class EvalConfig:
    eval_interval: int = arg(1000, "iterations between evaluations")
    eval_iters: int = arg(10, "global batches of the validation split per evaluation and conditioning "
                              "(0: no evaluation)")


@dataclass
class CheckpointConfig:
    save: str | None = arg(None, "checkpoint directory to write")
    load: str | None = arg(None, "checkpoint directory to resume from (its latest iteration)")
    save_interval: int | None = arg(None, "iterations between checkpoints (a final one is always saved)")
    exit_interval: int | None = arg(None, "save and stop (exit 0) when the iteration is a multiple of this")
    exit_signal_handler: bool = arg(False, "on SIGTERM: save and stop at the end of the iteration (exit 75)")
    exit_duration_in_mins: float | None = arg(None, "save and stop (exit 75) after this many minutes")
    finetune: bool = arg(False, "with --load: load model weights only and start at iteration 0")
    no_load_optim: bool = arg(False, "with --load: do not restore the optimizer and scheduler state")
    no_load_rng: bool = arg(False, "with --load: do not restore the RNG states")
    async_save: bool = arg(
        False, "write checkpoints in a background process while training goes on (megatron-core's async "
        "dist_checkpointing); the tracker moves once every rank finished writing; the next save, a stop "
        "and the end of the run wait for it")
    ckpt_keep_last: int = arg(
        0, "after each save, delete all but the newest N complete checkpoints (0: keep all); never the "
        "one the tracker names nor one being written")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    tokenizer: TokenizerConfig = field(default_factory=lambda: TokenizerConfig("NullTokenizer"))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_SECTION_CLASSES = {"model": ModelConfig, "parallel": ParallelConfig, "optim": OptimConfig,
                    "data": DataConfig, "train": TrainConfig, "logging": LoggingConfig,
                    "eval": EvalConfig, "checkpoint": CheckpointConfig}

class _ArgsFileParser(argparse.ArgumentParser):
    """``@file`` arguments: whitespace-separated flags, ``#`` starts a comment."""

    def convert_arg_line_to_args(self, arg_line: str) -> list[str]:
        return arg_line.split("#", 1)[0].split()


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: X)`` to a flag's help unless the default is empty (None, False, [])."""

    def _get_help_string(self, action):
        if action.default in (None, False, []):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """Argparse parser: one flag per config field, its help and choices from the field's ``arg``
    metadata (booleans on by default also get ``--no-FLAG``; the IXT options in their own group,
    as ``add_ixt_dataset_args`` adds them), plus megatron_ixt.tokenizer's tokenizer flags."""
    parser = _ArgsFileParser(
        prog="python -m megatron_ixt.pretrain", fromfile_prefix_chars="@", formatter_class=_HelpFormatter,
        description="Pretrain a GPT model with Introspective Training (IXT) on Megatron-Core. "
                    "@FILE reads flags from FILE (whitespace-separated, '#' comments).")
    ixt_fields = [f.name for f in fields(IXTFlags)]
    for section, cls in _SECTION_CLASSES.items():
        add_flags(parser.add_argument_group(section), cls, skip=ixt_fields)
    add_ixt_dataset_args(parser)
    add_tokenizer_args(parser)
    add_import_flag(parser)  # taken out of argv (on the command line, not in @FILE) by megatron_ixt.cli.entry_point
    return parser


def config_from_namespace(ns: argparse.Namespace) -> Config:
    values = vars(ns)
    sections = {s: cls(**{f.name: values[f.name] for f in fields(cls)})
                for s, cls in _SECTION_CLASSES.items()}
    tokenizer = TokenizerConfig(ns.tokenizer_type, ns.tokenizer_model, ns.vocab_size)
    return Config(**sections, tokenizer=tokenizer)


def config_from_dict(values: dict) -> Config:
    """Inverse of ``Config.to_dict()`` (e.g. the config stored in a checkpoint)."""
    sections = {s: cls(**values[s]) for s, cls in _SECTION_CLASSES.items()}
    return Config(**sections, tokenizer=TokenizerConfig(**values["tokenizer"]))


def parse_args(argv: list[str] | None = None, world_size: int = 1, cuda: bool = False) -> Config:
    cfg = config_from_namespace(build_parser().parse_args(argv))
    finalize(cfg, world_size=world_size, cuda=cuda)
    return cfg


def data_parallel_size(cfg: Config, world_size: int) -> int:
    mp = cfg.parallel.tensor_model_parallel_size * cfg.parallel.pipeline_model_parallel_size
    return world_size // mp


def finalize(cfg: Config, world_size: int, cuda: bool) -> Config:
    """Fill derived defaults, then :func:`validate`. Mutates and returns ``cfg``."""
    m, t, p = cfg.model, cfg.train, cfg.parallel
    if t.train_iters is not None and t.train_tokens is not None:
        raise ConfigError("give only one of --train-iters and --train-tokens")
    if m.max_position_embeddings is None:
        m.max_position_embeddings = m.seq_length
    if m.kv_channels is None and m.num_attention_heads > 0:
        m.kv_channels = m.hidden_size // m.num_attention_heads
    if m.ffn_hidden_size is None:
        m.ffn_hidden_size = (math.ceil(8 * m.hidden_size / 3 / 64) * 64 if m.swiglu
                             else 4 * m.hidden_size)
    if p.distributed_backend is None:
        p.distributed_backend = "nccl" if cuda else "gloo"
    if not cuda:
        t.use_cpu_initialization = True
    dp = data_parallel_size(cfg, world_size)
    if t.global_batch_size is None and dp > 0:
        t.global_batch_size = t.micro_batch_size * dp
    if t.train_iters is None and t.train_tokens is not None and t.global_batch_size:
        t.train_iters = math.ceil(t.train_tokens / (t.global_batch_size * m.seq_length))
    if cfg.optim.lr_decay_iters is None:
        cfg.optim.lr_decay_iters = t.train_iters
    if cfg.logging.metrics_file is None and cfg.checkpoint.save:
        cfg.logging.metrics_file = cfg.checkpoint.save.rstrip("/") + "/metrics.jsonl"
    if cfg.logging.wandb_project and cfg.logging.wandb_save_dir is None:
        cfg.logging.wandb_save_dir = os.path.join(cfg.checkpoint.save or ".", "wandb")
    validate(cfg, world_size=world_size, cuda=cuda)
    return cfg


def validate(cfg: Config, world_size: int, cuda: bool) -> None:
    """Raise ConfigError with the flag(s) to change for any inconsistent combination."""
    m, p, t, o, d, c = cfg.model, cfg.parallel, cfg.train, cfg.optim, cfg.data, cfg.checkpoint
    errors = []

    def need(cond, msg):
        if not cond:
            errors.append(msg)

    for name in ("num_layers", "hidden_size", "num_attention_heads", "seq_length",
                 "ffn_hidden_size"):
        need(getattr(m, name) > 0, f"{flag_name(name)} must be > 0 (got {getattr(m, name)})")
    for name in ("tensor_model_parallel_size", "pipeline_model_parallel_size"):
        need(getattr(p, name) >= 1, f"{flag_name(name)} must be >= 1")
    tp, pp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size
    if errors:
        raise ConfigError("; ".join(errors))
    need(world_size % (tp * pp) == 0,
         f"world size {world_size} is not divisible by --tensor-model-parallel-size ({tp}) x "
         f"--pipeline-model-parallel-size ({pp}); launch a multiple of {tp * pp} processes")
    groups = m.num_query_groups or m.num_attention_heads
    need(m.num_attention_heads % groups == 0,
         f"--num-attention-heads {m.num_attention_heads} must be a multiple of "
         f"--num-query-groups {groups}")
    need(m.num_attention_heads % tp == 0,
         f"--num-attention-heads {m.num_attention_heads} must be divisible by "
         f"--tensor-model-parallel-size {tp}")
    need(groups % tp == 0,
         f"--num-query-groups {groups} must be divisible by --tensor-model-parallel-size {tp}")
    need(m.ffn_hidden_size % tp == 0,
         f"--ffn-hidden-size {m.ffn_hidden_size} must be divisible by --tensor-model-parallel-size {tp}")
    need(m.num_layers % pp == 0,
         f"--num-layers {m.num_layers} must be divisible by --pipeline-model-parallel-size {pp}")
    need(m.max_position_embeddings >= m.seq_length or m.position_embedding_type == "rope",
         f"--max-position-embeddings {m.max_position_embeddings} < --seq-length {m.seq_length}")
    need(not p.sequence_parallel or tp > 1,
         "--sequence-parallel needs --tensor-model-parallel-size > 1")
    need(not p.sequence_parallel or m.transformer_impl == "transformer_engine",
         "--sequence-parallel needs --transformer-impl transformer_engine (the local spec's "
         "torch norms do not support sequence parallelism)")
    if not cuda:
        need(not p.use_distributed_optimizer,
             "--use-distributed-optimizer needs CUDA (megatron-core's distributed optimizer "
             "allocates CUDA buffers); drop it on CPU")
        need(not p.overlap_grad_reduce, "--overlap-grad-reduce needs CUDA streams; drop it on CPU")
        need(p.distributed_backend == "gloo", "--distributed-backend nccl needs CUDA; use gloo")
        need(m.transformer_impl == "local",
             "--transformer-impl transformer_engine needs CUDA; use --transformer-impl local")
    need(t.micro_batch_size >= 1, "--micro-batch-size must be >= 1")
    dp = data_parallel_size(cfg, world_size)
    if dp >= 1 and t.global_batch_size:
        need(t.global_batch_size % (t.micro_batch_size * dp) == 0,
             f"--global-batch-size {t.global_batch_size} must be a multiple of --micro-batch-size "
             f"{t.micro_batch_size} x data-parallel size {dp}")
    need(t.train_iters is not None, "give --train-iters or --train-tokens")
    need(t.train_iters is None or t.train_iters >= 0, "--train-iters must be >= 0")
    need(o.min_lr <= o.lr, f"--min-lr {o.min_lr} must be <= --lr {o.lr}")
    need(o.lr_warmup_iters >= 0, "--lr-warmup-iters must be >= 0")
    if o.lr_decay_style == "WSD":
        need(o.lr_wsd_decay_iters is not None,
             "--lr-decay-style WSD needs --lr-wsd-decay-iters (length of the final decay phase)")
    if t.train_iters and o.lr_decay_iters is not None:
        need(o.lr_warmup_iters < o.lr_decay_iters,
             f"--lr-warmup-iters {o.lr_warmup_iters} must be < --lr-decay-iters {o.lr_decay_iters} "
             f"(which defaults to --train-iters)")
    need(o.clip_grad >= 0, "--clip-grad must be >= 0 (0 disables clipping)")
    need(not d.data_path or not d.train_data_path,
         "give either --data-path (with --split) or --train-data-path/--valid-data-path/"
         "--test-data-path, not both")
    need(bool(d.data_path or d.train_data_path), "no training data: give --data-path or --train-data-path")
    try:
        blends_from_args(d)
    except Exception as e:  # megatron-core's blend parser asserts on malformed weight/path lists
        errors.append(f"bad data path blend ({type(e).__name__}: {e}); expected 'PATH ...' or "
                      f"'WEIGHT PATH WEIGHT PATH ...'")
    errors += IXTOptions(**IXTOptions.values_from_flags(d)).problems()
    tk = cfg.tokenizer
    need(tk.tokenizer_type != "NullTokenizer" or (tk.vocab_size or 0) > 0,
         "--tokenizer-type NullTokenizer needs --vocab-size")
    need(cfg.logging.log_interval >= 1, "--log-interval must be >= 1")
    need(cfg.eval.eval_interval >= 1 and cfg.eval.eval_iters >= 0,
         "--eval-interval must be >= 1 and --eval-iters >= 0")
    need(c.save_interval is None or c.save is not None, "--save-interval needs --save DIR")
    need(not c.exit_signal_handler or c.save is not None,
         "--exit-signal-handler saves a checkpoint on SIGTERM: give --save DIR")
    need(not c.finetune or c.load is not None, "--finetune needs --load DIR")
    need(c.ckpt_keep_last >= 0, "--ckpt-keep-last must be >= 0 (0 keeps every checkpoint)")
    need(t.skip_nonfinite_iters >= 0, "--skip-nonfinite-iters must be >= 0")
    need(t.skip_nonfinite_iters == 0 or t.check_for_nan_in_loss_and_grad,
         "--skip-nonfinite-iters needs the NaN/Inf check: drop --no-check-for-nan-in-loss-and-grad")
    need(p.distributed_timeout_minutes >= 1, "--distributed-timeout-minutes must be >= 1")
    if errors:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(errors))


def check_data_paths(cfg: Config) -> None:
    """Every dataset prefix of the blends has ``.bin`` and ``.idx`` files; ConfigError otherwise."""
    missing = []
    for name in BLEND_FLAGS:
        for path in flag_paths(cfg.data, (name,)):
            absent = [ext for ext in (".bin", ".idx") if not os.path.isfile(path + ext)]
            if absent:
                missing.append(f"{flag_name(name)}: {path}{'/'.join(absent)} not found (expected a Megatron "
                               f"IndexedDataset prefix such as P_text_document; weighted blends "
                               f"alternate WEIGHT PATH)")
    if missing:
        raise ConfigError("invalid data paths:\n  - " + "\n  - ".join(missing))
