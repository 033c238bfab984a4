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
import importlib.metadata
import itertools
import json
import os
from dataclasses import dataclass

import numpy as np

try:  # the fast engine of BatchEncoder; optional: without it every tokenizer keeps a reference path
    import gigatoken
except ImportError:
    gigatoken = None

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


def tokenizer_config(args_or_kwargs=None, **kwargs) -> TokenizerConfig:
    """A checked TokenizerConfig from an argparse namespace, a dict, a TokenizerConfig or kwargs."""
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

    cfg = tokenizer_config(args_or_kwargs, **kwargs)
    if cfg.tokenizer_type == "NullTokenizer":
        return _build_null(cfg.vocab_size)
    if cfg.tokenizer_type in SENTENCEPIECE_TYPES:
        return MegatronTokenizer.from_pretrained(tokenizer_path=cfg.tokenizer_model,
                                                 metadata_path={"library": "sentencepiece"})
    return MegatronTokenizer.from_pretrained(tokenizer_path=cfg.tokenizer_model,
                                             metadata_path={"library": "huggingface"}, use_fast=True)


def _build_null(vocab_size: int):
    """NullTokenizer with ids ``0..vocab_size-1``, EOD ``vocab_size`` and ``vocab_size + 1`` ids in all,
    on every supported megatron-core (the library's name and its EOD counting differ by version:
    :func:`megatron_ixt.mcore_private.null_tokenizer_metadata`)."""
    from megatron.core.tokenizers import MegatronTokenizer

    from megatron_ixt.mcore_private import null_tokenizer_metadata

    library, vocab_size_counts_eod = null_tokenizer_metadata()
    tokenizer = MegatronTokenizer.from_pretrained(metadata_path={"library": library},
                                                  vocab_size=vocab_size + int(vocab_size_counts_eod))
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
    cfg = tokenizer_config(args_or_kwargs, **kwargs)
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



# ---------------------------------------------------------------------------------------------
# Fast batch encoding

ENGINES = ("gigatoken", "sentencepiece-words", "sentencepiece", "reference")  # fastest first
SPM_SPACE = "\u2581"  # SentencePiece's whitespace symbol


class EngineUnavailable(ValueError):
    """An engine cannot encode this tokenizer (the message says why)."""


class NotApplicable(EngineUnavailable):
    """An engine is not made for this tokenizer type at all (nothing to warn about)."""


def gigatoken_tokenizer(cfg: TokenizerConfig):
    """The ``gigatoken.Tokenizer`` of ``cfg``'s model: HuggingFace tokenizer directories (their
    tokenizer.json) and SentencePiece BPE models with byte fallback. Raises EngineUnavailable."""
    if cfg.tokenizer_type not in SENTENCEPIECE_TYPES + ("HuggingFaceTokenizer",):
        raise NotApplicable(f"gigatoken does not encode {cfg.tokenizer_type}")
    if gigatoken is None:
        raise EngineUnavailable("gigatoken is not installed (pip install gigatoken)")
    try:
        if cfg.tokenizer_type == "HuggingFaceTokenizer":
            return gigatoken.Tokenizer(cfg.tokenizer_model)
        # gigatoken's own converter (Tokenizer.from_sentencepiece converts and loads in one step): it
        # refuses models without byte fallback, and makes control pieces (<s>, </s>) added tokens that
        # are matched in the text, which SentencePiece never does, so those are dropped here.
        from gigatoken._load.sentencepiece import sentencepiece_to_tokenizer_json

        with open(cfg.tokenizer_model, "rb") as f:
            config = json.loads(sentencepiece_to_tokenizer_json(f.read()))
        config["added_tokens"] = [t for t in config["added_tokens"] if not t.get("special")]
        return gigatoken.Tokenizer.from_json(json.dumps(config))
    except Exception as exc:  # gigatoken raises ValueError, OSError or its own errors on unsupported models
        raise EngineUnavailable(f"gigatoken cannot load {cfg.tokenizer_model!r}: {exc}") from None


def _sentencepiece(cfg: TokenizerConfig):
    if cfg.tokenizer_type not in SENTENCEPIECE_TYPES:
        raise NotApplicable(f"{cfg.tokenizer_type} is not a SentencePiece tokenizer")
    import sentencepiece

    return sentencepiece.SentencePieceProcessor(model_file=cfg.tokenizer_model)


