"""Our tokenizer as a Hugging Face fast tokenizer that encodes exactly like it.

- ``SentencePieceTokenizer`` (and its GPT/Llama2 variants): the ``.model`` file converted with
  transformers' ``SpmConverter.build_tokenizer_from_spm_proto`` (follows the model's normalizer spec).
- ``HuggingFaceTokenizer``: the tokenizer directory, loaded and saved again.
- ``NullTokenizer``: a word-level tokenizer over the ids' decimal strings, split at whitespace.

:func:`check_same_encoding` compares the export with ours on sample texts (``encode(text,
add_special_tokens=False)`` against ``tokenize(text)``); :func:`hf_tokenizer` refuses a tokenizer
that differs on any of them.
"""
from __future__ import annotations

from collections.abc import Iterable

from megatron_ixt.export.hf import ExportError
from megatron_ixt.tokenizer import SENTENCEPIECE_TYPES, BatchEncoder, TokenizerConfig

# texts every check encodes, beside the caller's (steering prefixes, documents)
PROBE_TEXTS = BatchEncoder.PROBE + ["Question: what is 12 + 30?\nAnswer: 42.", "  two leading spaces",
                                    "tabs\tand\nnew\n\nlines", "def f(x):\n    return x * 2\n"]


def _sentencepiece(model_file: str, eod):
    import sentencepiece
    from sentencepiece import sentencepiece_model_pb2
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import SpmConverter

    proto = sentencepiece_model_pb2.ModelProto()
    with open(model_file, "rb") as f:
        proto.ParseFromString(f.read())
    pieces = [p.piece for p in proto.pieces]
    if proto.trainer_spec.model_type == 2:  # BPE
        vocab = {piece: i for i, piece in enumerate(pieces)}
    elif proto.trainer_spec.model_type == 1:  # Unigram
        vocab = [(p.piece, p.score) for p in proto.pieces]
    else:
        raise ExportError(f"{model_file}: SentencePiece model type {proto.trainer_spec.model_type} "
                          "(only BPE and Unigram convert to a fast tokenizer)")
    backend = SpmConverter.build_tokenizer_from_spm_proto(proto, vocab)
    if backend is None:
        raise ExportError(f"{model_file}: transformers could not convert this SentencePiece model")
    sp = sentencepiece.SentencePieceProcessor(model_file=model_file)
    special = {}
    for name, idx in (("unk_token", sp.unk_id()), ("bos_token", sp.bos_id()), ("eos_token", eod)):
        if idx is not None and 0 <= idx < len(pieces):
            special[name] = pieces[idx]
    # SentencePiece reads "<s>", "</s>", ... in text as plain text: so does the export
    return PreTrainedTokenizerFast(tokenizer_object=backend, split_special_tokens=True, **special)


def _null(vocab_size: int, eod: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({str(i): i for i in range(vocab_size)}))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins the words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=str(eod), bos_token=str(eod))


def check_same_encoding(hf_tok, ours, texts: Iterable[str], source: str) -> int:
    """Raise ExportError naming the first text on which ``hf_tok`` and ``ours`` encode differently;
    returns the number of texts compared."""
    n = 0
    for n, text in enumerate(texts, 1):
        a, b = hf_tok.encode(text, add_special_tokens=False), list(ours.tokenize(text))
        if a != b:
            at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            raise ExportError(f"{source}: the Hugging Face tokenizer encodes {text[:80]!r} differently from "
                              f"ours (first difference at token {at}: {a[at:at + 5]} vs {b[at:at + 5]}); "
                              "refusing to export a tokenizer that does not match")
    return n


def hf_tokenizer(tok_cfg: TokenizerConfig, ours, sample: list[str] = ()):
    """A transformers fast tokenizer equivalent to ``ours`` (built from ``tok_cfg``), checked on
    :data:`PROBE_TEXTS` plus ``sample``; ExportError when it encodes any of them differently."""
    from transformers import AutoTokenizer

    kind = tok_cfg.tokenizer_type
    if kind == "NullTokenizer":
        hf_tok = _null(ours.vocab_size, ours.eod)
        texts = [" ".join(str(t) for t in range(i, ours.vocab_size, 7)) for i in range(7)]
    else:
        if kind in SENTENCEPIECE_TYPES:
            hf_tok = _sentencepiece(tok_cfg.tokenizer_model, ours.eod)
        else:
            hf_tok = AutoTokenizer.from_pretrained(tok_cfg.tokenizer_model, use_fast=True)
        texts = PROBE_TEXTS
    check_same_encoding(hf_tok, ours, list(texts) + list(sample), tok_cfg.tokenizer_model or kind)
    return hf_tok
