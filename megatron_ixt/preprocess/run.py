"""A preprocessing run: input files -> IXT shard set (docs/preprocess.md).

    from megatron_ixt.preprocess import PreprocessConfig, preprocess
    from megatron_ixt.tokenizer import TokenizerConfig

    preprocess(PreprocessConfig(["data/a.parquet", "data/b.jsonl.zst"], "out/corpus",
                                TokenizerConfig("HuggingFaceTokenizer", "tok/"), append_eod=True, workers=8))

Output is byte-identical for any ``workers``: the input is cut into fixed chunks
(megatron_ixt.preprocess.chunks), encoded by this process and worker processes
(megatron_ixt.preprocess.pool) and written in input order.
"""
from __future__ import annotations

import collections
import contextlib
import os
import sys
import time
from dataclasses import dataclass, field

from megatron_ixt import __version__
from megatron_ixt.data import prefix_kinds, shards
from megatron_ixt.data.inputs import input_format
from megatron_ixt.data.prefix_kinds import STEERING_CRITIQUE, steering_annotation
from megatron_ixt.data.record import REASONS
from megatron_ixt.data.templates import PrefixTemplate, load_template
from megatron_ixt.preprocess.chunks import read_chunks
from megatron_ixt.preprocess.encoder import ChunkEncoder
from megatron_ixt.preprocess.pool import add_result, encode_in_order
from megatron_ixt.tokenizer import TokenizerConfig, tokenizer_identity

EXAMPLES_PER_REASON = 5  # problems logged as file:line per reason


class StrictError(RuntimeError):
    """A bad record with ``strict`` (nothing is written)."""


class NothingUseful(ValueError):
    """The inputs held no document to write (nothing is written)."""


@dataclass
class PreprocessConfig:
    """One run. ``inputs``: the input files, in order (JSON lines or parquet, by name); ``output_prefix``:
    the path stem P of the shard set; ``kinds``: the prefix kinds to write, one store each (None: every
    registered kind; ``()``: only the text store, a plain Megatron store without metadata);
    ``templates``: kind -> template (``"default"``, a built-in name or a file; a kind left out: its
    default); ``text_key``: the field (column) holding the text; ``log_interval``: documents between
    progress lines; ``strict``: stop at the first bad record."""

    inputs: list[str]
    output_prefix: str
    tokenizer: TokenizerConfig
    kinds: tuple[str, ...] | None = None
    templates: dict[str, str] = field(default_factory=dict)
    steering_critique: str = STEERING_CRITIQUE
    text_key: str = "text"
    append_eod: bool = False
    workers: int = 1
    tokenizer_engine: str = "auto"
    log_interval: int = 10000
    strict: bool = False

    def prefix_templates(self) -> dict[str, PrefixTemplate]:
        """kind -> loaded template, for each kind written, in registry order."""
        kinds = prefix_kinds.names() if self.kinds is None else self.kinds
        return {kind: load_template(kind, self.templates.get(kind, "default"))
                for kind in prefix_kinds.names() if kind in kinds}


def shard_files(files: list[str], num_shards: int, shard_index: int) -> list[str]:
    """Part ``shard_index`` of ``num_shards`` contiguous, near-equal parts of ``files`` (the first
    ``len(files) % num_shards`` parts get one file more; a part may be empty). Contiguous, so that
    merging the parts in shard order gives the files in the order of a single run."""
    size, extra = divmod(len(files), num_shards)
    start = shard_index * size + min(shard_index, extra)
    return files[start:start + size + (shard_index < extra)]


def steering_prefixes(templates: dict[str, PrefixTemplate], critique: str, tokenizer, tokenizer_type: str) -> dict:
    """kind -> ``{text, tokens}`` of the top-level steering prefix (with ``critique``); fails early when
    a template cannot be tokenized at all (e.g. text with NullTokenizer)."""
    steering = {}
    for kind, template in templates.items():
        text = template.render(steering_annotation(critique=critique))
        try:
            steering[kind] = {"text": text, "tokens": [int(t) for t in tokenizer.tokenize(text)]}
        except Exception as exc:
            raise ValueError(f"{tokenizer_type} cannot tokenize the {kind} template {template.name!r} "
                             f"({exc!r}); give a template it can encode, or --text-only") from None
    return steering