def _splits_at_whitespace(sp) -> bool:
    """Whether encoding = concatenated encodings of the normalized text's words: no piece holds the
    whitespace symbol except at its start and the dummy prefix is on, so no token crosses a word."""
    if sp.normalize("a  b") != f"{SPM_SPACE}a{SPM_SPACE}b":
        return False
    return not any(SPM_SPACE in sp.id_to_piece(i)[1:] for i in range(sp.get_piece_size()))


def _flat(lists) -> tuple[np.ndarray, np.ndarray]:
    """Token lists -> (concatenated int64 tokens, int64 lengths)."""
    lengths = np.fromiter(map(len, lists), np.int64, len(lists))
    return np.fromiter(itertools.chain.from_iterable(lists), np.int64, int(lengths.sum())), lengths


class _WordCache:
    """SentencePiece encoding word by word with a cache of word encodings, the way fast BPE
    tokenizers do: normalize, split at the whitespace symbol, encode unseen words in one batch,
    concatenate. Exact for models whose tokens never cross words (the default
    ``split_by_whitespace``); kept for SentencePiece models gigatoken cannot load (no byte
    fallback), where it is ~4x SentencePiece's own batch encoding (docs/preprocess.md)."""

    LIMIT = 1 << 20  # words; the cache is emptied when it grows past this

    def __init__(self, sp, dtype: np.dtype):
        if not _splits_at_whitespace(sp):
            raise EngineUnavailable("the model has pieces that cross words (split_by_whitespace=false)")
        self.sp, self.dtype = sp, dtype
        self.cache = {"": b""}

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        cache = self.cache
        if len(cache) > self.LIMIT:
            cache.clear()
            cache[""] = b""
        words = [self.sp.normalize(t).split(SPM_SPACE) for t in texts]
        missing = list(set(itertools.chain.from_iterable(words)).difference(cache))
        encoded = self.sp.encode(missing, out_type=int, num_threads=1)
        cache.update(zip(missing, (np.array(ids, self.dtype).tobytes() for ids in encoded)))
        get = cache.__getitem__
        per_text = [b"".join(map(get, w)) for w in words]
        lengths = np.fromiter(map(len, per_text), np.int64, len(per_text)) // self.dtype.itemsize
        return np.frombuffer(b"".join(per_text), self.dtype), lengths


