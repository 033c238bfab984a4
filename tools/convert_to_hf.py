"""megatron-ixt checkpoint -> Hugging Face transformers model directory.

    python tools/convert_to_hf.py --load ckpt/ixt [--iteration N] --output hf/ixt   (or ixt-convert-to-hf)

Reads a torch_dist checkpoint saved under any TP/PP layout in one process and writes to --output:
``config.json`` (LlamaForCausalLM, Qwen3ForCausalLM, GPT2LMHeadModel or Starcoder2ForCausalLM, every
architectural field explicit), ``model.safetensors`` (padded vocabulary rows dropped),
``generation_config.json``, the tokenizer (a fast tokenizer checked to encode like ours) and
``ixt_steering.json`` (steering prefixes per kind and level; see megatron_ixt/export/steering.py).
The written model is reloaded with transformers and its logits are compared with the megatron model's
on a probe sequence. A configuration no target class expresses is refused, naming the field.
See docs/evaluation.md.
"""
from __future__ import annotations

import argparse
import os
import sys

from megatron_ixt.cli import EXIT_CHECKPOINT, entry_point, failing_with

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
PARITY_TOLERANCE = 1e-4  # max |logit difference| of the fp32 reload check


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ixt-convert-to-hf", description=__doc__.split("\n")[0])
    parser.add_argument("--load", required=True, help="checkpoint directory (as given to --save)")
    parser.add_argument("--iteration", type=int, default=None, help="iteration to export (default: the latest)")
    parser.add_argument("--output", required=True, help="directory for the Hugging Face model (created)")
    parser.add_argument("--shard-set", default=None,
                        help="IXT shard-set prefix P whose P_ixt.json gives the steering prefixes "
                             "(default: the training data paths stored in the checkpoint)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="weight dtype of the export (default: bf16 if the model trained in bf16, else fp32)")
    return parser


def get_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def convert(args: argparse.Namespace) -> dict:
    """Write the export; returns a summary (target class, parity, steering kinds)."""
    import torch
    import transformers

    from megatron_ixt.export.in_memory import export_checkpoint
    from megatron_ixt.export.steering import write_steering
    from megatron_ixt.training.checkpoint import read_config

    trained_bf16 = read_config(args.load, args.iteration)["train"]["bf16"]
    dtype = getattr(torch, DTYPES[args.dtype or ("bf16" if trained_bf16 else "fp32")])
    export = export_checkpoint(args.load, args.iteration, args.shard_set)
    model, cfg, vocab = export.loaded.model, export.loaded.cfg, export.loaded.tokenizer.vocab_size
    os.makedirs(args.output, exist_ok=True)
    export.model.to(dtype).save_pretrained(args.output)
    export.tokenizer.save_pretrained(args.output)
    write_steering(args.output, export.paths, export.steering)

    # reload what was written and compare with the megatron model on a probe sequence
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(args.output, dtype=torch.float32).eval()
    n = min(32, cfg.model.max_position_embeddings)
    ids = torch.arange(n, dtype=torch.long)[None] * 7919 % vocab
    with torch.no_grad():
        ours = model(ids, torch.arange(n)[None], None)[..., :vocab].float()
        theirs = reloaded(ids).logits.float()
    diff = float((ours - theirs).abs().max())
    if dtype == torch.float32 and diff > PARITY_TOLERANCE:
        raise RuntimeError(f"{args.output}: reloaded logits differ from the checkpoint's by {diff:.3g} "
                           f"(> {PARITY_TOLERANCE}); the export is wrong")
    return {"target": type(reloaded).__name__, "max_abs_logit_diff": diff, "dtype": str(dtype).split(".")[-1],
            "vocab_size": vocab, "steering": {k: sorted(v) for k, v in export.steering.items()}}


@entry_point
def main(argv: list[str] | None = None) -> int:
    args = get_args(argv)
    with failing_with(EXIT_CHECKPOINT, ValueError, OSError):  # ExportError is a ValueError
        summary = convert(args)
    print(f"wrote {args.output}: {summary['target']} ({summary['dtype']}, vocab {summary['vocab_size']}), "
          f"max |logit diff| vs the checkpoint {summary['max_abs_logit_diff']:.2e}, steering {summary['steering']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
