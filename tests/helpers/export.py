"""Helpers for the export tests (``from tests.helpers.export import ...``; fixtures live in tests/export/conftest.py).

``tiny_config(**model)`` is a training Config of a 2-layer model (NullTokenizer, 300 ids + EOD, so the
vocabulary is padded to 384); ``build_model(cfg)`` builds it in this process (needs the ``dist``
fixture); ``save_model_checkpoint(root, model, cfg)`` saves its weights and config with
megatron-core's dist_checkpointing in the trainer's layout (what ``--load`` reads);
``megatron_logits(model, ids)`` is its fp32 forward. ``build_parallel(dst, tp, pp, **model)`` builds,
saves and runs the model under TP x PP in torchrun (gloo; the worker is ``tests.helpers.export_build_parallel``).
"""
from __future__ import annotations

import os
import subprocess
import sys

import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VOCAB = 300  # NullTokenizer ids 0..299, EOD 300: 301 ids, padded to 384


def tiny_config(tokenizer=None, data_path=(), **model):
    from megatron_ixt.tokenizer import TokenizerConfig
    from megatron_ixt.training.config import Config

    cfg = Config()
    cfg.tokenizer = tokenizer or TokenizerConfig("NullTokenizer", vocab_size=VOCAB)
    cfg.data.data_path = list(data_path)
    m = cfg.model
    m.num_layers, m.hidden_size, m.num_attention_heads, m.ffn_hidden_size = 2, 64, 4, 128
    m.seq_length = m.max_position_embeddings = 64
    for name, value in model.items():
        setattr(m, name, value)
    if m.kv_channels is None:
        m.kv_channels = m.hidden_size // m.num_attention_heads
    cfg.train.use_cpu_initialization = True
    return cfg


def build_model(cfg, seed: int = 0):
    from megatron_ixt.model import model_from_config, padded_vocab_size, transformer_config
    from megatron_ixt.tokenizer import build_tokenizer

    torch.manual_seed(seed)
    vocab = padded_vocab_size(build_tokenizer(cfg.tokenizer).vocab_size, cfg.model.make_vocab_size_divisible_by,
                              cfg.parallel.tensor_model_parallel_size)
    return model_from_config(cfg, transformer_config(cfg), vocab).eval()


def save_model_checkpoint(root: str, model, cfg, iteration: int = 1) -> str:
    """Save ``model``'s weights and ``cfg`` as checkpoint ``iteration`` of ``root`` (collective)."""
    import torch.distributed as dist
    from megatron.core import dist_checkpointing

    from megatron_ixt.training.checkpoint import CHECKPOINT_VERSION, TRACKER_FILE, iteration_dir

    path = iteration_dir(root, iteration)
    if dist.get_rank() == 0:
        os.makedirs(path, exist_ok=True)
    dist.barrier()
    dist_checkpointing.save({"model": model.sharded_state_dict(), "config": cfg.to_dict(), "iteration": iteration,
                             "checkpoint_version": CHECKPOINT_VERSION}, path)
    dist.barrier()
    if dist.get_rank() == 0:
        with open(os.path.join(root, TRACKER_FILE), "w", encoding="utf-8") as f:
            f.write(str(iteration))
    return path


@torch.no_grad()
def megatron_logits(model, ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    positions = torch.arange(ids.shape[1])[None].expand(ids.shape[0], -1)
    return model(ids, positions, None)[..., :vocab_size].float()


def probe_ids(batch: int = 2, length: int = 24) -> torch.Tensor:
    """A fixed ``[batch, length]`` batch of token ids below VOCAB."""
    return (torch.arange(batch * length).reshape(batch, length) * 7919 + 13) % VOCAB


def build_parallel(dst: str, tp: int, pp: int, **model) -> torch.Tensor:
    """Build and save the tiny model under TP x PP (torchrun, gloo; see export_build_parallel.py) as
    checkpoint ``dst``; returns its logits on ``probe_ids()`` computed under that layout."""
    import json

    # the worker imports tests.helpers.export: the repository root goes first on its PYTHONPATH
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore",
               PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(tp * pp),
           "-m", "tests.helpers.export_build_parallel", dst, str(tp), str(pp),
           json.dumps(model)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return torch.load(os.path.join(dst, "ref_logits.pt"))