class BatchEncoder:
    """Encodes lists of texts exactly like ``tokenizer.tokenize``, fast.

    ``encode(texts) -> (tokens, lengths)``: every text's tokens concatenated into one ``dtype``
    array, and each text's token count (int64), -1 for a text the tokenizer failed on or that gave
    ids outside ``0..tokenizer.vocab_size-1`` (its tokens are left out).

    Engines (``ENGINES``, fastest first; ``engine="auto"`` takes the first that loads):
    ``gigatoken`` (HuggingFace tokenizer.json and byte-fallback SentencePiece BPE models),
    ``sentencepiece-words`` (a word cache over SentencePiece, see ``_WordCache``), ``sentencepiece``
    (SentencePiece's batch encoding) and ``reference`` (``tokenizer.tokenize`` per text, any
    tokenizer). All run on the calling thread: worker processes are the unit of parallelism.
    :meth:`verify` compares the engine with ``tokenizer.tokenize`` on a sample; with "auto" a
    difference moves on to the next engine (``notes`` says why), with a named engine it raises.
    """

    PROBE = ["Hello  world.\nA second\t line ", " leading space", "1 2 3 1234567", "\uff46\uff55\uff4c\uff4c width",
             f"a{SPM_SPACE}b", "caf\u00e9 \u00fcber \U0001F600", "x", "specials <s> </s> <unk> <|endoftext|> <pad>",
             "  padded  ", "tabs\t\tand\r\nCRLF", "zero\u200bwidth soft\u00adhyphen \u00a0nbsp \u3000ideographic",
             "ligature \ufb01 \u2460 \uff21\uff22\uff23 \u6771\u4eac \u0434\u043e\u043c",
             "quotes \u201clike\u201d \u2014 \u2026"]

    def __init__(self, tokenizer, config: TokenizerConfig | None = None, dtype=np.int32, engine: str = "auto"):
        if engine != "auto" and engine not in ENGINES:
            raise ValueError(f"engine {engine!r}: choose 'auto' or one of {ENGINES}")
        self.tokenizer = tokenizer
        self.config = config
        self.dtype = np.dtype(dtype)
        self.vocab_size = int(tokenizer.vocab_size)
        self.auto = engine == "auto"
        self.notes: list[str] = []  # why faster engines are not used
        self._candidates = list(ENGINES if self.auto else (engine,))
        self._next_engine()

    def _next_engine(self) -> None:
        while self._candidates:
            name = self._candidates.pop(0)
            try:
                self._encode = self._load(name)
                self.engine = name
                return
            except EngineUnavailable as exc:
                if not self.auto:
                    raise
                if not isinstance(exc, NotApplicable):
                    self.notes.append(f"{name}: {exc}")
        raise AssertionError("the reference engine always loads")

    def _load(self, name: str):
        """The engine's ``texts -> (tokens, lengths)`` function; raises EngineUnavailable."""
        if name == "reference":
            return lambda texts: _flat([self.tokenizer.tokenize(t) for t in texts])
        if self.config is None:
            raise NotApplicable("no tokenizer config given")
        if name == "gigatoken":
            fast = gigatoken_tokenizer(self.config)

            def encode(texts):
                # an awkward ListOffsetArray over uint32; its buffers directly (ak.flatten/ak.num cost
                # ~0.5 ms a call, as much as encoding 100 KB)
                layout = fast.encode_batch(texts, parallel=False).layout
                offsets = np.asarray(layout.offsets.data)
                return np.asarray(layout.content.data)[offsets[0]:offsets[-1]], np.diff(offsets)
            return encode
        sp = _sentencepiece(self.config)
        if name == "sentencepiece-words":
            return _WordCache(sp, self.dtype)
        return lambda texts: _flat(sp.encode(texts, out_type=int, num_threads=1))

    @property
    def label(self) -> str:
        """The engine and, for gigatoken, its version (recorded in P_ixt.json)."""
        return f"gigatoken {importlib.metadata.version('gigatoken')}" if self.engine == "gigatoken" else self.engine

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        try:
            tokens, lengths = self._encode(texts)
        except Exception:  # find the culprit(s); the others still go through
            parts = []
            for text in texts:
                try:
                    parts.append(self._encode([text]))
                except Exception:
                    parts.append((np.zeros(0, self.dtype), np.array([-1])))
            tokens = np.concatenate([np.zeros(0, self.dtype)] + [p[0] for p in parts])
            lengths = np.concatenate([np.zeros(0, np.int64)] + [p[1] for p in parts])
        lengths = np.asarray(lengths, np.int64)
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self.vocab_size):
            valid = (tokens >= 0) & (tokens < self.vocab_size)
            counted = np.maximum(lengths, 0)
            owner = np.repeat(np.arange(len(lengths)), counted)
            bad = np.unique(owner[~valid])
            tokens = tokens[~np.isin(owner, bad)]
            lengths[bad] = -1
        return tokens.astype(self.dtype, copy=False), lengths

    def encode_lists(self, texts: list[str]) -> list:
        """``encode`` as one token list per text (None where it failed); for tests and small inputs."""
        tokens, lengths = self.encode(texts)
        ends = np.cumsum(np.maximum(lengths, 0))
        return [None if n < 0 else tokens[end - n:end].tolist() for n, end in zip(lengths.tolist(), ends.tolist())]

    def _reference(self, text: str):
        try:
            ids = self.tokenizer.tokenize(text)
        except Exception:
            return None
        return ids if all(0 <= i < self.vocab_size for i in ids) else None

    def verify(self, texts: list[str] = ()) -> None:
        """Encode ``PROBE`` and ``texts`` with the engine and with ``tokenizer.tokenize``; on any
        difference fall back to the next engine and check again ("auto", adding to ``notes``) or
        raise ValueError (a named engine)."""
        sample = self.PROBE + list(texts)
        reference = [self._reference(t) for t in sample]
        while self.engine != "reference":
            wrong = [i for i, (a, b) in enumerate(zip(self.encode_lists(sample), reference)) if a != b]
            if not wrong:
                return
            note = (f"{self.engine}: differs from the reference tokenizer on {len(wrong)} of {len(sample)} "
                    f"verification texts, e.g. {sample[wrong[0]][:60]!r}")
            if not self.auto:
                raise ValueError(note)
            self.notes.append(note)
            self._next_engine()
