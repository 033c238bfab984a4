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
(it is loaded into one process by ``megatron_ixt.inference.load_for_inference``).

Guided steering (classifier-free guidance): ``--guidance-scale G`` picks each token from the logits
``neg + G (cond - neg)``, ``cond`` under the steering prefix and ``neg`` under ``--negative-steer``
(``none``, the default: unprefixed; or a low level, ``quality:1``). A prompt and its negative are
decoded in one batch with the KV cache and both continued with the chosen token. ``G = 1`` is plain
steering (the negative pass is skipped, so the output is today's bit for bit); ``G = 0`` decodes as
the negative; ``G > 1`` pushes away from it.

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
from collections.abc import Sequence

import torch

from megatron_ixt.cli import EXIT_BAD_INPUT, EXIT_USAGE, CommandError, add_import_flag, entry_point, failing_with
from megatron_ixt.data import prefix_kinds
from megatron_ixt.data.prefix_kinds import STEER_HELP, steer_argument


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m megatron_ixt.generate", description=__doc__.split("\n")[0])
    add_import_flag(parser)
    parser.add_argument("--load", required=True, help="checkpoint directory (as given to --save)")
    prompts = parser.add_mutually_exclusive_group(required=True)
    prompts.add_argument("--prompt", help="text to continue")
    prompts.add_argument("--prompt-file", help='JSONL file, one {"prompt": str} object per line')
    parser.add_argument("--output", default=None,
                        help="with --prompt-file: JSONL file for the results (default: stdout), one per prompt")
    parser.add_argument("--steer", type=steer_argument, default="critique", metavar="KIND[:LEVEL]|none",
                        help=f"steering prefix; KIND is one of {', '.join(prefix_kinds.names())}; {STEER_HELP}; "
                             "'none': unconditioned (default: critique, its top level)")
    parser.add_argument("--guidance-scale", type=float, default=1.0, metavar="G",
                        help="guided steering: next-token logits neg + G (cond - neg), cond under the steering "
                             "prefix, neg under --negative-steer, both passes in one batch with the KV cache; "
                             "1 (default) is plain steering (no negative pass), 0 decodes as the negative")
    parser.add_argument("--negative-steer", type=steer_argument, default=None, metavar="KIND[:LEVEL]|none",
                        help="with --guidance-scale: the negative pass's prefix, e.g. quality:1 (a low level) "
                             "or none (unprefixed, the default)")
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


def prefix_tokens(steer, cfg, tokenizer, *, shard_set: str | None = None,
                  critique: str | None = None) -> list[int]:
    """The tokens of a parsed steering spec (``prefix_kinds.parse_steer``; None: no prefix), rendered from
    the template recorded in the shard set ``shard_set`` (default: the checkpoint's training data)."""
    if steer is None:
        return []
    from megatron_ixt.data.provider import steering_prefix
    from megatron_ixt.data.shards import text_store_path
    from megatron_ixt.inference import training_data_paths

    paths = [text_store_path(shard_set)] if shard_set else training_data_paths(cfg)
    kind, level = steer
    return list(steering_prefix(paths, kind, level, tokenizer=tokenizer, critique=critique))


def steering_tokens(args, cfg, tokenizer) -> list[int]:
    """The prefix tokens generation is conditioned on (see the module docstring)."""
    if args.prefix_text is not None:
        return list(tokenizer.tokenize(args.prefix_text))
    return prefix_tokens(args.steer, cfg, tokenizer, shard_set=args.shard_set, critique=args.steering_critique)


def guided_logits(cond: torch.Tensor, neg: torch.Tensor, scale: float) -> torch.Tensor:
    """Guided next-token logits ``neg + scale * (cond - neg)``."""
    return neg + scale * (cond - neg)


@torch.no_grad()
def greedy(model, tokens: list[int], max_new_tokens: int, eod: int | None, max_length: int,
           device, vocab_size: int, *, negative: list[int] | None = None, guidance_scale: float = 1.0) -> list[int]:
    """Append up to ``max_new_tokens`` argmax tokens to ``tokens`` (stops at ``eod``); returns the new ones.
    The argmax is over the tokenizer's ``vocab_size`` ids (not the padding rows of the output layer), of
    the guided logits (:func:`guided_logits`) when a ``negative`` prompt is given."""
    def next_logits(sequence: list[int]) -> torch.Tensor:
        window = sequence[-max_length:]
        ids = torch.tensor([window], dtype=torch.long, device=device)
        positions = torch.arange(len(window), device=device)[None]
        return model(ids, positions, None)[0, -1, :vocab_size].float()  # [vocab]

    out = list(tokens)
    for _ in range(max_new_tokens):
        logits = next_logits(out)
        if negative is not None:
            logits = guided_logits(logits, next_logits(list(negative) + out[len(tokens):]), guidance_scale)
        next_id = int(logits.argmax())
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


def cut_at_stop(tokens: list[int], stops: Sequence[str], detokenize) -> tuple[list[int], str]:
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


class _GuidedChoice:
    """transformers logits processor for guided decoding of a batch ``[conditioned rows; their negative
    rows]``: row ``i`` and row ``n + i`` both get the token chosen from :func:`guided_logits` of the two
    (argmax, or a ``temperature``/``top_p`` sample drawn with ``generator``), as scores 0 for that token
    and -inf for every other, so that transformers' greedy step appends it to both."""

    def __init__(self, scale: float, temperature: float, top_p: float, generator: torch.Generator):
        self.scale, self.temperature, self.top_p, self.generator = scale, temperature, top_p, generator

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        n = scores.shape[0] // 2
        logits = guided_logits(scores[:n].float(), scores[n:].float(), self.scale)
        if self.temperature > 0:
            probs = torch.softmax(logits / self.temperature, dim=-1)
            ranked, order = probs.sort(dim=-1, descending=True)
            ranked[(ranked.cumsum(dim=-1) - ranked) >= self.top_p] = 0.0  # keep the top-p mass (at least one)
            choice = order.gather(-1, torch.multinomial(ranked.cpu(), 1, generator=self.generator).to(order.device))
        else:
            choice = logits.argmax(dim=-1, keepdim=True)
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(1, torch.cat([choice, choice]), 0.0)
        return out


def _left_padded(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, attention mask)`` of ``rows`` left-padded with ``pad`` to the longest."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for j, r in enumerate(rows):
        ids[j, width - len(r):] = torch.tensor(list(r), dtype=torch.long)
        mask[j, width - len(r):] = 1
    return ids, mask


@torch.no_grad()
def generate(hf_model, prompts: Sequence[Sequence[int]], max_new_tokens: int, eod: int | None, *,
             batch_size: int = 32, temperature: float = 0.0, top_p: float = 1.0, seed: int = 1234,
             stops: Sequence[str] = (), detokenize=None, negatives: Sequence[Sequence[int]] | None = None,
             guidance_scale: float = 1.0) -> list[list[int]]:
    """New tokens for each prompt (token lists) from a transformers causal LM with a KV cache.

    Prompts are decoded ``batch_size`` at a time, longest first, left-padded with an attention
    mask. Greedy when ``temperature`` is 0, else sampling with ``top_p`` (seeded by ``seed``). A
    prompt stops after EOD (kept as its last token) or once its text (``detokenize``) contains
    one of ``stops``. With ``negatives`` (one per prompt: its negative prompt), each token comes from
    :func:`guided_logits` with ``guidance_scale``; a prompt and its negative are decoded in the same
    batch (``2 x batch_size`` rows), each continued with the chosen tokens.
    """
    import transformers

    if negatives is not None and len(negatives) != len(prompts):
        raise ValueError(f"{len(negatives)} negative prompts for {len(prompts)} prompts")
    device = hf_model.device
    guided = negatives is not None
    gen = transformers.GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=temperature > 0 and not guided, eos_token_id=eod,
        pad_token_id=0 if eod is None else eod,
        **({"temperature": temperature, "top_p": top_p} if temperature > 0 and not guided else {}))
    transformers.set_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    results: list[list[int]] = [[] for _ in prompts]
    for b in range(0, len(order), batch_size):
        batch = order[b:b + batch_size]
        rows = [list(prompts[i]) for i in batch] + ([list(negatives[i]) for i in batch] if guided else [])
        ids, mask = _left_padded(rows, gen.pad_token_id)
        width = ids.shape[1]
        criteria = transformers.StoppingCriteriaList([_StopStrings(stops, detokenize, width)] if stops else [])
        processors = transformers.LogitsProcessorList(
            [_GuidedChoice(guidance_scale, temperature, top_p, generator)] if guided else [])
        out = hf_model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=gen,
                                stopping_criteria=criteria, logits_processor=processors)
        for j, i in enumerate(batch):
            new = out[j, width:].tolist()
            if eod in new:
                new = new[:new.index(eod) + 1]
            if stops:
                new = cut_at_stop(new, stops, detokenize)[0]
            results[i] = new
    return results


