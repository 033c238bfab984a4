"""Annotated corpus -> IXT shard set (text store + one aligned store per prefix kind + P_ixt.json).

    python tools/preprocess_ixt.py --input 'data/*.jsonl.zst' 'data/*.parquet' --output-prefix out/corpus \\
        --tokenizer-type SentencePieceTokenizer --tokenizer-model tok.model --workers 8 --append-eod

Flags follow Megatron-LM's tools/preprocess_data.py; see docs/preprocess.md for the input formats, the
record schema, the outputs and the bad-input reasons. The work is megatron_ixt.preprocess's; this is
its command line. Exit status: 0 written; 1 bad input (unknown format, no document, --strict) or
settings; 2 bad flags.
"""
from __future__ import annotations

import argparse
import sys

from megatron_ixt.cli import EXIT_BAD_INPUT, add_import_flag, entry_point, failing_with
from megatron_ixt.data import prefix_kinds
from megatron_ixt.data.inputs import INPUT_FORMATS, expand_inputs
from megatron_ixt.data.prefix_kinds import STEERING_CRITIQUE
from megatron_ixt.preprocess import PreprocessConfig, StrictError, preprocess, shard_files
from megatron_ixt.tokenizer import ENGINES, add_tokenizer_args, tokenizer_config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_import_flag(parser)
    group = parser.add_argument_group("input data")
    group.add_argument("--input", required=True, nargs="+",
                       help="input files or globs, read in the order given (each glob sorted, a file given twice "
                            f"read once): {INPUT_FORMATS}, by file name; any other name is refused")
    group.add_argument("--json-keys", "--text-key", nargs="+", default=["text"], dest="json_keys",
                       help="the field (parquet: column) holding the document text (exactly one key)")
    group.add_argument("--num-shards", type=int, default=1,
                       help="split the input files into this many contiguous parts (one per task of a job "
                            "array); tools/merge_ixt.py joins the parts, in shard order, into the single run's set")
    group.add_argument("--shard-index", type=int, default=0, help="the part this task writes, 0..num-shards-1")
    add_tokenizer_args(parser)
    group = parser.add_argument_group("IXT prefixes")
    group.add_argument("--prefix-kinds", nargs="+", choices=prefix_kinds.names(), default=list(prefix_kinds.names()),
                       metavar="KIND", help="the prefix kinds to write, one store each (default: all, "
                                            f"{' '.join(prefix_kinds.names())})")
    for kind in prefix_kinds.KINDS.values():
        group.add_argument(kind.flag, default="default", dest=f"{kind.name}_template",
                           help=f"template of the {kind.name} prefix ({kind.description}): 'default' "
                                f"({kind.default_template}), a built-in template name, or a template file")
    group.add_argument("--steering-critique", default=STEERING_CRITIQUE,
                       help="the critique rendered into the top-level steering prefixes (default: a built-in "
                            "'excellent' critique)")
    group.add_argument("--text-only", action="store_true",
                       help="write only P_text_document (a plain Megatron store, no prefixes, no P_ixt.json)")
    group = parser.add_argument_group("output data")
    group.add_argument("--output-prefix", required=True, metavar="STEM",
                       help="path stem P of the shard set: P_text_document.bin, P_<kind>_prefix.bin, P_ixt.json, ...")
    group.add_argument("--append-eod", action="store_true", help="append the EOD token to every document")
    group = parser.add_argument_group("runtime")
    group.add_argument("--workers", type=int, default=1,
                       help="encoding processes, this one included (N: N-1 worker processes, and this one encodes "
                            "whenever it is not writing); each tokenizes on one thread, so N = the cores to use")
    group.add_argument("--tokenizer-engine", default="auto", choices=("auto",) + ENGINES,
                       help="how texts are tokenized: 'auto' takes the fastest engine that loads and encodes a "
                            "verification sample exactly like the reference tokenizer; a named engine fails "
                            "instead of falling back. The output is the same with any engine")
    group.add_argument("--log-interval", type=int, default=10000, help="documents between progress lines")
    group.add_argument("--strict", action="store_true",
                       help="exit non-zero at the first bad record (nothing is written)")
    return parser


def get_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if len(args.json_keys) != 1:
        parser.error("--json-keys: IXT shard sets hold one text field; give exactly one key")
    if args.workers < 1:
        parser.error("--workers must be >= 1")
    if args.num_shards < 1 or not 0 <= args.shard_index < args.num_shards:
        parser.error(f"--shard-index {args.shard_index} must be in 0..num-shards-1 (--num-shards {args.num_shards})")
    return args


def config_from_args(args: argparse.Namespace) -> PreprocessConfig:
    """The run the flags describe (globs expanded, this task's part of the files)."""
    return PreprocessConfig(
        inputs=shard_files(expand_inputs(args.input), args.num_shards, args.shard_index),
        output_prefix=args.output_prefix, tokenizer=tokenizer_config(args),
        kinds=() if args.text_only else tuple(args.prefix_kinds),
        templates={kind: getattr(args, f"{kind}_template") for kind in prefix_kinds.names()},
        steering_critique=args.steering_critique, text_key=args.json_keys[0], append_eod=args.append_eod,
        workers=args.workers, tokenizer_engine=args.tokenizer_engine, log_interval=args.log_interval,
        strict=args.strict)


@entry_point(plugins=True)
def main(argv=None) -> int:
    args = get_args(argv)
    with failing_with(EXIT_BAD_INPUT, StrictError, ValueError, FileNotFoundError):  # ValueError: NothingUseful too
        preprocess(config_from_args(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
