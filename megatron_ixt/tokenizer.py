"""Tokenizer glue over ``megatron.core.tokenizers`` (docs/CONTRACTS.md section 4).

Flags follow Megatron-LM: ``--tokenizer-type`` (``SentencePieceTokenizer``,
``GPTSentencePieceTokenizer``, ``Llama2Tokenizer``, ``HuggingFaceTokenizer``, ``NullTokenizer``),
``--tokenizer-model`` (a SentencePiece ``.model`` file, or a HuggingFace tokenizer directory),
``--vocab-size`` (NullTokenizer only: ids are ``0..vocab_size-1``, EOD is ``vocab_size``, so the
tokenizer's ``vocab_size`` is ``vocab_size + 1``, on every megatron-core version; text is
space-separated integers).

The returned tokenizer has ``.tokenize(str) -> list[int]``, ``.detokenize(list) -> str``,
``.eod`` and ``.vocab_size``.
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import os
from dataclasses import dataclass

import numpy

SENTENCEPIECE_TYPES = ("SentencePieceTokenizer", "GPTSentencePieceTokenizer", "Llama2Tokenizer")
TOKENIZER_TYPES = SENTENCEPIECE_TYPES + ("HuggingFaceTokenizer", "NullTokenizer")


@dataclass
class TokenizerConfig:
    tokenizer_type: str
    tokenizer_model: str | None = None
    vocab_size: int | None = None


def add_tokenizer_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add Megatron-LM's tokenizer flags to ``parser``."""
    group = parser.add_argument_group("tokenizer")
    group.add_argument("--tokenizer-type", required=True, choices=TOKENIZER_TYPES,
                       help="megatron-core tokenizer library (NullTokenizer: integer text, needs --vocab-size)")
    group.add_argument("--tokenizer-model", default=None,
                       help="SentencePiece .model file or HuggingFace tokenizer directory")
    group.add_argument("--vocab-size", type=int, default=None,
                       help="NullTokenizer: number of ids (EOD is vocab_size)")
    return parser


def _config(args_or_kwargs=None, **kwargs) -> TokenizerConfig:
    if isinstance(args_or_kwargs, TokenizerConfig):
        return args_or_kwargs
    if args_or_kwargs is None:
        values = kwargs
    elif isinstance(args_or_kwargs, dict):
        values = {**args_or_kwargs, **kwargs}
    else:
        values = {**vars(args_or_kwargs), **kwargs}
    cfg = TokenizerConfig(values["tokenizer_type"], values.get("tokenizer_model"), values.get("vocab_size"))
    if cfg.tokenizer_type not in TOKENIZER_TYPES:
        raise ValueError(f"--tokenizer-type {cfg.tokenizer_type!r} is not supported; choose one of {TOKENIZER_TYPES}")
    if cfg.tokenizer_type == "NullTokenizer":
        if not cfg.vocab_size:
            raise ValueError("NullTokenizer needs --vocab-size")
    elif not cfg.tokenizer_model or not os.path.exists(cfg.tokenizer_model):
        raise ValueError(f"--tokenizer-model {cfg.tokenizer_model!r} does not exist "
                         f"(required for {cfg.tokenizer_type})")
    return cfg


def build_tokenizer(args_or_kwargs=None, **kwargs):
    """Build a megatron.core tokenizer from an argparse namespace, a dict, a TokenizerConfig or kwargs."""
    from megatron.core.tokenizers import MegatronTokenizer

    cfg = _config(args_or_kwargs, **kwargs)
    if cfg.tokenizer_type == "NullTokenizer":
        return _build_null(cfg.vocab_size)
    if cfg.tokenizer_type in SENTENCEPIECE_TYPES:
        return MegatronTokenizer.from_pretrained(tokenizer_path=cfg.tokenizer_model,
                                                 metadata_path={"library": "sentencepiece"})
    return MegatronTokenizer.from_pretrained(tokenizer_path=cfg.tokenizer_model,
                                             metadata_path={"library": "huggingface"}, use_fast=True)


