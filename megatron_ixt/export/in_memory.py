"""A training checkpoint as an in-memory Hugging Face export: transformers model, fast tokenizer and
steering table, what tools/convert_to_hf.py writes to disk and the lm-eval model ``ixt_hf`` can use
directly (``load=CKPT``)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from megatron_ixt.inference import InferenceModel, load_for_inference, training_data_paths


@dataclass
class InMemoryExport:
    """``model``: the transformers model (fp32, CPU, ``generation_config`` set); ``tokenizer``: the fast
    tokenizer checked to encode like ours; ``steering``: ``kind -> level -> {text, tokens}``
    (``megatron_ixt.export.steering.steering_table``) of the shard sets ``paths``; ``loaded``: the
    megatron model it came from (moved to the CPU)."""

    model: object
    tokenizer: object
    steering: dict
    paths: list[str]
    loaded: InferenceModel


def export_checkpoint(load_dir: str, iteration: int | None = None, shard_set: str | None = None) -> InMemoryExport:
    """Export ``load_dir``'s checkpoint of ``iteration`` (default: the latest) in memory; the steering
    prefixes come from the shard set ``shard_set`` (a stem P; default: the checkpoint's training data).
    ValueError when ``shard_set`` has no ``P_ixt.json``; ExportError for a configuration no target
    class expresses; CheckpointError for an unusable checkpoint."""
    import transformers

    from megatron_ixt.data.shards import text_store_path
    from megatron_ixt.export.hf import to_hf_model
    from megatron_ixt.export.steering import steering_table
    from megatron_ixt.export.tokenizer import hf_tokenizer
    from megatron_ixt.model import transformer_config

    loaded = load_for_inference(load_dir, iteration)
    loaded.model.cpu()
    cfg, tokenizer = loaded.cfg, loaded.tokenizer
    paths = [text_store_path(shard_set)] if shard_set else training_data_paths(cfg)
    steering = steering_table(paths, tokenizer)
    if shard_set and not steering:
        raise ValueError(f"--shard-set {shard_set}: no P_ixt.json there")
    sample = [level["text"] for levels in steering.values() for level in levels.values()]
    hf_tok = hf_tokenizer(cfg.tokenizer, tokenizer, sample)
    hf_tok.model_max_length = cfg.model.max_position_embeddings
    hf = to_hf_model(loaded.model, cfg, transformer_config(cfg), tokenizer.vocab_size, tokenizer.eod, torch.float32)
    hf.generation_config = transformers.GenerationConfig(
        bos_token_id=tokenizer.eod, eos_token_id=tokenizer.eod, pad_token_id=tokenizer.eod, do_sample=False,
        max_length=cfg.model.max_position_embeddings)
    return InMemoryExport(hf, hf_tok, steering, paths, loaded)