def preprocess(config: PreprocessConfig, log=None) -> dict | None:
    """Run the preprocessing; returns the metadata written (None for a text-only run). Progress and
    problems go to ``log`` (default: stderr). Raises ValueError for an input of unknown format,
    :class:`NothingUseful` when the inputs gave no document, :class:`StrictError` with ``strict``."""
    log = log or sys.stderr
    files = list(config.inputs)
    for path in files:
        input_format(path)
    templates = config.prefix_templates()
    encoder = ChunkEncoder(config.tokenizer, templates, text_key=config.text_key, append_eod=config.append_eod,
                           engine=config.tokenizer_engine)
    tokenizer = encoder.tokenizer
    steering = steering_prefixes(templates, config.steering_critique, tokenizer, config.tokenizer.tokenizer_type)

    def verify() -> None:  # the engine against the reference tokenizer, on the input's first records
        encoder.encoder.verify(encoder.verification_sample(next(read_chunks(files, config.text_key), None)))
        for note in encoder.encoder.notes:
            print(f"warning: tokenizer engine {note}", file=log)
        print(f"tokenizer engine: {encoder.encoder.label}", file=log, flush=True)

    counts, status, quality, score_sums, skipped = (collections.Counter() for _ in range(5))
    start = time.time()
    next_log = config.log_interval
    file_index, lines_before = 0, 0  # records of the current file in the chunks already written
    scratch_parent = os.path.dirname(os.path.abspath(config.output_prefix))
    with contextlib.ExitStack() as encoding, \
            shards.ShardSetWriter(config.output_prefix, tokenizer.vocab_size, kinds=tuple(templates)) as writer:
        # the workers are waited for (and their scratch directory removed) after the writer's commit or abort
        results = encode_in_order(encoder, config.workers, read_chunks(files, config.text_key), verify,
                                  scratch_parent, encoding)
        for result in results:
            if result.file_index != file_index:
                file_index, lines_before = result.file_index, 0
            for line_number, reason, message in result.problems:
                skipped[reason] += 1
                where = f"{files[file_index]}:{lines_before + line_number}"
                if config.strict:
                    raise StrictError(f"{where}: {reason}: {message} (--strict)")
                if skipped[reason] <= EXAMPLES_PER_REASON:
                    print(f"{where}: {reason}: {message}", file=log)
            add_result(writer, result)
            for name, n in writer.tokens.items():
                counts[shards.token_count_key(name)] = n
            if result.docs is not None:
                result.docs["line"] += lines_before
                writer.add_docs(result.docs)
            lines_before += result.lines
            counts.update(result.counts)
            status.update(result.status)
            quality.update(result.quality)
            score_sums.update(result.score_sums)
            if counts["documents"] >= next_log:
                next_log += config.log_interval
                print(progress_line(counts, time.time() - start), file=log, flush=True)
        counts["unannotated"] = counts["documents"] - counts["annotated"]
        if not files:
            print("warning: no input files: writing an empty shard set", file=log)
        elif not counts["documents"]:
            reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(skipped.items())) or "none"
            raise NothingUseful(f"no document in {len(files)} input file(s) ({', '.join(files[:3])}"
                                f"{', ...' if len(files) > 3 else ''}): {counts['records']} records, problems: "
                                f"{reasons}; nothing written. Is the text in field {config.text_key!r} "
                                "(--json-keys)?")
        metadata = None if not templates else shards.build_metadata(
            created_by=f"megatron-ixt {__version__} megatron_ixt.preprocess",
            tokenizer=tokenizer_identity(config.tokenizer, tokenizer=tokenizer), append_eod=config.append_eod,
            json_key=config.text_key, templates={k: t.identity() for k, t in templates.items()},
            steering=steering, inputs=[{"path": p, "bytes": os.path.getsize(p)} for p in files], counts=counts,
            annotation_status=status, quality=quality, score_sums=score_sums, skipped=skipped,
            tokenizer_engines=[encoder.encoder.label])
        metadata = writer.commit(metadata)
    print(progress_line(counts, time.time() - start, final=True), file=log, flush=True)
    print(summary(counts, skipped), file=log, flush=True)
    return metadata


def progress_line(counts, elapsed: float, final: bool = False) -> str:
    elapsed = max(elapsed, 1e-9)
    return (f"{'Done: processed' if final else 'Processed'} {counts['documents']} documents "
            f"({counts['documents'] / elapsed:.1f} docs/s, {counts['input_bytes'] / elapsed / 1e6:.2f} MB/s, "
            f"{counts['text_tokens'] / elapsed:.0f} tokens/s) in {elapsed:.1f} s.")


def summary(counts, skipped) -> str:
    lines = [f"{counts['documents']} documents written ({counts['annotated']} annotated, "
             f"{counts['unannotated']} unannotated, {counts['degraded']} with a rejected annotation), "
             f"{counts['dropped']} records dropped."]
    lines += [f"  {reason}: {n}  ({REASONS[reason]})" for reason, n in sorted(skipped.items()) if n]
    return "\n".join(lines)