def read_prompts(path: str) -> list[str]:
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


@entry_point(plugins=True)
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.no_kv_cache and (args.temperature > 0 or args.stop):
        raise CommandError("--no-kv-cache decodes greedily without stop strings; drop --temperature/--stop",
                           EXIT_USAGE)
    if args.negative_steer is not None and args.guidance_scale == 1.0:
        raise CommandError("--negative-steer needs a --guidance-scale other than 1 (1 is plain steering)", EXIT_USAGE)
    from megatron_ixt.inference import load_for_inference

    with failing_with(EXIT_BAD_INPUT, ValueError, OSError):
        prompts = [args.prompt] if args.prompt is not None else read_prompts(args.prompt_file)
    loaded = load_for_inference(args.load, args.iteration)
    cfg, tokenizer = loaded.cfg, loaded.tokenizer
    with failing_with(EXIT_BAD_INPUT, ValueError, OSError):
        prefix = steering_tokens(args, cfg, tokenizer)
        guided = args.guidance_scale != 1.0  # 1: the negative pass does not change the logits; skip it
        negative_prefix = prefix_tokens(args.negative_steer, cfg, tokenizer, shard_set=args.shard_set) \
            if guided else None
        documents = [list(tokenizer.tokenize(p)) for p in prompts]
        inputs = [prefix + d for d in documents]
        negatives = [negative_prefix + d for d in documents] if guided else None
        limit = cfg.model.max_position_embeddings or cfg.model.seq_length
        for n, rows in enumerate(zip(inputs, negatives or inputs), 1):
            longest = max(map(len, rows))
            if longest + args.max_new_tokens > limit:
                raise ValueError(f"prompt {n}: {longest} prefix+prompt tokens + --max-new-tokens "
                                 f"{args.max_new_tokens} exceed the model's {limit} positions")
    if args.no_kv_cache:
        outputs = [greedy(loaded.model, t, args.max_new_tokens, tokenizer.eod, limit, loaded.device,
                          tokenizer.vocab_size, negative=negatives[n] if guided else None,
                          guidance_scale=args.guidance_scale) for n, t in enumerate(inputs)]
    else:
        hf_model = loaded.to_hf()
        del loaded
        outputs = generate(hf_model, inputs, args.max_new_tokens, tokenizer.eod, batch_size=args.batch_size,
                           temperature=args.temperature, top_p=args.top_p, seed=args.seed, stops=args.stop,
                           detokenize=tokenizer.detokenize, negatives=negatives, guidance_scale=args.guidance_scale)
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
