"""Steered generation from a training checkpoint: ``python -m megatron_ixt.generate``.

IXT models learn p(document | feedback); steering conditions generation on the feedback you want.
The prefix is, in order of precedence: ``--prefix-text`` (any feedback you write, tokenized as is),
or the shard set's steering prefix for ``--steer KIND[:LEVEL]`` (``--steer quality``: the top
level, ``steering.<kind>.tokens`` of ``P_ixt.json``; ``--steer quality:1``: the lowest;
``--steer scores:educational_value=5``: that axis only, the others left out; ``--steering-critique``:
your critique in the kind's template), rendered from the template recorded in the shard set of
``--shard-set`` or of the training data paths stored in the checkpoint; ``--steer none`` generates
unconditioned. The model shape and tokenizer
come from the checkpoint's stored config; the checkpoint may have been saved under any TP/PP layout
(it is loaded into one process).

Decoding runs the in-memory Hugging Face export of the checkpoint (``megatron_ixt.export``) through
transformers' ``generate``: prompts in batches (left padding + attention mask) with a KV cache,
greedy or ``--temperature``/``--top-p`` sampling with ``--seed``, stopping at EOD or a
``--stop`` string; on GPU when there is one, else CPU. ``--no-kv-cache`` is the reference path:
greedy on the megatron model, one prompt at a time, the whole sequence re-run for every token.

    python -m megatron_ixt.generate --load ckpt/ixt --prompt "Question: ..." --steer critique
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional, Sequence, Tuple

import torch

from megatron_ixt.data import prefix_kinds
from megatron_ixt.data.prefix_kinds import STEER_HELP
from megatron_ixt.training.checkpoint import CheckpointError, checkpoint_path, load_model_weights, read_config


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
    parser.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate per prompt at most")
    parser.add_argument("--iteration", type=int, default=None, help="checkpoint iteration (default: the latest)")
    parser.add_argument("--batch-size", type=int, default=32, help="prompts decoded together")
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="sampling temperature; 0 (default) decodes greedily")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling: keep the top-p probability mass")
    parser.add_argument("--seed", type=int, default=1234, help="sampling seed")
    parser.add_argument("--stop", action="append", default=[],
                        help="stop a prompt's generation once its text contains this string (repeatable); "
                             "the text is cut before it")
    parser.add_argument("--no-kv-cache", action="store_true",
                        help="reference decoding: greedy on the megatron model, one prompt at a time, no cache")
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
           device, vocab_size: int) -> List[int]:
    """Append up to ``max_new_tokens`` argmax tokens to ``tokens`` (stops at ``eod``); returns the new ones.
    The argmax is over the tokenizer's ``vocab_size`` ids (not the padding rows of the output layer)."""
    out = list(tokens)
    for _ in range(max_new_tokens):
        window = out[-max_length:]
        ids = torch.tensor([window], dtype=torch.long, device=device)
        positions = torch.arange(len(window), device=device)[None]
        logits = model(ids, positions, None)  # [1, s, vocab]
        next_id = int(logits[0, -1, :vocab_size].float().argmax())
        out.append(next_id)
        if next_id == eod:
            break
    return out[len(tokens):]


class _StopStrings:
    """transformers stopping criterion: a row is done once the text of its new tokens contains a stop string."""

    def __init__(self, stops: Sequence[str], detokenize, prompt_len: int):
        self.stops, self.detokenize, self.prompt_len = list(stops), detokenize, prompt_len

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        done = [any(s in self.detokenize(row[self.prompt_len:].tolist()) for s in self.stops) for row in input_ids]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def cut_at_stop(tokens: List[int], stops: Sequence[str], detokenize) -> Tuple[List[int], str]:
    """``(tokens up to the one completing the first stop string, text before that string)``;
    ``tokens`` and their whole text when no stop string occurs."""
    text = detokenize(tokens)
    hits = [text.index(s) for s in stops if s in text]
    if not hits:
        return tokens, text
    for n in range(1, len(tokens) + 1):
        if any(s in detokenize(tokens[:n]) for s in stops):
            return tokens[:n], text[:min(hits)]
    return tokens, text[:min(hits)]


@torch.no_grad()
def generate(hf_model, prompts: Sequence[Sequence[int]], max_new_tokens: int, eod: Optional[int], *,
             batch_size: int = 32, temperature: float = 0.0, top_p: float = 1.0, seed: int = 1234,
             stops: Sequence[str] = (), detokenize=None) -> List[List[int]]:
    """New tokens for each prompt (token lists) from a transformers causal LM with a KV cache.

    Prompts are decoded ``batch_size`` at a time, longest first, left-padded with an attention
    mask. Greedy when ``temperature`` is 0, else sampling with ``top_p`` (seeded by ``seed``). A
    prompt stops after EOD (kept as its last token) or once its text (``detokenize``) contains
    one of ``stops``.
    """
    import transformers

    device = hf_model.device
    gen = transformers.GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=temperature > 0, eos_token_id=eod,
        pad_token_id=0 if eod is None else eod,
        **({"temperature": temperature, "top_p": top_p} if temperature > 0 else {}))
    transformers.set_seed(seed)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    results: List[List[int]] = [[] for _ in prompts]
    for b in range(0, len(order), batch_size):
        rows = [list(prompts[i]) for i in order[b:b + batch_size]]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), gen.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, r in enumerate(rows):
            ids[j, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[j, width - len(r):] = 1
        criteria = transformers.StoppingCriteriaList([_StopStrings(stops, detokenize, width)] if stops else [])
        out = hf_model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=gen,
                                stopping_criteria=criteria)
        for j, i in enumerate(order[b:b + batch_size]):
            new = out[j, width:].tolist()
            if eod in new:
                new = new[:new.index(eod) + 1]
            if stops:
                new = cut_at_stop(new, stops, detokenize)[0]
            results[i] = new
    return results


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


