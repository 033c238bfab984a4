"""One loader for inference: a training checkpoint -> model, stored config and tokenizer.

:func:`load_for_inference` is the only place that turns a ``--save`` directory into a model to run:
``megatron_ixt.generate``, the held-out evaluation (``megatron_ixt.evaluation.cli``), the Hugging Face
export (tools/convert_to_hf.py) and the lm-eval model (``ixt_hf`` with ``load=``) all call it. The
checkpoint may have been saved under any TP/PP layout (dist_checkpointing reshards it); the model is
built for the layout asked for here, from the training config stored in the checkpoint.

Raises :class:`~megatron_ixt.training.checkpoint.CheckpointError` naming the path when the checkpoint
is missing or unreadable.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from megatron_ixt.data.blends import flag_paths
from megatron_ixt.training.checkpoint import checkpoint_path, load_model_weights, read_config


@dataclass
class InferenceModel:
    """A loaded checkpoint. ``model`` is this rank's megatron-core GPTModel stage in eval mode on
    ``device`` (wrapped in ``Float16Module`` when ``cfg.train.bf16``); ``cfg`` the stored training
    Config with the inference layout; ``vocab_size`` the output layer's padded rows (the tokenizer's
    ids are ``tokenizer.vocab_size``); ``path`` the ``iter_*`` directory read."""

    model: torch.nn.Module
    cfg: object
    tokenizer: object
    device: torch.device
    iteration: int
    path: str
    vocab_size: int

    def to_hf(self):
        """The in-memory transformers model of the weights (fp32, on ``device``; TP = PP = 1 only)."""
        from megatron_ixt.export.hf import to_hf_model
        from megatron_ixt.model import transformer_config

        return to_hf_model(self.model, self.cfg, transformer_config(self.cfg), self.tokenizer.vocab_size,
                           self.tokenizer.eod).to(self.device)


def training_data_paths(cfg) -> list[str]:
    """The dataset paths (text stores, weights dropped) of a Config's ``--data-path`` / ``--train-data-path``
    blends: where a checkpoint's steering templates are recorded."""
    return flag_paths(cfg.data, ("data_path", "train_data_path"))


def inference_config(load_dir: str, iteration: int | None = None, *, tensor_model_parallel_size: int = 1,
                     pipeline_model_parallel_size: int = 1, training_precision: bool = False):
    """The training Config stored in ``load_dir``'s checkpoint of ``iteration`` (default: the latest),
    set up to run inference under TP x PP here: no optimizer features, gloo on CPU (nccl on GPU).
    Parameters are fp32 on megatron-core's local spec (a bf16 checkpoint is upcast; the Hugging Face
    export reads that spec) unless ``training_precision`` and CUDA: then the checkpoint's own precision
    and transformer implementation (fast held-out loss). The caller may adjust it further (data paths,
    batch sizes) before :func:`load_for_inference`."""
    from megatron_ixt.training.config import config_from_dict

    cfg = config_from_dict(read_config(load_dir, iteration))
    cuda = torch.cuda.is_available()
    p = cfg.parallel
    p.tensor_model_parallel_size, p.pipeline_model_parallel_size = (tensor_model_parallel_size,
                                                                    pipeline_model_parallel_size)
    p.use_distributed_optimizer = p.overlap_grad_reduce = False
    p.sequence_parallel = p.sequence_parallel and tensor_model_parallel_size > 1
    p.distributed_backend = "nccl" if cuda else "gloo"
    cfg.train.use_cpu_initialization = not cuda
    if not (training_precision and cuda):
        cfg.train.bf16 = False
        cfg.model.transformer_impl = "local"  # the checkpoint's keys are the same for both specs
    return cfg


def load_for_inference(load_dir: str, iteration: int | None = None, *, cfg=None,
                       tensor_model_parallel_size: int = 1, pipeline_model_parallel_size: int = 1) -> InferenceModel:
    """Initialize the process group and megatron-core's parallel state (torchrun's world, or a world of
    one), build the model of ``cfg`` (default: :func:`inference_config` for the given layout) and load
    the weights of ``load_dir``'s checkpoint of ``iteration`` (default: the latest) into it."""
    from megatron.core.transformer.module import Float16Module

    from megatron_ixt.distributed import init_distributed, set_seed
    from megatron_ixt.model import model_from_config, padded_vocab_size, transformer_config
    from megatron_ixt.tokenizer import build_tokenizer

    path = checkpoint_path(load_dir, iteration)
    iteration = int(path.rsplit("iter_", 1)[1])
    if cfg is None:
        cfg = inference_config(load_dir, iteration, tensor_model_parallel_size=tensor_model_parallel_size,
                               pipeline_model_parallel_size=pipeline_model_parallel_size)
    saved_tp = read_config(load_dir, iteration)["parallel"]["tensor_model_parallel_size"]  # the vocabulary's padding
    p = cfg.parallel
    init_distributed(p.tensor_model_parallel_size, p.pipeline_model_parallel_size, p.distributed_backend)
    set_seed(cfg.train.seed)
    tokenizer = build_tokenizer(cfg.tokenizer)
    vocab_size = padded_vocab_size(tokenizer.vocab_size, cfg.model.make_vocab_size_divisible_by, saved_tp)
    tconfig = transformer_config(cfg)
    model = model_from_config(cfg, tconfig, vocab_size)
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    model.to(device)
    load_model_weights(model, path)
    if cfg.train.bf16:
        model = Float16Module(tconfig, model)
    model.eval()
    return InferenceModel(model, cfg, tokenizer, device, iteration, path, vocab_size)