def _build_null(vocab_size: int):
    """NullTokenizer with ids ``0..vocab_size-1``, EOD ``vocab_size`` and ``vocab_size + 1`` ids in all,
    on every supported megatron-core (0.16 names its library "null" and adds the EOD id to
    ``vocab_size``; later versions call it "null-text" and count EOD in ``vocab_size``)."""
    from megatron.core.tokenizers import MegatronTokenizer
    from megatron.core.tokenizers import megatron_tokenizer

    if "null-text" in getattr(megatron_tokenizer, "TOKENIZER_LIBRARIES", ()):
        tokenizer = MegatronTokenizer.from_pretrained(metadata_path={"library": "null-text"}, vocab_size=vocab_size + 1)
    else:
        tokenizer = MegatronTokenizer.from_pretrained(metadata_path={"library": "null"}, vocab_size=vocab_size)
    if tokenizer.eod != vocab_size or tokenizer.vocab_size != vocab_size + 1:
        raise RuntimeError(f"NullTokenizer(vocab_size={vocab_size}) gave eod {tokenizer.eod} and vocab_size "
                           f"{tokenizer.vocab_size}; this megatron-core changed its NullTokenizer again")
    return tokenizer


def model_sha256(path: str | None) -> str | None:
    """sha256 of a tokenizer model file; for a directory, of its files' names and contents (sorted)."""
    if path is None:
        return None
    digest = hashlib.sha256()
    if os.path.isdir(path):
        for name in sorted(os.listdir(path)):
            full = os.path.join(path, name)
            if os.path.isfile(full) and name != "tokenizer_metadata.json":
                digest.update(name.encode("utf-8") + b"\0")
                with open(full, "rb") as f:
                    digest.update(hashlib.sha256(f.read()).digest())
    else:
        with open(path, "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()


def tokenizer_identity(args_or_kwargs=None, tokenizer=None, **kwargs) -> dict:
    """The ``tokenizer`` entry of ``P_ixt.json``: type, model file name and sha256, vocab size, EOD."""
    cfg = _config(args_or_kwargs, **kwargs)
    tokenizer = tokenizer if tokenizer is not None else build_tokenizer(cfg)
    return {"type": cfg.tokenizer_type,
            "model": os.path.basename(os.path.normpath(cfg.tokenizer_model)) if cfg.tokenizer_model else None,
            "model_sha256": model_sha256(cfg.tokenizer_model),
            "vocab_size": int(tokenizer.vocab_size),
            "eod": None if tokenizer.eod is None else int(tokenizer.eod)}


def same_tokenizer(a: dict, b: dict) -> bool:
    """Whether two tokenizer identities produce the same token ids (file names may differ)."""
    keys = ("type", "model_sha256", "vocab_size", "eod")
    return all(a.get(k) == b.get(k) for k in keys)


SPM_SPACE = "\u2581"  # SentencePiece's whitespace symbol


def _plain_sentencepiece(tokenizer):
    """The SentencePieceProcessor behind ``tokenizer`` when ``tokenize`` is exactly its ``encode``."""
    wrapped = getattr(tokenizer, "_tokenizer", None)
    sp = getattr(wrapped, "tokenizer", None)
    if getattr(tokenizer, "library", None) != "sentencepiece" or getattr(wrapped, "legacy", True):
        return None
    # the wrapper rewrites runs of spaces itself when told not to ignore them
    rewrites_spaces = (getattr(wrapped, "removed_extra_spaces", True)
                       and not getattr(wrapped, "ignore_extra_whitespaces", True))
    return sp if hasattr(sp, "encode") and not rewrites_spaces else None


def _splits_at_whitespace(sp) -> bool:
    """Whether encoding = concatenated encodings of the normalized text's words: no piece holds the
    whitespace symbol except at its start and the dummy prefix is on, so no token crosses a word."""
    if not hasattr(sp, "normalize") or sp.normalize("a  b") != f"{SPM_SPACE}a{SPM_SPACE}b":
        return False
    return not any(SPM_SPACE in sp.id_to_piece(i)[1:] for i in range(sp.get_piece_size()))


class BatchEncoder:
    """Encodes lists of texts exactly like ``tokenizer.tokenize``, fast.

    ``encode(texts)`` gives token lists; ``encode_bytes(texts)`` gives each text's tokens as the
    raw bytes of a ``dtype`` array (what the IndexedDataset .bin holds), avoiding Python ints.

    SentencePiece models whose tokens never cross words (true of models trained with the default
    ``split_by_whitespace``) are encoded word by word with a cache of word encodings, the way fast
    BPE tokenizers do: normalize, split at the whitespace symbol, encode unseen words in one batch,
    concatenate. The equivalence is checked on a probe and on the first texts encoded; on any
    difference the encoder falls back to SentencePiece's own batch encoding (single-threaded, so
    ``--workers`` stays the unit of parallelism). Other tokenizers are called once per text.
    """

    PROBE = ["Hello  world.\nA second\t line ", " leading space", "1 2 3 1234567", "\uff46\uff55\uff4c\uff4c width",
             f"a{SPM_SPACE}b", "caf\u00e9 \u00fcber \U0001F600", "x"]
    VERIFY_TEXTS = 64  # real texts also encoded the plain way and compared
    CACHE_LIMIT = 1 << 20  # words; the cache is emptied when it grows past this

    def __init__(self, tokenizer, dtype=numpy.int32, word_cache: bool = True):
        self.tokenizer = tokenizer
        self.dtype = numpy.dtype(dtype)
        self._sp = _plain_sentencepiece(tokenizer)
        if self._sp is not None and self._plain(self.PROBE) != [tokenizer.tokenize(t) for t in self.PROBE]:
            self._sp = None
        self._cache = None
        self._to_verify = 0
        if self._sp is not None and word_cache and _splits_at_whitespace(self._sp):
            self._cache = {"": b""}
            if self.encode(self.PROBE) != self._plain(self.PROBE):
                self._cache = None
        self._to_verify = self.VERIFY_TEXTS

    @property
    def mode(self) -> str:
        """"words" (cached word encodings), "batch" (SentencePiece batch) or "per-text"."""
        return "per-text" if self._sp is None else "batch" if self._cache is None else "words"

    def _plain(self, texts: list[str]) -> list[list[int]]:
        return self._sp.encode(texts, out_type=int, num_threads=1)

    def _lists(self, texts: list[str]) -> list[list[int]]:
        return [self.tokenizer.tokenize(t) for t in texts] if self._sp is None else self._plain(texts)

    def _by_words(self, texts: list[str]) -> list[bytes]:
        cache = self._cache
        if len(cache) > self.CACHE_LIMIT:
            cache.clear()
            cache[""] = b""
        words = [self._sp.normalize(t).split(SPM_SPACE) for t in texts]
        missing = list(set(itertools.chain.from_iterable(words)).difference(cache))
        dtype = self.dtype
        cache.update(zip(missing, (numpy.array(ids, dtype).tobytes() for ids in self._plain(missing))))
        get = cache.__getitem__
        return [b"".join(map(get, w)) for w in words]

    def encode_bytes(self, texts: list[str]) -> list[bytes]:
        if self._cache is None:
            return [numpy.array(ids, self.dtype).tobytes() for ids in self._lists(texts)]
        encoded = self._by_words(texts)
        if self._to_verify > 0:
            n = min(self._to_verify, len(texts))
            self._to_verify -= n
            if [numpy.frombuffer(b, self.dtype).tolist() for b in encoded[:n]] != self._plain(texts[:n]):
                self._cache = None
                return self.encode_bytes(texts)
        return encoded

    def encode(self, texts: list[str]) -> list[list[int]]:
        if self._cache is None:
            return self._lists(texts)
        return [numpy.frombuffer(b, self.dtype).tolist() for b in self.encode_bytes(texts)]