def load_model(load_dir: str, iteration: Optional[int] = None):
    """``(model, cfg, tokenizer, device)`` from ``load_dir``'s checkpoint of ``iteration`` (default: the
    latest), in one process: megatron-core's local spec, fp32 (a bf16 checkpoint is upcast), on GPU
    when there is one. ``cfg`` is the stored training Config with TP = PP = 1.

    Raises CheckpointError when the checkpoint is missing or unreadable.
    """
    from megatron_ixt.tokenizer import build_tokenizer
    from megatron_ixt.training.config import config_from_dict
    from megatron_ixt.distributed import init_distributed, set_seed
    from megatron_ixt.model import model_from_config, padded_vocab_size, transformer_config

    cfg = config_from_dict(read_config(load_dir, iteration))
    path = checkpoint_path(load_dir, iteration)
    p = cfg.parallel
    saved_tp = p.tensor_model_parallel_size  # the vocabulary was padded for it
    p.tensor_model_parallel_size = p.pipeline_model_parallel_size = 1
    p.sequence_parallel = p.use_distributed_optimizer = p.overlap_grad_reduce = False
    p.distributed_backend = "nccl" if torch.cuda.is_available() else "gloo"
    cfg.train.use_cpu_initialization = not torch.cuda.is_available()
    cfg.train.bf16 = False  # fp32 parameters; a bf16 checkpoint's weights are upcast on load
    cfg.model.transformer_impl = "local"  # the checkpoint's keys are the same for both specs
    init_distributed(backend=p.distributed_backend)
    set_seed(cfg.train.seed)
    tokenizer = build_tokenizer(cfg.tokenizer)
    vocab_size = padded_vocab_size(tokenizer.vocab_size, cfg.model.make_vocab_size_divisible_by, saved_tp)
    model = model_from_config(cfg, transformer_config(cfg), vocab_size)
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    model.to(device)
    load_model_weights(model, path)
    model.eval()
    return model, cfg, tokenizer, device


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.no_kv_cache and (args.temperature > 0 or args.stop):
        print("error: --no-kv-cache decodes greedily without stop strings; drop --temperature/--stop",
              file=sys.stderr)
        return 2
    try:
        prompts = [args.prompt] if args.prompt is not None else read_prompts(args.prompt_file)
        model, cfg, tokenizer, device = load_model(args.load, args.iteration)
        prefix = steering_tokens(args, cfg, tokenizer)
        inputs = [prefix + list(tokenizer.tokenize(p)) for p in prompts]
        limit = cfg.model.max_position_embeddings or cfg.model.seq_length
        for n, tokens in enumerate(inputs, 1):
            if len(tokens) + args.max_new_tokens > limit:
                raise ValueError(f"prompt {n}: {len(tokens)} prefix+prompt tokens + --max-new-tokens "
                                 f"{args.max_new_tokens} exceed the model's {limit} positions")
    except (CheckpointError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    if args.no_kv_cache:
        outputs = [greedy(model, t, args.max_new_tokens, tokenizer.eod, limit, device, tokenizer.vocab_size) for t in inputs]
    else:
        from megatron_ixt.export.hf import to_hf_model
        from megatron_ixt.model import transformer_config

        hf_model = to_hf_model(model, cfg, transformer_config(cfg), tokenizer.vocab_size, tokenizer.eod).to(device)
        del model
        outputs = generate(hf_model, inputs, args.max_new_tokens, tokenizer.eod, batch_size=args.batch_size,
                           temperature=args.temperature, top_p=args.top_p, seed=args.seed, stops=args.stop,
                           detokenize=tokenizer.detokenize)
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    try:
        for prompt_text, tokens, new in zip(prompts, inputs, outputs):
            text = tokenizer.detokenize([t for t in new if t != tokenizer.eod])
            if args.stop:
                text = cut_at_stop([t for t in new if t != tokenizer.eod], args.stop, tokenizer.detokenize)[1]
            if args.json or args.prompt_file:
                out.write(json.dumps({"prompt": prompt_text, "prefix_tokens": prefix,
                                      "prompt_tokens": tokens[len(prefix):], "generated_tokens": new,
                                      "text": text}) + "\n")
            else:
                out.write(text + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
