"""Steered greedy generation from a training checkpoint: ``python -m megatron_ixt.generate``.

IXT models learn p(document | feedback); steering conditions generation on the feedback you want.
The prefix is, in order of precedence: ``--prefix-text`` (any feedback you write, tokenized as is),
or the shard set's steering prefix for ``--steer KIND[:LEVEL]`` (``--steer quality``: the top
level, ``steering.<kind>.tokens`` of ``P_ixt.json``; ``--steer quality:1``: the lowest;
``--steer scores:educational_value=5``: that axis only, the others left out; ``--steering-critique``:
your critique in the kind's template), rendered from the template recorded in the shard set of
``--shard-set`` or of the training data paths stored in the checkpoint; ``--steer none`` generates
unconditioned. The model shape and tokenizer
come from the checkpoint's stored config; the checkpoint may have been saved under any TP/PP layout
(it is loaded into one process). Greedy decoding without a KV cache: for inspection, not serving.

    python -m megatron_ixt.generate --load ckpt/ixt --prompt "Question: ..." --steer critique
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

import torch

from megatron_ixt.data import prefix_kinds
from megatron_ixt.data.prefix_kinds import STEER_HELP
from megatron_ixt.training.checkpoint import CheckpointError, iteration_dir, read_config, read_latest_iteration


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m megatron_ixt.generate", description=__doc__.split("\n")[0])
    parser.add_argument("--load", required=True, help="checkpoint directory (as given to --save)")
    prompts = parser.add_mutually_exclusive_group(required=True)
    prompts.add_argument("--prompt", help="text to continue")
    prompts.add_argument("--prompt-file", help='JSONL file, one {"prompt": str} object per line')
    parser.add_argument("--output", default=None,
                        help="with --prompt-file: JSONL file for the results (default: stdout), one per prompt")
    parser.add_argument("--steer", type=parse_steer_flag, default="critique", metavar="KIND[:LEVEL]|none",
                        help=f"steering prefix; KIND is one of {', '.join(prefix_kinds.names())}; {STEER_HELP}; "
                             "'none': unconditioned (default: critique, its top level)")
    parser.add_argument("--shard-set", default=None, metavar="STEM",
                        help="path stem P of the IXT shard set whose P_ixt.json holds the steering templates "
                             "(default: the checkpoint's training data)")
    parser.add_argument("--steering-critique", default=None, metavar="TEXT",
                        help="a critique of your own, rendered into the --steer kind's recorded template in place of "
                             "the built-in critique of the level (for kinds whose template uses {critique})")
    parser.add_argument("--prefix-text", default=None, help="a feedback prefix of your own (overrides --steer)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate per prompt")
    parser.add_argument("--json", action="store_true", help="print one JSON object (tokens and text) per prompt")
    return parser


def parse_steer_flag(spec: str):
    """``--steer``: ``"none"`` -> None, ``KIND[:LEVEL]`` -> ``(kind, level)`` (``prefix_kinds.parse_steer``)."""
    if spec == "none":
        return None
    try:
        return prefix_kinds.parse_steer(spec)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def steering_tokens(args, cfg, tokenizer) -> List[int]:
    """The prefix tokens generation is conditioned on (see the module docstring)."""
    if args.prefix_text is not None:
        return list(tokenizer.tokenize(args.prefix_text))
    if args.steer is None:
        return []
    from megatron_ixt.data.provider import steering_prefix
    from megatron_ixt.data.shards import text_store_path

    paths = [text_store_path(args.shard_set)] if args.shard_set else \
        [p for p in cfg.data.data_path + cfg.data.train_data_path if not _is_number(p)]
    kind, level = args.steer
    return list(steering_prefix(paths, kind, level, tokenizer=tokenizer, critique=args.steering_critique))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@torch.no_grad()
def greedy(model, tokens: List[int], max_new_tokens: int, eod: Optional[int], max_length: int,
           device) -> List[int]:
    """Append up to ``max_new_tokens`` argmax tokens to ``tokens`` (stops at ``eod``); returns the new ones."""
    out = list(tokens)
    for _ in range(max_new_tokens):
        window = out[-max_length:]
        ids = torch.tensor([window], dtype=torch.long, device=device)
        positions = torch.arange(len(window), device=device)[None]
        logits = model(ids, positions, None)  # [1, s, vocab]
        next_id = int(logits[0, -1].float().argmax())
        out.append(next_id)
        if next_id == eod:
            break
    return out[len(tokens):]


def read_prompts(path: str) -> List[str]:
    """The ``prompt`` strings of a JSONL file; a bad line is an error naming ``path:line``."""
    prompts = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                prompt = json.loads(line)["prompt"]
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{lineno}: expected a JSON object with a string 'prompt' ({e})") from None
            if not isinstance(prompt, str):
                raise ValueError(f"{path}:{lineno}: 'prompt' must be a string, got {type(prompt).__name__}")
            prompts.append(prompt)
    return prompts


def load_model(load_dir: str):
    """``(model, cfg, tokenizer, device)`` from the latest checkpoint in ``load_dir``, in one process.

    Raises CheckpointError when the checkpoint is missing or unreadable.
    """
    from megatron.core import dist_checkpointing
    from megatron_ixt.tokenizer import build_tokenizer
    from megatron_ixt.training.config import config_from_dict
    from megatron_ixt.distributed import init_distributed, set_seed
    from megatron_ixt.model import model_from_config, padded_vocab_size, transformer_config

    cfg = config_from_dict(read_config(load_dir))
    path = iteration_dir(load_dir, read_latest_iteration(load_dir))
    p = cfg.parallel
    p.tensor_model_parallel_size = p.pipeline_model_parallel_size = 1
    p.sequence_parallel = p.use_distributed_optimizer = p.overlap_grad_reduce = False
    p.distributed_backend = "nccl" if torch.cuda.is_available() else "gloo"
    cfg.train.use_cpu_initialization = not torch.cuda.is_available()
    cfg.train.bf16 = False  # fp32 parameters; a bf16 checkpoint's weights are upcast on load
    if not torch.cuda.is_available():
        cfg.model.transformer_impl = "local"
    init_distributed(backend=p.distributed_backend)
    set_seed(cfg.train.seed)
    tokenizer = build_tokenizer(cfg.tokenizer)
    vocab_size = padded_vocab_size(tokenizer.vocab_size, cfg.model.make_vocab_size_divisible_by, 1)
    model = model_from_config(cfg, transformer_config(cfg), vocab_size)
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    model.to(device)
    try:
        state = dist_checkpointing.load({"model": model.sharded_state_dict()}, path)
    except Exception as e:
        raise CheckpointError(f"{path}: cannot load model weights ({type(e).__name__}: {e})") from e
    model.load_state_dict(state["model"], strict=True)
    model.eval()
    return model, cfg, tokenizer, device


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        prompts = [args.prompt] if args.prompt is not None else read_prompts(args.prompt_file)
        model, cfg, tokenizer, device = load_model(args.load)
        prefix = steering_tokens(args, cfg, tokenizer)
    except (CheckpointError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    try:
        for prompt_text in prompts:
            prompt = list(tokenizer.tokenize(prompt_text))
            new = greedy(model, prefix + prompt, args.max_new_tokens, tokenizer.eod, cfg.model.seq_length, device)
            text = tokenizer.detokenize([t for t in new if t != tokenizer.eod])
            if args.json or args.prompt_file:
                out.write(json.dumps({"prompt": prompt_text, "prefix_tokens": prefix, "prompt_tokens": prompt,
                                      "generated_tokens": new, "text": text}) + "\n")
            else:
                out.write(text + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
